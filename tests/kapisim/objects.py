"""Storage encoding of Secrets and ConfigMaps, as kube-apiserver writes them to etcd.

kube-apiserver's default --storage-media-type is application/vnd.kubernetes.protobuf: the
stored (pre-encryption) bytes are the 4-byte magic b"k8s\\x00" followed by a runtime.Unknown
message {typeMeta{apiVersion, kind}, raw = the object's protobuf, contentEncoding, contentType}.
With --storage-media-type application/json the object is stored as JSON ('{' first).

The protobuf is hand-written and minimal, with the field numbers of k8s.io/api core/v1
generated.proto and apimachinery meta/v1, and the encoding rules of the gogo generated
marshallers (proto2 style: every non-pointer scalar and string is written even when empty,
maps are written sorted by key and only when not empty, metav1.Time keeps whole seconds and
writes nanos=0). Fields this module does not model (managedFields, ownerReferences, ...) are
kept as raw bytes under metadata[EXTRA] so that decode(x) -> encode gives x back.

Objects are plain dicts in the API's JSON shape ({"apiVersion": "v1", "kind": "Secret",
"metadata": {...}, "data": {name: base64}, "type": ...}); Secret data values are base64
strings as in the REST API, ConfigMap data values are strings, binaryData values base64.

Errors: DecodeError (a ValueError) with a short reason.
"""
import base64
import calendar
import json
import time

MAGIC = b"k8s\x00"
EXTRA = "_kapisim_pb_extra"   # metadata key holding [(field number, raw field bytes)]
KINDS = ("Secret", "ConfigMap")


class DecodeError(ValueError):
    pass


# ---- protobuf wire primitives -------------------------------------------------------------------

def _varint(n):
    if n < 0:
        n += 1 << 64            # int64 negative values are 10-byte varints
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _tag(num, wt):
    return _varint((num << 3) | wt)


def _ld(num, data):
    """A length-delimited field."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return _tag(num, 2) + _varint(len(data)) + data


def _vi(num, n):
    return _tag(num, 0) + _varint(n)


def _read_varint(buf, pos):
    n = 0
    shift = 0
    for _ in range(10):
        if pos >= len(buf):
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7
    raise DecodeError("varint too long")


def fields(buf):
    """[(num, wiretype, value, raw)] of one message; value is int or bytes. Bounded by len(buf)."""
    out = []
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise DecodeError("field number 0")
        if wt == 0:
            val, pos = _read_varint(buf, pos)
        elif wt == 1:
            if pos + 8 > len(buf):
                raise DecodeError("truncated fixed64")
            val, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wt == 5:
            if pos + 4 > len(buf):
                raise DecodeError("truncated fixed32")
            val, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        elif wt == 2:
            n, pos = _read_varint(buf, pos)
            if n > len(buf) - pos:
                raise DecodeError("truncated length-delimited field")
            val, pos = bytes(buf[pos:pos + n]), pos + n
        else:
            raise DecodeError("unsupported wire type %d" % wt)
        out.append((num, wt, val, bytes(buf[start:pos])))
    return out


def _str(val, what):
    if not isinstance(val, bytes):
        raise DecodeError("%s: wrong wire type" % what)
    try:
        return val.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("%s: invalid UTF-8" % what) from None


def _int64(val):
    return val - (1 << 64) if val >= 1 << 63 else val


# ---- time --------------------------------------------------------------------------------------

def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _ts_encode(s):
    secs = calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ"))
    return _vi(1, secs) + _vi(2, 0)


def _ts_decode(buf):
    secs = 0
    for num, wt, val, _ in fields(buf):
        if num == 1 and wt == 0:
            secs = _int64(val)
    if secs == 0:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(secs))


# ---- maps --------------------------------------------------------------------------------------

def _map_encode(num, m, binary):
    out = b""
    for k in sorted(m):
        v = base64.b64decode(m[k], validate=True) if binary else m[k].encode("utf-8")
        out += _ld(num, _ld(1, k) + _ld(2, v))
    return out


def _map_entry(val, binary, what):
    k, v = "", b""
    for num, wt, fv, _ in fields(val):
        if num == 1:
            k = _str(fv, what + " key")
        elif num == 2:
            if not isinstance(fv, bytes):
                raise DecodeError("%s value: wrong wire type" % what)
            v = fv
    return k, (base64.b64encode(v).decode() if binary else _str(v, what + " value"))


# ---- ObjectMeta ----------------------------------------------------------------------------------

_META_STR = {1: "name", 2: "generateName", 3: "namespace", 4: "selfLink", 5: "uid",
             6: "resourceVersion"}


def _meta_encode(md):
    parts = []
    for num, key in _META_STR.items():
        parts.append((num, _ld(num, md.get(key, ""))))
    parts.append((7, _vi(7, int(md.get("generation", 0)))))
    ts = md.get("creationTimestamp")
    parts.append((8, _ld(8, _ts_encode(ts) if ts else b"")))
    for num, key in ((11, "labels"), (12, "annotations")):
        if md.get(key):
            parts.append((num, _map_encode(num, md[key], False)))
    parts += [(n, raw) for n, raw in md.get(EXTRA, [])]
    parts.sort(key=lambda p: p[0])
    return b"".join(raw for _, raw in parts)


def _meta_decode(buf):
    md = {}
    extra = []
    for num, wt, val, raw in fields(buf):
        if num in _META_STR:
            s = _str(val, "metadata." + _META_STR[num])
            if s:
                md[_META_STR[num]] = s
        elif num == 7 and wt == 0:
            if val:
                md["generation"] = _int64(val)
        elif num == 8 and wt == 2:
            ts = _ts_decode(val)
            if ts:
                md["creationTimestamp"] = ts
        elif num in (11, 12) and wt == 2:
            key = "labels" if num == 11 else "annotations"
            k, v = _map_entry(val, False, "metadata." + key)
            md.setdefault(key, {})[k] = v
        else:
            extra.append((num, raw))
    if extra:
        md[EXTRA] = extra
    return md


# ---- Secret and ConfigMap ----------------------------------------------------------------------

def _raw_encode(obj):
    kind = obj["kind"]
    out = _ld(1, _meta_encode(obj.get("metadata", {})))
    if kind == "Secret":
        if obj.get("data"):
            out += _map_encode(2, obj["data"], True)
        out += _ld(3, obj.get("type", ""))
        if obj.get("immutable") is not None:
            out += _vi(5, 1 if obj["immutable"] else 0)
    elif kind == "ConfigMap":
        if obj.get("data"):
            out += _map_encode(2, obj["data"], False)
        if obj.get("binaryData"):
            out += _map_encode(3, obj["binaryData"], True)
        if obj.get("immutable") is not None:
            out += _vi(4, 1 if obj["immutable"] else 0)
    else:
        raise ValueError("unsupported kind %r" % kind)
    return out


def _raw_decode(kind, apiversion, buf):
    obj = {"kind": kind, "apiVersion": apiversion, "metadata": {}}
    for num, wt, val, _ in fields(buf):
        if num == 1 and wt == 2:
            obj["metadata"] = _meta_decode(val)
        elif kind == "Secret":
            if num == 2 and wt == 2:
                k, v = _map_entry(val, True, "data")
                obj.setdefault("data", {})[k] = v
            elif num == 3 and wt == 2:
                t = _str(val, "type")
                if t:
                    obj["type"] = t
            elif num == 5 and wt == 0:
                obj["immutable"] = bool(val)
        else:
            if num in (2, 3) and wt == 2:
                key = "data" if num == 2 else "binaryData"
                k, v = _map_entry(val, num == 3, key)
                obj.setdefault(key, {})[k] = v
            elif num == 4 and wt == 0:
                obj["immutable"] = bool(val)
    return obj


def encode_protobuf(obj):
    """The storage bytes of obj: MAGIC || runtime.Unknown."""
    tm = _ld(1, obj.get("apiVersion", "v1")) + _ld(2, obj["kind"])
    unknown = _ld(1, tm) + _ld(2, _raw_encode(obj)) + _ld(3, "") + _ld(4, "")
    return MAGIC + unknown


def encode_json(obj):
    o = json.loads(json.dumps(public(obj)))
    return json.dumps(o, separators=(",", ":"), sort_keys=False).encode() + b"\n"


def encode(obj, media_type="application/vnd.kubernetes.protobuf"):
    if media_type == "application/json":
        return encode_json(obj)
    return encode_protobuf(obj)


def decode(data):
    """Storage bytes (protobuf envelope or JSON) -> object dict. Raises DecodeError."""
    if data.startswith(MAGIC):
        api_version = kind = ""
        raw = None
        for num, wt, val, _ in fields(data[len(MAGIC):]):
            if num == 1 and wt == 2:
                for n2, _w2, v2, _r2 in fields(val):
                    if n2 == 1:
                        api_version = _str(v2, "typeMeta.apiVersion")
                    elif n2 == 2:
                        kind = _str(v2, "typeMeta.kind")
            elif num == 2 and wt == 2:
                raw = val
        if kind not in KINDS:
            raise DecodeError("unsupported kind %r in the protobuf envelope" % kind)
        return _raw_decode(kind, api_version, raw or b"")
    if data[:1] == b"{":
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise DecodeError("invalid JSON: %s" % e) from None
        if not isinstance(obj, dict) or obj.get("kind") not in KINDS:
            raise DecodeError("unsupported JSON object")
        obj.setdefault("metadata", {})
        return obj
    raise DecodeError("neither a k8s protobuf envelope nor JSON")


def public(obj):
    """A deep copy of obj without the simulator's private metadata."""
    o = json.loads(json.dumps({k: v for k, v in obj.items() if k != "metadata"}))
    md = {k: v for k, v in obj.get("metadata", {}).items() if k != EXTRA}
    o["metadata"] = json.loads(json.dumps(md))
    return o
