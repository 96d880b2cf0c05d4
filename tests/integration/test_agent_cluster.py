"""Three agents (a, b, c) on one real etcd, same coordination prefix: exactly one leads and all
agree on it; every agent lists the three members with their reported fingerprints; a change on
one node shows in the others' lists; SIGKILL of the leader fails over within the lease TTL and
its member goes "not alive" when its lease expires; SIGTERM resigns at once and removes the
alive key. Nothing under the prefix holds key material (S5)."""
import json
import signal
import time

import pytest

from conftest import ATREST, enc_config, wait_for

TTL = 3                 # --lease-ttl for these tests (s); the default is 10
PREFIX = "/atrest-it/"
NODES = ("a", "b", "c")


def cfg(keys, name="k1"):
    return enc_config([(["secrets"], [("aescbc", [(name, keys.new(32))]), ("identity",)])])


def start_cluster(make_agent, make_etcd, keys, binary=ATREST):
    e = make_etcd().start()
    desired = cfg(keys)
    agents = {}
    for node in NODES:
        a = make_agent(binary=binary, sub=node, node=node,
                       extra=["--etcd-servers", e.endpoint, "--coord-prefix", PREFIX,
                              "--lease-ttl", str(TTL)])
        a.desired.write_text(desired)
        agents[node] = a.start(wait_ready=False)
    for a in agents.values():
        a.wait_ready(30)
    return e, agents


def one_leader(agents):
    """The leader all the given agents agree on, when exactly one of them says it leads."""
    st = {n: a.status() for n, a in agents.items()}
    leaders = {s["leader"] for s in st.values()}
    leading = [n for n, s in st.items() if s["is_leader"]]
    if len(leaders) == 1 and len(leading) == 1 and leading[0] in leaders:
        return leading[0]
    return None


def members_agree(a, nodes):
    """a's /status lists exactly `nodes`, all alive, all with a's own fingerprints."""
    s = a.status()
    ms = {m["node"]: m for m in s["members"]}
    if sorted(ms) != sorted(nodes):
        return None
    dfp, efp = s["desired"]["fingerprint"], s["effective"]["fingerprint"]
    for m in ms.values():
        if not (m["alive"] and m["registered"] and m["desired_valid"] is True and
                m["desired_fingerprint"] == dfp and m["effective_fingerprint"] == efp and
                m["same_desired"] is True and m["same_effective"] is True and
                m["effective_file_hash"] == s["effective"]["file_hash"]):
            return None
    return s


def member(a, node):
    return next((m for m in a.status()["members"] if m["node"] == node), None)


def under_prefix(e):
    return [(k, v) for k, v in e.dump() if k.startswith(PREFIX.encode())]


def scan_etcd(e, keys):
    kvs = under_prefix(e)
    assert kvs, "nothing stored under " + PREFIX
    for k, v in kvs:
        keys.scan(k + b" " + v, "etcd key %r" % k)
    return kvs


def test_cluster_leader_members_failover(make_agent, make_etcd, keys):
    e, agents = start_cluster(make_agent, make_etcd, keys)
    leader = wait_for(lambda: one_leader(agents), 10, "one leader all agree on")
    for a in agents.values():
        wait_for(lambda: members_agree(a, NODES), 10, "three agreeing members on " + a.node)
    # metrics: the leader gauge is 1 only on the leader; members counted; requests counted
    for n, a in agents.items():
        assert a.metric("atrest_leader") == (1 if n == leader else 0), n
        assert a.metric("atrest_members", state="alive") == 3
        assert a.metric("atrest_members", state="registered") == 3
        assert a.metric("atrest_etcd_requests_total", op="list", result="ok") >= 1
        assert a.metric("atrest_etcd_requests_total", op="register", result="ok") == 2
    # what is in etcd: registration and report shapes, and no key material (S5)
    kvs = dict(scan_etcd(e, keys))
    assert kvs[(PREFIX + "leader").encode()] == leader.encode()
    for n in NODES:
        reg = json.loads(kvs[(PREFIX + "members/" + n).encode()])
        assert reg["node"] == n and reg["first_seen_ms"] > 0 and reg["version"], reg
        rep = json.loads(kvs[(PREFIX + "alive/" + n).encode()])
        assert sorted(rep) == ["desired", "effective", "node", "time_ms", "version"], rep
        # since_ms: since when the node has had this desired config (rotation agreement)
        assert sorted(rep["desired"]) == ["fingerprint", "since_ms", "valid"], rep
        assert 0 < rep["desired"]["since_ms"] <= rep["time_ms"], rep
        assert sorted(rep["effective"]) == ["file_hash", "fingerprint"], rep
        assert rep["desired"]["fingerprint"].startswith("sha256:"), rep

    # a new desired file on b only: the others see b's fingerprints differ from theirs
    old_fp = agents["a"].status()["desired"]["fingerprint"]
    agents["b"].desired.write_text(cfg(keys, "k2"))
    new_fp = wait_for(lambda: (lambda s: s["desired"]["fingerprint"]
                               if s["desired"]["fingerprint"] != old_fp else None)(
        agents["b"].status()), 10, "b reads its new desired file")
    for n in ("a", "c"):
        m = wait_for(lambda: (lambda m: m if m["desired_fingerprint"] == new_fp else None)(
            member(agents[n], "b")), 5, "b's new fingerprint seen by " + n)
        assert m["same_desired"] is False and m["alive"], m
        assert member(agents[n], "c" if n == "a" else "a")["same_desired"] is True
    bm = member(agents["b"], "a")
    assert bm["desired_fingerprint"] == old_fp and bm["same_desired"] is False, bm
    scan_etcd(e, keys)

    # SIGKILL the leader: another leads within TTL + a few s; its member goes "not alive"
    # once its lease expires, and stays registered
    rest = {n: a for n, a in agents.items() if n != leader}
    t0 = time.monotonic()
    agents[leader].kill()
    new = wait_for(lambda: (lambda l: l if l and l != leader else None)(one_leader(rest)),
                   TTL + 4, "a new leader after SIGKILL of " + leader)
    took = time.monotonic() - t0
    assert took < TTL + 3, took
    for a in rest.values():
        m = wait_for(lambda: (lambda m: m if not m["alive"] else None)(member(a, leader)),
                     TTL + 4, "%s not alive on %s" % (leader, a.node))
        assert m["registered"] and m["desired_fingerprint"] is None, m
    assert time.monotonic() - t0 < TTL + 4
    assert (PREFIX + "alive/" + leader).encode() not in dict(under_prefix(e))
    assert rest[new].metric("atrest_leader") == 1
    scan_etcd(e, keys)
    for a in rest.values():
        assert a.stop() == 0, a.log()[-3000:]


@pytest.mark.parametrize("victim", ["leader", "follower"])
def test_cluster_sigterm_resigns(make_agent, make_etcd, keys, agent_bin, victim):
    e, agents = start_cluster(make_agent, make_etcd, keys, agent_bin)
    leader = wait_for(lambda: one_leader(agents), 15, "one leader all agree on")
    for a in agents.values():
        wait_for(lambda: members_agree(a, NODES), 10, "three agreeing members on " + a.node)
    gone = leader if victim == "leader" else next(n for n in NODES if n != leader)
    rest = {n: a for n, a in agents.items() if n != gone}
    t0 = time.monotonic()
    assert agents[gone].stop(signal.SIGTERM) == 0, agents[gone].log()[-3000:]
    stopped = time.monotonic() - t0
    # its alive key is gone the moment it has exited (revoked, not left to expire)
    kvs = dict(under_prefix(e))
    assert (PREFIX + "alive/" + gone).encode() not in kvs, kvs.keys()
    assert (PREFIX + "members/" + gone).encode() in kvs      # the registration stays
    new = wait_for(lambda: one_leader(rest), 5, "a leader among the rest")
    took = time.monotonic() - t0
    if victim == "leader":
        assert new != gone
        assert took < 2.0, "new leader after %.2fs (agent exited after %.2fs)" % (took, stopped)
    else:
        assert new == leader
    log = agents[gone].log()
    assert "etcd: resigned and revoked the liveness lease" in log, log[-2000:]
    for a in rest.values():
        m = wait_for(lambda: (lambda m: m if not m["alive"] else None)(member(a, gone)),
                     3, "%s not alive on %s" % (gone, a.node))
        assert m["registered"], m
    scan_etcd(e, keys)
    for a in rest.values():
        assert a.stop() == 0, a.log()[-3000:]
