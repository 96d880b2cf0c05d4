#!/usr/bin/python3
"""The chaos run of issue 10: a whole HA control plane under faults while keys rotate.

    CHAOS_SECONDS=120 CHAOS_SEED=1234 ATREST=./atrest /usr/bin/python3 tests/chaos/chaos.py

What runs: a 3-member etcd (loopback, free ports, temp dir), three simulated API servers
(tests/kapisim, reload poll 0.3 s) and three real agents (tests/integration/cluster.py), 300
seeded Secrets and 60 ConfigMaps, a writer updating Secrets through cp-1 and readers through
cp-2/cp-3 (Traffic), and the S1 sampler (Checker) the whole time. A rotation thread pushes
desired files node by node with gaps, one rotation after another, cycling through: a new key
(old kept), the old key dropped, a provider change (aescbc -> aesgcm or secretbox),
encryption off (identity first, the old key still read) and on again (aescbc, a fresh key).
Some pushes reach only two nodes, the third later (fault "partial-push").

A fault thread injects one fault at a time at random times from a seeded RNG (CHAOS_SEED,
printed first and again just before the last line; thread timing makes a replay similar,
not identical): agent-kill (SIGKILL + restart), sim-kill (SIGKILL + restart, same port),
etcd-kill (SIGKILL one member + restart on its data dir), agent-stop (SIGSTOP longer than
the lease TTL, then SIGCONT), sim-refuse-reload and sim-delay-reload (the simulator's knobs,
for a while), disk-full (the tmpfs mounted on cp-2's effective-config directory filled up,
then freed), netns-cut (cp-3's agent runs in a network namespace of its own, reaching etcd
over one veth pair and its API server over another: the etcd pair goes down for longer than
the lease TTL). disk-full and netns-cut are skipped, with the reason printed, where the
machine refuses the mount or the namespace.

At the end (faults stopped, everything healed): the last rotation gets time to finish; it
must finish or wait with a reason the agents state (/status waiting_for); every object must
read through every simulator, every write of the writer must be there with the content it
wrote last, and S1 must have held throughout (Checker). The last line printed is

    CHAOS result=ok faults=<N> rotations=<N> objects=<N> lost=0 unreadable=0 seconds=<S>

(result=fail and exit status 1 otherwise, with the findings printed above it).
CHAOS_SABOTAGE=1 is the run's self-test: one effective file replaced behind the agents' back
with a key the other servers lack; the run must end with result=fail. Every process,
the tmpfs and the namespace are removed at the end, on failure and on Ctrl-C too.
"""
import atexit
import collections
import ctypes
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from conftest import Agent, Keys, enc_config, kill_group  # noqa: E402
from cluster import (RESOURCES, Cluster, EtcdCluster, Traffic, atomic_write,  # noqa: E402
                     keyed_config, same_config, sha256)

LEASE_TTL = 3
CANARY = ["/registry/secrets/kube-system/"]
SEEDED_SECRETS, SEEDED_CONFIGMAPS = 300, 60
ROTATION_TIMEOUT = 150       # s a rotation gets while faults go on before the next push
FINAL_GRACE = 180            # s the last rotation gets once the faults stopped
FAULT_WEIGHTS = [("agent-kill", 5), ("sim-kill", 4), ("etcd-kill", 3), ("agent-stop", 2),
                 ("sim-refuse-reload", 2), ("sim-delay-reload", 1), ("disk-full", 2),
                 ("netns-cut", 2)]
CLONE_NEWNET = 0x40000000

T0 = time.monotonic()
OUT_LOCK = threading.Lock()


def say(msg):
    with OUT_LOCK:
        print("[%7.2fs] %s" % (time.monotonic() - T0, msg), flush=True)


def run(*cmd):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=30)
    if p.returncode:
        raise OSError("%s: exit %d: %s" % (" ".join(map(str, cmd)), p.returncode,
                                          (p.stderr or p.stdout).strip()[:300]))
    return p.stdout


# ---- the machine's parts: a tmpfs and a network namespace ----------------------------------

class Tmpfs:
    """A small tmpfs mounted on a directory; fill() until ENOSPC, free() again."""

    def __init__(self, path, size="256k"):
        self.path = pathlib.Path(path)
        self.size = size
        self.mounted = False
        self.filler = self.path / ".chaos-filler"

    def mount(self):
        self.path.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % self.size, "chaos-tmpfs",
            self.path)
        self.mounted = True

    def fill(self):
        n = 0
        try:
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError:                      # already full
            return n
        try:
            for _ in range(100000):          # bounded: 4 KiB steps, far more than 256 KiB
                try:
                    n += os.write(fd, b"\0" * 4096)
                except OSError:              # ENOSPC: full
                    break
        finally:
            os.close(fd)
        return n

    def free(self):
        try:
            self.filler.unlink()
        except FileNotFoundError:
            pass

    def umount(self):
        if self.mounted:
            self.free()
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)
            self.mounted = False


class Netns:
    """A network namespace with two veth pairs to the root namespace: E (etcd) and A (the
    API server, through forwarders). Addresses exist only on these pairs."""

    def __init__(self):
        pid = os.getpid()
        b = (pid % 120) * 2
        self.name = "atrest-chaos-%d" % pid
        self.pairs = {"E": ("ace%dh" % (pid % 100000), "ace%dn" % (pid % 100000),
                            "10.213.%d.1" % b, "10.213.%d.2" % b),
                      "A": ("aca%dh" % (pid % 100000), "aca%dn" % (pid % 100000),
                            "10.213.%d.1" % (b + 1), "10.213.%d.2" % (b + 1))}
        self.fd = None
        self.created = False
        self.procs = []
        self.libc = ctypes.CDLL(None, use_errno=True)

    def host(self, which):
        return self.pairs[which][2]

    def create(self):
        run("ip", "netns", "add", self.name)
        self.created = True
        run("ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        for h, n, ha, na in self.pairs.values():
            run("ip", "link", "add", h, "type", "veth", "peer", "name", n)
            run("ip", "link", "set", n, "netns", self.name)
            run("ip", "addr", "add", ha + "/30", "dev", h)
            run("ip", "link", "set", h, "up")
            run("ip", "netns", "exec", self.name, "ip", "addr", "add", na + "/30", "dev", n)
            run("ip", "netns", "exec", self.name, "ip", "link", "set", n, "up")
        self.fd = os.open("/run/netns/" + self.name, os.O_RDONLY)

    def enter(self):
        """preexec_fn of a child that runs inside the namespace."""
        if self.libc.setns(self.fd, CLONE_NEWNET) != 0:
            os._exit(121)

    def link(self, which, up):
        run("ip", "link", "set", self.pairs[which][0], "up" if up else "down")

    def forward(self, listen, target, inside):
        p = subprocess.Popen([sys.executable, str(ROOT / "tests" / "chaos" / "fwd.py"), listen,
                              target], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=self.enter if inside else None)
        self.procs.append(p)
        line = p.stdout.readline()
        if line.strip() != b"fwd ready":
            raise OSError("forwarder %s -> %s did not start" % (listen, target))

    def destroy(self):
        for p in self.procs:
            kill_group(p)
            if p.stdout:
                p.stdout.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.created:
            for h, _n, _ha, _na in self.pairs.values():
                subprocess.run(["ip", "link", "del", h], capture_output=True, timeout=30)
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
            self.created = False


def netns_agent_class(netns):
    class NetnsAgent(Agent):
        """An agent inside the namespace: its status is read over its Unix socket."""
        preexec = staticmethod(netns.enter)

        def request(self, path, method="GET", via_socket=False):
            return super().request(path, method, via_socket=True)
    return NetnsAgent


# ---- the rotations -------------------------------------------------------------------------

class Configs:
    """The cycle of desired configs, fresh keys each round (generated at run time)."""

    def __init__(self, keys, rng):
        self.keys = keys
        self.rng = rng
        self.n = 0
        self.cur = ("aescbc", self.key())
        self.initial = keyed_config(*self.cur)
        self.step = 0

    def key(self):
        self.n += 1
        return ("k%d" % self.n, self.keys.new(32))

    def next(self):
        """(label, config text) of the next rotation."""
        s = self.step % 5
        self.step += 1
        prov, k = self.cur
        if s == 0:                            # a new key, the old one kept for reading
            k2 = self.key()
            self.cur = ("aescbc", k2)
            return "new-key", keyed_config("aescbc", k2, k)
        if s == 1:                            # the old key dropped (pruned)
            return "key-dropped", keyed_config("aescbc", k)
        if s == 2:                            # provider change
            p = self.rng.choice(["aesgcm", "secretbox"])
            k2 = self.key()
            self.cur = (p, k2)
            return "provider-%s" % p, keyed_config(p, k2)
        if s == 3:                            # encryption off: identity first, old key read
            return "encryption-off", enc_config([(list(RESOURCES), [("identity",), (prov, [k])])])
        k2 = self.key()                       # encryption on again
        self.cur = ("aescbc", k2)
        return "encryption-on", keyed_config("aescbc", k2)


# ---- the run -------------------------------------------------------------------------------

class Chaos:
    def __init__(self, seconds, seed, binary):
        self.seconds = seconds
        self.seed = seed
        self.binary = binary
        self.rng = random.Random(seed)
        self.push_rng = random.Random(seed * 7919 + 1)
        self.keys = Keys()
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="atrest-chaos-"))
        self.c = None
        self.etcd = None
        self.tmpfs = None
        self.netns = None
        self.skipped = {}
        self.halt = threading.Event()
        self.faults = []              # (t, kind, target)
        self.harness_errors = []
        self.unexpected = []          # processes that died without a fault
        self.down = set()             # ("agent"|"sim"|"etcd", index) a fault holds down/stopped
        self.down_lock = threading.Lock()
        self.rotations = []           # (label, result, seconds)
        self.done_ids = set()
        self.target = None            # (label, config) pushed last
        self.target_t = 0.0           # when its push began
        self.pushing = threading.Lock()
        self.torn_down = False

    # -- setup --
    def setup(self):
        say("CHAOS seed=%d seconds=%d binary=%s tmp=%s" % (self.seed, self.seconds,
                                                           self.binary, self.tmp))
        if os.geteuid() != 0:
            self.skipped["disk-full"] = "not root: cannot mount a tmpfs"
            self.skipped["netns-cut"] = "not root: cannot create a network namespace"
        if "netns-cut" not in self.skipped:
            self.netns = Netns()
            try:
                self.netns.create()
            except OSError as e:
                self.skipped["netns-cut"] = "the machine refused the namespace: %s" % e
                self.netns.destroy()
                self.netns = None
        if "disk-full" not in self.skipped:
            self.tmpfs = Tmpfs(self.tmp / "cp-2" / "enc")
            try:
                self.tmpfs.mount()
            except OSError as e:
                self.skipped["disk-full"] = "the machine refused the tmpfs mount: %s" % e
                self.tmpfs = None
        for k, why in self.skipped.items():
            say("skip %s: %s" % (k, why))
        self.configs = Configs(self.keys, self.push_rng)
        extra_hosts = [self.netns.host("E")] if self.netns else []
        self.etcd = EtcdCluster(self.tmp / "etcd", 3, extra_hosts=extra_hosts).start()
        netns = self.netns

        def agent_extra(node):
            a = ["--settle-seconds", "1"]
            if netns and node.index == 2:
                a += ["--etcd-servers", ",".join("http://%s:%d" % (netns.host("E"), p)
                                                 for p in self.etcd.client_ports)]
            return a

        def agent_class(tmp, binary, keys, node="", extra=()):
            if netns and node == "cp-3":
                port = self.c.node("cp-3").sim.port
                netns.forward("%s:%d" % (netns.host("A"), port), "127.0.0.1:%d" % port, False)
                netns.forward("127.0.0.1:%d" % port, "%s:%d" % (netns.host("A"), port), True)
                return netns_agent_class(netns)(tmp, binary, keys, node=node, extra=extra)
            return Agent(tmp, binary, keys, node=node, extra=extra)

        self.c = Cluster(self.tmp, self.keys, n=3, config=self.configs.initial, etcd=self.etcd,
                         binary=self.binary, reload_s=0.3, agent_extra=agent_extra,
                         lease_ttl=LEASE_TTL, agent_class=agent_class)
        self.c.start()
        self.c.wait_loaded(self.configs.initial)
        self.c.seed(SEEDED_SECRETS, self.configs.initial)
        self.c.seed(SEEDED_CONFIGMAPS, self.configs.initial, resource="configmaps")
        self.chk = self.c.checker(ignore_keys=CANARY, resources=RESOURCES).start()
        self.tr = self.c.traffic(max_s=self.seconds + FINAL_GRACE + 120, max_ops=10 ** 6,
                                 interval_s=0.05, seed=self.seed).start()
        say("cluster up: etcd %s; agents %s; netns %s; tmpfs %s" % (
            self.etcd.endpoint, ",".join(n.name for n in self.c.nodes),
            self.netns.name + " (cp-3)" if self.netns else "skipped",
            str(self.tmpfs.path) + " (cp-2)" if self.tmpfs else "skipped"))

    # -- helpers --
    def over(self):
        return self.halt.is_set()

    def sleep(self, s):
        self.halt.wait(s)

    def fault(self, kind, target, detail=""):
        self.faults.append((time.monotonic() - T0, kind, target))
        say("fault #%d %s %s%s" % (len(self.faults), kind, target,
                                   (" " + detail) if detail else ""))

    def status(self, node):
        try:
            return node.agent.status()
        except Exception:                 # noqa: BLE001 (down, stopped, restarting)
            return None

    def watch_processes(self):
        """A process that is gone without a fault holding it down is a finding."""
        with self.down_lock:
            down = set(self.down)
        for n in self.c.nodes:
            if ("agent", n.index) not in down and not n.agent.alive():
                rc = n.agent.proc.returncode
                self.unexpected.append("%s agent exited by itself (status %s)" % (n.name, rc))
                say("FINDING: %s agent exited by itself (status %s); restarting it" % (n.name, rc))
                n.agent.logf.close()
                n.agent.start(wait_ready=False)
            if ("sim", n.index) not in down and not n.sim.alive():
                self.unexpected.append("%s simulator exited by itself" % n.name)
                say("FINDING: %s simulator exited by itself; restarting it" % n.name)
                n.sim.restart()
        for i in range(3):
            if ("etcd", i) not in down and not self.etcd.alive(i):
                self.unexpected.append("etcd %s exited by itself" % self.etcd.names[i])
                say("FINDING: etcd %s exited by itself; restarting it" % self.etcd.names[i])
                self.etcd.start_member(i)

    # -- faults --
    def fault_loop(self):
        kinds = [k for k, _w in FAULT_WEIGHTS if k not in self.skipped]
        weights = [w for k, w in FAULT_WEIGHTS if k not in self.skipped]
        for _ in range(100000):
            if self.over():
                return
            self.sleep(self.rng.uniform(0.2, 1.0))
            if self.over():
                return
            kind = self.rng.choices(kinds, weights)[0]
            node = self.c.nodes[self.rng.randrange(3)]
            try:
                getattr(self, "f_" + kind.replace("-", "_"))(node)
                self.watch_processes()
            except Exception as e:        # noqa: BLE001 (a harness failure is a failure)
                self.harness_errors.append("%s on %s: %r" % (kind, node.name, e))
                say("HARNESS ERROR during %s on %s: %s" % (kind, node.name,
                                                           traceback.format_exc()[-1500:]))
                self.heal()

    def hold(self, what, fn_down, fn_up, secs):
        with self.down_lock:
            self.down.add(what)
        try:
            fn_down()
            self.sleep(secs)
        finally:
            try:
                fn_up()
            finally:
                with self.down_lock:
                    self.down.discard(what)

    def f_agent_kill(self, node):
        secs = self.rng.uniform(0, 1.0)
        self.fault("agent-kill", node.name, "down %.1fs" % secs)

        def up():
            node.agent.logf.close()
            node.agent.start(wait_ready=False)
        self.hold(("agent", node.index), node.agent.kill, up, secs)

    def f_sim_kill(self, node):
        self.fault("sim-kill", node.name)
        with self.down_lock:
            self.down.add(("sim", node.index))
        try:
            node.sim.restart()
        finally:
            with self.down_lock:
                self.down.discard(("sim", node.index))

    def f_etcd_kill(self, node):
        i = node.index
        secs = self.rng.uniform(0.3, 2)
        self.fault("etcd-kill", self.etcd.names[i], "down %.1fs" % secs)
        self.hold(("etcd", i), lambda: self.etcd.kill(i), lambda: self.etcd.start_member(i),
                  secs)

    def f_agent_stop(self, node):
        secs = LEASE_TTL + self.rng.uniform(0.5, 2)
        self.fault("agent-stop", node.name, "SIGSTOP %.1fs (lease TTL %ds)" % (secs, LEASE_TTL))

        def cont():
            if node.agent.alive():
                os.killpg(node.agent.proc.pid, signal.SIGCONT)
        self.hold(("agent", node.index),
                  lambda: os.killpg(node.agent.proc.pid, signal.SIGSTOP), cont, secs)

    def knobs(self, node, **kw):
        st, doc = node.sim.sim("knobs", kw)
        if st != 200:
            raise RuntimeError("%s knobs %s: %s %s" % (node.name, kw, st, doc))

    def f_sim_refuse_reload(self, node):
        secs = self.rng.uniform(1.5, 4)
        self.fault("sim-refuse-reload", node.name, "for %.1fs" % secs)
        self.hold(("knob", node.index), lambda: self.knobs(node, refuseReload=True),
                  lambda: node.sim.alive() and self.knobs(node, refuseReload=False), secs)

    def f_sim_delay_reload(self, node):
        secs, delay = self.rng.uniform(2, 5), self.rng.uniform(0.5, 2)
        self.fault("sim-delay-reload", node.name, "reload delay %.1fs for %.1fs" % (delay, secs))
        self.hold(("knob", node.index), lambda: self.knobs(node, reloadDelay=delay),
                  lambda: node.sim.alive() and self.knobs(node, reloadDelay=0), secs)

    def f_disk_full(self, node):
        secs = self.rng.uniform(1.5, 4)
        self.fault("disk-full", "cp-2", "effective-config dir full for %.1fs" % secs)
        self.hold(("disk", 1), self.tmpfs.fill, self.tmpfs.free, secs)

    def f_netns_cut(self, node):
        secs = LEASE_TTL + self.rng.uniform(0.5, 3)
        self.fault("netns-cut", "cp-3", "agent cut off from etcd for %.1fs" % secs)
        self.hold(("link", 2), lambda: self.netns.link("E", False),
                  lambda: self.netns.link("E", True), secs)

    def heal(self):
        """Undo every fault that may be held (idempotent); restart what is down."""
        if self.tmpfs:
            self.tmpfs.free()
        if self.netns and self.netns.created:
            try:
                self.netns.link("E", True)
            except OSError as e:
                self.harness_errors.append("heal link: %s" % e)
        for i in range(3):
            if self.etcd.procs[i] is not None and not self.etcd.alive(i):
                try:
                    self.etcd.start_member(i)
                except Exception as e:    # noqa: BLE001
                    self.harness_errors.append("heal etcd %d: %r" % (i, e))
        if self.c is None:
            return
        for n in self.c.nodes:
            if n.agent is not None and n.agent.alive():
                try:
                    os.killpg(n.agent.proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            elif n.agent is not None and n.agent.proc is not None:
                n.agent.logf.close()
                n.agent.start(wait_ready=False)
            if n.sim is not None and not n.sim.alive() and n.sim.proc is not None:
                n.sim.restart()
            if n.sim is not None and n.sim.alive():
                try:
                    self.knobs(n, refuseReload=False, reloadDelay=0)
                except Exception as e:    # noqa: BLE001
                    self.harness_errors.append("heal knobs %s: %r" % (n.name, e))
        with self.down_lock:
            self.down.clear()

    # -- rotations --
    def finished(self, config):
        """Every simulator loaded exactly `config` (the agents' final effective file) and
        every agent's rotation reports done; records the finished rotation ids."""
        ids = set()
        for n in self.c.nodes:
            data = n.effective.read_bytes()
            if not same_config(data, config):
                return False
            try:
                if self.c.status(n)["configSha256"] != sha256(data):
                    return False
            except Exception:             # noqa: BLE001 (a simulator restarting)
                return False
            st = self.status(n)
            if st is None or not st.get("rotation") or st["rotation"]["phase"] != "done":
                return False
            ids |= {h["id"] for h in st["rotation"]["history"] if h["result"] == "done"}
        self.done_ids |= ids
        return True

    def push(self, label, config):
        order = list(range(3))
        self.push_rng.shuffle(order)
        partial = self.push_rng.random() < 0.3
        with self.pushing:
            self.target = (label, config)
            if partial:
                self.fault("partial-push", ",".join(self.c.nodes[i].name for i in order[:2]),
                           "%s pushed to two nodes, %s later" % (
                               label, self.c.nodes[order[2]].name))
                self.c.push(config, nodes=order[:2], gap_s=self.push_rng.uniform(0.2, 1.5))
                self.sleep(self.push_rng.uniform(3, 10))
                self.c.push(config, nodes=order[2:], gap_s=0)
            else:
                self.c.push(config, nodes=order, gap_s=self.push_rng.uniform(0.2, 1.5))
        say("rotation #%d %s pushed to all three (%s)" % (
            len(self.rotations) + 1, label, " ".join(self.c.nodes[i].name for i in order)))

    def rotation_loop(self):
        for _ in range(10000):
            if self.over():
                return
            label, config = self.configs.next()
            t = self.target_t = time.monotonic()
            self.push(label, config)
            done = False
            for _ in range(ROTATION_TIMEOUT * 4):
                if self.over():
                    return            # the final phase waits for it
                done = self.finished(config)
                if done:
                    break
                self.sleep(0.25)
            dt = time.monotonic() - t
            if done:
                self.rotations.append((label, "done", dt))
                say("rotation #%d %s done in %.1fs" % (len(self.rotations), label, dt))
            else:
                self.rotations.append((label, "timeout", dt))
                say("rotation #%d %s not finished after %.0fs: %s" % (
                    len(self.rotations), label, dt, self.reasons()))

    def reasons(self):
        out = {}
        for n in self.c.nodes:
            st = self.status(n)
            if st is None:
                out[n.name] = "no status"
                continue
            r = st.get("rotation") or {}
            why = [w for w in (r.get("waiting_for"), (r.get("proof") or {}).get("waiting_for"),
                               (st.get("apply") or {}).get("waiting_for")) if w]
            out[n.name] = "phase %s%s" % (r.get("phase"), (": " + "; ".join(why)) if why else "")
        return out

    def sabotage(self):
        """CHAOS_SABOTAGE=1, the run's self-test: a third into the run, cp-1's EFFECTIVE file
        is replaced behind the agents' back with a key no other server has (the naive push
        atrest exists to prevent). The run must then end with result=fail."""
        self.sleep(self.seconds / 3)
        if self.over():
            return
        say("SABOTAGE: cp-1's effective file replaced with a rogue key, bypassing the agents")
        atomic_write(self.c.nodes[0].effective,
                     keyed_config("aescbc", ("rogue", self.keys.new(32))))

    # -- the end --
    def finish(self):
        label, config = self.target
        say("faults stopped (%d); healing; waiting up to %ds for rotation %s" % (
            len(self.faults), FINAL_GRACE, label))
        self.heal()
        stuck = None
        t = time.monotonic()
        ok = False
        for _ in range(FINAL_GRACE * 4):
            if self.finished(config):
                ok = True
                break
            time.sleep(0.25)
        last = self.rotations[-1] if self.rotations else None
        if ok and (last is None or last[0] != label or last[1] != "done"):
            dt = time.monotonic() - t
            self.rotations.append((label, "done", time.monotonic() - self.target_t))
            say("rotation #%d %s done (%.1fs after the faults stopped)" % (
                len(self.rotations), label, dt))
        elif not ok:
            why = self.reasons()
            say("rotation %s not finished after %ds: %s" % (label, FINAL_GRACE, why))
            if not any(":" in w for w in why.values()):
                stuck = "rotation %s stuck without a reason: %s" % (label, why)
        self.watch_processes()
        res = self.chk.final_check(self.tr)
        objects = sum(len(self.c.scan(r)) for r in RESOURCES)
        return res, stuck, objects

    def verdict(self, res, stuck, teardown_errors):
        counts = res.counts
        tr = self.tr.results()
        expected_noise = []           # connection errors while a fault held a server down
        decrypt, never_written = [], []
        for e in tr["errors"]:
            msg = e["error"] or ""
            if "was never written" in msg:
                never_written.append(e)
            elif Traffic.is_decrypt_error(e) and not any(
                    s in msg for s in ("etcd", "Connection", "timed out", "refused")):
                decrypt.append(e)
            else:
                expected_noise.append(e)
        lost = counts["lost-update"] + counts["content"] + counts["missing"] + len(never_written)
        unreadable = counts["S2-unreadable"] + counts["down"] + len(decrypt)
        s1 = counts["S1-write"] + counts["S1-stored"]
        say("traffic: %d writes, %d reads, %d errors (%d while a server or etcd was down, "
            "%d decrypt errors, %d unknown contents)" % (
                tr["writes"], tr["reads"], len(tr["errors"]), len(expected_noise),
                len(decrypt), len(never_written)))
        by = collections.Counter(e["status"] for e in expected_noise)
        if expected_noise:
            say("fault-time errors by HTTP status: %s" % dict(by))
            texts = collections.Counter("%s %s: %s" % (e["role"], e["status"], e["error"][:160])
                                        for e in expected_noise if e["status"] is not None)
            for t, k in texts.most_common(5):
                say("  %dx %s" % (k, t))
        if res.sampler_errors:
            say("sampler errors (a simulator restarting): first %s" % res.sampler_errors[0])
        for e in (decrypt + never_written)[:20]:
            say("FINDING: %s %s %s/%s at +%.1fs: %s %s" % (e["role"], e["op"], e["node"],
                                                          e["name"], e["t"], e["status"],
                                                          e["error"][:300]))
        say("S1/S2 checker: %d samples, %d sampler errors; rules: %s" % (
            res.samples, len(res.sampler_errors), dict(counts) or "none"))
        found = [v for v in res.violations if v.rule not in ("read-error", "write-error")]
        for v in found[:30]:
            say("FINDING: %s" % v)
        if len(found) > 30:
            say("... %d more findings" % (len(found) - 30))
        for note in res.notes:
            say("  " + note)
        kinds = collections.Counter(k for _t, k, _n in self.faults)
        say("faults by kind: %s" % dict(kinds))
        for k, why in self.skipped.items():
            say("skipped %s: %s" % (k, why))
        done = sum(1 for r in self.rotations if r[1] == "done")
        say("rotations: %d done (%d distinct ids in history), %d timed out while faults went "
            "on: %s" % (done, len(self.done_ids), sum(1 for r in self.rotations if r[1] != "done"),
                        " ".join("%s:%s:%.0fs" % r for r in self.rotations)))
        fail = []
        if lost:
            fail.append("lost=%d" % lost)
        if unreadable:
            fail.append("unreadable=%d" % unreadable)
        if s1:
            fail.append("S1 violations=%d" % s1)
        if stuck:
            fail.append(stuck)
        if res.samples < 10:
            fail.append("the S1 sampler took only %d samples" % res.samples)
        if done == 0:
            fail.append("no rotation finished")
        fail += ["unexpected exit: " + u for u in self.unexpected]
        fail += ["harness: " + h for h in self.harness_errors]
        fail += ["teardown: " + t for t in teardown_errors]
        for f in fail:
            say("FAIL: %s" % f)
        return not fail, done, lost, unreadable

    # -- teardown --
    def teardown(self):
        if self.torn_down:
            return []
        self.torn_down = True
        self.halt.set()
        errors = []
        if self.c is not None:
            try:
                self.heal()
            except Exception:             # noqa: BLE001 (teardown goes on)
                pass
            try:
                self.c.close()
            except AssertionError as e:
                errors.append(str(e)[:2000])
            except Exception as e:        # noqa: BLE001
                errors.append(repr(e))
        if self.etcd is not None:
            self.etcd.stop()
            errors += self.etcd.leftovers()
        if self.netns is not None:
            self.netns.destroy()
        if self.tmpfs is not None:
            self.tmpfs.umount()
        if not errors and os.environ.get("CHAOS_KEEP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            say("logs kept in %s" % self.tmp)
        return errors

    def main(self):
        threads = []
        try:
            self.setup()
            threads = [threading.Thread(target=self.fault_loop, name="faults", daemon=True),
                       threading.Thread(target=self.rotation_loop, name="rotations",
                                        daemon=True)]
            if os.environ.get("CHAOS_SABOTAGE") == "1":
                threads.append(threading.Thread(target=self.sabotage, name="sabotage",
                                                daemon=True))
            for t in threads:
                t.start()
            self.halt.wait(self.seconds)
            self.halt.set()
            for t in threads:
                t.join(120)
                if t.is_alive():
                    self.harness_errors.append("thread %s did not stop" % t.name)
            with self.pushing:        # a partial push completes before the end
                pass
            res, stuck, objects = self.finish()
        except BaseException:
            say("run aborted:\n" + traceback.format_exc()[-3000:])
            errs = self.teardown()
            for e in errs:
                say("teardown: " + e)
            self.last_line(False, 0, 0, -1, -1)
            return 1
        errs = self.teardown()
        ok, done, lost, unreadable = self.verdict(res, stuck, errs)
        self.last_line(ok, done, objects, lost, unreadable)
        return 0 if ok else 1

    def last_line(self, ok, rotations, objects, lost, unreadable):
        say("CHAOS seed=%d (replay: CHAOS_SEED=%d CHAOS_SECONDS=%d)" % (
            self.seed, self.seed, self.seconds))
        with OUT_LOCK:
            print("CHAOS result=%s faults=%d rotations=%d objects=%d lost=%d unreadable=%d "
                  "seconds=%d" % ("ok" if ok else "fail", len(self.faults), rotations, objects,
                                  lost, unreadable, round(time.monotonic() - T0)), flush=True)


def main():
    seconds = int(os.environ.get("CHAOS_SECONDS", "600"))
    seed = os.environ.get("CHAOS_SEED")
    seed = int(seed) if seed else int.from_bytes(os.urandom(4), "big")
    binary = os.environ.get("ATREST", str(ROOT / "atrest"))
    ch = Chaos(seconds, seed, binary)
    atexit.register(ch.teardown)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_signal)
    return ch.main()


if __name__ == "__main__":
    sys.exit(main())
