"""Hostile peers (issue 10): small hostile servers written here (Python, loopback, free ports)
in place of etcd and of the local kube-apiserver, and rotation records and acks written by
hand into a real etcd with nonsense in them.

For each: the agent keeps running (/status answers), reports an error naming the peer and
what was wrong, its memory stays under a stated bound after the huge bodies, and it never
advances a phase nor writes the effective file on bad data (the effective file's bytes and
the record in etcd are checked unchanged).
"""
import base64
import http.client
import json
import re
import socket
import threading
import time

import pytest

from conftest import enc_config, free_port, wait_for

# Memory after the hostile bodies (VmRSS/VmHWM from /proc/<pid>/status). The etcd client caps
# a response at 64 MiB (AR_ETCD_MAX_BODY) and the API client at 8 MiB (AR_API_MAX_BODY), so
# one capped body may be resident at a time; the bound is that plus the agent's own ~40 MiB
# (release build) and room. ASan's quarantine keeps freed memory: only its peak is bounded.
RSS_BOUND_KIB = {"rel": 160 << 10, "asan": 1536 << 10}
HUGE = 96 << 20                  # the "huge" body: beyond the 64 MiB cap


def vm_kib(pid):
    text = open("/proc/%d/status" % pid).read()
    return {k: int(re.search(r"^%s:\s+(\d+) kB$" % k, text, re.M).group(1))
            for k in ("VmRSS", "VmHWM")}


class Hostile:
    """A loopback HTTP/1.1 server answering every request as `mode` says (changed at run time):
      garbage    200, application/json, bytes that are not JSON
      wrongjson  200, application/json, JSON of the wrong shape (an array of nonsense)
      huge       200, chunked, HUGE bytes of a JSON string streamed in 1 MiB pieces
      endless    200, chunked, a body that never ends (one byte every 50 ms)
      silent     accepts and reads, never answers
      truncated  200, Content-Length 4096, 100 bytes, then closes
      html       200, text/html, an HTML page
      redirect   307 (or 301) to another loopback host:port (`target`)
      text       200, text/plain body (metrics-looking nonsense / a non-JSON Secret)
    Every loop is bounded (by the client going away, `stop`, or a count)."""

    def __init__(self, mode="garbage", target=None):
        self.mode = mode
        self.target = target
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.requests = []        # (mode, method, path) as seen
        self.stopping = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.threads = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _read_request(self, f):
        line = f.readline(65536)
        if not line:
            return None
        method, path = (line.decode("latin-1").split(" ") + ["", ""])[:2]
        length, chunked = 0, False
        for _ in range(200):
            h = f.readline(65536)
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
            if k.strip().lower() == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
        if chunked:
            for _ in range(10000):
                n = int(f.readline(100).split(b";")[0], 16)
                f.read(n + 2)
                if n == 0:
                    break
        elif length:
            f.read(length)
        return method, path

    def _serve(self, conn):
        conn.settimeout(30)
        f = conn.makefile("rb")
        try:
            for _ in range(1000):                 # keep-alive: bounded
                req = self._read_request(f)
                if req is None or self.stopping.is_set():
                    return
                mode = self.mode
                self.requests.append((mode, req[0], req[1]))
                if not self._answer(conn, mode):
                    return
        except (OSError, ValueError):
            pass
        finally:
            try:
                f.close()
                conn.close()
            except OSError:
                pass

    def _send(self, conn, status, ctype, body, extra=""):
        conn.sendall(("HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
                      % (status, ctype, len(body), extra)).encode() + body)

    def _answer(self, conn, mode):
        """Answer one request; False: the connection is done."""
        if mode == "garbage":
            self._send(conn, "200 OK", "application/json", b"\x00{\"header\": \xff\xfe nonsense")
        elif mode == "wrongjson":
            self._send(conn, "200 OK", "application/json",
                       b'{"header":"x","kvs":[1,"two",{"key":7,"value":[]}],"count":"many",'
                       b'"ID":{"a":1},"TTL":-5,"members":null}')
        elif mode == "html":
            self._send(conn, "200 OK", "text/html",
                       b"<html><body><h1>Welcome to nginx!</h1></body></html>")
        elif mode == "text":
            self._send(conn, "200 OK", "text/plain",
                       b"this is not json\napiserver_encryption_config_controller_automatic_"
                       b"reload_success_total{ garbage\n\x00\xff")
        elif mode == "truncated":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 4096\r\n\r\n" + b'{"header":{"cluster_id":"1"' +
                         b" " * 73)
            return False
        elif mode in ("redirect", "redirect301"):
            status = "301 Moved Permanently" if mode == "redirect301" else \
                "307 Temporary Redirect"
            self._send(conn, status, "text/plain", b"moved",
                       "Location: %s/elsewhere\r\n" % self.target)
        elif mode == "silent":
            self.stopping.wait(120)               # never answers (bounded: 2 min or stop)
            return False
        elif mode in ("huge", "endless"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            piece = b'{"header":{},"kvs":[{"key":"' if mode == "huge" else b"["
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            if mode == "huge":
                chunk = b"A" * (1 << 20)
                frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                for _ in range(HUGE >> 20):       # bounded; stops when the client hangs up
                    if self.stopping.is_set():
                        break
                    conn.sendall(frame)
                conn.sendall(b'3\r\n"}]\r\n0\r\n\r\n')
            else:
                for _ in range(2400):             # 2 min at most
                    if self.stopping.wait(0.05):
                        break
                    conn.sendall(b"2\r\n0,\r\n")
            return False
        else:
            raise AssertionError("unknown mode " + mode)
        return True

    def close(self):
        self.stopping.set()
        self.sock.close()
        self.acceptor.join(5)
        for t in self.threads:
            t.join(5)


@pytest.fixture
def hostile():
    made = []

    def make(*a, **kw):
        h = Hostile(*a, **kw)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()


def cfg(keys):
    return enc_config([(["secrets"], [("aescbc", [("k1", keys.new(32))]), ("identity",)])])


def etcd_st(a):
    return a.status().get("etcd", {})


# ---- (a) an "etcd" that answers nonsense ------------------------------------------------------

# mode -> what the agent's etcd error must say (beside the endpoint's URL)
ETCD_CASES = [
    ("garbage", "malformed response"),
    ("wrongjson", "malformed response"),
    ("html", "malformed response"),
    ("truncated", "transfer closed with 3996 bytes remaining"),
    ("silent", "timed out"),
    ("huge", "response larger than 67108864 bytes"),
    ("endless", "timed out"),
]


def test_hostile_etcd(make_agent, keys, agent_bin, hostile):
    which = "asan" if "asan" in agent_bin else "rel"
    h = hostile("garbage")
    a = make_agent(binary=agent_bin, extra=["--etcd-servers", h.url])
    a.desired.write_text(cfg(keys))
    a.start()
    wait_for(lambda: a.status()["effective"]["fingerprint"], 10, "first effective config")
    eff = a.effective.read_bytes()
    seen = {}
    prev = None
    for mode, want in ETCD_CASES:
        h.mode = mode
        n0 = len(h.requests)

        def reported():
            st = etcd_st(a)
            if len([r for r in h.requests[n0:] if r[0] == mode]) < 2:
                return None                       # an error from this mode's answers
            return st if st.get("state") != "connected" and st.get("error") not in (
                None, "", prev) else None
        st = wait_for(reported, 40, "the agent's etcd error for mode %s" % mode, interval=0.1)
        seen[mode] = prev = st["error"]
        assert h.url.replace("http://", "") in st["error"] or h.url in st["error"], st
        assert want in st["error"], (mode, st)
        assert a.alive(), a.log()[-3000:]
        assert a.get("/healthz")[0] == 200
        assert a.effective.read_bytes() == eff, "effective file changed on %s" % mode
        if mode == "huge":
            m = vm_kib(a.proc.pid)
            print("HOSTILE-ETCD huge VmRSS=%d KiB VmHWM=%d KiB" % (m["VmRSS"], m["VmHWM"]))
    m = vm_kib(a.proc.pid)
    print("HOSTILE-ETCD final VmRSS=%d KiB VmHWM=%d KiB" % (m["VmRSS"], m["VmHWM"]))
    for mode, e in seen.items():
        print("HOSTILE-ETCD %-9s %s" % (mode, e))
    assert m["VmHWM"] < RSS_BOUND_KIB[which], m
    assert a.stop() == 0


# ---- (c) a rotation record and acks written by hand with nonsense -------------------------------

PREFIX = "/atrest/"
RID = "20261130T090347Z-0123abcd-4567cdef"
H1, H2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def record(**over):
    r = {"id": RID, "from": H1, "to": H2, "phases": [{"name": "stage", "hash": H2}],
         "index": 0, "state": "running", "members": ["node-a"], "started_ms": 1,
         "phase_since_ms": 1}
    r.update(over)
    return json.dumps(r).encode()


# name -> the value of <prefix>rotation (all refused by coord/record.c)
BAD_RECORDS = [
    ("bad-json", b'{"id": "' + RID.encode() + b'", "from": '),
    ("not-object", b'["rotation", 1, 2]'),
    ("nul-bytes", record()[:20] + b"\x00" + record()[20:]),
    ("invalid-utf8", record(members=["node-\xff"]).replace(b"\\u00ff", b"\xff")),
    ("id-wrong-type", record(id=12345)),
    ("index-string", record(index="0")),
    ("index-out-of-range", record(index=5)),
    ("index-negative", record(index=-1)),
    ("unknown-phase", record(phases=[{"name": "explode", "hash": H2}])),
    ("phase-twice", record(phases=[{"name": "stage", "hash": H2}] * 2)),
    ("too-many-phases", record(phases=[{"name": "stage", "hash": H2}] * 6)),
    ("no-phases", record(phases=[])),
    ("hash-not-hex", record(to="sha256:" + "z" * 64)),
    ("hash-short", record(phases=[{"name": "stage", "hash": "sha256:12"}])),
    ("id-path-chars", record(id="../../etc/passwd")),
    ("id-slash", record(id="20261130T090347Z-0123abcd/4567cdef")),
    ("member-slash", record(members=["node-a/../x"])),
    ("member-empty", record(members=[""])),
    ("members-dup", record(members=["node-a", "node-a"])),
    ("state-unknown", record(state="exploding")),
    ("time-negative", record(started_ms=-7)),
    ("time-float", record(phase_since_ms=1.5)),
    ("duplicate-key", record()[:-1] + b', "index": 0}'),
    ("huge-field", record(abort_refused="x" * (1 << 20))),
    ("huge-member", record(members=["n" * 100000])),
    ("deep-nesting", b'{"id":' + b"[" * 5000 + b"]" * 5000 + b"}"),
]


class KV:
    """The etcd JSON gateway, for what a test writes by hand."""

    def __init__(self, etcd):
        self.port = etcd.client_port

    def call(self, path, doc):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request("POST", path, json.dumps(doc), {"Content-Type": "application/json"})
            r = c.getresponse()
            body = r.read()
            assert r.status == 200, (r.status, body[:300])
            return json.loads(body)
        finally:
            c.close()

    def put(self, key, value):
        self.call("/v3/kv/put", {"key": base64.b64encode(key.encode()).decode(),
                                 "value": base64.b64encode(value).decode()})

    def get(self, key):
        d = self.call("/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()})
        kvs = d.get("kvs", [])
        return (base64.b64decode(kvs[0].get("value", "")), int(kvs[0]["mod_revision"])) \
            if kvs else (None, 0)

    def delete(self, key):
        self.call("/v3/kv/deleterange", {"key": base64.b64encode(key.encode()).decode()})


def rot(a):
    return a.status()["rotation"]


def test_hostile_rotation_records(make_agent, make_etcd, keys, agent_bin):
    e = make_etcd().start()
    kv = KV(e)
    a = make_agent(binary=agent_bin, extra=["--etcd-servers", e.endpoint])
    a.desired.write_text(cfg(keys))
    a.start()
    wait_for(lambda: a.status()["etcd"]["state"] == "connected", 15, "etcd connected")
    eff = a.effective.read_bytes()
    refused = "the rotation record in etcd is refused"

    def why():
        return rot(a).get("waiting_for") or ""
    for name, value in BAD_RECORDS:
        # between cases no record: the agent must leave the refusal first (else a stale
        # refusal would pass for this case's)
        kv.delete(PREFIX + "rotation")
        wait_for(lambda: refused not in why(), 20, "the refusal to go (%s)" % name,
                 interval=0.05)
        kv.put(PREFIX + "rotation", value)
        _, rev = kv.get(PREFIX + "rotation")
        r = wait_for(lambda: (lambda r: r if refused in (r.get("waiting_for") or "") else None)(
            rot(a)), 20, "the agent to refuse record %s" % name, interval=0.05)
        print("HOSTILE-RECORD %-18s phase=%s waiting_for=%r" % (
            name, r.get("phase"), r.get("waiting_for")))
        assert r["phase"] == "idle" and not r.get("history"), (name, r)
        assert a.alive() and a.get("/healthz")[0] == 200, name
        assert kv.get(PREFIX + "rotation") == (value, rev), "record rewritten on " + name
        assert a.effective.read_bytes() == eff, "effective file written on " + name
    assert a.stop() == 0


def ack(**over):
    d = {"node": "node-a", "phase": "stage", "hash": H2, "proof": "canary", "ok": True,
         "time_ms": 5}
    d.update(over)
    return json.dumps(d).encode()


ACKS = "%sacks/%s/" % (PREFIX, RID)
# name -> (key, value): acks of the valid record (phase 0 = stage, hash H2) that must not count
BAD_ACKS = [
    ("hash-mismatch", ACKS + "0/node-a", ack(hash=H1)),
    ("not-ok", ACKS + "0/node-a", ack(ok=False)),
    ("ok-string", ACKS + "0/node-a", ack(ok="yes")),
    ("bad-json", ACKS + "0/node-a", b'{"node":"node-a","phase":'),
    ("unknown-phase", ACKS + "0/node-a", ack(phase="explode")),
    ("phase-mismatch", ACKS + "0/node-a", ack(phase="prune")),
    ("no-such-index", ACKS + "3/node-a", ack(phase="verify")),
    ("index-huge", ACKS + "99999999999999999999/node-a", ack()),
    ("index-text", ACKS + "zero/node-a", ack()),
    ("other-node-name", ACKS + "0/node-a", ack(node="node-b")),
    ("node-path-chars", ACKS + "0/node-a/../node-a", ack(node="node-a/../node-a")),
    ("other-rotation", PREFIX + "acks/20261130T090347Z-00000000-00000000/0/node-a", ack()),
    ("bad-proof-kind", ACKS + "0/node-a", ack(proof="trust-me")),
    ("huge-field", ACKS + "0/node-a", ack(proof="x" * (1 << 20))),
    ("time-negative", ACKS + "0/node-a", ack(time_ms=-1)),
]


def test_hostile_acks(make_agent, make_etcd, keys, agent_bin):
    """A valid record (members [node-a], one stage phase whose hash no config here has) and an
    ack of node-a written by hand with nonsense: the leader never counts it, the record stays
    byte for byte. Last, a well-formed ack with the phase's hash: then the leader does move
    (the check above can fail)."""
    e = make_etcd().start()
    kv = KV(e)
    a = make_agent(binary=agent_bin, extra=["--etcd-servers", e.endpoint])
    a.desired.write_text(cfg(keys))
    a.start()
    wait_for(lambda: a.status()["etcd"]["state"] == "connected", 15, "etcd connected")
    eff = a.effective.read_bytes()
    kv.put(PREFIX + "rotation", record())
    rec = kv.get(PREFIX + "rotation")
    wait_for(lambda: "waiting for node-a to prove and ack phase stage" in
             (rot(a).get("waiting_for") or ""), 20, "the leader waiting for node-a's ack")
    r = rot(a)
    print("HOSTILE-ACK member error: %s" % r["members"]["node-a"]["last_error"])
    assert "cannot take part" in r["members"]["node-a"]["last_error"], r
    for name, key, value in BAD_ACKS:
        kv.put(key, value)
        # the leader sees it on its next read (watch or tick): give it several
        t0 = time.monotonic()
        for _ in range(30):
            r = rot(a)
            assert r["phase"] == "stage" and r["id"] == RID and not r.get("history"), (name, r)
            assert "waiting for node-a" in r["waiting_for"], (name, r)
            if time.monotonic() - t0 > 1.5:
                break
            time.sleep(0.1)
        print("HOSTILE-ACK %-16s phase=%s waiting_for=%r" % (name, r["phase"], r["waiting_for"]))
        assert a.alive() and a.get("/healthz")[0] == 200, name
        assert kv.get(PREFIX + "rotation") == rec, "record changed on ack " + name
        assert a.effective.read_bytes() == eff, "effective file written on ack " + name
        kv.delete(key)
    kv.put(ACKS + "0/node-a", ack())
    wait_for(lambda: kv.get(PREFIX + "rotation") != rec, 20, "the leader to act on a good ack")
    assert a.stop() == 0
