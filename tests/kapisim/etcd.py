"""A tiny client of etcd's v3 JSON gateway (etcd 3.4: POST /v3/kv/*, base64 keys and values,
int64 as JSON strings, zero fields omitted).

What it promises:
- Etcd(endpoints) tries the endpoints in order on connection errors (plain http only).
- get(key) -> KV or None; range_prefix(prefix, start=None, limit=0, revision=0) ->
  (kvs, more, count, header revision); put(key, value) -> revision;
  create(key, value) -> revision or None when the key exists;
  update(key, value, mod_revision) -> revision or None when the key's mod_revision differs;
  delete(key, mod_revision=None) -> True/False (False: missing or changed).
- Errors: EtcdError (HTTP status and the gateway's message). Every call has a timeout.
"""
import base64
import http.client
import json
import urllib.parse


class EtcdError(Exception):
    def __init__(self, msg, status=None):
        super().__init__(msg)
        self.status = status


class KV:
    __slots__ = ("key", "value", "mod_revision", "create_revision", "version")

    def __init__(self, d):
        self.key = base64.b64decode(d["key"])
        self.value = base64.b64decode(d.get("value", ""))
        self.mod_revision = int(d.get("mod_revision", 0))
        self.create_revision = int(d.get("create_revision", 0))
        self.version = int(d.get("version", 0))


def _b(x):
    return base64.b64encode(x).decode()


def prefix_end(prefix):
    """The range_end that selects every key starting with prefix."""
    p = bytearray(prefix)
    for i in range(len(p) - 1, -1, -1):
        if p[i] < 0xFF:
            p[i] += 1
            return bytes(p[:i + 1])
    return b"\0"


class Etcd:
    def __init__(self, endpoints, timeout=5.0):
        self.endpoints = []
        for e in endpoints.split(",") if isinstance(endpoints, str) else endpoints:
            u = urllib.parse.urlsplit(e.strip())
            if u.scheme != "http":
                raise ValueError("kapisim's etcd client speaks plain http only: %r" % e)
            self.endpoints.append((u.hostname, u.port or 2379))
        if not self.endpoints:
            raise ValueError("no etcd endpoint")
        self.timeout = timeout

    def call(self, path, body):
        data = json.dumps(body)
        last = None
        for host, port in self.endpoints:
            c = http.client.HTTPConnection(host, port, timeout=self.timeout)
            try:
                c.request("POST", path, data, {"Content-Type": "application/json"})
                r = c.getresponse()
                raw = r.read()
            except (OSError, http.client.HTTPException) as e:
                last = e
                continue
            finally:
                c.close()
            try:
                doc = json.loads(raw)
            except ValueError:
                raise EtcdError("etcd %s: HTTP %d: %r" % (path, r.status, raw[:200]),
                                r.status) from None
            if r.status != 200:
                raise EtcdError("etcd %s: %s" % (path, doc.get("message", raw[:200])), r.status)
            return doc
        raise EtcdError("etcd unreachable: %s" % last)

    def get(self, key):
        doc = self.call("/v3/kv/range", {"key": _b(key)})
        kvs = doc.get("kvs", [])
        return KV(kvs[0]) if kvs else None

    def range_prefix(self, prefix, start=None, limit=0, revision=0):
        body = {"key": _b(start or prefix), "range_end": _b(prefix_end(prefix))}
        if limit:
            body["limit"] = str(limit)
        if revision:
            body["revision"] = str(revision)
        doc = self.call("/v3/kv/range", body)
        return ([KV(d) for d in doc.get("kvs", [])], bool(doc.get("more")),
                int(doc.get("count", 0)), int(doc["header"].get("revision", 0)))

    def put(self, key, value):
        doc = self.call("/v3/kv/put", {"key": _b(key), "value": _b(value)})
        return int(doc["header"]["revision"])

    def _txn(self, key, compare, success):
        doc = self.call("/v3/kv/txn", {"compare": [dict(compare, key=_b(key))],
                                       "success": [success]})
        if not doc.get("succeeded"):
            return None
        return int(doc["header"]["revision"])

    def create(self, key, value):
        return self._txn(key, {"target": "CREATE", "result": "EQUAL", "create_revision": "0"},
                         {"request_put": {"key": _b(key), "value": _b(value)}})

    def update(self, key, value, mod_revision):
        return self._txn(key, {"target": "MOD", "result": "EQUAL",
                               "mod_revision": str(mod_revision)},
                         {"request_put": {"key": _b(key), "value": _b(value)}})

    def delete(self, key, mod_revision=None):
        if mod_revision is None:
            doc = self.call("/v3/kv/deleterange", {"key": _b(key)})
            return int(doc.get("deleted", 0)) > 0
        return self._txn(key, {"target": "MOD", "result": "EQUAL",
                               "mod_revision": str(mod_revision)},
                         {"request_delete_range": {"key": _b(key)}}) is not None
