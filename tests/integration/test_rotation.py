"""The rotation (DESIGN 4.1-4.4) end to end: three agents, three simulated API servers, one
etcd (tests/integration/cluster.py), settle 1 s, the S1/S2 checker running throughout and the
final check at the end of every test.

Proofs are canary proofs through each simulator's HTTPS API; re-encrypt is the real pass.
More full rotations (every row of the phase table, faults, aborts) are in test_rotation_full.py.
"""
import json
import signal
import subprocess
import time

from conftest import ATREST, wait_for
from cluster import keyed_config

SETTLE = ["--settle-seconds", "1"]


def aescbc(*named):
    return keyed_config("aescbc", *named)


# what a just-started agent reports before it has read the rotation state ("rotation": null)
NOT_YET = {"phase": None, "id": None, "history": [], "members": {}, "waiting_for": ""}


def rot(node):
    return node.agent.status()["rotation"] or dict(NOT_YET)


def phases_seen(c, phase):
    return all(rot(n)["phase"] == phase for n in c.nodes if n.agent.alive())


def cli(*args):
    p = subprocess.run([str(ATREST)] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=30)
    return p.returncode, p.stdout, p.stderr


def settings(node):
    return ["--settings", node.dir / "agent.yaml"]


def leader_of(c):
    for n in c.nodes:
        if n.agent.alive() and n.agent.status().get("is_leader"):
            return n
    return None


def knobs(node, **kw):
    st, doc = node.sim.sim("knobs", kw)
    assert st == 200, (node.name, st, doc)
    return doc


def test_new_key_old_dropped_full_rotation(make_cluster, keys, agent_bin):
    """New write key, old key dropped, pushed node by node: every member stages, proves (canary)
    and acks, promotes, the leader re-encrypts and verifies, every member prunes; the record
    goes to history as done. An abort afterwards has nothing to abort. S1 holds throughout and
    every object reads through every server at the end."""
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = aescbc(k1), aescbc(k2)
    c = make_cluster(n=3, config=old, binary=agent_bin, reload_s=0.2, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(40, old)
    chk = c.checker().start()
    tr = c.traffic(max_s=90).start()
    c.push(new, gap_s=1.0)
    c.wait(lambda: all(rot(n)["phase"] == "done" and rot(n)["history"] for n in c.nodes), 120,
           "the rotation to finish on every node")
    st = rot(c.nodes[0])
    h = st["history"][-1]
    assert h["result"] == "done", h
    assert h["phases"] == ["stage", "promote", "reencrypt", "verify", "prune"], h
    c.wait_loaded(new)
    for n in c.nodes:
        assert c.status(n)["readKeys"]["secrets"] == ["aescbc/key2", "identity"], n.name
    rc, out, err = cli("member", "list", "--json", *settings(c.nodes[0]))
    assert rc == 0, err
    assert sorted(m["node"] for m in json.loads(out) if m["alive"]) == ["cp-1", "cp-2", "cp-3"]
    a = c.nodes[0].agent
    assert a.metric("atrest_rotation_phase", phase="stage") == 0
    assert a.metric("atrest_proof_results_total", kind="canary", result="ok") >= 2
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)
    census = c.census()
    assert census and all(k.startswith("aescbc/key2") for k in census), census


def test_disagreeing_desired_never_start(make_cluster, keys):
    """cp-3's desired config differs: no rotation starts, the status says who has what, and
    every effective file stays as it was."""
    k1, k2, k3 = ("key1", keys.new()), ("key2", keys.new()), ("key3", keys.new())
    old = aescbc(k1)
    c = make_cluster(n=3, config=old, reload_s=0.2, agent_extra=SETTLE)
    c.wait_loaded()
    chk = c.checker().start()
    tr = c.traffic(max_s=30).start()
    before = {n.name: n.effective.read_bytes() for n in c.nodes}
    c.push(aescbc(k1, k2), nodes=[0, 1], gap_s=0.2)
    c.push(aescbc(k1, k3), nodes=[2], gap_s=0)
    c.wait(lambda: "disagree on their desired configs" in rot(c.nodes[0])["waiting_for"], 15,
           "the disagreement to show")
    time.sleep(3)
    for n in c.nodes:
        assert rot(n)["phase"] == "idle", rot(n)
        assert n.effective.read_bytes() == before[n.name], n.name
    assert "cp-3 has" in rot(c.nodes[1])["waiting_for"]
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)


def test_member_down_blocks_and_member_remove(make_cluster, keys):
    """cp-3's agent is down: no rotation starts and the status names it; `atrest member remove`
    is refused while it is alive and accepted once its lease expired; then the two others
    rotate (stage of a new read key)."""
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old = aescbc(k1)
    c = make_cluster(n=3, config=old, reload_s=0.2, agent_extra=SETTLE)
    c.wait_loaded()
    chk = c.checker().start()
    rc, out, err = cli("member", "remove", "cp-3", *settings(c.nodes[0]))
    assert rc == 1 and "refused: cp-3 is alive" in err, (rc, out, err)
    c.nodes[2].agent.kill()
    c.push(aescbc(k1, k2), nodes=[0, 1], gap_s=0.2)
    c.wait(lambda: "cp-3 is not alive" in rot(c.nodes[0])["waiting_for"], 20,
           "cp-3 to be named")
    time.sleep(2)
    assert rot(c.nodes[0])["phase"] == "idle"
    rc, out, err = cli("member", "remove", "cp-3", *settings(c.nodes[0]))
    assert rc == 0, (rc, out, err)
    c.wait(lambda: all(rot(n)["phase"] in ("done",) for n in c.nodes[:2]), 30,
           "the two members to finish the rotation")
    hist = rot(c.nodes[0])["history"]
    # the members report their new effective config (what the next agreement compares)
    c.wait(lambda: all(rot(c.nodes[0])["members"][n]["effective"] == hist[0]["to"]
                       for n in ("cp-1", "cp-2")), 10, "the new effective fingerprints")
    assert hist and hist[0]["result"] == "done" and hist[0]["phases"] == ["stage"], hist
    for n in c.nodes[:2]:
        assert c.status(n)["readKeys"]["secrets"] == ["aescbc/key1", "aescbc/key2", "identity"]
    # atrest status at a glance: the phase, and the finished rotation with its result
    rc, out, err = cli("status", "--addr", "127.0.0.1:%d" % c.nodes[0].agent.port)
    assert rc == 0, err
    assert "rotation   done %s" % hist[0]["id"] in out, out
    assert "FINISHED ROTATION" in out and " done " in out, out
    chk.final_check().assert_ok(min_samples=3)


def test_sigkill_leader_mid_rotation_converges(make_cluster, keys):
    """The leader is SIGKILLed while the rotation waits in stage (one API server refuses to
    reload): another agent leads and holds the recorded phase; the killed agent comes back and
    converges to it; once the server reloads, the rotation finishes."""
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = aescbc(k1), aescbc(k2)
    c = make_cluster(n=3, config=old, reload_s=0.2, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(40, old)
    chk = c.checker().start()
    tr = c.traffic(max_s=120).start()
    stuck = c.nodes[2]
    knobs(stuck, refuseReload=True)
    c.push(new, gap_s=0.5)
    c.wait(lambda: phases_seen(c, "stage"), 60, "phase stage")
    rid = rot(c.nodes[0])["id"]
    old_leader = leader_of(c)
    assert old_leader is not None
    old_leader.agent.kill()
    others = [n for n in c.nodes if n is not old_leader]
    c.wait(lambda: any(n.agent.status().get("is_leader") for n in others), 30, "a new leader")
    new_leader = leader_of(c)
    c.wait(lambda: stuck.name in ((rot(new_leader) or {}).get("waiting_for") or ""), 30,
           "the new leader to hold the recorded phase, waiting for %s" % stuck.name)
    assert rot(new_leader)["id"] == rid and rot(new_leader)["phase"] == "stage"
    old_leader.agent.start()
    c.wait(lambda: (rot(old_leader) or {}).get("id") == rid and rot(old_leader)["phase"] == "stage",
           30,
           "the restarted agent to converge")
    knobs(stuck, refuseReload=False)
    c.wait(lambda: all(rot(n)["phase"] == "done" and rot(n)["history"] for n in c.nodes), 120,
           "the rotation to finish")
    assert rot(c.nodes[0])["history"][-1]["id"] == rid
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)
