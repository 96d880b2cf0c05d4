"""The rotation (DESIGN 4.1-4.4) end to end: three agents, three simulated API servers, one
etcd (tests/integration/cluster.py), settle 1 s, the S1/S2 checker running throughout and the
final check at the end of every test.

Until the re-encrypt engine is merged (coord/reencrypt.c is a stand-in that fails with
ENOSYS), a rotation that must rewrite stored data waits in phase reencrypt and says why: these
tests assert that wait; the lead completes them (re-encrypt, verify, prune) after the merge.
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


def rot(node):
    return node.agent.status()["rotation"]


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


def test_new_key_old_dropped_stage_promote_then_waits_for_reencrypt(make_cluster, keys,
                                                                    agent_bin):
    """New write key, old key dropped, pushed node by node: every member stages, proves and
    acks, then promotes; re-encrypt is not built yet, so the rotation waits there, says why,
    and never advances on a timeout. An abort now is refused with the explanation. S1 holds
    throughout and every object reads through every server at the end."""
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = aescbc(k1), aescbc(k2)
    c = make_cluster(n=3, config=old, binary=agent_bin, reload_s=0.2, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(40, old)
    chk = c.checker().start()
    tr = c.traffic(max_s=90).start()
    c.push(new, gap_s=1.0)
    c.wait(lambda: phases_seen(c, "reencrypt"), 60, "every agent to see phase reencrypt")
    c.wait(lambda: "re-encrypt engine not built" in rot(leader_of(c) or c.nodes[0])["waiting_for"],
           15, "the leader to say why it waits")
    st = rot(c.nodes[0])
    assert st["id"] and st["from"] != st["to"], st
    for name, m in st["members"].items():
        assert m["alive"] and m["acked"] and m["proof"] == "none", (name, m)
    # every server writes with key2 and still reads key1 (promote config, not `new` yet)
    for n in c.nodes:
        assert c.status(n)["readKeys"]["secrets"][:2] == ["aescbc/key2", "aescbc/key1"], n.name
    time.sleep(2)
    assert phases_seen(c, "reencrypt")          # S9: nothing advances on a timeout
    # abort after promote: refused, with the explanation; the rotation goes on
    rc, out, err = cli("rotation", "abort", *settings(c.nodes[1]))
    assert rc == 1, (rc, out, err)
    assert "going back is a new rotation to the old config" in err, err
    rc, out, err = cli("member", "list", "--json", *settings(c.nodes[0]))
    assert rc == 0, err
    assert sorted(m["node"] for m in json.loads(out) if m["alive"] and m["in_rotation"]) == \
        ["cp-1", "cp-2", "cp-3"], out
    a = c.nodes[0].agent
    assert a.metric("atrest_rotation_phase", phase="reencrypt") == 1
    assert a.metric("atrest_rotation_phase", phase="stage") == 0
    assert a.metric("atrest_rotation_acks_total", phase="promote") == 1
    assert a.metric("atrest_proof_results_total", kind="file", result="ok") >= 2
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)


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
    """The leader is SIGKILLed while the rotation waits in reencrypt: another agent leads and
    holds the recorded phase; the killed agent comes back and converges to it (no new ack
    needed, nothing re-derived differently)."""
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = aescbc(k1), aescbc(k2)
    c = make_cluster(n=3, config=old, reload_s=0.2, agent_extra=SETTLE)
    c.wait_loaded()
    chk = c.checker().start()
    tr = c.traffic(max_s=90).start()
    c.push(new, gap_s=0.5)
    c.wait(lambda: phases_seen(c, "reencrypt"), 60, "phase reencrypt")
    rid = rot(c.nodes[0])["id"]
    old_leader = leader_of(c)
    assert old_leader is not None
    old_leader.agent.kill()
    others = [n for n in c.nodes if n is not old_leader]
    c.wait(lambda: any(n.agent.status().get("is_leader") for n in others), 30, "a new leader")
    new_leader = leader_of(c)
    c.wait(lambda: "re-encrypt engine not built" in rot(new_leader)["waiting_for"], 15,
           "the new leader to hold the recorded phase")
    assert rot(new_leader)["id"] == rid
    old_leader.agent.start()
    c.wait(lambda: rot(old_leader)["phase"] == "reencrypt" and rot(old_leader)["id"] == rid, 30,
           "the restarted agent to converge")
    assert rot(old_leader)["members"][old_leader.name]["acked"]
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)
