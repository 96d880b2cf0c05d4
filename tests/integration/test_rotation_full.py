"""Full rotations end to end with the real proof of load (canary through the simulators' HTTPS
API) and the real re-encrypt pass: three agents, three simulated API servers, one etcd, the
S1/S2 checker running throughout and the final check (every object through every server).

The protocol suite of issue 8: every row of DESIGN 4.2, an API server that never reloads, one
that keeps writing with the old key, a member down, the desired file changed mid-rotation,
SIGKILL of the leader and of a non-leader, abort before promote, and the real 60 s poll."""
import json
import subprocess
import time

import pytest

from conftest import ATREST, enc_config
from cluster import atomic_write, keyed_config

SETTLE = ["--settle-seconds", "1"]
CANARY = ["/registry/secrets/kube-system/"]


# what a just-started agent reports before it has read the rotation state ("rotation": null)
NOT_YET = {"phase": None, "id": None, "history": [], "members": {}, "waiting_for": ""}


def rot(node):
    return node.agent.status()["rotation"] or dict(NOT_YET)


def live(c):
    return [n for n in c.nodes if n.agent is not None and n.agent.alive()]


def cli(*args):
    p = subprocess.run([str(ATREST)] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=30)
    return p.returncode, p.stdout, p.stderr


def settings(node):
    return ["--settings", node.dir / "agent.yaml"]


def leader_of(c):
    for n in live(c):
        if n.agent.status().get("is_leader"):
            return n
    return None


def finished(c, count=1, nodes=None):
    """Every (live) agent reports phase done with at least `count` finished rotations."""
    nodes = live(c) if nodes is None else nodes
    for n in nodes:
        r = rot(n)
        if not r or r["phase"] != "done" or len(r["history"]) < count:   # None: just started
            return False
    return True


def wait_finished(c, timeout, count=1, nodes=None):
    try:
        c.wait(lambda: finished(c, count, nodes), timeout, "the rotation to finish")
    except AssertionError as e:
        raise AssertionError("%s\n%s" % (e, json.dumps(
            {n.name: rot(n) for n in live(c)}, indent=1)[:6000])) from None
    return rot((nodes or live(c))[0])["history"]


def in_phase(c, phases):
    return any(rot(n)["phase"] in phases for n in live(c))


def knobs(node, **kw):
    st, doc = node.sim.sim("knobs", kw)
    assert st == 200, (node.name, st, doc)
    return doc


def test_full_rotation_new_key_old_dropped(make_cluster, keys):
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = keyed_config("aescbc", k1), keyed_config("aescbc", k2)
    c = make_cluster(n=3, config=old, reload_s=0.5, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(200, old)
    chk = c.checker(ignore_keys=CANARY).start()
    tr = c.traffic(max_s=120).start()
    c.push(new, gap_s=1.0)
    h = wait_finished(c, 90)[-1]
    assert h["result"] == "done", h
    c.wait_loaded(new)
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)
    census = c.census()
    assert all(k.startswith("aescbc/key2") for k in census), census


# ---- 1. every row of DESIGN 4.2 -----------------------------------------------------------

def _rows(keys):
    k1, k2, s1 = ("key1", keys.new()), ("key2", keys.new()), ("s1", keys.new())
    secrets_only = enc_config([(["secrets"], [("aescbc", [k1]), ("identity",)])])
    return {
        "new-key-old-kept": (keyed_config("aescbc", k1), keyed_config("aescbc", k2, k1),
                             {"secrets": "aescbc/key2"}),
        "encryption-on": (enc_config([(["secrets", "configmaps"], [("identity",)])]),
                          keyed_config("aescbc", k1), {"secrets": "aescbc/key1"}),
        "provider-type": (keyed_config("aescbc", k1), keyed_config("secretbox", s1),
                          {"secrets": "secretbox/s1"}),
        "encryption-off": (keyed_config("aescbc", k1),
                           enc_config([(["secrets", "configmaps"], [("identity",)])]),
                           {"secrets": "identity"}),
        "resource-list": (secrets_only, keyed_config("aescbc", k1),
                          {"secrets": "aescbc/key1", "configmaps": "aescbc/key1"}),
    }


@pytest.mark.parametrize("row", ["new-key-old-kept", "encryption-on", "provider-type",
                                 "encryption-off", "resource-list"])
def test_every_row_of_the_phase_table(make_cluster, keys, row):
    """One rotation per kind of change: it finishes (history done), every server loaded
    exactly `to`, and every stored object is under to's write key."""
    old, new, expect = _rows(keys)[row]
    c = make_cluster(n=3, config=old, reload_s=0.3, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(60, old)
    c.seed(60, old, resource="configmaps")
    res = ("secrets", "configmaps")
    chk = c.checker(ignore_keys=CANARY, resources=res).start()
    tr = c.traffic(max_s=120).start()
    c.push(new, gap_s=1.0)
    hist = wait_finished(c, 90)
    assert [h["result"] for h in hist] == ["done"], hist
    assert hist[-1]["to"] != hist[-1]["from"], hist
    c.wait_loaded(new)
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)
    for r, pk in expect.items():
        census = c.census(r)
        assert set(census) == {pk}, (r, census)


# ---- 2. an API server that never reloads ----------------------------------------------------

def test_server_that_never_reloads_holds_stage(make_cluster, keys):
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = keyed_config("aescbc", k1), keyed_config("aescbc", k2)
    c = make_cluster(n=3, config=old, reload_s=0.3, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(100, old)
    chk = c.checker(ignore_keys=CANARY).start()
    tr = c.traffic(max_s=150).start()
    stuck = c.nodes[2]
    knobs(stuck, refuseReload=True)
    c.push(new, gap_s=1.0)
    c.wait(lambda: all(rot(n)["phase"] == "stage" for n in c.nodes), 40, "phase stage")
    c.wait(lambda: "cp-3" in rot(leader_of(c) or c.nodes[0])["waiting_for"], 30,
           "the leader to name cp-3")
    c.wait(lambda: (rot(stuck).get("proof") or {}).get("waiting_for"), 20,
           "cp-3's proof to say what it waits for")
    first = rot(c.nodes[0])
    time.sleep(3)
    for n in c.nodes:
        r = rot(n)
        assert r["phase"] == "stage" and r["id"] == first["id"], r   # S9: nothing advances
        assert not r["history"], r
    r = rot(c.nodes[0])
    assert not r["members"]["cp-3"]["acked"], r["members"]
    assert "cp-3" in r["waiting_for"], r["waiting_for"]
    for n in c.nodes:                         # nobody writes with key2 while cp-3 cannot read it
        assert c.status(n)["writeKey"]["secrets"] == "aescbc/key1", n.name
    knobs(stuck, refuseReload=False)
    hist = wait_finished(c, 90)
    assert hist[-1]["result"] == "done" and hist[-1]["id"] == first["id"], hist
    c.wait_loaded(new)
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)
    assert set(c.census()) == {"aescbc/key2"}


# ---- 3. an API server that keeps writing with the old key -----------------------------------

def _keep_old_write_key_at_promote(make_cluster, keys):
    """cp-3's API server loads every file but keeps writing with the old key: its canary WRITE
    proof at promote fails, naming the key it used, and the rotation holds in promote."""
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = keyed_config("aescbc", k1), keyed_config("aescbc", k2, k1)
    c = make_cluster(n=3, config=old, reload_s=0.3, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(100, old)
    chk = c.checker(ignore_keys=CANARY).start()
    tr = c.traffic(max_s=120).start()
    bad = c.nodes[2]
    knobs(bad, keepOldWriteKey=True)
    c.push(new, gap_s=1.0)
    try:
        c.wait(lambda: "key1" in (rot(bad)["members"]["cp-3"]["last_error"] or ""), 60,
               "cp-3's failed write proof naming key1")
    except AssertionError as e:
        raise AssertionError("%s\n%s" % (e, json.dumps({n.name: rot(n) for n in c.nodes},
                                                        indent=1)[:5000])) from None
    return c, chk, tr


def test_server_keeping_old_write_key_fails_promote_proof(make_cluster, keys):
    c, chk, tr = _keep_old_write_key_at_promote(make_cluster, keys)
    r = rot(c.nodes[2])
    assert r["phase"] == "promote", r
    m = r["members"]["cp-3"]
    assert not m["acked"], m
    assert "writes secrets with aescbc:key1, not aescbc:key2" in m["last_error"], m
    assert "aescbc:key1" in r["proof"]["last_error"], r["proof"]
    assert "cp-3" in rot(leader_of(c))["waiting_for"]
    time.sleep(3)
    for n in c.nodes:
        r = rot(n)
        assert r["phase"] == "promote" and not r["history"], r   # never passes promote
        assert r["reencrypt"]["done"] == 0, r["reencrypt"]
    assert c.census()["aescbc/key1"] >= 100      # no re-encrypt happened
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)   # S1 holds: everyone still reads key1


def test_failed_proof_error_visible_from_every_node(make_cluster, keys):
    """A member's failed proof travels in its alive report: every node's /status names why
    cp-3 does not ack (the key its API server still writes with)."""
    c, chk, tr = _keep_old_write_key_at_promote(make_cluster, keys)
    c.wait(lambda: all("aescbc:key1" in (rot(n)["members"]["cp-3"]["last_error"] or "")
                       for n in c.nodes), 30, "cp-3's proof error on every node")
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)


# ---- 4. a member down -----------------------------------------------------------------------

def test_member_down_blocks_then_rotates_with_two(make_cluster, keys):
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = keyed_config("aescbc", k1), keyed_config("aescbc", k2)
    c = make_cluster(n=3, config=old, reload_s=0.3, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(100, old)
    down = c.nodes[2]
    down.agent.kill()                         # the whole node is down: agent and API server
    down.sim.crash()
    chk = c.checker(ignore_keys=CANARY).start()
    tr = c.traffic(max_s=150, readers=[1]).start()
    c.push(new, nodes=[0, 1], gap_s=1.0)
    c.wait(lambda: "cp-3 is not alive" in rot(c.nodes[0])["waiting_for"], 20, "cp-3 named")
    time.sleep(2)
    for n in c.nodes[:2]:
        assert rot(n)["phase"] == "idle", rot(n)
    rc, out, err = cli("member", "remove", "cp-2", *settings(c.nodes[0]))
    assert rc == 1 and "refused: cp-2 is alive" in err, (rc, out, err)

    def removed():
        rc, out, err = cli("member", "remove", "cp-3", *settings(c.nodes[0]))
        assert rc in (0, 1), (rc, out, err)
        return rc == 0
    c.wait(removed, 20, "cp-3 removed once its lease expired")
    hist = wait_finished(c, 90)
    assert hist[-1]["result"] == "done", hist
    c.wait_loaded(new, nodes=[0, 1])
    # the node comes back rebuilt by configuration management with `new`
    atomic_write(down.effective, new)
    down.sim.start()
    c.wait_loaded(new, nodes=[2])
    tr.stop()
    res = chk.final_check(tr)
    # the sampler may catch cp-3's server between its exec and its listen: only that
    assert all("ConnectionRefused" in e for e in res.sampler_errors), res.sampler_errors
    res.assert_ok(min_samples=5, max_sampler_errors=len(res.sampler_errors))
    assert set(c.census()) == {"aescbc/key2"}


# ---- 5. the desired file changes mid-rotation -----------------------------------------------

def test_desired_changed_mid_rotation_runs_two_rotations(make_cluster, keys):
    k1, k2, k3 = ("key1", keys.new()), ("key2", keys.new()), ("key3", keys.new())
    old, mid, new = (keyed_config("aescbc", k) for k in (k1, k2, k3))
    c = make_cluster(n=3, config=old, reload_s=0.3, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(200, old)
    chk = c.checker(ignore_keys=CANARY).start()
    tr = c.traffic(max_s=180).start()
    c.push(mid, gap_s=0.5)
    c.wait(lambda: in_phase(c, ("promote", "reencrypt", "verify")), 60, "promote or later")
    first = rot(c.nodes[0])["id"]
    c.push(new, gap_s=0.5)
    hist = wait_finished(c, 150, count=2)
    assert [h["result"] for h in hist] == ["done", "done"], hist
    a, b = sorted(hist, key=lambda h: h["id"])          # ids begin with their start time
    assert a["id"] == first and a["to"] == b["from"] and b["to"] != a["from"], hist
    c.wait_loaded(new)
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)
    assert set(c.census()) == {"aescbc/key3"}


# ---- 6. SIGKILL in the middle -----------------------------------------------------------------

def test_sigkill_leader_during_reencrypt_converges(make_cluster, keys):
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = keyed_config("aescbc", k1), keyed_config("aescbc", k2)
    c = make_cluster(n=3, config=old, reload_s=0.3, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(3000, old)
    chk = c.checker(ignore_keys=CANARY).start()
    tr = c.traffic(max_s=180).start()
    c.push(new, gap_s=0.5)
    c.wait(lambda: in_phase(c, ("reencrypt", "verify")), 60, "phase reencrypt")
    leader = leader_of(c)
    assert leader is not None
    rid = rot(leader)["id"]
    leader.agent.kill()
    others = [n for n in c.nodes if n is not leader]
    c.wait(lambda: leader_of(c) is not None, 30, "a new leader")
    leader.agent.logf.close()
    leader.agent.start()
    hist = wait_finished(c, 150)
    assert hist[-1]["result"] == "done" and hist[-1]["id"] == rid, hist
    assert all(rot(n)["history"][-1]["id"] == rid for n in others)
    c.wait_loaded(new)
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)
    assert set(c.census()) == {"aescbc/key2"}


def test_sigkill_non_leader_during_stage_converges(make_cluster, keys):
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = keyed_config("aescbc", k1), keyed_config("aescbc", k2)
    c = make_cluster(n=3, config=old, reload_s=0.3, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(100, old)
    chk = c.checker(ignore_keys=CANARY).start()
    tr = c.traffic(max_s=150).start()
    c.push(new, gap_s=0.5)
    c.wait(lambda: in_phase(c, ("stage",)), 40, "phase stage")
    leader = leader_of(c)
    victim = next(n for n in c.nodes if n is not leader)
    c.restart_agent(victim.name, hard=True)
    hist = wait_finished(c, 120)
    assert hist[-1]["result"] == "done", hist
    c.wait_loaded(new)
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)
    assert set(c.census()) == {"aescbc/key2"}


# ---- 7. abort before promote ------------------------------------------------------------------

def test_abort_before_promote_returns_to_from(make_cluster, keys):
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = keyed_config("aescbc", k1), keyed_config("aescbc", k2)
    c = make_cluster(n=3, config=old, reload_s=0.3, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(100, old)
    chk = c.checker(ignore_keys=CANARY).start()
    tr = c.traffic(max_s=150).start()
    knobs(c.nodes[2], refuseReload=True)
    c.push(new, gap_s=1.0)
    c.wait(lambda: all(rot(n)["phase"] == "stage" for n in c.nodes), 40, "phase stage")
    r = rot(c.nodes[0])
    rid, frm = r["id"], r["from"]
    rc, out, err = cli("rotation", "abort", *settings(c.nodes[1]))
    assert rc == 0, (rc, out, err)
    knobs(c.nodes[2], refuseReload=False)

    def aborted():
        for n in c.nodes:
            r = rot(n)
            if not r["history"] or r["history"][-1]["id"] != rid or \
                    r["history"][-1]["result"] != "aborted":
                return False
            if any(m["effective"] != frm for m in r["members"].values()):
                return False
        return True
    try:
        c.wait(aborted, 60, "the rotation to end aborted with every member back on from")
    except AssertionError as e:
        raise AssertionError("%s\n%s" % (e, json.dumps(rot(c.nodes[0]), indent=1))) from None
    c.wait_loaded(old)
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)
    assert set(c.census()) == {"aescbc/key1"}


# ---- 8. the real 60 s poll --------------------------------------------------------------------

def test_default_60s_poll_small_rotation(make_cluster, keys):
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = keyed_config("aescbc", k1), keyed_config("aescbc", k2, k1)
    c = make_cluster(n=3, config=old, reload_s=60, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(50, old)
    chk = c.checker(ignore_keys=CANARY).start()
    tr = c.traffic(max_s=300).start()
    t0 = time.monotonic()
    c.push(new, gap_s=1.0)
    c.wait(lambda: any("polls every 60 s" in ((rot(n).get("proof") or {}).get("waiting_for")
                                              or "") for n in c.nodes), 60,
           "a proof to say the API server polls every 60 s")
    hist = wait_finished(c, 240)
    print("60 s poll rotation took %.0f s" % (time.monotonic() - t0))
    assert hist[-1]["result"] == "done", hist
    c.wait_loaded(new, timeout=90)
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)
    assert set(c.census()) == {"aescbc/key2"}
