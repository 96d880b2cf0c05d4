"""EncryptionConfiguration loading and kube-apiserver's value transformers, written
independently of atrest's crypto/ so that each checks the other's wire format.

What it promises (kube-apiserver 1.28-1.34 behaviour, spec sections 1, 2 and 4):
- load_config(path) / parse_config(data, path) -> Config, or ConfigError with
  kube-apiserver's text ("error while parsing file: ..."). YAML (a block/flow subset, see
  parse_yaml) or JSON; apiVersion apiserver.config.k8s.io/v1 kind EncryptionConfiguration
  (or the legacy v1 EncryptionConfig); unknown fields are errors (strict decoding, 1.31+);
  the key and provider rules of section 2.3 that decide whether a file loads.
- Config.transformer(group, resource) -> the per-resource transformer: an exact rule, then
  {group,*}, then {*,*}, else the identity encrypt-check transformer.
- transformer.read(value, aad) -> (plaintext, stale) or TransformError(text);
  transformer.write(plaintext, aad) -> value. aad is the full etcd key (bytes).
- Wire formats: identity, aescbc (PKCS#7, random IV), aesgcm (random 12-byte nonce, AAD = etcd
  key), secretbox (XSalsa20-Poly1305, 24-byte nonce), KMS v1 and v2 recognised by prefix. KMS
  needs a plugin: without one (the simulator has none) reads and writes fail with a gRPC-style
  Unavailable error; tests may pass plugin callables to decrypt recorded KMS values.
- The stale flag as kube-apiserver computes it (1.8): a match at any position but 0 of the
  provider list or of a provider's key list is stale.
Keys are held as Python bytes (no wiping: this is a test simulator) and never printed.
"""
import base64
import binascii
import hashlib
import json
import re

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.exceptions import InvalidTag
import nacl.exceptions
import nacl.secret
import os

AESCBC_PREFIX = b"k8s:enc:aescbc:v1:"
AESGCM_PREFIX = b"k8s:enc:aesgcm:v1:"
SECRETBOX_PREFIX = b"k8s:enc:secretbox:v1:"
KMS1_PREFIX = b"k8s:enc:kms:v1:"
KMS2_PREFIX = b"k8s:enc:kms:v2:"
ENC_PREFIX = b"k8s:enc:"

ERR_SHORT = "the stored data was shorter than the required size"


class ConfigError(Exception):
    pass


class TransformError(Exception):
    def __init__(self, msg, grpc_code=None):
        super().__init__(msg)
        self.grpc_code = grpc_code


# ---- a YAML subset -------------------------------------------------------------------------------

class YAMLError(ValueError):
    pass


def _strip_comment(line):
    q = None
    for i, ch in enumerate(line):
        if q:
            if ch == q:
                q = None
        elif ch in "'\"":
            q = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _split_key(text):
    """'key: value' -> (key, value) or None when text is not a mapping entry."""
    q = None
    depth = 0
    for i, ch in enumerate(text):
        if q:
            if ch == q:
                q = None
            continue
        if ch in "'\"" and (i == 0 or depth):
            q = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == ":" and depth == 0 and (i + 1 == len(text) or text[i + 1] in " \t"):
            return text[:i].strip(), text[i + 1:].strip()
    return None


_BOOL = {"true": True, "True": True, "TRUE": True, "yes": True, "Yes": True, "YES": True,
         "on": True, "On": True, "ON": True, "false": False, "False": False, "FALSE": False,
         "no": False, "No": False, "NO": False, "off": False, "Off": False, "OFF": False}


def _plain(s):
    if s in ("", "~", "null", "Null", "NULL"):
        return None
    if s in _BOOL:
        return _BOOL[s]
    if re.fullmatch(r"[-+]?(0|[1-9][0-9]*)", s):
        return int(s)
    if s[0] in "&*!|>%@`":
        raise YAMLError("unsupported YAML construct %r (kapisim reads a YAML subset)" % s[:10])
    return s


def _quoted(s, i):
    """Parse a quoted scalar starting at s[i]; returns (str, next index)."""
    q = s[i]
    out = []
    i += 1
    while i < len(s):
        ch = s[i]
        if q == "'" and ch == "'":
            if s[i + 1:i + 2] == "'":
                out.append("'")
                i += 2
                continue
            return "".join(out), i + 1
        if q == '"' and ch == "\\":
            nxt = s[i + 1:i + 2]
            width = {"x": 2, "u": 4, "U": 8}.get(nxt)
            if width:
                try:
                    out.append(chr(int(s[i + 2:i + 2 + width], 16)))
                except ValueError:
                    raise YAMLError("invalid escape in double-quoted scalar") from None
                i += 2 + width
                continue
            simple = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "/": "/",
                      "0": "\0", " ": " ", "a": "\a", "b": "\b", "e": "\x1b"}
            if nxt not in simple:
                raise YAMLError("invalid escape in double-quoted scalar")
            out.append(simple[nxt])
            i += 2
            continue
        if q == '"' and ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise YAMLError("unterminated quoted scalar")


def _flow(s, i):
    """Parse a flow value at s[i] ({...}, [...], quoted or plain); returns (value, next)."""
    while i < len(s) and s[i] in " \t":
        i += 1
    if i >= len(s):
        raise YAMLError("unexpected end of flow value")
    ch = s[i]
    if ch in "'\"":
        return _quoted(s, i)
    if ch in "[{":
        close = "]" if ch == "[" else "}"
        out = [] if ch == "[" else {}
        i += 1
        for _ in range(len(s) + 1):
            while i < len(s) and s[i] in " \t":
                i += 1
            if i < len(s) and s[i] == close:
                return out, i + 1
            if ch == "[":
                v, i = _flow(s, i)
                out.append(v)
            else:
                k, i = _flow(s, i)
                while i < len(s) and s[i] in " \t":
                    i += 1
                if i >= len(s) or s[i] != ":":
                    raise YAMLError("expected ':' in flow mapping")
                v, i = _flow(s, i + 1)
                if k in out:
                    raise YAMLError('duplicate field "%s"' % k)
                out[k] = v
            while i < len(s) and s[i] in " \t":
                i += 1
            if i < len(s) and s[i] == ",":
                i += 1
            elif i < len(s) and s[i] == close:
                continue
            else:
                raise YAMLError("expected ',' or %r in flow collection" % close)
        raise YAMLError("unterminated flow collection")
    j = i
    while j < len(s) and s[j] not in ",]}" and not (s[j] == ":" and s[j + 1:j + 2] in (" ", "")):
        j += 1
    return _plain(s[i:j].strip()), j


def _scalar(text):
    v, i = _flow(text, 0)
    if text[i:].strip():
        raise YAMLError("unexpected text after value: %r" % text[i:].strip()[:20])
    return v


def parse_yaml(text):
    """A YAML subset: block mappings and sequences (also sequences at their key's indent),
    flow collections, plain/single/double-quoted scalars, comments, one document. Anchors,
    aliases, tags and block scalars are refused with YAMLError."""
    lines = []
    for raw in text.split("\n"):
        if "\t" in raw[:len(raw) - len(raw.lstrip())]:
            raise YAMLError("found character that cannot start any token (tab indentation)")
        s = _strip_comment(raw).rstrip()
        if not s.strip() or s.strip() == "---":
            continue
        if s.strip() == "...":
            break
        lines.append([len(s) - len(s.lstrip(" ")), s.strip()])
    if not lines:
        return None

    def block(i, ind):
        if lines[i][1] == "-" or lines[i][1].startswith("- "):
            return seq(i, ind)
        if _split_key(lines[i][1]) is None:
            if i + 1 < len(lines) and lines[i + 1][0] > ind:
                raise YAMLError("multi-line plain scalars are not supported")
            return _scalar(lines[i][1]), i + 1
        return mapping(i, ind)

    def seq(i, ind):
        out = []
        while i < len(lines) and lines[i][0] == ind and (lines[i][1] == "-" or
                                                         lines[i][1].startswith("- ")):
            rest = lines[i][1][1:].lstrip(" ")
            if not rest:
                if i + 1 < len(lines) and lines[i + 1][0] > ind:
                    v, i = block(i + 1, lines[i + 1][0])
                else:
                    v, i = None, i + 1
            else:
                lines[i] = [ind + len(lines[i][1]) - len(rest), rest]
                v, i = block(i, lines[i][0])
            out.append(v)
        return out, i

    def mapping(i, ind):
        out = {}
        while i < len(lines) and lines[i][0] == ind:
            kv = _split_key(lines[i][1])
            if kv is None:
                raise YAMLError("expected a mapping entry, got %r" % lines[i][1][:30])
            k = _scalar(kv[0]) if kv[0] else ""
            if k in out:
                raise YAMLError('duplicate field "%s"' % k)
            if kv[1]:
                out[k] = _scalar(kv[1])
                i += 1
            elif i + 1 < len(lines) and (lines[i + 1][0] > ind or (
                    lines[i + 1][0] == ind and (lines[i + 1][1] == "-" or
                                                lines[i + 1][1].startswith("- ")))):
                out[k], i = block(i + 1, lines[i + 1][0])
            else:
                out[k] = None
                i += 1
        return out, i

    v, i = block(0, lines[0][0])
    if i != len(lines):
        raise YAMLError("unexpected indentation at %r" % lines[i][1][:30])
    return v


# ---- value transformers ------------------------------------------------------------------------

class Identity:
    def read(self, data, aad):
        if data.startswith(ENC_PREFIX):
            raise TransformError("identity transformer tried to read encrypted data")
        return data, False

    def write(self, data, aad):
        return data


class AESCBC:
    def __init__(self, key):
        self.key = key

    def read(self, data, aad):
        if len(data) < 16:
            raise TransformError(ERR_SHORT)
        if (len(data) - 16) % 16:
            raise TransformError("the stored data is not a multiple of the block size")
        iv, ct = data[:16], data[16:]
        d = Cipher(algorithms.AES(self.key), modes.CBC(iv)).decryptor()
        pt = d.update(ct) + d.finalize()
        c = pt[-1] if pt else 0
        if c == 0 or c > len(pt):
            raise TransformError("invalid PKCS7 data (empty or not padded)")
        if pt[-c:] != bytes([c]) * c:
            raise TransformError("invalid padding on input")
        return pt[:-c], False

    def write(self, data, aad):
        iv = os.urandom(16)
        pad = 16 - len(data) % 16
        e = Cipher(algorithms.AES(self.key), modes.CBC(iv)).encryptor()
        return iv + e.update(data + bytes([pad]) * pad) + e.finalize()


class AESGCM_:
    def __init__(self, key):
        self.aead = AESGCM(key)

    def read(self, data, aad):
        if len(data) < 12:
            raise TransformError(ERR_SHORT)
        try:
            return self.aead.decrypt(data[:12], data[12:], aad), False
        except InvalidTag:
            raise TransformError("cipher: message authentication failed") from None

    def write(self, data, aad):
        nonce = os.urandom(12)
        return nonce + self.aead.encrypt(nonce, data, aad)


class Secretbox:
    def __init__(self, key):
        self.box = nacl.secret.SecretBox(key)

    def read(self, data, aad):
        if len(data) < 24 + 16:
            raise TransformError(ERR_SHORT)
        try:
            return self.box.decrypt(data[24:], data[:24]), False
        except nacl.exceptions.CryptoError:
            raise TransformError("output array was not large enough for encryption") from None

    def write(self, data, aad):
        return bytes(self.box.encrypt(data, os.urandom(24)))


def _no_plugin(name):
    return TransformError('rpc error: code = Unavailable desc = kapisim: no KMS plugin for '
                          'provider "%s"' % name, grpc_code="Unavailable")


class KMSv1:
    """plugin: None or a callable decrypt(encDEK) -> DEK (tests only)."""

    def __init__(self, name, plugin=None):
        self.name = name
        self.plugin = plugin

    def read(self, data, aad):
        if len(data) < 2 or len(data) - 2 < int.from_bytes(data[:2], "big"):
            raise TransformError("invalid data encountered by envelope transformer: failed to "
                                 "read uint16 length prefixed data")
        n = int.from_bytes(data[:2], "big")
        if self.plugin is None:
            raise _no_plugin(self.name)
        dek = self.plugin(data[2:2 + n])
        ct = data[2 + n:]
        try:
            return AESGCM_(dek).read(ct, aad)
        except TransformError:
            pt, _ = AESCBC(dek).read(ct, aad)
            return pt, True

    def write(self, data, aad):
        raise _no_plugin(self.name)


def _pb_fields(buf):
    from objects import fields   # the same minimal protobuf reader
    return fields(buf)


class KMSv2:
    """plugin: None or a callable decrypt(encryptedDEKSource, keyID, annotations) -> DEK or
    seed (tests only). current: (keyID, type) of the write state for the stale flag."""

    def __init__(self, name, plugin=None, current=None):
        self.name = name
        self.plugin = plugin
        self.current = current

    def read(self, data, aad):
        try:
            fl = _pb_fields(data)
        except ValueError as e:
            raise TransformError("failed to unmarshal encrypted object: %s" % e) from None
        eo = {1: b"", 2: b"", 3: b"", 5: 0}
        ann = {}
        for num, _wt, val, _raw in fl:
            if num == 4:
                kv = dict((n, v) for n, _w, v, _r in _pb_fields(val))
                ann[kv.get(1, b"").decode()] = kv.get(2, b"")
            elif num in eo:
                eo[num] = val
        if eo[5] not in (0, 1):
            raise TransformError("unknown encryptedDEKSourceType: %d" % eo[5])
        if not eo[1]:
            raise TransformError("encrypted data is empty")
        if not eo[3]:
            raise TransformError("failed to validate encrypted DEK source: encrypted DEK "
                                 "source is empty")
        if not eo[2]:
            raise TransformError("failed to validate key id: keyID is empty")
        if self.plugin is None:
            raise _no_plugin(self.name)
        src = self.plugin(eo[3], eo[2].decode(), ann)
        stale = self.current is not None and self.current != (eo[2].decode(), eo[5])
        if eo[5] == 0:
            pt, _ = AESGCM_(src).read(eo[1], aad)
            return pt, stale
        if len(eo[1]) < 32:
            raise TransformError(ERR_SHORT)
        if len(src) < 32:
            raise TransformError("failed to derive read key from KDF: invalid seed length %d "
                                 "used for key generation" % len(src))
        key = HKDFExpand(hashes.SHA256(), 32, eo[1][:32]).derive(src)
        pt, _ = AESGCM_(key).read(eo[1][32:], aad)
        return pt, stale

    def write(self, data, aad):
        raise _no_plugin(self.name)


class PrefixList:
    """kube-apiserver's prefixTransformers (spec 1.8)."""

    def __init__(self, entries, err):
        self.entries = entries    # [(prefix bytes, transformer)]
        self.err = err

    def read(self, data, aad):
        errs = []
        for i, (prefix, t) in enumerate(self.entries):
            if not data.startswith(prefix):
                continue
            try:
                out, stale = t.read(data[len(prefix):], aad)
                return out, stale or i != 0
            except TransformError as e:
                if prefix:
                    errs.append(e)
        if len(errs) == 1:
            raise errs[0]
        if errs:
            raise TransformError("[" + ", ".join(str(e) for e in errs) + "]",
                                 grpc_code=errs[0].grpc_code)
        raise TransformError(self.err)

    def write(self, data, aad):
        prefix, t = self.entries[0]
        return prefix + t.write(data, aad)

    def describe(self):
        """The write provider and key, e.g. 'aescbc/key1' (no key material)."""
        prefix, t = self.entries[0]
        if isinstance(t, PrefixList):
            return prefix.decode().split(":")[2] + "/" + t.entries[0][0].decode()[:-1]
        if isinstance(t, Identity):
            return "identity"
        return prefix.decode()[:-1]


# ---- the configuration --------------------------------------------------------------------------

_PROVIDERS = ("kms", "aesgcm", "aescbc", "secretbox", "identity")
_FIELDS = {"root": {"apiVersion", "kind", "resources"}, "item": {"resources", "providers"},
           "keys": {"keys"}, "key": {"name", "secret"}, "identity": set(),
           "kms": {"apiVersion", "name", "cachesize", "endpoint", "timeout"}}


def _strict(obj, allowed, path):
    if not isinstance(obj, dict):
        raise ConfigError("json: cannot unmarshal %s into Go value at %s"
                          % (type(obj).__name__, path or "root"))
    for k in obj:
        if k not in allowed:
            raise ConfigError('strict decoding error: unknown field "%s%s"'
                              % (path + "." if path else "", k))


def _list(v, path):
    if v is None:
        return []
    if not isinstance(v, list):
        raise ConfigError("json: cannot unmarshal into []: %s" % path)
    return v


def _key_entries(pcfg, path, sizes):
    entries = []
    keys = _list(pcfg.get("keys"), path + ".keys")
    if not keys:
        raise ConfigError(path + ".keys: Required value: at least one keys is required")
    for k, kc in enumerate(keys):
        kp = "%s.keys[%d]" % (path, k)
        _strict(kc, _FIELDS["key"], kp)
        name, secret = kc.get("name") or "", kc.get("secret") or ""
        if not isinstance(name, str) or not isinstance(secret, str):
            raise ConfigError(kp + ": name and secret must be strings")
        if not name:
            raise ConfigError(kp + ".name: Required value: name is a mandatory field for a key")
        if not secret:
            raise ConfigError(kp + ".secret: Required value: secret is a mandatory field for a key")
        try:
            raw = base64.b64decode(secret.replace("\n", "").replace("\r", ""), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(kp + '.secret: Invalid value: "REDACTED": secrets must be base64 '
                              'encoded') from None
        if len(raw) not in sizes:
            raise ConfigError(kp + '.secret: Invalid value: "REDACTED": secret is not of the '
                              'expected length, got %d, expected one of %s'
                              % (len(raw), "[" + " ".join(map(str, sizes)) + "]"))
        entries.append((name.encode() + b":", raw))
    return entries


def _provider(pcfg, path, kms_plugins):
    _strict(pcfg, set(_PROVIDERS), path)
    kinds = [p for p in _PROVIDERS if pcfg.get(p) is not None]
    if not kinds:
        raise ConfigError(path + ": Invalid value: provider does not contain any of the expected "
                          "providers: KMS, AESGCM, AESCBC, Secretbox, Identity")
    if len(kinds) > 1:
        raise ConfigError(path + ": Invalid value: more than one provider specified in a single "
                          "element, should split into different list elements")
    kind = kinds[0]
    body = pcfg[kind]
    p = path + "." + kind
    if kind == "identity":
        _strict(body, _FIELDS["identity"], p)
        return b"", Identity()
    if kind == "kms":
        _strict(body, _FIELDS["kms"], p)
        name = body.get("name") or ""
        if not name:
            raise ConfigError(p + ".name: Required value: name is a mandatory field for a provider")
        ver = body.get("apiVersion") or "v1"
        if ver == "v2":
            return (KMS2_PREFIX + name.encode() + b":",
                    KMSv2(name, (kms_plugins or {}).get(name)))
        if ver == "v1":
            return (KMS1_PREFIX + name.encode() + b":",
                    KMSv1(name, (kms_plugins or {}).get(name)))
        raise ConfigError(p + '.apiVersion: Invalid value: "%s": unsupported apiVersion '
                          'apiVersion for KMS provider, only v1 and v2 are supported' % ver)
    _strict(body, _FIELDS["keys"], p)
    if kind == "secretbox":
        keys = _key_entries(body, p, (32,))
        inner = [(n, Secretbox(k)) for n, k in keys]
        return SECRETBOX_PREFIX, PrefixList(inner, "no matching key was found for the provided "
                                                   "Secretbox transformer")
    keys = _key_entries(body, p, (16, 24, 32))
    cls = AESCBC if kind == "aescbc" else AESGCM_
    inner = [(n, cls(k)) for n, k in keys]
    return (AESCBC_PREFIX if kind == "aescbc" else AESGCM_PREFIX,
            PrefixList(inner, "no matching key was found for the provided AES transformer"))


def _group_resource(s):
    res, _, group = s.partition(".")
    return group, res


def _gr_string(gr):
    g, r = gr
    if g == "" and r == "*":
        return "*."
    return r if g == "" else r + "." + g


class Config:
    def __init__(self, data, path, overrides):
        self.data = data
        self.path = path
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.overrides = overrides        # {(group, resource): PrefixList}

    def transformer(self, group, resource):
        for gr in ((group, resource), (group, "*"), ("*", "*")):
            if gr in self.overrides:
                return self.overrides[gr]
        return Identity()

    def write_key(self, group, resource):
        t = self.transformer(group, resource)
        return t.describe() if isinstance(t, PrefixList) else "identity"

    def read_keys(self, group, resource):
        """Every provider/key that reads this resource, in order, e.g. ['aescbc/key2',
        'aescbc/key1', 'identity'] (names only, no key material)."""
        t = self.transformer(group, resource)
        if not isinstance(t, PrefixList):
            return ["identity"]
        out = []
        for prefix, inner in t.entries:
            if isinstance(inner, Identity):
                out.append("identity")
            elif isinstance(inner, PrefixList):
                kind = prefix.decode().split(":")[2]
                out += [kind + "/" + n.decode()[:-1] for n, _ in inner.entries]
            else:
                out.append(prefix.decode()[:-1])
        return out


def parse_config(data, path="<bytes>", kms_plugins=None):
    """Load as kube-apiserver's LoadEncryptionConfig does; raises ConfigError."""
    try:
        if not data.strip():
            raise ConfigError('encryption provider configuration file "%s" is empty' % path)
        try:
            text = data.decode("utf-8")
            doc = json.loads(text) if text.lstrip().startswith("{") else parse_yaml(text)
        except (UnicodeDecodeError, ValueError) as e:
            raise ConfigError('error decoding encryption provider configuration file "%s": %s'
                              % (path, e)) from None
        if not isinstance(doc, dict):
            raise ConfigError('error decoding encryption provider configuration file "%s": '
                              'Object \'Kind\' is missing' % path)
        av, kind = doc.get("apiVersion"), doc.get("kind")
        if (av, kind) not in (("apiserver.config.k8s.io/v1", "EncryptionConfiguration"),
                              ("v1", "EncryptionConfig")):
            raise ConfigError('error decoding encryption provider configuration file "%s": '
                              'no kind "%s" is registered for version "%s"' % (path, kind, av))
        _strict(doc, _FIELDS["root"], "")
        items = _list(doc.get("resources"), "resources")
        if not items:
            raise ConfigError("resources: Required value: at least one resources is required")
        overrides = {}
        wild = []
        for i, item in enumerate(items):
            ip = "resources[%d]" % i
            _strict(item, _FIELDS["item"], ip)
            res = _list(item.get("resources"), ip + ".resources")
            provs = _list(item.get("providers"), ip + ".providers")
            if not res:
                raise ConfigError("%s.resources: Required value: at least one %s.resources is "
                                  "required" % (ip, ip))
            if not provs:
                raise ConfigError("%s.providers: Required value: at least one %s.providers is "
                                  "required" % (ip, ip))
            entries = [_provider(p, "%s.providers[%d]" % (ip, j), kms_plugins)
                       for j, p in enumerate(provs)]
            for r in res:
                if not isinstance(r, str) or r != r.lower() or r == "*":
                    raise ConfigError("%s.resources: Invalid value: %r: invalid resource name"
                                      % (ip, r))
                gr = _group_resource(r)
                for w in wild:
                    if w == ("*", "*") or (w[0] == gr[0] and w[1] == "*"):
                        raise ConfigError('resource "%s" is masked by earlier rule "%s"'
                                          % (_gr_string(gr), _gr_string(w)))
                if gr in overrides:
                    overrides[gr] = PrefixList(overrides[gr].entries + entries,
                                               "no matching prefix found")
                else:
                    overrides[gr] = PrefixList(list(entries), "no matching prefix found")
            wild += [_group_resource(r) for r in res if _group_resource(r)[1] == "*"]
        return Config(data, path, overrides)
    except ConfigError as e:
        raise ConfigError("error while parsing file: %s" % e) from None


def load_config(path, kms_plugins=None):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError('error while parsing file: error reading encryption provider '
                          'configuration file "%s": %s' % (path, e)) from None
    return parse_config(data, path, kms_plugins)
