#!/usr/bin/python3
"""make demo: the HA key rotation, end to end, on loopback.

A real etcd, three kube-apiserver simulators (tests/kapisim, HTTPS + token, polling their
encryption config every DEMO_POLL seconds) and three `atrest agent`s, all started through the
cluster harness of the integration tests (tests/integration/cluster.py). It seeds DEMO_OBJECTS
Secrets straight into etcd under aescbc key1, pushes a desired config with a new key2 and key1
dropped to the three nodes DEMO_GAP seconds apart (as configuration management would), shows
the rotation live from the agents' /status, then reads every Secret through every simulated
API server and prints a summary. The S1/S2 checker of the harness samples all along, and light
traffic (a writer through cp-1, readers through cp-2 and cp-3) runs during the rotation.

The last line is always
    DEMO result=ok|fail nodes=3 objects=<N> reencrypted=<N> unreadable=<U> seconds=<S>
objects: Secrets seeded under key1; reencrypted: seeded Secrets stored under the new write key
(key2) at the end; unreadable: stored Secrets that some API server could not read at the end;
seconds: from the first push to the end of the rotation. Exit 0 with result=ok, 1 otherwise
(128 + the signal's number when a signal stopped it);
with DEMO_REQUIRE_ROTATION=1, exit 77 at once when the agents' /status has no rotation.

Environment: ATREST (default ./atrest), DEMO_OBJECTS (10000), DEMO_POLL (2), DEMO_SETTLE (3),
DEMO_GAP (3), DEMO_STUCK_SECONDS (600: a phase that does not move for this long ends the demo
with result=fail and the status's waiting_for), DEMO_KEEP=1 (keep the temp dir).
Bounded: every wait has a limit; SIGINT/SIGTERM/SIGHUP stop everything it started.
"""
import collections
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("ATREST", str(ROOT / "atrest"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import cluster as cl  # noqa: E402  (the harness; imports conftest for Etcd, KapiSim, Agent)
from conftest import ATREST, Etcd, Keys  # noqa: E402

NODES = 3
OBJECTS = int(os.environ.get("DEMO_OBJECTS", "10000"))
POLL_S = float(os.environ.get("DEMO_POLL", "2"))
SETTLE_S = int(os.environ.get("DEMO_SETTLE", "3"))
GAP_S = float(os.environ.get("DEMO_GAP", "3"))
STUCK_S = float(os.environ.get("DEMO_STUCK_SECONDS", "600"))
TOTAL_S = STUCK_S * 6             # the whole rotation, whatever moves
NO_ROTATION_S = 60                # without a rotation: how long to watch the direct apply
LEASE_TTL = 3
CANARY_NS = "atrest-canary"
NEW_WRITE_KEY = "aescbc/key2"
OLD_KEY = "aescbc/key1"
SKIP = 77

T0 = time.monotonic()


class Interrupted(Exception):
    def __init__(self, signum):
        super().__init__("interrupted by %s" % signal.Signals(signum).name)
        self.signum = signum


class Fail(Exception):
    pass


def say(msg=""):
    print(msg, flush=True)


def stamp():
    return "[%6.1fs]" % (time.monotonic() - T0)


def step(msg):
    say("\n==== %s %s" % (stamp(), msg))


def short(fp):
    return (fp or "none").replace("sha256:", "")[:12]


DEFER = {"on": False, "sig": None}


def on_signal(sig, _frame):
    if DEFER["on"]:                # starting processes: stop right after (see deferred())
        DEFER["sig"] = DEFER["sig"] or sig
        return
    # once: cleanup must not be interrupted by a second signal
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(sig)


class deferred:
    """Signals wait until the end of the block (bounded: the harness's start timeouts). An
    exception raised inside subprocess.Popen can leave a started child that nobody knows
    of; so while processes start, a signal is only noted, and acted on once they all are
    known (and so stopped by the cleanup)."""

    def __enter__(self):
        DEFER["on"] = True

    def __exit__(self, *exc):
        DEFER["on"] = False
        if DEFER["sig"] is not None:
            on_signal(DEFER["sig"], None)
        return False


def agent_settings():
    """{yaml path: flag} from `atrest agent --help` ("--flag V  text [path]")."""
    out = subprocess.run([ATREST, "agent", "--help"], capture_output=True, timeout=10)
    paths = {}
    for line in (out.stdout + out.stderr).decode(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("--") and line.endswith("]") and "[" in line:
            paths[line[line.rindex("[") + 1:-1]] = line.split()[0]
    return paths


def agent_flags(paths):
    """The demo's settings as flags (every setting has one); notes say what is used."""
    flags, notes = [], []
    if "rotation.settleSeconds" in paths:
        flags += [paths["rotation.settleSeconds"], str(SETTLE_S)]
        notes.append("rotation.settleSeconds %d (default 30)" % SETTLE_S)
    else:
        notes.append("rotation.settleSeconds: not a setting of this atrest (its default holds)")
    if "proof.canaryNamespace" in paths:
        flags += [paths["proof.mode"], "canary", paths["proof.canaryNamespace"], CANARY_NS]
        notes.append("proof.mode canary in namespace %s" % CANARY_NS)
    return flags, notes


def plan(tmp, old, new):
    """Phase names and fingerprints of old -> new, from `atrest plan --json` (files 0600)."""
    import json
    files = []
    for name, text in (("from.yaml", old), ("to.yaml", new)):
        p = tmp / name
        cl.atomic_write(p, text)
        files.append(str(p))
    out = subprocess.run([ATREST, "plan", "--from", files[0], "--to", files[1], "--json"],
                         capture_output=True, timeout=30)
    if out.returncode != 0:
        raise Fail("atrest plan failed: %s" % out.stderr.decode(errors="replace").strip())
    d = json.loads(out.stdout)
    return [p["phase"] for p in d["phases"]], d["from"]["fingerprint"], d["to"]["fingerprint"]


# ---- watching the agents ----------------------------------------------------------------------

def statuses(c):
    out = {}
    for n in c.nodes:
        try:
            out[n.name] = n.agent.status()
        except (OSError, AssertionError, ValueError):
            out[n.name] = None
    return out


def check_processes(c):
    for n in c.nodes:
        if not n.agent.alive():
            raise Fail("%s's agent exited (status %s); last log lines:\n%s" % (
                n.name, n.agent.proc.returncode, "\n".join(n.agent.log().splitlines()[-8:])))
        if not n.sim.alive():
            raise Fail("%s's API server simulator exited" % n.name)


def rotation_of(st):
    """The `rotation` object of one /status document (top level, or under `cluster`), None
    when this build has none."""
    if not isinstance(st, dict):
        return None
    rot = st.get("rotation", (st.get("cluster") or {}).get("rotation"))
    return rot if isinstance(rot, dict) else None


def leader_rotation(sts):
    """The rotation object of the leader's /status (the most complete view), else any."""
    rots = [r for r in (rotation_of(s) for s in sts.values()) if r is not None]
    lead = [r for r in rots if r.get("leader")]
    return (lead or rots or [None])[0]


def member_text(name, m):
    if m is None:
        return "%s ?" % name
    if not m.get("alive", True):
        return "%s DOWN" % name
    if m.get("acked"):
        proof = m.get("proof")
        return "%s acked" % name + (" " + proof if proof and proof != "none" else "")
    if m.get("last_error"):
        return "%s waiting: %s" % (name, m["last_error"])
    return "%s working" % name


def rotation_line(rot, phases, names):
    ph = rot.get("phase")
    where = " (%d/%d)" % (phases.index(ph) + 1, len(phases)) if ph in phases else ""
    parts = ["rotation %s: phase %s%s" % (rot.get("id") or "-", ph, where)]
    members = rot.get("members") or {}
    if ph not in ("idle", "done", "aborted"):
        parts += [member_text(n, members.get(n)) for n in names]
    re = rot.get("reencrypt") or {}
    if re.get("total"):
        parts.append("reencrypt %d/%d %.0f/s" % (re.get("done", 0), re["total"],
                                                re.get("rate") or 0))
        if re.get("conflicts"):
            parts[-1] += " %d conflicts" % re["conflicts"]
        if re.get("eta_seconds") is not None and re.get("done", 0) < re["total"]:
            parts[-1] += " eta %.0f s" % re["eta_seconds"]
    ver = rot.get("verify") or {}
    if ph == "verify" and (ver.get("under_dropped_keys") or ver.get("undecryptable")):
        parts.append("verify: %d under dropped keys, %d undecryptable" % (
            ver.get("under_dropped_keys", 0), ver.get("undecryptable", 0)))
    return "  ".join(parts)


class Watch:
    """What the demo saw of the rotation: phases with the time first seen, the largest
    re-encrypt progress, the history entry at the end."""

    def __init__(self):
        self.phases = []          # (phase, seconds since the first push)
        self.reencrypt = {}
        self.history = None
        self.waiting = ""
        self.ids = set()          # rotation ids seen running


def progress(rot):
    """What counts as movement: the rotation, its phase, acks and re-encrypt progress."""
    if rot is None:
        return None
    acks = tuple(sorted(n for n, m in (rot.get("members") or {}).items()
                        if (m or {}).get("acked")))
    return (rot.get("id"), rot.get("phase"), acks, (rot.get("reencrypt") or {}).get("done"))


def shape(text):
    """A waiting_for sentence without its numbers: printed again only when this changes."""
    return "".join("#" if ch.isdigit() else ch for ch in text)


def watch_rotation(c, phases, to_fp, t_push, w):
    """Show the rotation until the leader's /status says it is done (history names config
    2): a line on every change of phase or acks, else at most once a second (re-encrypt
    progress) or every 10 s; the leader's waiting_for when it says something new. Fail when
    it ends otherwise, an agent or simulator exits, or nothing moves for STUCK_S seconds (the
    reason is the status's waiting_for). Looks 4 times a second to catch short phases."""
    names = [n.name for n in c.nodes]
    last_line, last_print, last_major, last_waiting = None, 0.0, None, None
    key, key_t = None, time.monotonic()
    deadline = time.monotonic() + TOTAL_S
    while time.monotonic() < deadline:
        t = time.monotonic()
        check_processes(c)
        rot = leader_rotation(statuses(c))
        ph = (rot or {}).get("phase")
        line = rotation_line(rot, phases, names) if rot else "no agent answers /status"
        if ph and ph != "idle" and (not w.phases or w.phases[-1][0] != ph):
            w.phases.append((ph, t - t_push))
        if rot is not None:
            re = rot.get("reencrypt") or {}
            if re.get("total") and re.get("done", 0) >= w.reencrypt.get("done", 0):
                w.reencrypt = dict(re)
            w.waiting = rot.get("waiting_for") or ""
            if ph not in ("idle", "done", "aborted") and rot.get("id"):
                w.ids.add(rot["id"])
            hist = rot.get("history") or []
            # the newest history entry is this rotation: it goes to config 2, or it is the
            # one seen running
            if ph in ("done", "aborted") and hist and (hist[0].get("to") == to_fp or
                                                       hist[0].get("id") in w.ids):
                w.history = hist[0]
                say("%s %s" % (stamp(), line))
                if hist[0].get("result") != "done":
                    raise Fail("the rotation ended %s" % hist[0].get("result"))
                return
        k = progress(rot)
        if k != key:
            key, key_t = k, t
        if t - key_t > STUCK_S:
            raise Fail("phase %s did not move for %.0f s; waiting for: %s"
                       % (ph, t - key_t, w.waiting or "(no reason given)"))
        major = k[:3] if k else None
        if major != last_major or (line != last_line and t - last_print >= 1) or \
                t - last_print >= 10:
            say("%s %s" % (stamp(), line))
            last_line, last_print, last_major = line, t, major
        if w.waiting and shape(w.waiting) != last_waiting:
            say("          (%s)" % w.waiting)
            last_waiting = shape(w.waiting)
        time.sleep(max(0.05, 0.25 - (time.monotonic() - t)))
    raise Fail("the rotation did not finish in %.0f s; waiting for: %s" % (TOTAL_S, w.waiting))


def watch_direct(c, new):
    """No rotation in this atrest: the agents write the desired config straight to the
    effective file. Show what each API server loads, and the stored values."""
    deadline = time.monotonic() + NO_ROTATION_S
    new_sha = None
    last = None
    while time.monotonic() < deadline:
        check_processes(c)
        loaded = []
        done = 0
        for n in c.nodes:
            sha = c.status(n)["configSha256"]
            ok = cl.same_config(n.effective.read_bytes(), new) and \
                sha == cl.sha256(n.effective.read_bytes())
            done += ok
            loaded.append("%s loaded file %s%s" % (n.name, short(sha), " (config 2)" if ok else ""))
        line = "  ".join(loaded)
        if line != last:
            say("%s %s" % (stamp(), line))
            last = line
        if done == len(c.nodes):
            new_sha = True
            break
        time.sleep(1)
    census = c.census()
    say("%s stored Secrets: %s" % (stamp(), dict(census)))
    return new_sha


# ---- the demo ---------------------------------------------------------------------------------

class DemoChecker(cl.Checker):
    """The harness's checker, also collecting every etcd key some server could not read or
    list at the final check (its report keeps only the first few per rule and node)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.unreadable = set()

    def violation(self, rule, node, key, pk, detail, dedup=None):
        if rule in ("S2-unreadable", "missing") and key:
            with self.lock:
                self.unreadable.add(key)
        super().violation(rule, node, key, pk, detail, dedup)


def final_numbers(c, chk, seeded_keys):
    """unreadable: distinct stored Secrets some server could not read (or list);
    reencrypted: seeded Secrets now stored under the new write key."""
    bad = chk.unreadable
    stored = {k.decode(): v for k, v, _m in c.scan("secrets")}
    reenc = sum(1 for k in seeded_keys if k in stored and cl.provider_key(stored[k]) ==
                NEW_WRITE_KEY)
    return len(bad), reenc


def run(state):
    paths = agent_settings()
    flags, notes = agent_flags(paths)
    keys = Keys()
    state["keys"] = keys
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old = cl.keyed_config("aescbc", k1)
    new = cl.keyed_config("aescbc", k2)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="atrest-demo."))
    state["tmp"] = tmp
    phases, from_fp, to_fp = plan(tmp, old, new)

    step("the setup")
    say("atrest: %s" % ATREST)
    say("config 1 (from, %s): secrets and configmaps under aescbc key1, then identity"
        % short(from_fp))
    say("config 2 (to,   %s): aescbc key2 only (key1 dropped), then identity" % short(to_fp))
    say("atrest plan: phases %s" % " -> ".join(phases))
    say("short intervals for the demo: simulators poll their file every %g s "
        "(kube-apiserver: 60 s); %s; etcd lease TTL %d s" % (POLL_S, "; ".join(notes), LEASE_TTL))
    say("keys are generated now (os.urandom) and never printed; work dir %s" % tmp)

    step("start etcd, %d kube-apiserver simulators and %d agents on loopback" % (NODES, NODES))
    # etcd is the demo's own (not the harness's), so that a signal during its start still
    # finds it to stop
    with deferred():
        etcd = state["etcd"] = Etcd(tmp / "etcd")
        etcd.start()
        c = cl.Cluster(tmp / "cluster", keys, n=NODES, config=old, reload_s=POLL_S,
                       agent_extra=flags, lease_ttl=LEASE_TTL, etcd=etcd)
        state["cluster"] = c
        c.start()
    say("etcd %s" % c.etcd.endpoint)
    for n in c.nodes:
        say("%s: simulator %s, agent status http://127.0.0.1:%d/status" % (
            n.name, n.sim.url, n.agent.port))
    sts = statuses(c)
    has_rotation = any(rotation_of(s) is not None for s in sts.values())
    if not has_rotation:
        say("NOTE: this atrest's /status has no 'rotation': the rotation protocol is not in this "
            "build; the agents write the desired config straight to the effective file")
        if os.environ.get("DEMO_REQUIRE_ROTATION") == "1":
            state["skip"] = True
            raise Fail("no rotation in this build (DEMO_REQUIRE_ROTATION=1)")

    step("seed %d Secrets straight into etcd, encrypted with key1" % OBJECTS)
    t = time.monotonic()
    names = c.seed(OBJECTS, old, ns="demo")
    state["objects"] = len(names)
    seeded_keys = ["/registry/secrets/demo/" + nm for nm in names]
    say("%d Secrets in %.1f s; stored: %s" % (len(names), time.monotonic() - t,
                                             dict(c.census())))

    step("start the S1/S2 checker and traffic (writer via cp-1, readers via cp-2, cp-3)")
    ignore = ("/registry/secrets/%s/" % CANARY_NS, "/registry/secrets/kube-system/atrest-")
    chk = DemoChecker(c, interval_s=0.5, sample=100, ignore_keys=ignore)
    c.threads.append(chk)           # as c.checker() does: close() stops it
    chk.start()
    tr = c.traffic(max_s=TOTAL_S + NO_ROTATION_S, max_ops=10 ** 6, interval_s=0.1, names=16,
                   ns="demo-traffic")
    tr.start()
    chk.wait_samples(2, 30)
    say("checker sampling every 0.5 s; traffic running")

    step("push config 2 to the desired files, %g s apart (configuration management)" % GAP_S)
    t_push = time.monotonic()
    state["t_push"] = t_push
    for i, n in enumerate(c.nodes):
        if i:
            time.sleep(GAP_S)
        cl.atomic_write(n.desired, new)
        say("%s pushed to %s" % (stamp(), n.desired))

    w = Watch()
    state["watch"] = w
    if has_rotation:
        step("the rotation, live (leader's /status, once a second or on change)")
        try:
            watch_rotation(c, phases, to_fp, t_push, w)
        except Fail as e:
            state["reason"] = str(e)
        state["rotation_s"] = time.monotonic() - t_push
        if not state.get("reason"):
            try:
                c.wait_loaded(new, timeout=30)
            except AssertionError as e:
                state["reason"] = "not every API server loaded config 2: %s" % \
                    str(e).splitlines()[0]
    else:
        step("no rotation: watch each API server load config 2 directly")
        if not watch_direct(c, new):
            state["reason"] = "not every API server loaded config 2 in %d s" % NO_ROTATION_S
        state["rotation_s"] = time.monotonic() - t_push
        state.setdefault("reason", "this atrest has no rotation: the desired config went "
                         "straight to every effective file")

    step("final check: every Secret through every API server")
    t = time.monotonic()
    res = chk.final_check(tr)
    unreadable, reenc = final_numbers(c, chk, seeded_keys)
    state["unreadable"], state["reencrypted"] = unreadable, reenc
    census = c.census()
    # the canary Secret the proof writes straight into etcd is the agents', not the demo's
    ours = collections.Counter(cl.provider_key(v) for k, v, _m in c.scan("secrets")
                               if not k.startswith(tuple(x.encode() for x in ignore)))
    say("read every Secret through %d servers in %.1f s" % (NODES, time.monotonic() - t))

    step("summary")
    for ph, at in w.phases:
        say("phase %-9s first seen %6.1f s after the first push" % (ph, at))
    if w.history:
        hh = w.history
        say("history: %s %s in %s s, phases %s" % (hh.get("id"), hh.get("result"),
                                                   hh.get("duration_seconds"),
                                                   " ".join(hh.get("phases") or [])))
    if w.reencrypt:
        re = w.reencrypt
        say("re-encrypt (the leader's count): %d of %d objects handled (%d skipped: already "
            "under key2, %d conflicts: written meanwhile by an API server), %.0f objects/s" % (re.get("done", 0), re.get("total", 0), re.get("skipped", 0),
                                re.get("conflicts", 0), re.get("rate") or 0))
    say("stored Secrets at the end: %s" % dict(census))
    for note in res.notes:
        say(note)
    s1 = sum(n for r, n in res.counts.items() if r.startswith("S1"))
    say("checker: %d samples, S1 violations found = %d, S2 (unreadable or missing) = %d, "
        "other findings = %d" % (res.samples, s1, sum(res.counts[r] for r in (
            "S2-unreadable", "missing")), sum(res.counts.values()) - s1 - sum(
                res.counts[r] for r in ("S2-unreadable", "missing"))))
    if not res.ok:
        shown = collections.Counter()
        for v in res.violations:           # the first two findings of each rule
            if shown[v.rule] < 2:
                shown[v.rule] += 1
                say("  %s" % v)
        say("  (%d findings in all: %s)" % (sum(res.counts.values()), dict(res.counts)))
        state.setdefault("reason", "the checker found %d violation(s)" %
                         sum(res.counts.values()))
    if res.samples < 1 or res.sampler_errors:
        state.setdefault("reason", "the S1 sampler did not sample cleanly (%d samples, %d "
                         "errors)" % (res.samples, len(res.sampler_errors)))
    if ours.get(OLD_KEY):
        state.setdefault("reason", "%d Secrets still under key1" % ours[OLD_KEY])
    if reenc != len(names):
        state.setdefault("reason", "%d of %d seeded Secrets under key2" % (reenc, len(names)))


def group_alive(pid):
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cleanup(state, failed):
    c = state.get("cluster")
    if c is not None:
        if failed:
            for n in c.nodes:
                if n.agent is not None:
                    say("--- %s agent log (last lines)" % n.name)
                    for line in n.agent.log().splitlines()[-4:]:
                        say("    " + line)
        try:
            c.close()       # stops traffic, checker, agents, simulators; leak scan
        except AssertionError as e:
            state.setdefault("reason", "teardown: %s" % str(e).splitlines()[0])
    etcd = state.get("etcd")
    if etcd is not None:
        pid = etcd.proc.pid if etcd.proc else None
        etcd.stop()
        if pid and group_alive(pid):
            state.setdefault("reason", "teardown: etcd's process group %d is still there" % pid)
    if c is not None or etcd is not None:
        say("stopped everything it started (agents, simulators, etcd)%s" % (
            "; no key in any agent log or /status body" if c is not None else ""))
    tmp = state.get("tmp")
    if tmp is not None:
        if os.environ.get("DEMO_KEEP") == "1":
            say("kept %s (DEMO_KEEP=1)" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main():
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    state = {"objects": 0, "reencrypted": 0, "unreadable": 0}
    rc = 1
    try:
        try:
            run(state)
        except Fail as e:
            state.setdefault("reason", str(e))
        except Interrupted as e:
            prior = state.get("reason")
            state["reason"] = str(e) + (" (after: %s)" % prior if prior else "")
            rc = 128 + e.signum
        except Exception as e:  # noqa: BLE001 (reported as the demo's failure)
            state.setdefault("reason", "%s: %s" % (type(e).__name__, e))
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        cleanup(state, bool(state.get("reason")) and not state.get("skip"))
    if state.get("skip"):
        say("DEMO skipped: %s" % state["reason"])
        return SKIP
    ok = not state.get("reason")
    if not ok:
        say("DEMO failed: %s" % state["reason"])
    seconds = state.get("rotation_s", time.monotonic() - T0)
    say("DEMO result=%s nodes=%d objects=%d reencrypted=%d unreadable=%d seconds=%d" % (
        "ok" if ok else "fail", NODES, state["objects"], state["reencrypted"],
        state["unreadable"], round(seconds)))
    return 0 if ok else (rc if rc != 1 else 1)


if __name__ == "__main__":
    sys.exit(main())
