"""Fixtures for the black-box integration tests: the real `atrest agent` binary, temp dirs,
free loopback ports, an HTTP client for its status server, a key registry and a key-leak
scanner, and strict process hygiene (every process a test starts is gone when it ends).

Environment:
  ATREST        the release binary (default ./atrest)
  ATREST_ASAN   the ASan+UBSan build (default build/asan/atrest); tests that take the
                `agent_bin` fixture run with both, and fail on any sanitizer report.
"""
import base64
import http.client
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ATREST = os.environ.get("ATREST", str(ROOT / "atrest"))
ATREST_ASAN = os.environ.get("ATREST_ASAN", str(ROOT / "build" / "asan" / "atrest"))

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "SUMMARY: AddressSanitizer", "SUMMARY: UndefinedBehaviorSanitizer",
                     "LeakSanitizer has encountered a fatal error", "Sanitizer CHECK failed")

METRICS_CTYPE = "text/plain; version=0.0.4; charset=utf-8"


# ---- keys and the leak scan -----------------------------------------------------------------

class Keys:
    """Every key a test generates; the leak scan looks for each of them in every form."""

    def __init__(self):
        self.keys = []

    def new(self, n=32):
        k = os.urandom(n)
        self.keys.append(k)
        return k

    @staticmethod
    def forms(k):
        b = base64.b64encode(k)
        return [("raw", k), ("base64", b), ("base64-nopad", b.rstrip(b"=")),
                ("base64url", base64.urlsafe_b64encode(k).rstrip(b"=")),
                ("hex", k.hex().encode()), ("HEX", k.hex().upper().encode())]

    def scan(self, data, where):
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        for i, k in enumerate(self.keys):
            for form, needle in self.forms(k):
                assert needle not in data, "key #%d leaked (%s form) in %s" % (i, form, where)


@pytest.fixture
def keys():
    return Keys()


def b64(k):
    return base64.b64encode(k).decode()


def enc_config(rules, kind="EncryptionConfiguration",
               api_version="apiserver.config.k8s.io/v1"):
    """rules: [(["secrets", ...], [("aescbc", [("k1", keybytes), ...]), ("identity",), ...]), ...]"""
    out = ["apiVersion: " + api_version, "kind: " + kind, "resources:"]
    for resources, providers in rules:
        out.append("  - resources:")
        out += ["      - " + r for r in resources]
        out.append("    providers:")
        for p in providers:
            if p[0] == "identity":
                out.append("      - identity: {}")
            elif p[0] == "kms":
                out += ["      - kms:"] + ["          %s: %s" % kv for kv in p[1]]
            else:
                out += ["      - %s:" % p[0], "          keys:"]
                for name, k in p[1]:
                    out += ["            - name: " + name, "              secret: " + b64(k)]
    return "\n".join(out) + "\n"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout=10.0, what="condition", interval=0.02):
    """Poll pred() until it returns a truthy value; bounded in time."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            last_exc = e
        time.sleep(interval)
    raise AssertionError("timed out after %.1fs waiting for %s (last error: %r)"
                         % (timeout, what, last_exc))


# ---- Prometheus text -------------------------------------------------------------------------

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def parse_metrics(text):
    """Parse and strictly check the text exposition format; returns
    {name: {"type": t, "help": h, "samples": {frozenset(labels.items()): value}}}."""
    assert text.endswith("\n"), "exposition must end with a newline"
    out = {}
    for line in text[:-1].split("\n"):
        assert line, "empty line in exposition"
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert name not in out, "HELP for %s twice or after its samples" % name
            out[name] = {"help": help_, "type": None, "samples": {}}
        elif line.startswith("# TYPE "):
            name, _, typ = line[7:].partition(" ")
            assert name in out and out[name]["type"] is None, "TYPE %s out of place" % name
            assert typ in ("counter", "gauge"), typ
            out[name]["type"] = typ
        else:
            m = SAMPLE_RE.match(line)
            assert m, "bad sample line %r" % line
            name = m.group(1)
            assert name in out and out[name]["type"], "sample %s before its HELP/TYPE" % name
            labels = {}
            if m.group(3):
                rest = m.group(3)
                pos = 0
                while pos < len(rest):
                    lm = LABEL_RE.match(rest, pos)
                    assert lm, "bad labels in %r" % line
                    labels[lm.group(1)] = lm.group(2)
                    pos = lm.end()
            value = float(m.group(4))
            key = frozenset(labels.items())
            assert key not in out[name]["samples"], "duplicate series %r" % line
            out[name]["samples"][key] = value
    return out


def kill_group(proc):
    """SIGKILL the process group a test started (start_new_session=True) and reap its leader."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


# ---- the agent under test --------------------------------------------------------------------

class Agent:
    def __init__(self, tmp, binary, keys, node="node-a", extra=(), use_socket=True):
        self.tmp = pathlib.Path(tmp)
        self.binary = binary
        self.keys = keys
        self.node = node
        self.extra = list(extra)
        for d in ("desired", "enc", "state", "run"):
            (self.tmp / d).mkdir(exist_ok=True)
        self.desired = self.tmp / "desired" / "desired.yaml"
        self.effective = self.tmp / "enc" / "config.yaml"
        self.state_dir = self.tmp / "state"
        self.sock = str(self.tmp / "run" / "status.sock") if use_socket else None
        self.port = free_port()
        self.log_path = self.tmp / "agent.log"
        self.proc = None
        self.bodies = []          # every HTTP body received, for the leak scan
        self.returncode = None

    @property
    def asan(self):
        return "asan" in os.path.basename(os.path.dirname(self.binary)) or \
            self.binary == ATREST_ASAN

    def args(self):
        a = [self.binary, "agent", "--node", self.node, "--desired", str(self.desired),
             "--effective", str(self.effective), "--state-dir", str(self.state_dir),
             "--status-listen", "127.0.0.1:%d" % self.port, "--debounce-ms", "40",
             "--poll-interval", "1", "--log-level", "debug"]
        if self.sock:
            a += ["--status-socket", self.sock]
        return a + self.extra

    def start(self, wait_ready=True):
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        env.pop("NOTIFY_SOCKET", None)
        env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=66"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True,
                                     preexec_fn=getattr(self, "preexec", None))
        if wait_ready:
            self.wait_ready()
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout=15):
        def ready():
            assert self.alive(), "agent exited (%s):\n%s" % (self.proc.returncode, self.log())
            return self.get("/readyz")[0] == 200
        wait_for(ready, timeout, "agent /readyz == 200")

    # -- HTTP --
    def request(self, path, method="GET", via_socket=False):
        if via_socket:
            conn = UnixHTTPConnection(self.sock, timeout=5)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            body = r.read()
            self.bodies.append((method + " " + path, body))
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), body
        finally:
            conn.close()

    def get(self, path, via_socket=False):
        st, hd, body = self.request(path, via_socket=via_socket)
        return st, hd, body

    def status(self):
        st, hd, body = self.get("/status")
        assert st == 200, (st, body)
        assert hd["content-type"].startswith("application/json"), hd
        return json.loads(body)

    def metrics(self):
        st, hd, body = self.get("/metrics")
        assert st == 200, (st, body)
        assert hd["content-type"] == METRICS_CTYPE, hd
        return parse_metrics(body.decode())

    def metric(self, name, **labels):
        m = self.metrics()
        if name not in m:
            return None
        return m[name]["samples"].get(frozenset(labels.items()))

    # -- files, log, signals --
    def log(self):
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if not self.alive():
            self.returncode = self.proc.returncode if self.proc else None
            return self.returncode
        self.proc.send_signal(sig)
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("agent did not exit within %ss after %s" % (timeout, sig))
        return self.returncode

    def kill(self):
        kill_group(self.proc)

    def leftovers(self):
        """True when a process of the agent's process group still exists."""
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    def finish(self):
        """Teardown: stop, kill the group, assert hygiene, scan for leaks and sanitizers."""
        if self.proc is None or getattr(self, "finished", False):
            return
        self.finished = True
        if self.alive():
            self.stop()
        self.kill()
        self.logf.close()
        if self.leftovers():
            wait_for(lambda: not self.leftovers(), 5, "the agent's process group to be empty")
        text = self.log()
        for marker in SANITIZER_MARKERS:
            assert marker not in text, "sanitizer report in the agent's output:\n" + text[-6000:]
        self.keys.scan(self.log_path.read_bytes(), "the agent's log")
        for what, body in self.bodies:
            self.keys.scan(body, "HTTP response to " + what)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=5):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def _binaries():
    out = [pytest.param(ATREST, id="rel")]
    out.append(pytest.param(ATREST_ASAN, id="asan",
                            marks=pytest.mark.skipif(not os.path.exists(ATREST_ASAN),
                                                     reason="no ASan build")))
    return out


@pytest.fixture(params=_binaries())
def agent_bin(request):
    """Both builds: tests taking this fixture run against the release and the ASan build."""
    return request.param


@pytest.fixture
def make_agent(tmp_path, keys):
    """make_agent(binary=ATREST, **kw) -> Agent (not started). Everything is stopped, checked
    for leftovers, sanitizer reports and key leaks at teardown."""
    agents = []

    def make(binary=ATREST, sub="a", base=None, **kw):
        d = pathlib.Path(base or tmp_path) / sub
        d.mkdir(exist_ok=True)
        a = Agent(d, binary, keys, **kw)
        agents.append(a)
        return a

    yield make
    errors = []
    for a in agents:
        try:
            a.finish()
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)


def run_cli(args, timeout=30, **kw):
    return subprocess.run([ATREST] + args, capture_output=True, timeout=timeout, **kw)


# ---- a real etcd on loopback -------------------------------------------------------------------

class Etcd:
    """One etcd member (Debian's /usr/bin/etcd) on free loopback ports in its own process
    group and temp dir. (tests/support/etcd_harness.c is the C twin for unit tests.)"""

    def __init__(self, tmp, client_port=None):
        self.dir = pathlib.Path(tmp)
        self.client_port = client_port or free_port()
        self.peer_port = free_port()
        self.endpoint = "http://127.0.0.1:%d" % self.client_port
        self.proc = None

    def start(self, timeout=20):
        self.dir.mkdir(parents=True, exist_ok=True)
        peer = "http://127.0.0.1:%d" % self.peer_port
        args = ["etcd", "--name", "it", "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", "it=" + peer, "--initial-cluster-state", "new",
                "--log-level", "error"]
        self.log = open(self.dir / "etcd.log", "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def healthy():
            assert self.proc.poll() is None, "etcd exited: " + (self.dir / "etcd.log").read_text()
            c = http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=2)
            try:
                c.request("GET", "/health")
                r = c.getresponse()
                return r.status == 200 and b'"true"' in r.read()
            finally:
                c.close()
        wait_for(healthy, timeout, "etcd /health")
        return self

    def dump(self):
        """Every key and value in etcd (base64-decoded bytes), via the JSON gateway."""
        c = http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=5)
        try:
            body = json.dumps({"key": base64.b64encode(b"\0").decode(),
                               "range_end": base64.b64encode(b"\0").decode()})
            c.request("POST", "/v3/kv/range", body, {"Content-Type": "application/json"})
            doc = json.loads(c.getresponse().read())
        finally:
            c.close()
        return [(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", "")))
                for kv in doc.get("kvs", [])]

    def stop(self):
        if self.proc is None:
            return
        kill_group(self.proc)
        self.log.close()
        self.proc = None


@pytest.fixture
def make_etcd(tmp_path):
    started = []

    def make(**kw):
        e = Etcd(tmp_path / ("etcd%d" % len(started)), **kw)
        started.append(e)
        return e
    yield make
    for e in started:
        pid = e.proc.pid if e.proc else None
        e.stop()
        if pid:
            try:
                os.killpg(pid, 0)
                raise AssertionError("etcd process group %d still has processes" % pid)
            except ProcessLookupError:
                pass


# ---- kapisim: a kube-apiserver simulator (tests/kapisim/) --------------------------------------

import select  # noqa: E402
import ssl  # noqa: E402
import urllib.parse  # noqa: E402

KAPISIM = ROOT / "tests" / "kapisim" / "kapisim.py"
SIM_PYTHON = os.environ.get("PYTHON", "/usr/bin/python3")


class KapiSim:
    """One tests/kapisim/kapisim.py process against an Etcd, in its own process group; a small
    HTTPS client for it (bearer token and the CA it generated, or its client certificate)."""

    def __init__(self, tmp, etcd, config, extra=(), token="kapisim-test-token"):
        self.dir = pathlib.Path(tmp)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.etcd = etcd
        self.config = str(config) if config else None
        self.extra = [str(a) for a in extra]
        self.token = token
        self.cert_dir = self.dir / "certs"
        (self.dir / "tokens.csv").write_text("%s,kapisim-test,1000\n" % token)
        self.log_path = self.dir / "kapisim.log"
        self.port = 0
        self.url = None
        self.proc = None
        self.returncode = None

    def args(self):
        a = [SIM_PYTHON, str(KAPISIM), "--etcd-servers", self.etcd.endpoint,
             "--secure-port", str(self.port), "--cert-dir", str(self.cert_dir),
             "--token-auth-file", str(self.dir / "tokens.csv")]
        if self.config:
            a += ["--encryption-provider-config", self.config]
        return a + self.extra

    def start(self, timeout=15):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.logf,
                                     start_new_session=True)
        line = b""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0, "kapisim not ready in %ss:\n%s" % (timeout, self.log())
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 256)
                assert chunk, "kapisim exited (%s):\n%s" % (self.proc.wait(5), self.log())
                line += chunk
        m = re.match(rb"kapisim ready (https?)://127\.0\.0\.1:(\d+)\n$", line)
        assert m, line
        self.scheme, self.port = m.group(1).decode(), int(m.group(2))
        self.url = "%s://127.0.0.1:%d" % (self.scheme, self.port)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- HTTP --
    def _conn(self, cert=False):
        if self.scheme == "http":
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        ctx = ssl.create_default_context(cafile=str(self.cert_dir / "ca.crt"))
        if cert:
            ctx.load_cert_chain(str(self.cert_dir / "client.crt"),
                                str(self.cert_dir / "client.key"))
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=ctx)

    def request(self, method, path, body=None, auth="token"):
        """auth: "token", "cert", None (anonymous) or another bearer token string.
        Returns (status, parsed JSON or text)."""
        c = self._conn(cert=auth == "cert")
        headers = {}
        if auth == "token":
            headers["Authorization"] = "Bearer " + self.token
        elif auth not in (None, "cert"):
            headers["Authorization"] = "Bearer " + auth
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            c.request(method, path, data, headers)
            r = c.getresponse()
            raw = r.read()
        finally:
            c.close()
        if r.getheader("Content-Type", "").startswith("application/json"):
            return r.status, json.loads(raw)
        return r.status, raw.decode()

    @staticmethod
    def path(res, ns=None, name=None):
        p = "/api/v1" + ("/namespaces/" + ns if ns else "") + "/" + res
        return p + ("/" + name if name else "")

    def get(self, ns, name, res="secrets"):
        return self.request("GET", self.path(res, ns, name))

    def list(self, ns=None, res="secrets", limit=0, cont=""):
        q = []
        if limit:
            q.append("limit=%d" % limit)
        if cont:
            q.append("continue=" + urllib.parse.quote(cont))
        return self.request("GET", self.path(res, ns) + ("?" + "&".join(q) if q else ""))

    def create(self, ns, obj, res="secrets"):
        return self.request("POST", self.path(res, ns), obj)

    def update(self, ns, name, obj, res="secrets"):
        return self.request("PUT", self.path(res, ns, name), obj)

    def delete(self, ns, name, res="secrets"):
        return self.request("DELETE", self.path(res, ns, name))

    def sim(self, what, body=None):
        return self.request("POST" if body is not None or what in ("reload", "crash") else "GET",
                            "/sim/" + what, body)

    def metrics(self):
        st, text = self.request("GET", "/metrics")
        assert st == 200, (st, text)
        return parse_metrics(text) if text else {}

    def raw(self, key, prefix="/registry"):
        """The stored etcd value of e.g. "secrets/default/x" (bytes, None when missing)."""
        k = (prefix + "/" + key).encode()
        c = http.client.HTTPConnection("127.0.0.1", self.etcd.client_port, timeout=5)
        try:
            c.request("POST", "/v3/kv/range", json.dumps({"key": base64.b64encode(k).decode()}),
                      {"Content-Type": "application/json"})
            doc = json.loads(c.getresponse().read())
        finally:
            c.close()
        kvs = doc.get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    # -- lifecycle --
    def stop(self, timeout=10):
        """SIGTERM; returns the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            self.returncode = self.proc.wait(timeout)
        return self.proc.returncode

    def crash(self):
        """Exit without cleanup (SIGKILL, as a crashed kube-apiserver)."""
        kill_group(self.proc)
        self.proc.stdout.close()
        self.logf.close()

    def restart(self, timeout=15):
        """Crash and start again on the same port, certificates and tokens."""
        self.crash()
        return self.start(timeout)

    def finish(self):
        if self.proc is None:
            return
        pid = self.proc.pid
        kill_group(self.proc)
        self.proc.stdout.close()
        self.logf.close()
        try:
            os.killpg(pid, 0)
            raise AssertionError("kapisim process group %d still has processes" % pid)
        except ProcessLookupError:
            pass


@pytest.fixture
def make_kapisim(tmp_path):
    """make_kapisim(etcd, config, extra=(), start=True) -> KapiSim against a started Etcd with
    the given EncryptionConfiguration file (None: identity everywhere) and extra flags. Killed
    at teardown."""
    sims = []

    def make(etcd, config, extra=(), start=True, **kw):
        s = KapiSim(tmp_path / ("kapisim%d" % len(sims)), etcd, config, extra, **kw)
        sims.append(s)
        return s.start() if start else s
    yield make
    for s in sims:
        s.finish()


# ---- a whole control plane: etcd, n simulators, n agents (tests/integration/cluster.py) ------

@pytest.fixture
def make_cluster(tmp_path, keys):
    """make_cluster(n=3, **kw) -> a started cluster.Cluster (see cluster.py: config, agents,
    binary, reload_s, sim_extra, agent_extra, ...). Always torn down: traffic and checker
    threads, agents (leak and sanitizer checks), simulators and etcd, process groups gone."""
    from cluster import Cluster
    made = []

    def make(n=3, **kw):
        c = Cluster(tmp_path / ("cluster%d" % len(made)), keys, n=n, **kw)
        made.append(c)
        return c.start()
    yield make
    errors = []
    for c in made:
        try:
            c.close()
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)


# ---- running the agent as an unprivileged user (tests/integration/test_security.py,
# test_hostile_desired.py) -------------------------------------------------------------------

NOBODY = 65534


def run_as_nobody(agent, base):
    """When the tests run as root: make agent (not started) run as nobody from a copy of its
    binary under base (a tree outside pytest's 0700 tmp), over files nobody owns. Returns True
    when it did (file modes then mean something to the agent), False when not root."""
    import shutil
    if os.geteuid() != 0:
        return False
    base = pathlib.Path(base)
    (base / "bin").mkdir(exist_ok=True)
    agent.binary = shutil.copy2(agent.binary, base / "bin" / os.path.basename(agent.binary))
    for p in [base] + list(base.rglob("*")):
        os.lchown(p, NOBODY, NOBODY)
    agent.preexec = lambda: (os.setgroups([]), os.setgid(NOBODY), os.setuid(NOBODY))
    return True


@pytest.fixture
def nobody_tree():
    """A 0755 temp tree outside pytest's 0700 tmp (for run_as_nobody); removed at the end.
    Request it before make_agent so the agents are finished before the tree goes."""
    import shutil
    import tempfile
    base = pathlib.Path(tempfile.mkdtemp(prefix="atrest-it-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


# ---- spreading the slow tests over pytest-xdist's workers -----------------------------------

# Tests that take a minute or more, most of it waiting (a 60 s poll, reconnect backoffs, request
# timeouts), slowest first. pytest-xdist (make integration: TEST_JOBS) hands out the collection
# in chunks of consecutive tests, so several of these in a row would run one after another on
# one worker; spread evenly through the collection, each worker gets its share.
SLOW = ("test_rotation_full.py::test_default_60s_poll",
        "test_hostile_peers.py::test_hostile_etcd",
        "test_hostile_peers.py::test_hostile_apiserver",
        "test_hostile_peers.py::test_etcd_behind_corrupting_proxy",
        "test_hostile_desired.py::test_hostile_corpus",
        "test_systemd.py::test_notify_protocol",
        "test_yaml_anchors.py::test_alias_bound",
        "test_hostile_peers.py::test_hostile_acks",
        "test_demo.py::")


def _slow_rank(item):
    for i, s in enumerate(SLOW):
        if s in item.nodeid:
            return i
    return None


def pytest_collection_modifyitems(config, items):
    if not getattr(config.option, "numprocesses", None):
        return                                  # one process: pytest's own order
    slow = sorted((it for it in items if _slow_rank(it) is not None), key=_slow_rank)
    if not slow:
        return
    rest = [it for it in items if _slow_rank(it) is None]
    gap = max(0, len(rest) // len(slow))
    out = []
    for i, it in enumerate(slow):
        out.append(it)
        out.extend(rest[i * gap:(i + 1) * gap])
    out.extend(rest[len(slow) * gap:])
    assert len(out) == len(items)
    items[:] = out
