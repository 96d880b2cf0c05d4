"""make demo (tests/demo_rotation.py): the CI-sized run, its failure paths and its cleanup.

- test_demo_rotation: the demo with 500 Secrets must end with exactly
  `DEMO result=ok nodes=3 objects=500 reencrypted=500 unreadable=0 seconds=<S>`. Skipped while
  the rotation is not in the binary (`atrest agent --help` has no rotation.settleSeconds, or
  the demo finds no `rotation` in /status: it exits 77 with DEMO_REQUIRE_ROTATION=1).
- the watcher's live line and its stuck-phase limit, against canned /status documents shaped
  as coord/rotation.c's ar_rotation_status_json() writes them;
- a real run that cannot succeed (no rotation yet, or a stuck limit of 1 s) ends with
  result=fail and a reason, never hangs; SIGTERM mid-run stops everything it started.
"""
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ATREST, ROOT, wait_for

DEMO = ROOT / "tests" / "demo_rotation.py"
PY = "/usr/bin/python3"
LAST_OK = re.compile(r"^DEMO result=ok nodes=3 objects=500 reencrypted=500 unreadable=0 "
                     r"seconds=\d+$")
LAST_ANY = re.compile(r"^DEMO result=(ok|fail) nodes=3 objects=(\d+) reencrypted=(\d+) "
                      r"unreadable=(\d+) seconds=(\d+)$")


def agent_help():
    try:
        out = subprocess.run([ATREST, "agent", "--help"], capture_output=True, timeout=10)
    except OSError:
        return ""
    return (out.stdout + out.stderr).decode(errors="replace")


ROTATION_IN_BINARY = "[rotation.settleSeconds]" in agent_help()


def run_demo(objects, timeout, **env):
    """Run the demo to its end; past timeout, SIGTERM it (it then stops what it started) and
    fail with what it printed."""
    e = dict(os.environ, ATREST=ATREST, DEMO_OBJECTS=str(objects), **env)
    p = subprocess.Popen([PY, str(DEMO)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=e, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        raise AssertionError("the demo ran past %d s:\n%s\n%s" % (
            timeout, out.decode(errors="replace")[-6000:], err.decode(errors="replace")[-3000:]))
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def work_dir(out):
    m = re.search(r"work dir (/\S+)", out)
    assert m, out[-3000:]
    return m.group(1)


def processes_mentioning(text):
    """pids whose command line names text (the demo's work dir is in every child's args)."""
    found = []
    for d in pathlib.Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if text.encode() in (d / "cmdline").read_bytes():
                found.append(int(d.name))
        except OSError:
            pass
    return found


@pytest.mark.skipif(not ROTATION_IN_BINARY,
                    reason="the rotation is not in this atrest (no rotation.settleSeconds)")
def test_demo_rotation():
    # nothing moving for 200 s ends the run (result=fail, with the reason), and the whole
    # rotation has 6 times that (demo_rotation.TOTAL_S): both within the test's own limit
    rc, out, err = run_demo(500, 1500, DEMO_REQUIRE_ROTATION="1", DEMO_STUCK_SECONDS="200")
    if rc == 77:
        pytest.skip("the demo found no rotation in /status")
    last = out.rstrip("\n").split("\n")[-1]
    assert LAST_OK.match(last), "last line %r\n%s\n%s" % (last, out[-6000:], err[-3000:])
    assert rc == 0
    assert "S1 violations found = 0" in out
    assert not os.path.exists(work_dir(out))


# ---- the watcher against canned /status documents ------------------------------------------

sys.path.insert(0, str(ROOT / "tests"))
import demo_rotation as demo  # noqa: E402

PHASES = ["stage", "promote", "reencrypt", "verify", "prune"]
FROM = "sha256:" + "a" * 64
TO = "sha256:" + "b" * 64


def rotation_doc(phase, leader, history=()):
    return {"id": "20261130T091500Z-aaaaaaaa-bbbbbbbb", "from": FROM, "to": TO,
            "phase": phase, "phase_since": "2026-11-30T09:15:03Z",
            "waiting_for": "cp-2's API server to load phase promote (4 s; it polls every 2 s)",
            "leader": leader, "abort_refused": None,
            "members": {
                "cp-1": {"alive": True, "effective": TO, "acked": True, "proof": "canary",
                         "last_error": None, "in_rotation": True},
                "cp-2": {"alive": True, "effective": FROM, "acked": False, "proof": None,
                         "last_error": "canary still written with aescbc/key1",
                         "in_rotation": True},
                "cp-3": {"alive": True, "effective": TO, "acked": False, "proof": None,
                         "last_error": None, "in_rotation": True}},
            "reencrypt": {"done": 4200, "total": 10000, "skipped": 0, "conflicts": 3,
                          "rate": 2100.4, "eta_seconds": 2.8},
            "verify": {"counts": {}, "under_dropped_keys": 0, "undecryptable": 0,
                       "passed": False, "first": []},
            "history": list(history)}


class FakeProc:
    returncode = None


class FakeAgent:
    def __init__(self, docs, alive=True):
        self.docs = docs
        self.is_alive = alive
        self.proc = FakeProc()

    def alive(self):
        return self.is_alive

    def status(self):
        return {"rotation": self.docs[0]() if callable(self.docs[0]) else self.docs[0]}

    def log(self):
        return "line 1\nline 2\n"


class FakeSim:
    def alive(self):
        return True


class FakeNode:
    def __init__(self, name, agent):
        self.name, self.agent, self.sim = name, agent, FakeSim()


class FakeCluster:
    def __init__(self, agents):
        self.nodes = [FakeNode("cp-%d" % (i + 1), a) for i, a in enumerate(agents)]


def test_live_line_exact():
    line = demo.rotation_line(rotation_doc("promote", True), PHASES, ["cp-1", "cp-2", "cp-3"])
    assert line == ("rotation 20261130T091500Z-aaaaaaaa-bbbbbbbb: phase promote (2/5)  "
                    "cp-1 acked canary  cp-2 waiting: canary still written with aescbc/key1  "
                    "cp-3 working  reencrypt 4200/10000 2100/s 3 conflicts eta 3 s")
    # reencrypt and verify are acked without a new proof ("none"): just "acked"
    doc = rotation_doc("reencrypt", True)
    doc["members"]["cp-1"]["proof"] = "none"
    doc["reencrypt"] = dict(doc["reencrypt"], done=10000, eta_seconds=0.0)
    assert demo.rotation_line(doc, PHASES, ["cp-1"]) == (
        "rotation 20261130T091500Z-aaaaaaaa-bbbbbbbb: phase reencrypt (3/5)  cp-1 acked  "
        "reencrypt 10000/10000 2100/s 3 conflicts")
    # /status may carry it at the top level or under "cluster"; without it: no rotation
    doc = rotation_doc("stage", True)
    assert demo.rotation_of({"rotation": doc}) is doc
    assert demo.rotation_of({"cluster": {"rotation": doc}}) is doc
    assert demo.rotation_of({"apply": {"mode": "direct"}}) is None
    assert demo.leader_rotation({"cp-1": None, "cp-2": {"rotation": doc}}) is doc
    idle = dict(rotation_doc("idle", True), id=None)
    idle["reencrypt"] = {"done": 0, "total": 0}
    assert demo.rotation_line(idle, PHASES, ["cp-1"]) == "rotation -: phase idle"


def test_stuck_phase_fails_with_the_reason(monkeypatch, capsys):
    monkeypatch.setattr(demo, "STUCK_S", 1.5)
    follower = dict(rotation_doc("promote", False), waiting_for="a follower's view")
    c = FakeCluster([FakeAgent([follower]), FakeAgent([rotation_doc("promote", True)]),
                     FakeAgent([follower])])
    w = demo.Watch()
    t = time.monotonic()
    with pytest.raises(demo.Fail) as e:
        demo.watch_rotation(c, PHASES, TO, t, w)
    assert 1.5 <= time.monotonic() - t < 6
    # the leader's view wins, and its waiting_for is the reason
    assert str(e.value).startswith("phase promote did not move for ")
    assert str(e.value).endswith("; waiting for: cp-2's API server to load phase promote "
                                 "(4 s; it polls every 2 s)")
    out = capsys.readouterr().out
    assert out.count("phase promote (2/5)") == 1, out      # printed on change, not every tick
    assert "          (cp-2's API server to load phase promote (4 s; it polls every 2 s))" in out
    # waiting_for is printed again only when it says something else than numbers
    assert demo.shape("re-encrypting: 2000 of 10016 done") == \
        demo.shape("re-encrypting: 4000 of 10016 done")
    assert demo.shape("verifying") != demo.shape("re-encrypting: 4000 of 10016 done")
    assert w.reencrypt["done"] == 4200 and w.phases[0][0] == "promote"


def test_done_is_read_from_history(monkeypatch, capsys):
    hist = [{"id": "20261130T091500Z-aaaaaaaa-bbbbbbbb", "from": FROM, "to": TO,
             "result": "done", "duration_seconds": 41, "phases": PHASES}]
    seq = iter([rotation_doc("reencrypt", True)] * 2 + [rotation_doc("done", True, hist)] * 50)
    c = FakeCluster([FakeAgent([lambda: next(seq)])])
    w = demo.Watch()
    demo.watch_rotation(c, PHASES, TO, time.monotonic(), w)
    assert w.history["duration_seconds"] == 41
    assert [p for p, _t in w.phases] == ["reencrypt", "done"]
    # done is also recognised by the id seen running (whatever "to" says)
    hist2 = [dict(hist[0], to="sha256:" + "c" * 64)]
    seq2 = iter([rotation_doc("verify", True)] + [rotation_doc("done", True, hist2)] * 50)
    w = demo.Watch()
    demo.watch_rotation(FakeCluster([FakeAgent([lambda: next(seq2)])]), PHASES, TO,
                        time.monotonic(), w)
    assert w.history is hist2[0] and [p for p, _t in w.phases] == ["verify", "done"]
    # an aborted rotation to the same config is a failure
    hist[0]["result"] = "aborted"
    c = FakeCluster([FakeAgent([rotation_doc("aborted", True, hist)])])
    with pytest.raises(demo.Fail, match="^the rotation ended aborted$"):
        demo.watch_rotation(c, PHASES, TO, time.monotonic(), demo.Watch())


def test_an_exited_agent_fails_at_once():
    c = FakeCluster([FakeAgent([rotation_doc("stage", True)]),
                     FakeAgent([rotation_doc("stage", False)], alive=False)])
    with pytest.raises(demo.Fail, match="^cp-2's agent exited"):
        demo.watch_rotation(c, PHASES, TO, time.monotonic(), demo.Watch())


# ---- real runs that cannot succeed ----------------------------------------------------------

def test_demo_fails_loudly_and_cleans_up():
    """Without the rotation, the agents apply config 2 directly and key1's Secrets become
    unreadable; with it, a 1 s stuck limit ends the run during the settle period. Either way:
    result=fail with a reason, bounded, nothing left running, the work dir removed."""
    t = time.monotonic()
    rc, out, err = run_demo(50, 300, DEMO_STUCK_SECONDS="1", DEMO_GAP="0.5")
    lines = out.rstrip("\n").split("\n")
    m = LAST_ANY.match(lines[-1])
    assert m and m.group(1) == "fail" and m.group(2) == "50", (lines[-1], out[-4000:], err)
    assert rc == 1, (rc, err[-3000:])
    assert lines[-2].startswith("DEMO failed: "), lines[-2]
    if not ROTATION_IN_BINARY:
        assert lines[-2] == ("DEMO failed: this atrest has no rotation: the desired config "
                             "went straight to every effective file")
        assert int(m.group(4)) >= 50        # every seeded Secret (key1) is unreadable
        assert m.group(3) == "0"
    assert time.monotonic() - t < 200
    wd = work_dir(out)
    assert not os.path.exists(wd)
    assert processes_mentioning(wd) == []


def test_demo_sigterm_stops_everything():
    e = dict(os.environ, ATREST=ATREST, DEMO_OBJECTS="50", DEMO_GAP="30")
    p = subprocess.Popen([PY, str(DEMO)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=e, start_new_session=True)
    try:
        seen = []
        deadline = time.monotonic() + 120
        for _ in range(10000):                  # until the first push (then it waits 30 s)
            line = p.stdout.readline().decode(errors="replace")
            seen.append(line)
            if not line or "pushed to" in line or time.monotonic() > deadline:
                break
        assert "pushed to" in seen[-1], "".join(seen)
        wd = work_dir("".join(seen))
        assert processes_mentioning(wd), "the demo's cluster is not running"
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    out = "".join(seen) + out.decode(errors="replace")
    assert p.returncode == 128 + signal.SIGTERM, (p.returncode, out[-3000:], err[-3000:])
    lines = out.rstrip("\n").split("\n")
    assert lines[-2] == "DEMO failed: interrupted by SIGTERM", lines[-3:]
    assert LAST_ANY.match(lines[-1]) and " result=fail " in lines[-1], lines[-1]
    assert "stopped everything it started" in out
    assert not os.path.exists(wd)
    wait_for(lambda: processes_mentioning(wd) == [], 10, "no process of the demo left")
