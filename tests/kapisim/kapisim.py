#!/usr/bin/python3
"""kapisim: a kube-apiserver simulator for atrest's tests (see README.md in this directory).

It stores Secrets and ConfigMaps in a real etcd under kube-apiserver's key layout, through
kube-apiserver's transformers (transformers.py) and protobuf storage encoding (objects.py),
serves them over HTTPS with kube-apiserver's paths, and reloads its
--encryption-provider-config the way kube-apiserver 1.29+ does, with knobs to break it.
"""
import argparse
import base64
import csv
import datetime
import hashlib
import http.server
import ipaddress
import json
import os
import posixpath
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcd as etcdmod  # noqa: E402
import objects  # noqa: E402
import transformers  # noqa: E402

RESOURCES = {"secrets": "Secret", "configmaps": "ConfigMap"}
PUBLIC_PATHS = ("/healthz", "/livez", "/readyz", "/version")
MAX_BODY = 3 << 20
MAX_RETRIES = 32
METRICS_CTYPE = "text/plain; version=0.0.4; charset=utf-8"
PROBE_PLAINTEXT = b"kapisim write probe: public, not a secret"
READABLE_MAX = 10000


def log(msg):
    sys.stderr.write("%s kapisim: %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def apiserver_id(host):
    """kube-apiserver's APIServerID (apiserver/pkg/server/config.go)."""
    h = hashlib.sha256(len(host).to_bytes(2, "big") + host.encode() + (14).to_bytes(2, "big") +
                       b"kube-apiserver").digest()[:16]
    return "apiserver-" + base64.b32encode(h).decode().rstrip("=").lower()


def apiserver_id_hash(host):
    return "sha256:" + hashlib.sha256(apiserver_id(host).encode()).hexdigest()


class StatusError(Exception):
    def __init__(self, code, reason, message, name=None, kind=None, retry_after=None):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.name, self.kind, self.retry_after = name, kind, retry_after

    def body(self):
        doc = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code}
        if self.name is not None or self.kind is not None or self.retry_after is not None:
            doc["details"] = {k: v for k, v in (("name", self.name), ("kind", self.kind),
                                                ("retryAfterSeconds", self.retry_after))
                              if v is not None}
        return doc


# ---- the encryption-config controller ------------------------------------------------------------

class Encryption:
    """The loaded config (reads) and the write config, the reload controller and its metrics."""

    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()          # state below
        self.reload_lock = threading.Lock()   # one reload at a time
        self.stop = threading.Event()
        self.kick = threading.Event()
        self.cfg = None
        self.write_cfg = None
        self.success = 0
        self.failure = 0
        self.last_ts = {}
        self.last_error = ""
        self.knobs = {"refuseReload": args.sim_refuse_reload, "reloadDelay": args.sim_reload_delay,
                      "keepOldWriteKey": args.sim_keep_old_write_key,
                      "conflictUpdates": 0, "throttleUpdates": 0, "svmFail": 0}
        self.injected = {"conflicts": 0, "throttled": 0}
        if args.encryption_provider_config:
            self.cfg = transformers.load_config(args.encryption_provider_config)
            self.write_cfg = self.cfg

    def transformer(self, resource, write=False):
        with self.lock:
            cfg = self.write_cfg if write else self.cfg
        if cfg is None:
            return transformers.Identity()
        return cfg.transformer("", resource)

    def _record(self, ok, err=""):
        with self.lock:
            if ok:
                self.success += 1
            else:
                self.failure += 1
                self.last_error = err
            self.last_ts["success" if ok else "failure"] = time.time()

    def reload_once(self):
        """One controller pass: 'unchanged', 'success' or 'failure: <error>'."""
        path = self.args.encryption_provider_config
        with self.reload_lock:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                err = 'error reading encryption provider configuration file "%s": %s' % (path, e)
                log("error processing encryption config file %s: %s" % (path, err))
                self._record(False, err)
                return "failure: " + err
            with self.lock:
                current = self.cfg.sha256
                knobs = dict(self.knobs)
            if hashlib.sha256(data).hexdigest() == current:
                return "unchanged"
            if knobs["reloadDelay"] > 0:
                self.stop.wait(knobs["reloadDelay"])
            try:
                if knobs["refuseReload"]:
                    raise transformers.ConfigError("kapisim: reload refused (--sim-refuse-reload)")
                cfg = transformers.parse_config(data, path)
            except transformers.ConfigError as e:
                log("error processing encryption config file %s: %s" % (path, e))
                self._record(False, str(e))
                return "failure: %s" % e
            with self.lock:
                self.cfg = cfg
                if not knobs["keepOldWriteKey"]:
                    self.write_cfg = cfg
            self._record(True)
            log("loaded new encryption config sha256:%s (secrets write key %s)"
                % (cfg.sha256, self.write_key("secrets")))
            return "success"

    def write_key(self, resource):
        with self.lock:
            cfg = self.write_cfg
        return cfg.write_key("", resource) if cfg else "identity"

    def run(self):
        """The poll loop (1.29+): immediately, then every --sim-reload-interval seconds."""
        while not self.stop.is_set():
            self.reload_once()
            self.kick.wait(self.args.sim_reload_interval)
            self.kick.clear()

    def reload_enabled(self):
        return bool(self.args.encryption_provider_config and
                    self.args.encryption_provider_config_automatic_reload)

    # -- metrics --
    def metrics(self):
        ver = self.args.sim_metrics_version
        minor = 34 if ver.endswith("+") or ver == "1.34" else int(ver.split(".")[1])
        idh = apiserver_id_hash(self.args.sim_apiserver_host)
        p = "apiserver_encryption_config_controller_"
        out = []

        def fam(name, typ, help_, samples):
            if not samples:
                return
            out.append("# HELP %s%s [ALPHA] %s" % (p, name, help_))
            out.append("# TYPE %s%s %s" % (p, name, typ))
            for labels, v in samples:
                lab = ",".join('%s="%s"' % kv for kv in labels)
                out.append("%s%s%s %s" % (p, name, "{" + lab + "}" if lab else "", _num(v)))

        with self.lock:
            succ, fail, ts = self.success, self.failure, dict(self.last_ts)
            cfg = self.cfg
        reload_on = self.reload_enabled()
        idl = [] if minor == 28 else [("apiserver_id_hash", idh)]
        if minor <= 30 and reload_on:
            dep = "(Deprecated since 1.30.0) " if minor == 30 else ""
            if minor == 28:
                s_samples, f_samples = [((), succ)], [((), fail)]
            else:
                s_samples = [(tuple(idl), succ)] if succ else []
                f_samples = [(tuple(idl), fail)] if fail else []
            fam("automatic_reload_failures_total", "counter", dep + "Total number of failed "
                "automatic reloads of encryption configuration split by apiserver identity.",
                f_samples)
        if minor >= 30 and reload_on:
            fam("automatic_reload_last_timestamp_seconds", "gauge", "Timestamp of the last "
                "successful or failed automatic reload of encryption configuration split by "
                "apiserver identity.",
                [((("apiserver_id_hash", idh), ("status", s)), ts[s]) for s in sorted(ts)])
        elif reload_on:
            fam("automatic_reload_last_timestamp_seconds", "gauge", "Timestamp of the last "
                "successful or failed automatic reload of encryption configuration split by "
                "apiserver identity.",
                [(tuple(idl) + (("status", s),), ts[s]) for s in sorted(ts)])
        if minor <= 30 and reload_on:
            fam("automatic_reload_success_total", "counter", dep + "Total number of successful "
                "automatic reloads of encryption configuration split by apiserver identity.",
                s_samples)
        if minor >= 30 and reload_on:
            fam("automatic_reloads_total", "counter", "Total number of reload successes and "
                "failures of encryption configuration split by apiserver identity.",
                [((("apiserver_id_hash", idh), ("status", s)), n)
                 for s, n in (("failure", fail), ("success", succ)) if n])
        if minor >= 34 and cfg is not None:
            fam("last_config_info", "gauge", "Information about the last applied encryption "
                "configuration with hash as label, split by apiserver identity.",
                [((("apiserver_id_hash", idh), ("hash", "sha256:" + cfg.sha256)), 1)])
        return "\n".join(out) + "\n" if out else ""


def _num(v):
    if isinstance(v, float):
        return "%.9e" % v if v >= 1e9 else repr(v)
    return str(v)


# ---- storage ------------------------------------------------------------------------------------

class Store:
    def __init__(self, args, enc):
        self.etcd = etcdmod.Etcd(args.etcd_servers)
        self.root = posixpath.join("/", args.etcd_prefix.lstrip("/")).rstrip("/") + "/"
        self.enc = enc
        self.media = args.storage_media_type
        self.crash_after = args.sim_crash_after
        self.writes = 0
        self.lock = threading.Lock()

    def key(self, res, ns, name=""):
        return (self.root + res + "/" + (ns + "/" if ns else "") + name).encode()

    def wrote(self):
        with self.lock:
            self.writes += 1
            n = self.writes
        if self.crash_after and n >= self.crash_after:
            log("crashing after %d writes (--sim-crash-after)" % n)
            os.kill(os.getpid(), signal.SIGKILL)

    def _decode(self, res, key, value, in_list=False):
        try:
            pt, stale = self.enc.transformer(res).read(value, key)
            obj = objects.decode(pt)
        except (transformers.TransformError, objects.DecodeError) as e:
            msg = ('unable to transform key "%s": %s' % (key.decode(), e)) if in_list else str(e)
            raise StatusError(500, "InternalError", "Internal error occurred: " + msg) from None
        return obj, stale, pt

    def _encode_write(self, res, key, obj):
        try:
            return self.enc.transformer(res, write=True).write(objects.encode(obj, self.media), key)
        except transformers.TransformError as e:
            raise StatusError(500, "InternalError", "Internal error occurred: %s" % e) from None

    def get(self, res, ns, name):
        key = self.key(res, ns, name)
        kv = self.etcd.get(key)
        if kv is None:
            raise StatusError(404, "NotFound", '%s "%s" not found' % (res, name), name, res)
        obj, _stale, _pt = self._decode(res, key, kv.value)
        obj["metadata"]["resourceVersion"] = str(kv.mod_revision)
        return obj

    def list(self, res, ns, limit, cont):
        prefix = self.key(res, ns)
        start, rev = None, 0
        if cont:
            try:
                tok = json.loads(base64.b64decode(cont, validate=True))
                rev = int(tok["rv"])
                start = prefix + tok["start"].encode()
                if tok.get("v") != "meta.k8s.io/v1" or rev <= 0:
                    raise ValueError("bad token")
            except (ValueError, KeyError, TypeError):
                raise StatusError(400, "BadRequest", "continue key is not valid: incorrect "
                                  "encoded start resourceVersion (version meta.k8s.io/v1)") from None
        try:
            kvs, more, count, hrev = self.etcd.range_prefix(prefix, start, limit, rev)
        except etcdmod.EtcdError as e:
            if "compacted" in str(e):
                raise StatusError(410, "Expired", "The provided continue parameter is too old "
                                  "to display a consistent list result.") from None
            raise
        rev = rev or hrev
        items = []
        for kv in kvs:
            obj, _stale, _pt = self._decode(res, kv.key, kv.value, in_list=True)
            obj["metadata"]["resourceVersion"] = str(kv.mod_revision)
            o = objects.public(obj)
            o.pop("kind", None)
            o.pop("apiVersion", None)
            items.append(o)
        meta = {"resourceVersion": str(rev)}
        if more and kvs:
            tok = {"v": "meta.k8s.io/v1", "rv": rev,
                   "start": kvs[-1].key[len(prefix):].decode() + "\x00"}
            meta["continue"] = base64.b64encode(json.dumps(tok, separators=(",", ":"))
                                                .encode()).decode()
            meta["remainingItemCount"] = count - len(kvs)
        return {"kind": RESOURCES[res] + "List", "apiVersion": "v1", "metadata": meta,
                "items": items}

    def create(self, res, ns, body):
        obj = build_object(res, ns, body, None)
        key = self.key(res, ns, obj["metadata"]["name"])
        rev = self.etcd.create(key, self._encode_write(res, key, obj))
        if rev is None:
            name = obj["metadata"]["name"]
            raise StatusError(409, "AlreadyExists", '%s "%s" already exists' % (res, name),
                              name, res)
        self.wrote()
        obj["metadata"]["resourceVersion"] = str(rev)
        return obj

    def update(self, res, ns, name, body):
        key = self.key(res, ns, name)
        want_rv = (body.get("metadata") or {}).get("resourceVersion") or ""
        for _ in range(MAX_RETRIES):
            kv = self.etcd.get(key)
            if kv is None:
                raise StatusError(404, "NotFound", '%s "%s" not found' % (res, name), name, res)
            orig, stale, pt = self._decode(res, key, kv.value)
            if want_rv and want_rv != str(kv.mod_revision):
                raise conflict(res, name)
            obj = build_object(res, ns, body, orig)
            if obj["metadata"]["name"] != name:
                raise StatusError(400, "BadRequest", "the name of the object (%s) does not match "
                                  "the name on the URL (%s)" % (obj["metadata"]["name"], name))
            if not stale and objects.encode(obj, self.media) == pt:
                obj["metadata"]["resourceVersion"] = str(kv.mod_revision)
                return obj
            rev = self.etcd.update(key, self._encode_write(res, key, obj), kv.mod_revision)
            if rev is not None:
                self.wrote()
                obj["metadata"]["resourceVersion"] = str(rev)
                return obj
            if want_rv:
                raise conflict(res, name)
        raise conflict(res, name)

    def delete(self, res, ns, name):
        key = self.key(res, ns, name)
        for _ in range(MAX_RETRIES):
            kv = self.etcd.get(key)
            if kv is None:
                raise StatusError(404, "NotFound", '%s "%s" not found' % (res, name), name, res)
            obj, _stale, _pt = self._decode(res, key, kv.value)
            if self.etcd.delete(key, kv.mod_revision):
                self.wrote()
                return {"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Success", "details": {"name": name, "kind": res,
                                                         "uid": obj["metadata"].get("uid", "")}}
        raise conflict(res, name)


SVM_GROUP = "storagemigration.k8s.io"
SVM_VERSIONS = ("v1beta1", "v1alpha1")


class Migrations:
    """StorageVersionMigration objects and their controller (see Handler.svm)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.objs = {}
        self.gen = 0

    def _now(self):
        return objects.now_rfc3339()

    def create(self, sim, version, body):
        md = (body or {}).get("metadata") or {}
        name = md.get("name")
        spec = (body or {}).get("spec") or {}
        res = (spec.get("resource") or {})
        if not name or not isinstance(res, dict) or not res.get("resource"):
            raise StatusError(422, "Invalid", "StorageVersionMigration: metadata.name and "
                              "spec.resource.resource are required")
        with self.lock:
            if name in self.objs:
                raise StatusError(409, "AlreadyExists", 'storageversionmigrations.%s "%s" '
                                  'already exists' % (SVM_GROUP, name), name,
                                  "storageversionmigrations")
            self.gen += 1
            obj = {"kind": "StorageVersionMigration",
                   "metadata": {"name": name, "uid": str(uuid.uuid4()),
                                "resourceVersion": str(self.gen),
                                "creationTimestamp": self._now()},
                   "spec": {"resource": dict(res)}, "status": {"conditions": []}}
            self.objs[name] = obj
            with sim.enc.lock:
                fail = sim.enc.knobs["svmFail"] > 0
                if fail:
                    sim.enc.knobs["svmFail"] -= 1
        threading.Thread(target=self._run, args=(sim, name, obj["metadata"]["uid"], fail),
                         daemon=True).start()
        return dict(obj, apiVersion=SVM_GROUP + "/" + version)

    def get(self, name, version):
        with self.lock:
            obj = self.objs.get(name)
            if obj is None:
                raise StatusError(404, "NotFound", 'storageversionmigrations.%s "%s" not found'
                                  % (SVM_GROUP, name), name, "storageversionmigrations")
            return json.loads(json.dumps(dict(obj, apiVersion=SVM_GROUP + "/" + version)))

    def delete(self, name):
        with self.lock:
            if self.objs.pop(name, None) is None:
                raise StatusError(404, "NotFound", 'storageversionmigrations.%s "%s" not found'
                                  % (SVM_GROUP, name), name, "storageversionmigrations")
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "kind": "storageversionmigrations"}}

    def _set(self, name, uid, ctype, reason, message=""):
        with self.lock:
            obj = self.objs.get(name)
            if obj is None or obj["metadata"]["uid"] != uid:
                return False       # deleted meanwhile: the controller drops it
            conds = [c for c in obj["status"]["conditions"] if c["type"] != ctype]
            if ctype in ("Succeeded", "Failed"):
                conds = [dict(c, status="False") if c["type"] == "Running" else c for c in conds]
            conds.append({"type": ctype, "status": "True", "lastUpdateTime": self._now(),
                          "reason": reason, "message": message})
            obj["status"]["conditions"] = conds
            self.gen += 1
            obj["metadata"]["resourceVersion"] = str(self.gen)
            return True

    def _run(self, sim, name, uid, fail):
        with self.lock:
            obj = self.objs.get(name)
            res = dict(obj["spec"]["resource"]) if obj else {}
        if not self._set(name, uid, "Running", "StorageVersionMigrationInProgress"):
            return
        if fail:
            self._set(name, uid, "Failed", "StorageVersionMigrationFailed",
                      "kapisim: failed on purpose (knob svmFail)")
            return
        r = res.get("resource")
        if res.get("group") or r not in RESOURCES:
            self._set(name, uid, "Failed", "StorageVersionMigrationFailed",
                      "kapisim: no such resource %s" % r)
            return
        store, cont = sim.store, ""
        try:
            for _ in range(1000000):
                page = store.list(r, None, 500, cont)
                for item in page["items"]:
                    md = item["metadata"]
                    try:
                        store.update(r, md.get("namespace"), md["name"], item)
                    except StatusError as e:
                        if e.code not in (404, 409):
                            raise
                cont = page["metadata"].get("continue", "")
                if not cont:
                    break
        except (StatusError, etcdmod.EtcdError) as e:
            self._set(name, uid, "Failed", "StorageVersionMigrationFailed", str(e))
            return
        self._set(name, uid, "Succeeded", "StorageVersionMigrationSucceeded")


def conflict(res, name):
    return StatusError(409, "Conflict", 'Operation cannot be fulfilled on %s "%s": the object '
                       'has been modified; please apply your changes to the latest version and '
                       'try again' % (res, name), name, res)


def _invalid(res, name, field, detail):
    return StatusError(422, "Invalid", '%s "%s" is invalid: %s: %s'
                       % (RESOURCES[res], name, field, detail), name, res)


def _b64map(res, name, m, field):
    if m is None:
        return {}
    if not isinstance(m, dict):
        raise StatusError(400, "BadRequest", "%s must be an object" % field)
    for k, v in m.items():
        try:
            base64.b64decode(v, validate=True)
        except (ValueError, TypeError):
            raise StatusError(400, "BadRequest", "illegal base64 data in %s[%s]"
                              % (field, k)) from None
    return dict(m)


def build_object(res, ns, body, orig):
    """The object to store from a request body (and, for an update, the stored object)."""
    kind = RESOURCES[res]
    if not isinstance(body, dict):
        raise StatusError(400, "BadRequest", "the body must be a JSON object")
    if body.get("kind") not in (None, kind) or body.get("apiVersion") not in (None, "v1"):
        raise StatusError(400, "BadRequest", "the API version in the data (%s) does not match "
                          "the expected API version (v1)" % body.get("apiVersion"))
    md_in = body.get("metadata") or {}
    if md_in.get("namespace") not in (None, "", ns):
        raise StatusError(400, "BadRequest", "the namespace of the provided object does not "
                          "match the namespace sent on the request")
    name = md_in.get("name") or ""
    if not name and orig is None and md_in.get("generateName"):
        name = md_in["generateName"] + uuid.uuid4().hex[:5]
    if not name:
        raise StatusError(422, "Invalid", '%s "" is invalid: metadata.name: Required value: '
                          'name or generateName is required' % kind, "", res)
    md = {"name": name, "namespace": ns}
    if orig is None:
        md["uid"] = str(uuid.uuid4())
        md["creationTimestamp"] = objects.now_rfc3339()
        if md_in.get("generateName"):
            md["generateName"] = md_in["generateName"]
    else:
        om = orig["metadata"]
        for k in ("uid", "creationTimestamp", "generateName", objects.EXTRA):
            if k in om:
                md[k] = om[k]
    for k in ("labels", "annotations"):
        if md_in.get(k):
            md[k] = dict(md_in[k])
    obj = {"kind": kind, "apiVersion": "v1", "metadata": md}
    if kind == "Secret":
        data = _b64map(res, name, body.get("data"), "data")
        for k, v in (body.get("stringData") or {}).items():
            data[k] = base64.b64encode(v.encode()).decode()
        if data:
            obj["data"] = data
        obj["type"] = body.get("type") or (orig or {}).get("type") or "Opaque"
        if orig is not None and obj["type"] != orig.get("type", "Opaque"):
            raise _invalid(res, name, "type", 'Invalid value: "%s": field is immutable'
                           % obj["type"])
    else:
        if body.get("data"):
            obj["data"] = dict(body["data"])
        bd = _b64map(res, name, body.get("binaryData"), "binaryData")
        if bd:
            obj["binaryData"] = bd
    if body.get("immutable") is not None:
        obj["immutable"] = bool(body["immutable"])
    if orig is not None and orig.get("immutable"):
        same = all(obj.get(f) == orig.get(f) for f in ("data", "binaryData", "immutable"))
        if not same:
            raise _invalid(res, name, "data", "Forbidden: field is immutable when `immutable` "
                           "is set")
    return obj


# ---- HTTP ---------------------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kapisim"
    disable_nagle_algorithm = True   # headers and body are two writes: no 40 ms delayed-ACK stall

    def setup(self):
        self.request.settimeout(30)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def log_message(self, fmt, *a):
        if self.server.sim.args.sim_access_log:
            log("%s %s" % (self.address_string(), fmt % a))

    def send(self, code, body, ctype="application/json", headers=()):
        if isinstance(body, (dict, list)):
            body = (json.dumps(body) + "\n").encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def user(self):
        """The authenticated user, None for anonymous; raises StatusError 401."""
        sim = self.server.sim
        auth = self.headers.get("Authorization", "")
        if auth:
            if auth.startswith("Bearer ") and auth[7:].strip() in sim.tokens:
                return sim.tokens[auth[7:].strip()]
            raise StatusError(401, "Unauthorized", "Unauthorized")
        if isinstance(self.request, ssl.SSLSocket):
            cert = self.request.getpeercert()
            if cert:
                for rdn in cert.get("subject", ()):
                    for k, v in rdn:
                        if k == "commonName":
                            return v
        return None

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise StatusError(413, "RequestEntityTooLarge", "Request entity too large")
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw)
        except ValueError as e:
            raise StatusError(400, "BadRequest", "the body is not JSON: %s" % e) from None

    def handle_any(self):
        sim = self.server.sim
        u = urllib.parse.urlsplit(self.path)
        path = u.path.rstrip("/") or "/"
        q = urllib.parse.parse_qs(u.query)
        try:
            user = self.user()
            if path in PUBLIC_PATHS or path.startswith(("/healthz/", "/readyz/", "/livez/")):
                if path == "/version":
                    return self.send(200, {"major": "1", "minor": sim.minor, "gitVersion":
                                           "v1.%s.0-kapisim" % sim.minor, "platform": "linux"})
                return self.send(200, "ok", "text/plain; charset=utf-8")
            if user is None:
                raise StatusError(403, "Forbidden", 'forbidden: User "system:anonymous" cannot '
                                  '%s path "%s"' % (self.command.lower(), path))
            if path == "/metrics" and self.command == "GET":
                return self.send(200, sim.enc.metrics(), METRICS_CTYPE)
            if path.startswith("/sim/"):
                return self.admin(path)
            return self.api(path, q)
        except StatusError as e:
            return self.send(e.code, e.body(), headers=(() if e.retry_after is None else
                                                        (("Retry-After", str(e.retry_after)),)))
        except etcdmod.EtcdError as e:
            return self.send(500, StatusError(500, "InternalError", "Internal error occurred: %s"
                                              % e).body())
        except (OSError, ssl.SSLError):
            raise
        except Exception as e:   # a simulator bug: answer, and say so in the log
            log("%s %s: internal error: %r" % (self.command, path, e))
            return self.send(500, StatusError(500, "InternalError", "Internal error occurred: "
                                              "kapisim: %s" % type(e).__name__).body())

    def api(self, path, q):
        store = self.server.sim.store
        parts = path.split("/")[1:]
        if parts[:2] == ["apis", SVM_GROUP]:
            return self.svm(parts[2:])
        if parts[:2] != ["api", "v1"]:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        rest = parts[2:]
        ns = name = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest or rest[0] not in RESOURCES or len(rest) > 2 or (ns is None and len(rest) > 1):
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        res = rest[0]
        name = rest[1] if len(rest) == 2 else None
        m = self.command
        if name is None and m == "GET":
            try:
                limit = int((q.get("limit") or ["0"])[0] or 0)
            except ValueError:
                raise StatusError(400, "BadRequest", "limit: invalid value") from None
            return self.send(200, store.list(res, ns, max(limit, 0),
                                             (q.get("continue") or [""])[0]))
        if ns is None:
            raise StatusError(405, "MethodNotAllowed", "the server does not allow this method "
                              "on the requested resource")
        if name is None and m == "POST":
            return self.send(201, objects.public(store.create(res, ns, self.body())))
        if name is not None and m == "GET":
            return self.send(200, objects.public(store.get(res, ns, name)))
        if name is not None and m == "PUT":
            body = self.body()
            self.inject(store, res, ns, name, body)
            return self.send(200, objects.public(store.update(res, ns, name, body)))
        if name is not None and m == "DELETE":
            return self.send(200, store.delete(res, ns, name))
        raise StatusError(405, "MethodNotAllowed", "the server does not allow this method on "
                          "the requested resource")

    def inject(self, store, res, ns, name, body):
        """For updates that carry a resourceVersion (a re-encrypt pass's; not the writer's or
        the canary's): the knobs throttleUpdates (429, Retry-After: 1, as kube-apiserver's
        max-in-flight filter) and conflictUpdates (another writer rewrites the object first, the same content,
        as a stale no-op update does; then this conditional update gets 409 Conflict), each for the next N updates."""
        enc = self.server.sim.enc
        has_rv = bool(isinstance(body, dict) and (body.get("metadata") or {}).get("resourceVersion"))
        with enc.lock:
            what = None
            if enc.knobs["throttleUpdates"] > 0 and has_rv:
                enc.knobs["throttleUpdates"] -= 1
                enc.injected["throttled"] += 1
                what = "throttle"
            elif enc.knobs["conflictUpdates"] > 0 and has_rv:
                enc.knobs["conflictUpdates"] -= 1
                enc.injected["conflicts"] += 1
                what = "conflict"
        if what == "throttle":
            raise StatusError(429, "TooManyRequests", "Too many requests, please try again later.",
                              retry_after=1)
        if what == "conflict":
            other = json.loads(json.dumps(body))
            other["metadata"].pop("resourceVersion", None)
            store.update(res, ns, name, other)
            raise conflict(res, name)

    def svm(self, rest):
        """storagemigration.k8s.io (v1alpha1, v1beta1): StorageVersionMigration objects (kept in
        memory) and a minimal controller: one thread per migration, the no-op update of every
        object of spec.resource (a 409 or 404 meanwhile is fine: someone wrote or deleted it),
        conditions Running then Succeeded (or Failed: knob svmFail, an unknown resource)."""
        mig = self.server.sim.svm
        m = self.command
        if not rest:
            if m != "GET":
                raise StatusError(405, "MethodNotAllowed", "method not allowed")
            vs = [{"groupVersion": SVM_GROUP + "/" + v, "version": v} for v in SVM_VERSIONS]
            return self.send(200, {"kind": "APIGroup", "apiVersion": "v1", "name": SVM_GROUP,
                                   "versions": vs, "preferredVersion": vs[0]})
        if rest[0] not in SVM_VERSIONS or len(rest) < 2 or rest[1] != "storageversionmigrations" \
                or len(rest) > 3:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        version, name = rest[0], rest[2] if len(rest) == 3 else None
        if name is None and m == "GET":
            with mig.lock:
                items = [dict(o, apiVersion=SVM_GROUP + "/" + version) for o in mig.objs.values()]
            return self.send(200, {"kind": "StorageVersionMigrationList",
                                   "apiVersion": SVM_GROUP + "/" + version, "metadata": {},
                                   "items": items})
        if name is None and m == "POST":
            return self.send(201, mig.create(self.server.sim, version, self.body()))
        if name is not None and m == "GET":
            return self.send(200, mig.get(name, version))
        if name is not None and m == "DELETE":
            return self.send(200, mig.delete(name))
        raise StatusError(405, "MethodNotAllowed", "method not allowed")

    def admin(self, path):
        sim = self.server.sim
        enc = sim.enc
        if path == "/sim/status" and self.command == "GET":
            with enc.lock:
                doc = {"configSha256": enc.cfg.sha256 if enc.cfg else None,
                       "writeConfigSha256": enc.write_cfg.sha256 if enc.write_cfg else None,
                       "reloads": {"success": enc.success, "failure": enc.failure},
                       "lastError": enc.last_error, "knobs": dict(enc.knobs),
                       "injected": dict(enc.injected),
                       "writes": sim.store.writes}
            doc["writeKey"] = {r: enc.write_key(r) for r in RESOURCES}
            with enc.lock:
                cfg = enc.cfg
            doc["readKeys"] = {r: cfg.read_keys("", r) if cfg else ["identity"]
                               for r in RESOURCES}
            return self.send(200, doc)
        if path == "/sim/knobs" and self.command in ("GET", "POST"):
            if self.command == "POST":
                upd = self.body()
                if not isinstance(upd, dict) or set(upd) - set(enc.knobs):
                    raise StatusError(400, "BadRequest", "knobs: %s" % sorted(enc.knobs))
                with enc.lock:
                    for k, v in upd.items():
                        enc.knobs[k] = (float(v) if k == "reloadDelay" else
                                        int(v) if k in ("conflictUpdates", "throttleUpdates", "svmFail")
                                        else bool(v))
            with enc.lock:
                return self.send(200, dict(enc.knobs))
        if path == "/sim/reload" and self.command == "POST":
            if not enc.reload_enabled():
                raise StatusError(409, "Conflict", "automatic reload is off (restart-only)")
            return self.send(200, {"result": enc.reload_once()})
        if path == "/sim/probe" and self.command == "POST":
            return self.send(200, self.probe(self.body()))
        if path == "/sim/readable" and self.command == "POST":
            return self.send(200, self.readable(self.body()))
        if path == "/sim/crash" and self.command == "POST":
            log("crashing (POST /sim/crash)")
            os.kill(os.getpid(), signal.SIGKILL)
        raise StatusError(404, "NotFound", "no such sim endpoint")

    def probe(self, body):
        """POST /sim/probe {"resource": R}: the fixed public plaintext PROBE_PLAINTEXT
        encrypted by the current WRITE transformer of R for the etcd key
        <prefix>/R/kapisim-probe/probe, as a write of R would store it now. Nothing is stored.
        A test sends it to the other simulators' /sim/readable (the forward-looking S1 check:
        could the peers read what this server would write?)."""
        enc, store = self.server.sim.enc, self.server.sim.store
        res = body.get("resource", "secrets") if isinstance(body, dict) else None
        if res not in RESOURCES:
            raise StatusError(400, "BadRequest", "probe: resource must be one of %s"
                              % sorted(RESOURCES))
        key = store.key(res, "kapisim-probe", "probe")
        with enc.lock:
            cfg = enc.write_cfg
            sha = enc.cfg.sha256 if enc.cfg else None
        t = cfg.transformer("", res) if cfg else transformers.Identity()
        try:
            value = t.write(PROBE_PLAINTEXT, key)
        except transformers.TransformError as e:
            raise StatusError(500, "InternalError", "Internal error occurred: %s" % e) from None
        return {"resource": res, "key": base64.b64encode(key).decode(),
                "value": base64.b64encode(value).decode(),
                "writeKey": cfg.write_key("", res) if cfg else "identity",
                "configSha256": sha}

    def readable(self, body):
        """POST /sim/readable {"items": [{"key": b64, "value": b64}, ...]} (at most
        READABLE_MAX): whether the currently LOADED read config decrypts each stored value
        (the transformer of the resource named by the key). Answers {"configSha256": ...,
        "readKeys": {resource: [names]}, "results": [{"ok": true, "stale": bool} | {"ok": false, "error": text}]} in order.
        No plaintext is returned."""
        enc, store = self.server.sim.enc, self.server.sim.store
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list) or len(items) > READABLE_MAX:
            raise StatusError(400, "BadRequest", "readable: items must be a list of at most %d"
                              % READABLE_MAX)
        with enc.lock:
            cfg = enc.cfg
        root = store.root.encode()
        out = []
        for it in items:
            try:
                key = base64.b64decode(it["key"], validate=True)
                value = base64.b64decode(it["value"], validate=True)
            except (KeyError, TypeError, ValueError):
                raise StatusError(400, "BadRequest", "readable: each item needs base64 key "
                                  "and value") from None
            res = key[len(root):].split(b"/")[0].decode("utf-8", "replace") \
                if key.startswith(root) else ""
            if res not in RESOURCES:
                out.append({"ok": False, "error": "kapisim: key outside %s{%s}/"
                            % (store.root, ",".join(sorted(RESOURCES)))})
                continue
            t = cfg.transformer("", res) if cfg else transformers.Identity()
            try:
                _pt, stale = t.read(value, key)
                out.append({"ok": True, "stale": bool(stale)})
            except transformers.TransformError as e:
                out.append({"ok": False, "error": str(e)})
        return {"configSha256": cfg.sha256 if cfg else None, "results": out,
                "readKeys": {r: cfg.read_keys("", r) if cfg else ["identity"]
                             for r in RESOURCES}}

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        log("connection from %s: %s" % (client_address[0], sys.exc_info()[1]))


# ---- TLS ----------------------------------------------------------------------------------------

def _write(path, data, mode):
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def ensure_certs(d):
    """ca.crt/ca.key, apiserver.crt/.key (127.0.0.1, localhost) and client.crt/.key
    (CN kapisim-admin, O system:masters) in d; existing files are kept (restarts)."""
    names = ("ca.crt", "ca.key", "apiserver.crt", "apiserver.key", "client.crt", "client.key")
    if all(os.path.exists(os.path.join(d, n)) for n in names):
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.utcnow() - datetime.timedelta(hours=1)
    later = now + datetime.timedelta(days=365)

    def name(cn, org=None):
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def pem_key(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("kapisim-ca")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(later)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn, org, eku, san):
        k = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn, org)).issuer_name(ca_name)
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(later)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([eku]), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(ca_key, hashes.SHA256()), k

    srv, srv_key = leaf("kube-apiserver", None, ExtendedKeyUsageOID.SERVER_AUTH,
                        [x509.DNSName("localhost"),
                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cli, cli_key = leaf("kapisim-admin", "system:masters", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    os.makedirs(d, mode=0o700, exist_ok=True)
    pem = serialization.Encoding.PEM
    _write(os.path.join(d, "ca.key"), pem_key(ca_key), 0o600)
    _write(os.path.join(d, "apiserver.key"), pem_key(srv_key), 0o600)
    _write(os.path.join(d, "client.key"), pem_key(cli_key), 0o600)
    _write(os.path.join(d, "apiserver.crt"), srv.public_bytes(pem), 0o644)
    _write(os.path.join(d, "client.crt"), cli.public_bytes(pem), 0o644)
    _write(os.path.join(d, "ca.crt"), ca.public_bytes(pem), 0o644)


def load_tokens(path):
    """kube-apiserver's --token-auth-file: CSV token,user,uid[,"group1,group2"]."""
    out = {}
    if not path:
        return out
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 3:
                raise ValueError("token file %s: a line needs token,user,uid" % path)
            out[row[0].strip()] = row[1].strip()
    return out


# ---- main ---------------------------------------------------------------------------------------

def _bool(s):
    if s.lower() in ("true", "1", "yes"):
        return True
    if s.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError("expected true or false")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="kapisim", description="A kube-apiserver simulator for "
                                "atrest's tests: Secrets and ConfigMaps in etcd through "
                                "kube-apiserver's encryption-at-rest transformers.")
    p.add_argument("--etcd-servers", required=True, help="comma-separated http:// endpoints")
    p.add_argument("--etcd-prefix", default="/registry")
    p.add_argument("--encryption-provider-config", default="")
    p.add_argument("--encryption-provider-config-automatic-reload", type=_bool, nargs="?",
                   const=True, default=False, help="true: poll the file (1.29+ controller)")
    p.add_argument("--storage-media-type", default="application/vnd.kubernetes.protobuf",
                   choices=("application/vnd.kubernetes.protobuf", "application/json"))
    p.add_argument("--bind-address", default="127.0.0.1", help="loopback only")
    p.add_argument("--secure-port", type=int, default=6443, help="0 picks a free port")
    p.add_argument("--cert-dir", default="", help="CA, serving and client certs (created "
                   "when missing; default: a new temp dir)")
    p.add_argument("--token-auth-file", default="")
    p.add_argument("--client-ca-file", default="", help="default: <cert-dir>/ca.crt")
    p.add_argument("--sim-reload-interval", type=float, default=60.0,
                   help="seconds between polls of the config file (kube-apiserver: 60)")
    p.add_argument("--sim-metrics-version", default="1.34",
                   choices=("1.28", "1.29", "1.30", "1.31", "1.32", "1.33", "1.34", "1.34+"))
    p.add_argument("--sim-insecure-http", action="store_true", help="plain HTTP, no auth")
    p.add_argument("--sim-refuse-reload", action="store_true",
                   help="every reload of a changed file fails")
    p.add_argument("--sim-reload-delay", type=float, default=0.0,
                   help="seconds between seeing a changed file and loading it")
    p.add_argument("--sim-keep-old-write-key", action="store_true",
                   help="reloads take new read keys but keep writing with the old write config")
    p.add_argument("--sim-crash-after", type=int, default=0,
                   help="SIGKILL itself right after the Nth etcd write (0: never)")
    p.add_argument("--sim-apiserver-host", default=socket.gethostname(),
                   help="host name behind apiserver_id_hash")
    p.add_argument("--sim-access-log", action="store_true")
    a = p.parse_args(argv)
    if a.encryption_provider_config_automatic_reload and not a.encryption_provider_config:
        p.error("--encryption-provider-config-automatic-reload must be set with "
                "--encryption-provider-config")
    if not ipaddress.ip_address(a.bind_address).is_loopback:
        p.error("--bind-address must be a loopback address")
    return a


class Sim:
    pass


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sim = Sim()
    sim.args = args
    sim.minor = "34" if args.sim_metrics_version.startswith("1.34") else \
        args.sim_metrics_version.split(".")[1]
    try:
        sim.enc = Encryption(args)
        sim.tokens = load_tokens(args.token_auth_file)
        sim.store = Store(args, sim.enc)
        sim.svm = Migrations()
    except (transformers.ConfigError, ValueError, OSError) as e:
        log("error: %s" % e)
        return 1
    server = Server((args.bind_address, args.secure_port), Handler)
    server.sim = sim
    scheme = "http"
    if not args.sim_insecure_http:
        cert_dir = args.cert_dir or tempfile.mkdtemp(prefix="kapisim-certs-")
        ensure_certs(cert_dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(cert_dir, "apiserver.crt"),
                            os.path.join(cert_dir, "apiserver.key"))
        ctx.load_verify_locations(args.client_ca_file or os.path.join(cert_dir, "ca.crt"))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        server.socket = ctx.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
        scheme = "https"
        log("certificates in %s" % cert_dir)
    else:
        sim.tokens = {}
    if args.sim_insecure_http:
        Handler.user = lambda self: "insecure"
    ctl = None
    if sim.enc.reload_enabled():
        ctl = threading.Thread(target=sim.enc.run, name="reload", daemon=True)
        ctl.start()

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    log("secrets write key %s, reload %s" % (sim.enc.write_key("secrets"),
        "poll every %gs" % args.sim_reload_interval if ctl else "restart-only"))
    print("kapisim ready %s://%s:%d" % (scheme, host, port), flush=True)
    server.serve_forever(poll_interval=0.2)
    sim.enc.stop.set()
    sim.enc.kick.set()
    server.server_close()
    if ctl:
        ctl.join(5)
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
