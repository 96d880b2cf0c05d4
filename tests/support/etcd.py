"""tests/support/etcd.py: start Debian's etcd (/usr/bin/etcd) for Python integration tests.

Loopback only, free ports, a temporary directory, one member or a cluster; every member in its
own process group; always stopped (context manager, atexit, SIGTERM/SIGINT handlers).

    from etcd import Etcd            # with tests/support on sys.path
    with Etcd(members=1) as e:
        e.endpoints                  # ["http://127.0.0.1:PORT", ...]
        e.put("k", "v"); e.get("k")  # JSON-gateway helpers (bytes or str)
        e.stop(0); e.start(0); e.wait_healthy(0)

Also usable as a pytest fixture:  @pytest.fixture
                                  def etcd(): with Etcd() as e: yield e
"""
import atexit
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

ETCD_BIN = "/usr/bin/etcd"
_live = []


def _cleanup_all():
    for e in list(_live):
        e.close()


def _on_signal(signum, frame):
    _cleanup_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


atexit.register(_cleanup_all)
for _s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    if signal.getsignal(_s) in (signal.SIG_DFL, signal.default_int_handler):
        signal.signal(_s, _on_signal)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _b64(x):
    if isinstance(x, str):
        x = x.encode()
    return base64.b64encode(x).decode()


class Etcd:
    def __init__(self, members=1, fast=True, extra=(), start_timeout=20.0):
        self.n = members
        self.fast = fast
        self.extra = list(extra)
        self.dir = tempfile.mkdtemp(prefix="atrest-etcd-py-")
        self.client_ports, self.peer_ports = [], []
        for _ in range(members):
            c, p = _free_port(), _free_port()
            while p == c:
                p = _free_port()
            self.client_ports.append(c)
            self.peer_ports.append(p)
        self.endpoints = ["http://127.0.0.1:%d" % p for p in self.client_ports]
        self.procs = [None] * members
        _live.append(self)
        try:
            for i in range(members):
                self.start(i)
            for i in range(members):
                self.wait_healthy(i, start_timeout)
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self, i):
        cluster = ",".join("m%d=http://127.0.0.1:%d" % (j, p) for j, p in enumerate(self.peer_ports))
        args = [ETCD_BIN, "--name=m%d" % i, "--data-dir=%s/m%d" % (self.dir, i),
                "--listen-client-urls=" + self.endpoints[i],
                "--advertise-client-urls=" + self.endpoints[i],
                "--listen-peer-urls=http://127.0.0.1:%d" % self.peer_ports[i],
                "--initial-advertise-peer-urls=http://127.0.0.1:%d" % self.peer_ports[i],
                "--initial-cluster=" + cluster, "--initial-cluster-state=new",
                "--initial-cluster-token=atrest-test"]
        if self.fast:
            args += ["--heartbeat-interval=50", "--election-timeout=500"]
        args += self.extra
        log = open("%s/m%d.log" % (self.dir, i), "ab")
        self.procs[i] = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        log.close()

    def stop(self, i, sig=signal.SIGKILL):
        p = self.procs[i]
        if p is None:
            return
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            return
        try:
            p.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        self.procs[i] = None

    def wait_healthy(self, i, timeout=20.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            p = self.procs[i]
            if p is not None and p.poll() is not None:
                raise RuntimeError("etcd member %d exited: %s" % (i, self.log(i)))
            try:
                with urllib.request.urlopen(self.endpoints[i] + "/health", timeout=1) as r:
                    if json.load(r).get("health") == "true":
                        return
            except (OSError, ValueError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise TimeoutError("etcd member %d not healthy: %s" % (i, self.log(i)))

    def log(self, i, lines=15):
        try:
            with open("%s/m%d.log" % (self.dir, i), "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""

    # JSON-gateway helpers (for setting up and checking state in tests)
    def call(self, path, body, member=None):
        if member is None:  # the first running member
            member = next((i for i, p in enumerate(self.procs) if p is not None), 0)
        req = urllib.request.Request(self.endpoints[member] + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)

    def put(self, key, value):
        return self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def get(self, key):
        """The value as bytes, or None."""
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def close(self):
        for i in range(self.n):
            self.stop(i, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self in _live:
            _live.remove(self)


if __name__ == "__main__":  # self-check: python3 tests/support/etcd.py
    with Etcd(members=1) as e:
        e.put("self/check", b"\x00ok")
        assert e.get("self/check") == b"\x00ok", e.get("self/check")
        d = e.dir
    assert not os.path.exists(d)
    with Etcd(members=3) as e:
        e.stop(0)
        e.put("k", "v")
        assert e.get("k") == b"v"
    print("etcd.py: ok")
