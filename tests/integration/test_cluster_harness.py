"""The harness every rotation-protocol test uses (tests/integration/cluster.py), tested on
itself: a healthy cluster passes; the checker FAILS when S1 is broken (a naive node-by-node
push of a new write key) and when S2 is broken (a key dropped while objects still use it);
the upstream 4-step manual rotation, done right, passes (the reference the agents must match);
and today's agents pass a read-key-only change pushed node by node."""
import time

import pytest

from cluster import Traffic, keyed_config, provider_key
from conftest import wait_for

BOTH = ["secrets", "configmaps"]


def aescbc(*named):
    """aescbc{named keys, in order}, identity: for secrets and configmaps."""
    return keyed_config("aescbc", *named)


def test_identity_cluster_passes(make_cluster):
    c = make_cluster(n=3, agents=False)
    seeded = c.seed(40) + c.seed(10, resource="configmaps")
    assert len(seeded) == 50
    assert c.census() == {"identity": 40}
    chk = c.checker().start()
    tr = c.traffic(max_s=30).start()
    wait_for(lambda: tr.writes >= 40 and tr.reads >= 40 and chk.samples >= 5, 20,
             "traffic and samples")
    res = chk.final_check(tr)
    res.assert_ok(min_samples=5)
    assert res.counts == {}
    assert not tr.errors
    assert len(tr.last) == 16 and c.census()["identity"] == 40 + 16
    # the sampler really covered what is stored, and final_check read every object
    assert "secrets: 56 stored {'identity': 56}" in res.notes
    assert "configmaps: 10 stored {'identity': 10}" in res.notes


def test_checker_catches_s1_naive_push(make_cluster, keys):
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    c = make_cluster(n=3, agents=False, config=aescbc(k1), reload_s=0.2)
    c.seed(20, aescbc(k1))
    chk = c.checker().start()
    tr = c.traffic(max_s=30).start()
    wait_for(lambda: chk.samples >= 3 and tr.writes >= 16, 10, "a clean start")
    clean = dict(chk.counts)
    assert not clean, "violations before the push: %s" % clean
    # the naive push: the new WRITE key reaches cp-1 first, the others 2.5 s later each
    pushed = time.monotonic() - chk.t0
    c.push_effective(aescbc(k2, k1), gap_s=2.5)
    c.wait_loaded()
    chk.wait_samples(3)
    res = chk.final_check(tr)
    with pytest.raises(AssertionError, match="S1-write"):
        res.assert_ok()
    # cp-1 would write (and wrote) with key2 that cp-2 and cp-3 could not read
    w = res.of("S1-write", node="cp-1", pk="aescbc/key2")
    assert len(w) == 2, res.report()
    assert {v.detail.split(", which ")[1].split(" ")[0] for v in w} == {"cp-2", "cp-3"}
    assert all(v.t >= pushed for v in w), res.report()
    # cp-2 in turn wrote key2 while cp-3 could not read it; cp-3, last, harmed no one
    w2 = res.of("S1-write", node="cp-2", pk="aescbc/key2")
    assert len(w2) == 1 and ", which cp-3 cannot" in w2[0].detail, res.report()
    assert not res.of("S1-write", node="cp-3")
    stored = res.of("S1-stored", pk="aescbc/key2")
    assert stored and {v.node for v in stored} <= {"cp-2", "cp-3"}, res.report()
    assert "no matching key was found for the provided AES transformer" in stored[0].detail
    # the readers through cp-2 and cp-3 saw the decrypt errors; cp-1 wrote without error
    dec = tr.decrypt_errors(nodes=["cp-2", "cp-3"])
    assert dec and all(e["status"] == 500 for e in dec)
    out = tr.results()
    assert out["decrypt_errors"] == len(dec) == len(out["errors"]) and out["names"] == 16
    assert res.of("read-error") and not res.of("write-error")
    # once every node has key2 everything reads again: the damage was transient, S2 holds
    assert not res.of("S2-unreadable") and not res.of("missing") and not res.of("lost-update")


def test_checker_catches_s2_dropped_key(make_cluster, keys):
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    c = make_cluster(n=3, agents=False, config=aescbc(k1), reload_s=0.2)
    c.seed(30, aescbc(k1))
    c.seed(10, aescbc(k1), resource="configmaps")
    chk = c.checker(resources=("secrets", "configmaps")).start()
    tr = c.traffic(max_s=30).start()
    wait_for(lambda: len(tr.last) == 16 and chk.samples >= 2, 10, "traffic")
    tr.stop()
    assert c.census() == {"aescbc/key1": 46} and c.census("configmaps") == {"aescbc/key1": 10}
    c.push_effective(aescbc(k2), gap_s=0)          # key1 dropped, objects still under it
    c.wait_loaded()
    chk.wait_samples(2)                            # the sampler looked after the drop
    res = chk.final_check(tr)
    assert not res.ok
    # every stored object, through every one of the 3 servers
    assert res.counts["S2-unreadable"] == 3 * (46 + 10), res.report()
    v = res.of("S2-unreadable")[0]
    assert v.pk == "aescbc/key1"
    assert "Internal error occurred: no matching key was found for the provided AES " \
           "transformer" in v.detail
    assert {x.node for x in res.of("S2-unreadable")} == {"cp-1", "cp-2", "cp-3"}
    assert res.of("S1-stored", pk="aescbc/key1")
    with pytest.raises(AssertionError, match="S2-unreadable"):
        res.assert_ok()
    # ignore_keys (e.g. a canary namespace) leaves exactly those objects out
    part = c.checker(ignore_keys=["/registry/secrets/seed/", "/registry/configmaps/seed/"])
    res2 = part.final_check()
    assert res2.counts == {"S2-unreadable": 3 * 16}, res2.report()


def test_manual_four_step_rotation_passes(make_cluster, keys):
    """The reference: add key2 for reading everywhere (and wait until every server loaded it),
    promote it everywhere, rewrite every object through the API, then drop key1."""
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    c = make_cluster(n=3, agents=False, config=aescbc(k1), reload_s=0.2)
    c.seed(200, aescbc(k1))
    c.seed(20, aescbc(k1), resource="configmaps")
    chk = c.checker(resources=("secrets", "configmaps")).start()
    tr = c.traffic(max_s=60).start()
    wait_for(lambda: len(tr.last) == 16, 10, "traffic")
    for step in (aescbc(k1, k2), aescbc(k2, k1)):      # stage, then promote
        c.push_effective(step, gap_s=0.5)
        c.wait_loaded(step)
    for r in BOTH:
        done, _conflicts = c.rewrite_all(node=1, resource=r)
        assert done > 0
    assert c.census() == {"aescbc/key2": 216}, c.census()
    assert c.census("configmaps") == {"aescbc/key2": 20}
    prune = aescbc(k2)
    c.push_effective(prune, gap_s=0.5)
    c.wait_loaded(prune)
    chk.wait_samples(3)
    res = chk.final_check(tr)
    res.assert_ok(min_samples=10)
    assert tr.writes > 50 and tr.reads > 50
    assert c.census() == {"aescbc/key2": 216}


def test_agents_read_key_push_passes(make_cluster, keys, agent_bin):
    """A change that only adds a read key, pushed node by node: the agents agree on it (settle
    1 s) and rotate through one phase (stage) to it."""
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    start = aescbc(k1)
    c = make_cluster(n=3, config=start, binary=agent_bin, reload_s=0.2,
                     agent_extra=["--settle-seconds", "1"])
    first = {}
    for n in c.nodes:
        s = n.agent.status()
        assert s["desired"]["fingerprint"] == s["effective"]["fingerprint"]
        first[n.name] = s["effective"]["fingerprint"]
    c.wait_loaded()            # the agents rewrote the effective files (canonical form)
    for n in c.nodes:          # the etcd settings of each node's agent.yaml took effect
        wait_for(lambda n=n: sorted(m["node"] for m in n.agent.status()["members"]
                                    if m["alive"]) == ["cp-1", "cp-2", "cp-3"], 15,
                 "%s to see the three members" % n.name)
    c.seed(50, start)
    chk = c.checker().start()
    tr = c.traffic(max_s=60).start()
    wait_for(lambda: len(tr.last) == 16, 10, "traffic")
    target = aescbc(k1, k2)
    c.push(target, gap_s=1.0)

    def applied(n):
        s = n.agent.status()
        return s["effective"]["fingerprint"] != first[n.name] and \
            s["desired"]["fingerprint"] == s["effective"]["fingerprint"]
    for n in c.nodes:
        wait_for(lambda n=n: applied(n), 15, "%s's agent to write its effective file" % n.name)
    c.wait_loaded(target)      # the same document as pushed, loaded by every server
    before = c.nodes[1].agent.proc.pid
    c.restart_agent(1)         # SIGKILL and start again: it keeps the effective file
    assert c.nodes[1].agent.proc.pid != before and applied(c.nodes[1])
    for n in c.nodes:
        assert c.status(n)["readKeys"]["secrets"] == ["aescbc/key1", "aescbc/key2", "identity"]
    chk.wait_samples(3)
    res = chk.final_check(tr)
    res.assert_ok(min_samples=5)
    fps = {n.agent.status()["effective"]["fingerprint"] for n in c.nodes}
    assert len(fps) == 1 and fps != set(first.values())
    assert set(c.census()) == {"aescbc/key1"}


def test_provider_key_and_probe_endpoints(make_cluster, keys):
    """The introspection the checker relies on: /sim/probe says and writes the write key,
    /sim/readable answers per value, /sim/status lists the read keys; provider_key parses."""
    k1 = ("key1", keys.new())
    c = make_cluster(n=1, agents=False, config=aescbc(k1))
    sim = c.nodes[0].sim
    st, p = sim.sim("probe", {"resource": "secrets"})
    assert st == 200 and p["writeKey"] == "aescbc/key1"
    import base64
    val = base64.b64decode(p["value"])
    assert val.startswith(b"k8s:enc:aescbc:v1:key1:") and provider_key(val) == "aescbc/key1"
    assert provider_key(b"k8s\x00rest") == "identity"
    assert provider_key(b"k8s:enc:secretbox:v1:s1:xx") == "secretbox/s1"
    items = [{"key": p["key"], "value": p["value"]},
             {"key": p["key"], "value": base64.b64encode(b"k8s:enc:aescbc:v1:other:" +
                                                         b"\0" * 32).decode()}]
    st, r = sim.request("POST", "/sim/readable", {"items": items})
    assert st == 200, r
    assert r["results"] == [{"ok": True, "stale": False},
                            {"ok": False, "error": "no matching key was found for the "
                                                   "provided AES transformer"}]
    assert r["readKeys"]["secrets"] == ["aescbc/key1", "identity"]
    st, s = sim.sim("status")
    assert s["readKeys"] == {"secrets": ["aescbc/key1", "identity"],
                             "configmaps": ["aescbc/key1", "identity"]}
    st, r = sim.sim("probe", {"resource": "pods"})
    assert st == 400
    assert Traffic.is_decrypt_error({"status": 500, "error": "Internal error occurred: x"})


def test_checker_catches_lost_update_changed_content_and_a_dead_server(make_cluster):
    """The final check's other rules fail too: a write reverted behind the API's back (what a
    re-encrypt without compare-and-swap does, S6), a seeded object whose data changed, and a
    server that is not running at the end."""
    import objects
    from cluster import _content
    c = make_cluster(n=3, agents=False)
    c.seed(5)
    chk = c.checker().start()
    tr = c.traffic(max_s=30).start()
    wait_for(lambda: tr.writes >= 40 and chk.samples >= 2, 20, "two rounds of writes")
    tr.stop()
    assert tr.last["w-000"] != _content("w-000", 0)

    def put(ns, name, data):
        obj = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data,
               "metadata": {"name": name, "namespace": ns, "uid": "u",
                            "creationTimestamp": objects.now_rfc3339()}}
        c.kv.put(("/registry/secrets/%s/%s" % (ns, name)).encode(), objects.encode(obj))
    put("traffic", "w-000", _content("w-000", 0))      # an older write comes back
    put("seed", "s-000002", {"v": "AAAA"})              # seeded data changed
    c.nodes[2].sim.crash()
    res = chk.final_check(tr)
    assert res.counts == {"lost-update": 2, "content": 2, "down": 1}, res.report()
    lost = res.of("lost-update")
    assert {v.node for v in lost} == {"cp-1", "cp-2"}
    assert all(v.key == "/registry/secrets/traffic/w-000" and "'w-000 seq 0'" in v.detail
               for v in lost), res.report()
    assert {v.key for v in res.of("content")} == {"/registry/secrets/seed/s-000002"}
    assert "cp-1: loaded %s, secrets: writes identity, reads ['identity']" % \
        c.status(c.nodes[0])["configSha256"][:12] in res.notes
    assert res.of("down", node="cp-3")
    with pytest.raises(AssertionError, match="lost-update"):
        res.assert_ok()
