"""Full rotations end to end with the real proof of load (canary through the simulators' HTTPS
API) and the real re-encrypt pass: three agents, three simulated API servers, one etcd, the
S1/S2 checker running throughout and the final check (every object through every server)."""
from cluster import keyed_config

SETTLE = ["--settle-seconds", "1"]
CANARY = ["/registry/secrets/kube-system/"]


def rot(node):
    return node.agent.status()["rotation"]


def test_full_rotation_new_key_old_dropped(make_cluster, keys):
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = keyed_config("aescbc", k1), keyed_config("aescbc", k2)
    c = make_cluster(n=3, config=old, reload_s=0.5, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(200, old)
    chk = c.checker(ignore_keys=CANARY).start()
    tr = c.traffic(max_s=120).start()
    c.push(new, gap_s=1.0)
    import time, json
    t0 = time.monotonic()
    while time.monotonic() - t0 < 90:
        if all(rot(n)["phase"] == "done" and rot(n)["history"] for n in c.nodes):
            break
        for n in c.nodes:
            r = rot(n)
            print("%5.1f %s phase=%s why=%s proof=%s members=%s" % (time.monotonic() - t0, n.name, r["phase"], r["waiting_for"], json.dumps(r.get("proof")), json.dumps(r.get("members"))[:600]))
        time.sleep(5)
    else:
        raise AssertionError("stuck")
    h = rot(c.nodes[0])["history"][-1]
    assert h["result"] == "done", h
    c.wait_loaded(new)
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)
    census = c.census()
    assert all(k.startswith("aescbc/key2") for k in census), census
