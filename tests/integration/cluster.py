"""The proving ground of the rotation protocol: a whole control plane on loopback, traffic
through it, and the one S1/S2 checker every protocol test uses.

A Cluster is one real etcd and n nodes cp-1..cp-n; a node is a kube-apiserver simulator
(tests/kapisim, HTTPS + bearer token, automatic reload polling its EFFECTIVE file) and, unless
agents=False, a real `atrest agent` (own desired/effective files, state dir, status port,
etcd and apiserver settings pointing at its simulator). Start order: etcd, effective files
(initial config), simulators, agents. close() (the make_cluster fixture calls it) stops all
of it and checks that no process group is left, no sanitizer report and no key in a log.

How a protocol test uses it:

    from cluster import keyed_config

    def test_rotate(make_cluster, keys, agent_bin):
        k1, k2 = ("key1", keys.new()), ("key2", keys.new())
        old, new = keyed_config("aescbc", k1), keyed_config("aescbc", k2)
        c = make_cluster(n=3, config=old, binary=agent_bin)  # started (reload_s=60: real poll)
        c.seed(500, old)                          # 500 Secrets straight into etcd, under key1
        chk = c.checker().start()                 # S1 sampler, every ~200 ms
        tr = c.traffic(max_s=60).start()          # writer via cp-1, readers via cp-2..cp-n
        c.push(new, gap_s=2)                      # config management, node by node
        c.wait(lambda: c.census()["aescbc/key1"] == 0, 60, "re-encrypt")
        c.wait_loaded(new)                        # every server loaded exactly `new` (prune)
        tr.stop()
        res = chk.final_check(tr)                 # every object through every server
        res.assert_ok()                           # readable pytest failure otherwise

Rules a result reports (Violation.rule): S1-write (a live server would write with a key a
live peer cannot read), S1-stored (a stored value a live server cannot read, sampled while
running), S2-unreadable / missing (final: an object does not read or list through a server),
lost-update / content (final: not what was written last / seeded), read-error (a reader's
failure; decrypt errors say so), write-error (the writer's failure), down (a server not
running at the end). Key names are "provider/key" as the simulator says them (aescbc/key1,
identity). No key material and no Secret plaintext ever goes into a message.
"""
import base64
import collections
import hashlib
import http.client
import json
import os
import pathlib
import random
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

from conftest import ATREST, ROOT, Agent, Etcd, KapiSim, enc_config, free_port, kill_group, \
    wait_for

sys.path.insert(0, str(ROOT / "tests" / "kapisim"))
import etcd as simetcd  # noqa: E402
import objects  # noqa: E402
import transformers  # noqa: E402

RESOURCES = ("secrets", "configmaps")
REGISTRY = "/registry/"
TOKEN = "cluster-test-token"
MAX_TXN_OPS = 128             # etcd's default --max-txn-ops


def identity_config(resources=RESOURCES):
    return enc_config([(list(resources), [("identity",)])])


def keyed_config(provider, *named, resources=RESOURCES, identity=True):
    """provider{named keys in order}[, identity] for resources, e.g.
    keyed_config("aescbc", ("key2", k2), ("key1", k1)): write key2, read key1 too."""
    providers = [(provider, list(named))] + ([("identity",)] if identity else [])
    return enc_config([(list(resources), providers)])


def atomic_write(path, text):
    """Write text to path as configuration management does: temp file, fsync, rename."""
    path = pathlib.Path(path)
    data = text.encode() if isinstance(text, str) else text
    tmp = path.with_name(".%s.tmp-%d" % (path.name, os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def sha256(text):
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def provider_key(value):
    """The provider/key a stored value is under, in the simulator's notation: 'aescbc/key1',
    'secretbox/s1', 'identity' (plain protobuf or JSON), 'k8s:enc:kms:v2:name'."""
    if value.startswith(transformers.ENC_PREFIX):
        parts = value.split(b":", 5)
        if len(parts) >= 5 and parts[2] in (b"aescbc", b"aesgcm", b"secretbox"):
            return (parts[2] + b"/" + parts[4]).decode("utf-8", "replace")
        if len(parts) >= 5:
            return b":".join(parts[:5]).decode("utf-8", "replace")
        return "unknown"
    return "identity"


def split_key(key):
    """'/registry/secrets/ns/name' -> ('secrets', 'ns', 'name')."""
    r, ns, name = key[len(REGISTRY):].split("/", 2)
    return r, ns, name


def config_doc(text):
    """The document of an EncryptionConfiguration (YAML subset or JSON) as plain data, so
    that an agent's canonical rewrite and the pushed text compare equal."""
    t = text.decode() if isinstance(text, bytes) else text
    return json.loads(t) if t.lstrip().startswith("{") else transformers.parse_yaml(t)


def same_config(a, b):
    """a and b (text or bytes) are the same EncryptionConfiguration document."""
    a = a.encode() if isinstance(a, str) else a
    b = b.encode() if isinstance(b, str) else b
    return a == b or config_doc(a) == config_doc(b)


def _b64(b):
    return base64.b64encode(b).decode()


def _content(name, seq):
    """The writer's Secret data for one write: public, names its own write."""
    return {"v": _b64(("%s seq %d" % (name, seq)).encode())}


def _describe(data):
    """A short public description of a traffic object's data (never seeded plaintext)."""
    try:
        v = base64.b64decode((data or {}).get("v", "")).decode()
        return repr(v) if " seq " in v else "(other content)"
    except (ValueError, UnicodeDecodeError, AttributeError):
        return "(undecodable)"


class Session:
    """A keep-alive HTTPS connection to one simulator (bearer token), with KapiSim's request
    shape: request(method, path, body) -> (status, parsed JSON or text). Reconnects once when
    the kept connection was closed. Not thread-safe: one per thread."""

    def __init__(self, sim):
        self.sim = sim
        self.conn = None

    def request(self, method, path, body=None):
        headers = {"Authorization": "Bearer " + self.sim.token}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            fresh = self.conn is None
            if fresh:
                self.conn = self.sim._conn()
            try:
                self.conn.request(method, path, data, headers)
                r = self.conn.getresponse()
                raw = r.read()
                break
            except (OSError, http.client.HTTPException):
                self.close()
                if fresh or attempt:
                    raise
        if r.getheader("Content-Type", "").startswith("application/json"):
            return r.status, json.loads(raw)
        return r.status, raw.decode()

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def get(self, ns, name, res="secrets"):
        return self.request("GET", KapiSim.path(res, ns, name))

    def create(self, ns, obj, res="secrets"):
        return self.request("POST", KapiSim.path(res, ns), obj)

    def update(self, ns, name, obj, res="secrets"):
        return self.request("PUT", KapiSim.path(res, ns, name), obj)

    def list(self, ns=None, res="secrets", limit=0, cont=""):
        q = ["limit=%d" % limit] if limit else []
        if cont:
            q.append("continue=" + urllib.parse.quote(cont))
        return self.request("GET", KapiSim.path(res, ns) + ("?" + "&".join(q) if q else ""))


# ---- a multi-member etcd ------------------------------------------------------------------------

class EtcdCluster:
    """n etcd members (Debian's /usr/bin/etcd) on free loopback ports, one process group and
    data dir each under tmp; the same face as conftest's Etcd for a Cluster (endpoint: every
    client URL, comma-separated, which the simulators, the agents and the checker try in
    order). kill(i)/start_member(i): SIGKILL one member and start it again on the same data
    dir (it rejoins with its own log). extra_hosts: more addresses every member also listens
    on (same port), e.g. the host side of a veth pair a test created."""

    def __init__(self, tmp, n=3, extra_hosts=()):
        self.dir = pathlib.Path(tmp)
        self.names = ["m%d" % (i + 1) for i in range(n)]
        self.client_ports = [free_port() for _ in range(n)]
        self.peer_ports = [free_port() for _ in range(n)]
        self.extra_hosts = list(extra_hosts)
        self.endpoints = ["http://127.0.0.1:%d" % p for p in self.client_ports]
        self.endpoint = ",".join(self.endpoints)
        self.client_port = self.client_ports[0]
        self.procs = [None] * n
        self.pgids = set()
        self.proc = None          # Cluster.close() checks a single member's group; see stop()

    def _args(self, i):
        peer = "http://127.0.0.1:%d" % self.peer_ports[i]
        listen = [self.endpoints[i]] + ["http://%s:%d" % (h, self.client_ports[i])
                                        for h in self.extra_hosts]
        initial = ",".join("%s=http://127.0.0.1:%d" % (nm, pp)
                           for nm, pp in zip(self.names, self.peer_ports))
        return ["etcd", "--name", self.names[i], "--data-dir", str(self.dir / self.names[i]),
                "--listen-client-urls", ",".join(listen),
                "--advertise-client-urls", self.endpoints[i],
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", "atrest-test-%d" % os.getpid(),
                "--log-level", "error"]

    def _spawn(self, i):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ("%s.log" % self.names[i]), "ab") as log:
            p = subprocess.Popen(self._args(i), stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[i] = p
        self.pgids.add(p.pid)

    def healthy(self, i):
        assert self.procs[i].poll() is None, "etcd %s exited: %s" % (
            self.names[i], (self.dir / ("%s.log" % self.names[i])).read_text()[-2000:])
        c = http.client.HTTPConnection("127.0.0.1", self.client_ports[i], timeout=2)
        try:
            c.request("GET", "/health")
            r = c.getresponse()
            return r.status == 200 and b'"true"' in r.read()
        except OSError:
            return False
        finally:
            c.close()

    def start(self, timeout=30):
        for i in range(len(self.names)):       # together: none is healthy without a quorum
            self._spawn(i)
        for i in range(len(self.names)):
            wait_for(lambda i=i: self.healthy(i), timeout, "etcd %s /health" % self.names[i])
        return self

    def alive(self, i):
        return self.procs[i] is not None and self.procs[i].poll() is None

    def kill(self, i):
        kill_group(self.procs[i])

    def start_member(self, i, timeout=30):
        self._spawn(i)
        wait_for(lambda: self.healthy(i), timeout, "etcd %s /health after restart" % self.names[i])

    def stop(self):
        for p in self.procs:
            kill_group(p)

    def leftovers(self):
        """A message per member process group that still has processes (after stop())."""
        out = []
        for pgid in sorted(self.pgids):
            try:
                os.killpg(pgid, 0)
                out.append("etcd process group %d still has processes" % pgid)
            except ProcessLookupError:
                pass
        return out


# ---- the cluster -------------------------------------------------------------------------------

class Node:
    def __init__(self, cluster, i):
        self.index = i
        self.name = "cp-%d" % (i + 1)
        self.dir = cluster.tmp / self.name
        self.desired = self.dir / "desired" / "desired.yaml"
        self.effective = self.dir / "enc" / "config.yaml"
        self.token_file = self.dir / "apiserver-token"
        self.sim = None
        self.agent = None

    def __repr__(self):
        return self.name


class Cluster:
    """See the module docstring. Arguments:
    config        initial EncryptionConfiguration text (default identity for secrets and
                  configmaps), written to every effective and desired file before starting
    etcd          an Etcd to use (not stopped by close()); default: a new one
    agents        False: simulators only (tests that push effective files themselves)
    binary        the agent binary (the agent_bin fixture: release or ASan)
    reload_s      the simulators' poll period (kube-apiserver: 60); None: restart-only
    sim_extra     extra kapisim flags, a list or a callable(node) -> list (knobs)
    agent_extra   extra agent flags, a list or a callable(node) -> list
    etcd_members  members of the etcd the cluster starts itself (1: conftest's Etcd; more: an
                  EtcdCluster, every endpoint in each simulator's and agent's settings)
    agent_class   the Agent class (or a callable with its arguments) the cluster starts
    """

    def __init__(self, tmp, keys, n=3, config=None, etcd=None, agents=True, binary=ATREST,
                 reload_s=0.3, sim_extra=(), agent_extra=(), coord_prefix="/atrest/",
                 lease_ttl=3, etcd_members=1, agent_class=Agent):
        self.tmp = pathlib.Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.keys = keys
        self.config = config or identity_config()
        self.etcd = etcd
        self.own_etcd = etcd is None
        self.with_agents = agents
        self.binary = binary
        self.reload_s = reload_s
        self.sim_extra = sim_extra
        self.agent_extra = agent_extra
        self.coord_prefix = coord_prefix
        self.lease_ttl = lease_ttl
        self.etcd_members = etcd_members
        self.agent_class = agent_class
        self.nodes = [Node(self, i) for i in range(n)]
        self.seeded = {}          # (resource, ns, name) -> data dict as the API returns it
        self.threads = []         # Traffic and Checker objects to stop at close()
        self.kv = None

    # -- lifecycle --
    def start(self):
        if self.etcd is None:
            self.etcd = (EtcdCluster(self.tmp / "etcd", self.etcd_members)
                         if self.etcd_members > 1 else Etcd(self.tmp / "etcd")).start()
        self.kv = simetcd.Etcd(self.etcd.endpoint, timeout=10)
        for node in self.nodes:
            for d in ("desired", "enc", "state", "run"):
                (node.dir / d).mkdir(parents=True, exist_ok=True)
            atomic_write(node.effective, self.config)
            atomic_write(node.desired, self.config)
            atomic_write(node.token_file, TOKEN + "\n")
        for node in self.nodes:
            node.sim = KapiSim(node.dir / "sim", self.etcd, node.effective,
                               self._sim_args(node), token=TOKEN)
        self._parallel([n.sim.start for n in self.nodes])
        if self.with_agents:
            for node in self.nodes:
                node.agent = self.agent_class(node.dir, self.binary, self.keys, node=node.name,
                                   extra=self._agent_args(node))
                node.agent.start(wait_ready=False)
            for node in self.nodes:
                node.agent.wait_ready(30)
        return self

    def _sim_args(self, node):
        a = ["--sim-apiserver-host", node.name]
        if self.reload_s is not None:
            a += ["--encryption-provider-config-automatic-reload",
                  "--sim-reload-interval", str(self.reload_s)]
        extra = self.sim_extra(node) if callable(self.sim_extra) else self.sim_extra
        return a + [str(x) for x in extra]

    def _agent_args(self, node):
        """The node's agent.yaml (etcd and apiserver sections, as systemd/agent.yaml.example
        names them) plus the flags of the Agent class (files, status port, node name)."""
        settings = node.dir / "agent.yaml"
        settings.write_text("\n".join([
            "# written by tests/integration/cluster.py for " + node.name,
            "etcd:",
            "  endpoints: [%s]" % self.etcd.endpoint,
            "  prefix: %s" % self.coord_prefix,
            "  leaseTTLSeconds: %d" % self.lease_ttl,
            "apiserver:",
            "  url: %s" % node.sim.url,
            "  cafile: %s" % (node.sim.cert_dir / "ca.crt"),
            "  tokenFile: %s" % node.token_file, ""]))
        a = ["--config", str(settings)]
        extra = self.agent_extra(node) if callable(self.agent_extra) else self.agent_extra
        return a + [str(x) for x in extra]

    @staticmethod
    def _parallel(fns):
        errs = []

        def run(f):
            try:
                f()
            except BaseException as e:      # reported below, in the caller's thread
                errs.append(e)
        ts = [threading.Thread(target=run, args=(f,), daemon=True) for f in fns]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        if errs:
            raise errs[0]

    def close(self):
        """Stop everything (threads, agents, simulators, etcd); raises AssertionError with
        every teardown finding (leftover processes, sanitizer reports, key leaks)."""
        errors = []
        for t in self.threads:
            try:
                t.stop()
            except AssertionError as e:
                errors.append(str(e))
        for node in self.nodes:
            if node.agent is not None:
                try:
                    node.agent.finish()
                except AssertionError as e:
                    errors.append("%s agent: %s" % (node.name, e))
        for node in self.nodes:
            if node.sim is not None:
                try:
                    node.sim.finish()
                except AssertionError as e:
                    errors.append("%s kapisim: %s" % (node.name, e))
                except OSError:
                    pass
        if self.own_etcd and self.etcd is not None:
            pid = self.etcd.proc.pid if self.etcd.proc else None
            self.etcd.stop()
            if isinstance(self.etcd, EtcdCluster):
                errors += self.etcd.leftovers()
            if pid:
                try:
                    os.killpg(pid, 0)
                    errors.append("etcd process group %d still has processes" % pid)
                except ProcessLookupError:
                    pass
        assert not errors, "\n".join(errors)

    def restart_agent(self, node, hard=True, wait_ready=True):
        """SIGKILL (hard) or SIGTERM a node's agent and start it again, same settings."""
        a = self._select([node])[0].agent
        if hard:
            a.kill()
        else:
            a.stop()
        a.logf.close()
        return a.start(wait_ready=wait_ready)

    def restart_sim(self, node):
        """SIGKILL a node's simulator (a crashed kube-apiserver) and start it again on the
        same port and certificates; it loads its effective file at start."""
        return self._select([node])[0].sim.restart()

    # -- config pushes --
    def _select(self, nodes):
        if nodes is None:
            return list(self.nodes)
        return [self.nodes[n] if isinstance(n, int) else self.node(n) for n in nodes]

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    def push(self, config, nodes=None, gap_s=1.0):
        """Configuration management: write the DESIRED file of each node in turn (atomically),
        gap_s seconds apart. nodes: indexes or names, in push order (default all, in order).
        Returns the monotonic times of the writes."""
        return self._push(config, nodes, gap_s, "desired")

    def push_effective(self, config, nodes=None, gap_s=1.0):
        """A naive push that bypasses the agents: write each node's EFFECTIVE file (what its
        simulator loads) in turn, gap_s seconds apart."""
        return self._push(config, nodes, gap_s, "effective")

    def _push(self, config, nodes, gap_s, which):
        times = []
        for i, node in enumerate(self._select(nodes)):
            if i and gap_s:
                time.sleep(gap_s)
            atomic_write(getattr(node, which), config)
            times.append(time.monotonic())
        return times

    def status(self, node):
        st, doc = node.sim.sim("status")
        assert st == 200, (node.name, st, doc)
        return doc

    def wait_loaded(self, config=None, nodes=None, timeout=30):
        """Wait until each simulator has LOADED its effective file as it is on disk and (when
        config is given) that file is config: the same bytes or, as an agent rewrites it in
        canonical form, the same document (same_config)."""
        for node in self._select(nodes):
            def loaded(node=node):
                data = node.effective.read_bytes()
                if config is not None and not same_config(data, config):
                    return False
                return self.status(node)["configSha256"] == sha256(data)
            try:
                wait_for(loaded, timeout, "%s to load its config" % node.name, interval=0.05)
            except AssertionError as e:
                raise AssertionError("%s\nsimulator status: %s\nsimulator log:\n%s" % (
                    e, self.status(node), node.sim.log()[-2000:])) from None

    def wait(self, pred, timeout, what):
        return wait_for(pred, timeout, what, interval=0.1)

    # -- etcd: seed, scan, census --
    def seed(self, n, config=None, ns="seed", resource="secrets", size=32, prefix="s"):
        """Put n objects straight into etcd, encoded (protobuf envelope) and encrypted as a
        simulator with `config` (text; default identity) would store them, in txn batches.
        Their data is remembered in self.seeded and checked by final_check. Returns names."""
        cfg = transformers.parse_config(config.encode()) if config else None
        t = cfg.transformer("", resource) if cfg else transformers.Identity()
        kind = {"secrets": "Secret", "configmaps": "ConfigMap"}[resource]
        names, ops = [], []
        start = len([k for k in self.seeded if k[0] == resource and k[1] == ns])
        for i in range(start, start + n):
            name = "%s-%06d" % (prefix, i)
            raw = os.urandom(size)
            if kind == "Secret":
                data = {"v": _b64(raw)}
                obj = {"apiVersion": "v1", "kind": kind, "type": "Opaque", "data": data}
            else:
                data = {"v": raw.hex()}
                obj = {"apiVersion": "v1", "kind": kind, "data": data}
            obj["metadata"] = {"name": name, "namespace": ns, "uid": str(uuid.uuid4()),
                               "creationTimestamp": objects.now_rfc3339()}
            key = (REGISTRY + "%s/%s/%s" % (resource, ns, name)).encode()
            value = t.write(objects.encode(obj), key)
            ops.append({"request_put": {"key": _b64(key), "value": _b64(value)}})
            self.seeded[(resource, ns, name)] = data
            names.append(name)
            if len(ops) == MAX_TXN_OPS:
                self.kv.call("/v3/kv/txn", {"compare": [], "success": ops})
                ops = []
        if ops:
            self.kv.call("/v3/kv/txn", {"compare": [], "success": ops})
        return names

    def scan(self, resource="secrets", page=1000, limit=1000000):
        """Every (key, value, mod_revision) under /registry/<resource>/, paged; bounded."""
        prefix = (REGISTRY + resource + "/").encode()
        out, start, rev = [], None, 0
        for _ in range(limit // page + 1):
            kvs, more, _count, hrev = self.kv.range_prefix(prefix, start, page, rev)
            rev = rev or hrev
            out += [(kv.key, kv.value, kv.mod_revision) for kv in kvs]
            if not more or not kvs:
                return out
            start = kvs[-1].key + b"\0"
        raise AssertionError("scan of %s: more than %d objects" % (resource, limit))

    def census(self, resource="secrets", probes=False):
        """Counter of stored values per provider/key (e.g. {'aescbc/key1': 12}); without the
        agents' canary Secrets (proof-of-load probes, written with the key a proof is about)
        unless probes=True."""
        skip = b"/registry/secrets/kube-system/atrest-canary-"
        return collections.Counter(provider_key(v) for k, v, _r in self.scan(resource)
                                   if probes or not k.startswith(skip))

    def rewrite_all(self, node=0, resource="secrets", page=200):
        """The API-mode re-encrypt of the upstream manual procedure: list every object
        through one simulator and PUT it back unchanged with its resourceVersion (a no-op
        update rewrites a stale object with the current write key; a 409 means someone else
        wrote it since). Returns (rewritten or unchanged, conflicts)."""
        sim = Session(self._select([node])[0].sim)
        try:
            return self._rewrite_all(sim, resource, page)
        finally:
            sim.close()

    @staticmethod
    def _rewrite_all(sim, resource, page):
        done = conflicts = 0
        cont = ""
        for _ in range(100000):
            st, doc = sim.list(None, resource, limit=page, cont=cont)
            assert st == 200, ("list through %s" % sim.sim.url, st, doc)
            for item in doc["items"]:
                md = item["metadata"]
                body = dict(item, apiVersion="v1",
                            kind={"secrets": "Secret", "configmaps": "ConfigMap"}[resource])
                st, out = sim.update(md["namespace"], md["name"], body, resource)
                if st == 409:
                    conflicts += 1
                else:
                    assert st == 200, ("no-op update of %s/%s" % (md["namespace"], md["name"]),
                                       st, out)
                    done += 1
            cont = doc["metadata"].get("continue", "")
            if not cont:
                return done, conflicts
        raise AssertionError("rewrite_all: too many pages")

    # -- traffic and the checker --
    def traffic(self, **kw):
        t = Traffic(self, **kw)
        self.threads.append(t)
        return t

    def checker(self, **kw):
        c = Checker(self, **kw)
        self.threads.append(c)
        return c


# ---- traffic -----------------------------------------------------------------------------------

class Traffic:
    """A bounded background writer through ONE simulator and readers through the others.

    The writer cycles over `names` Secrets in namespace `ns` of resource secrets: creates
    each, then updates them (unconditional PUT) with content naming the write ("w-003 seq
    41"); it remembers the last content each name was written with, and what it attempted
    since when a write failed (it may or may not have landed). Each reader (one thread per
    reader node) reads random already-created names and checks the content is one the writer
    wrote. Every failure is recorded with its time, node, operation, name, HTTP status and
    error text. Stops by itself after max_ops writes or max_s seconds; stop() ends it early.
    """

    def __init__(self, cluster, writer=0, readers=None, names=16, ns="traffic", max_ops=5000,
                 max_s=60.0, interval_s=0.02, seed=None):
        self.cluster = cluster
        self.writer = cluster._select([writer])[0]
        self.readers = [n for n in cluster.nodes if n is not self.writer] \
            if readers is None else cluster._select(readers)
        self.names = ["w-%03d" % i for i in range(names)]
        self.ns = ns
        self.max_ops = max_ops
        self.max_s = max_s
        self.interval_s = interval_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.created = []
        self.last = {}             # name -> data of the last successful write
        self.pending = {}          # name -> [data attempted since, outcome unknown]
        self.written = collections.defaultdict(set)   # name -> every content attempted
        self.errors = []           # dicts: t, role, node, op, name, status, error
        self.writes = 0
        self.reads = 0
        self.t0 = None
        self.ts = []

    def start(self):
        self.t0 = time.monotonic()
        self.ts = [threading.Thread(target=self._write_loop, name="writer", daemon=True)]
        self.ts += [threading.Thread(target=self._read_loop, args=(n,), name="reader-" + n.name,
                                     daemon=True) for n in self.readers]
        for t in self.ts:
            t.start()
        return self

    def stop(self, timeout=20):
        self.halt.set()
        for t in self.ts:
            t.join(timeout)
            assert not t.is_alive(), "traffic thread %s did not stop" % t.name
        return self

    def running(self):
        return any(t.is_alive() for t in self.ts)

    def _over(self):
        return self.halt.is_set() or time.monotonic() - self.t0 > self.max_s

    def _error(self, role, node, op, name, status, err):
        with self.lock:
            self.errors.append({"t": time.monotonic() - self.t0, "role": role,
                                "node": node.name, "op": op, "name": name,
                                "status": status, "error": err})

    @staticmethod
    def _err_text(doc):
        return doc.get("message", str(doc)) if isinstance(doc, dict) else str(doc)[:300]

    def _write_loop(self):
        sim = Session(self.writer.sim)
        try:
            self._write_ops(sim)
        finally:
            sim.close()

    def _write_ops(self, sim):
        for seq in range(self.max_ops):
            if self._over():
                return
            name = self.names[seq % len(self.names)]
            data = _content(name, seq)
            with self.lock:
                create = name not in self.created
                self.written[name].add(data["v"])
                self.pending.setdefault(name, []).append(data)
            body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                    "type": "Opaque", "data": data}
            op = "create" if create else "update"
            try:
                if create:
                    st, doc = sim.create(self.ns, body)
                else:
                    st, doc = sim.update(self.ns, name, body)
            except (OSError, ValueError) as e:
                st, doc = None, repr(e)
            with self.lock:
                self.writes += 1
                if st in (200, 201):
                    self.last[name] = data
                    self.pending[name] = []
                    if create:
                        self.created.append(name)
            if st not in (200, 201):
                self._error("writer", self.writer, op, name, st, self._err_text(doc))
            self.halt.wait(self.interval_s)

    def _read_loop(self, node):
        sim = Session(node.sim)
        try:
            self._read_ops(node, sim)
        finally:
            sim.close()

    def _read_ops(self, node, sim):
        for _ in range(self.max_ops):
            if self._over():
                return
            with self.lock:
                name = self.rng.choice(self.created) if self.created else None
            if name is None:
                self.halt.wait(self.interval_s)
                continue
            try:
                st, doc = sim.get(self.ns, name)
            except (OSError, ValueError) as e:
                st, doc = None, repr(e)
            with self.lock:
                self.reads += 1
                known = self.written[name]
            if st != 200:
                self._error("reader", node, "get", name, st, self._err_text(doc))
            elif (doc.get("data") or {}).get("v") not in known:
                self._error("reader", node, "get", name, st, "content %s was never written"
                            % _describe(doc.get("data")))
            self.halt.wait(self.interval_s)

    # -- results --
    def read_errors(self):
        with self.lock:
            return [e for e in self.errors if e["role"] == "reader"]

    def write_errors(self):
        with self.lock:
            return [e for e in self.errors if e["role"] == "writer"]

    @staticmethod
    def is_decrypt_error(e):
        """A 500 InternalError from the transformers (not a lost connection)."""
        return e["status"] == 500 and "Internal error occurred" in e["error"]

    def decrypt_errors(self, nodes=None):
        names = None if nodes is None else {n.name for n in self.cluster._select(nodes)}
        return [e for e in self.read_errors()
                if self.is_decrypt_error(e) and (names is None or e["node"] in names)]

    def results(self):
        """Counts and every recorded failure (dicts: t, role, node, op, name, status, error)."""
        with self.lock:
            errors = list(self.errors)
            out = {"writes": self.writes, "reads": self.reads, "names": len(self.created),
                   "errors": errors}
        out["decrypt_errors"] = sum(1 for e in errors if self.is_decrypt_error(e))
        return out

    def summary(self):
        with self.lock:
            return "traffic: %d writes via %s, %d reads via %s, %d errors" % (
                self.writes, self.writer.name, self.reads,
                ",".join(n.name for n in self.readers), len(self.errors))


# ---- the S1/S2 checker ------------------------------------------------------------------------

class Violation:
    __slots__ = ("rule", "t", "node", "key", "pk", "detail", "count")

    def __init__(self, rule, t, node, key, pk, detail):
        self.rule, self.t, self.node, self.key, self.pk = rule, t, node, key, pk
        self.detail = detail
        self.count = 1

    def __str__(self):
        s = "%-13s +%6.2fs %-5s %s" % (self.rule, self.t, self.node or "-", self.detail)
        if self.key:
            s += " [key %s]" % self.key
        if self.pk:
            s += " [%s]" % self.pk
        return s + (" (seen %d times)" % self.count if self.count > 1 else "")


class CheckResult:
    """What a Checker found. counts: exact per rule; violations: the first max_details of
    each rule and node (deduplicated: the same rule/node/key/provider-key is one entry with a
    count)."""

    def __init__(self, violations, counts, samples, sampler_errors, notes):
        self.violations = violations
        self.counts = counts
        self.samples = samples
        self.sampler_errors = sampler_errors
        self.notes = notes

    @property
    def ok(self):
        return not self.violations

    def of(self, rule, node=None, pk=None):
        return [v for v in self.violations if v.rule == rule and
                (node is None or v.node == node) and (pk is None or v.pk == pk)]

    def report(self, limit=40):
        lines = ["%d violation(s): %s" % (sum(self.counts.values()), dict(self.counts))
                 if self.violations else "no violations"]
        lines += ["  " + str(v) for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append("  ... %d more" % (len(self.violations) - limit))
        lines.append("sampler: %d samples, %d errors%s" % (
            self.samples, len(self.sampler_errors),
            (" (first: %s)" % self.sampler_errors[0]) if self.sampler_errors else ""))
        lines += self.notes
        return "\n".join(lines)

    def __str__(self):
        return self.report()

    def assert_ok(self, min_samples=1, max_sampler_errors=0):
        """Fail the pytest test with a readable report unless there is no violation, the
        sampler really sampled (a checker that never looked cannot pass; min_samples=0 for a
        final_check without start()) and it did not fail more than max_sampler_errors times."""
        if self.violations or self.samples < min_samples or \
                len(self.sampler_errors) > max_sampler_errors:
            raise AssertionError("S1/S2 check failed (%d samples, at least %d needed; %d "
                                 "sampler errors, at most %d allowed)\n%s"
                                 % (self.samples, min_samples, len(self.sampler_errors),
                                    max_sampler_errors, self.report()))


class Checker:
    """S1 and S2, written once. start() runs a sampler thread (every interval_s) that, for
    the live simulators, asks each for its write probe (/sim/probe: what it would write now)
    and checks through every other live simulator's /sim/readable that its LOADED config
    reads (a) every other server's probe (S1-write, before anything is written) and (b) a
    bounded rotating window of `sample` raw values under /registry/<resource>/ (S1-stored).
    final_check(traffic) then reads every object through every simulator's REST API."""

    MIN_SAMPLES = 5     # final_check waits for this many samples in all (see assert_ok)

    def __init__(self, cluster, interval_s=0.2, sample=200, resources=("secrets",),
                 max_details=25, ignore_keys=(),
                 probe_keys=("/registry/secrets/kube-system/atrest-canary-",)):
        self.cluster = cluster
        # keys of the agents' canary Secrets (proof of load, default namespace and name): a
        # probe that a member writes with a staged key on purpose, before its peers load it, so
        # the sampler skips them; the final check still reads them through every server (a
        # proof removes its canary when it ends: none may be left unreadable)
        self.probe_keys = tuple(k.encode() if isinstance(k, str) else k for k in probe_keys)
        # etcd key prefixes neither the sampler nor the final check looks at, e.g. a canary
        # namespace the protocol writes straight into etcd ("/registry/secrets/atrest-canary/");
        # default none: every stored object counts
        self.ignore_keys = tuple(k.encode() if isinstance(k, str) else k for k in ignore_keys)
        self.interval_s = interval_s
        self.sample = sample
        self.resources = resources
        self.max_details = max_details
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.t0 = time.monotonic()
        self.found = {}                        # dedup key -> Violation
        self.order = []
        self.counts = collections.Counter()
        self.samples = 0
        self.sampler_errors = []
        self.cursor = {r: None for r in resources}
        self.thread = None

    def start(self):
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._loop, name="s1-sampler", daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout=20):
        self.halt.set()
        if self.thread is not None:
            self.thread.join(timeout)
            assert not self.thread.is_alive(), "the S1 sampler did not stop"
        return self

    def wait_samples(self, k=2, timeout=10):
        """Wait until the sampler has taken k more samples (it has looked at the present)."""
        n = self.samples
        wait_for(lambda: self.samples >= n + k, timeout, "%d more S1 samples" % k)
        return self

    def violation(self, rule, node, key, pk, detail, dedup=None):
        dk = (rule, node, key, pk) if dedup is None else (rule,) + tuple(dedup)
        with self.lock:
            self.counts[rule] += 1
            v = self.found.get(dk)
            if v is not None:
                v.count += 1
                return
            if sum(1 for o in self.order if o.rule == rule and o.node == node) \
                    >= self.max_details:
                return
            v = Violation(rule, time.monotonic() - self.t0, node, key, pk, detail)
            self.found[dk] = v
            self.order.append(v)

    def _loop(self):
        for _ in range(10 ** 6):               # bounded: ~55 h at 200 ms
            if self.halt.is_set():
                return
            t = time.monotonic()
            try:
                self.sample_once()
            except Exception as e:             # noqa: BLE001 (recorded, reported)
                with self.lock:
                    self.sampler_errors.append("+%.2fs %r" % (time.monotonic() - self.t0, e))
            self.halt.wait(max(0.0, self.interval_s - (time.monotonic() - t)))

    @staticmethod
    def _ask(node, path, body):
        """POST to a simulator's /sim endpoint: (200, doc), or (None, None) when the
        simulator died (crashed or stopped by the test); anything else raises."""
        try:
            st, doc = node.sim.request("POST", path, body)
        except (OSError, http.client.HTTPException):
            if not node.sim.alive():
                return None, None
            raise
        if st != 200:
            raise RuntimeError("%s %s: %s %s" % (node.name, path, st, doc))
        return st, doc

    def _window(self, resource):
        prefix = (REGISTRY + resource + "/").encode()
        kvs, more, _c, _r = self.cluster.kv.range_prefix(prefix, self.cursor[resource],
                                                         self.sample)
        self.cursor[resource] = kvs[-1].key + b"\0" if more and kvs else None
        return kvs

    def _still(self, kind, src, key, pk, kv):
        """A verdict of "cannot read" is about the server's config when it answered, a moment
        after the value was read: it counts only when the value was still there after the
        answer (the stored value unchanged in etcd; the probe's server still writing with the
        same key). Otherwise the rotation moved on in between (a re-encrypt then a prune, on a
        loaded machine) and this sample says nothing."""
        if kind == "stored":
            now = self.cluster.kv.get(kv.key)
            return now is not None and now.mod_revision == kv.mod_revision
        st, doc = self._ask(src, "/sim/probe", {"resource": key})
        return st is not None and doc["writeKey"] == pk

    def sample_once(self):
        live = [n for n in self.cluster.nodes if n.sim is not None and n.sim.alive()]
        if not live:
            return
        items, what = [], []
        for node in list(live):
            for r in self.resources:
                st, doc = self._ask(node, "/sim/probe", {"resource": r})
                if st is None:                 # it died meanwhile: not live
                    live.remove(node)
                    break
                items.append({"key": doc["key"], "value": doc["value"]})
                what.append(("probe", node, r, doc["writeKey"], None))
        for r in self.resources:
            for kv in self._window(r):
                if kv.key.startswith(self.ignore_keys + self.probe_keys):
                    continue
                items.append({"key": _b64(kv.key), "value": _b64(kv.value)})
                what.append(("stored", None, kv.key.decode("utf-8", "replace"),
                             provider_key(kv.value), kv))
        for node in live:
            st, doc = self._ask(node, "/sim/readable", {"items": items})
            if st is None:
                continue
            for (kind, src, key, pk, kv), res in zip(what, doc["results"]):
                if res["ok"] or (kind == "probe" and src is node) or \
                        not self._still(kind, src, key, pk, kv):
                    continue
                if kind == "probe" and src is not node:
                    r = key
                    self.violation("S1-write", src.name, None, pk,
                                   "%s writes %s with %s, which %s cannot read (it reads %s): %s"
                                   % (src.name, r, pk, node.name, doc["readKeys"][r],
                                      res["error"]), dedup=(src.name, node.name, pk))
                elif kind == "stored":
                    r = key[len(REGISTRY):].split("/")[0]
                    self.violation("S1-stored", node.name, key, pk,
                                   "%s cannot read a stored value under %s (it reads %s): %s"
                                   % (node.name, pk, doc["readKeys"].get(r), res["error"]))
        with self.lock:
            self.samples += 1

    # -- the end of a run --
    @staticmethod
    def _list_all(sim, resource):
        """{(ns, name): data} through a simulator's REST API (paged), or the error of the
        first failing page."""
        out, cont = {}, ""
        for _ in range(100000):
            st, doc = sim.list(None, resource, limit=500, cont=cont)
            if st != 200:
                return None, "%s %s" % (st, Traffic._err_text(doc))
            for it in doc["items"]:
                out[(it["metadata"]["namespace"], it["metadata"]["name"])] = it.get("data")
            cont = doc["metadata"].get("continue", "")
            if not cont:
                return out, None
        return None, "too many pages"

    def final_check(self, traffic=None, resources=RESOURCES):
        """Stop traffic and the sampler, then: every object stored under /registry/<r>/ for r
        in resources must read through EVERY simulator (list; on a failing list, one GET per
        object to name each unreadable one); the writer's last write of each name and every
        seeded object must be there with that content; the readers and the writer must have
        seen no error. Returns a CheckResult (sampler findings included)."""
        if traffic is not None:
            traffic.stop()
        if self.thread is not None:
            # a loaded machine samples slowly: let the sampler look at the end state at least
            # MIN_SAMPLES times in all (bounded) so that assert_ok's floor is about looking,
            # not about speed
            deadline = time.monotonic() + 60
            while self.samples < self.MIN_SAMPLES and time.monotonic() < deadline and \
                    self.thread.is_alive():
                time.sleep(0.1)
        self.stop()
        notes = []
        if traffic is not None:
            notes.append(traffic.summary())
        for node in self.cluster.nodes:
            if node.sim is None or not node.sim.alive():
                self.violation("down", node.name, None, None,
                               "%s's simulator is not running at the final check" % node.name)
        nodes = [n for n in self.cluster.nodes if n.sim is not None and n.sim.alive()]
        for node in nodes:
            try:
                st = self.cluster.status(node)
                notes.append("%s: loaded %s, secrets: writes %s, reads %s" % (
                    node.name, (st["configSha256"] or "none")[:12], st["writeKey"]["secrets"],
                    st["readKeys"]["secrets"]))
            except (OSError, AssertionError, KeyError) as e:
                notes.append("%s: no /sim/status: %r" % (node.name, e))
        for r in resources:
            stored = {kv[0].decode(): kv for kv in self.cluster.scan(r)
                      if not kv[0].startswith(self.ignore_keys)}
            notes.append("%s: %d stored %s" % (r, len(stored), dict(collections.Counter(
                provider_key(v) for _k, v, _m in stored.values()))))
            self.cluster._parallel([lambda n=n: self._final_node(n, r, stored, traffic)
                                    for n in nodes])
        if traffic is not None:
            for e in traffic.errors:
                rule = "read-error" if e["role"] == "reader" else "write-error"
                what = "decrypt error" if Traffic.is_decrypt_error(e) else "error"
                self.violation(rule, e["node"], "%s/%s" % (traffic.ns, e["name"]), None,
                               "%s %s of %s/%s at +%.2fs: %s %s" % (
                                   e["role"], what, traffic.ns, e["name"], e["t"], e["status"],
                                   e["error"]), dedup=(e["node"], e["op"], e["error"][:200]))
        with self.lock:
            return CheckResult(list(self.order), collections.Counter(self.counts),
                               self.samples, list(self.sampler_errors), notes)

    def _final_node(self, node, r, stored, traffic):
        sim = Session(node.sim)
        try:
            self._final_reads(node, sim, r, stored, traffic)
        finally:
            sim.close()

    def _final_reads(self, node, sim, r, stored, traffic):
        listed, err = self._list_all(sim, r)
        if err is not None:
            listed = {}
            for key in stored:
                _r, ns, name = split_key(key)
                st, doc = sim.get(ns, name, r)
                if st == 200:
                    listed[(ns, name)] = doc.get("data")
                elif st != 404:
                    self.violation("S2-unreadable", node.name, key, provider_key(stored[key][1]),
                                   "%s cannot read %s %s/%s: %s %s" % (
                                       node.name, r, ns, name, st, Traffic._err_text(doc)))
        else:
            present = {split_key(key)[1:] for key in stored}
            for ns, name in present - set(listed):
                key = "%s%s/%s/%s" % (REGISTRY, r, ns, name)
                if self.cluster.kv.get(key.encode()) is not None:
                    self.violation("missing", node.name, key, provider_key(stored[key][1]),
                                   "%s does not list %s %s/%s" % (node.name, r, ns, name))
        for (res, ns, name), data in self.cluster.seeded.items():
            if res != r:
                continue
            key = "%s%s/%s/%s" % (REGISTRY, r, ns, name)
            if key.encode().startswith(self.ignore_keys):
                continue
            if (ns, name) in listed and listed[(ns, name)] != data:
                self.violation("content", node.name, key, None,
                               "%s: seeded %s %s/%s reads with other data" % (node.name, r,
                                                                             ns, name))
            elif (ns, name) not in listed and key not in stored:
                self.violation("lost-update", node.name, key, None,
                               "seeded %s %s/%s is gone" % (r, ns, name))
        if traffic is None or r != "secrets":
            return
        with traffic.lock:
            last = dict(traffic.last)
            pending = {k: list(v) for k, v in traffic.pending.items()}
        for name, data in last.items():
            key = "%s%s/%s/%s" % (REGISTRY, r, traffic.ns, name)
            if key.encode().startswith(self.ignore_keys):
                continue
            got = listed.get((traffic.ns, name))
            if got is None:
                if key not in stored:
                    self.violation("lost-update", node.name, key, None,
                                   "%s/%s, last written %s, is gone" % (
                                       traffic.ns, name, _describe(data)))
                continue
            if got != data and got not in pending.get(name, []):
                self.violation("lost-update", node.name, key, None,
                               "%s reads %s/%s as %s, the writer last wrote %s" % (
                                   node.name, traffic.ns, name, _describe(got),
                                   _describe(data)))
