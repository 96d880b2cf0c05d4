"""reencrypt.mode: api (issue 9): the rotation's leader re-encrypts through its LOCAL API server
(list with limit/continue, the no-op update of every object) instead of writing etcd. Real
processes: three agents, three simulated API servers, one etcd; the S1/S2 checker runs
throughout, the final check reads every object through every server, and the census shows
nothing left under the dropped key. Counts are exact: the pass's total is every stored Secret
and ConfigMap, and each is rewritten, skipped (already under the new key) or a conflict."""
import json
import re

from cluster import keyed_config

SETTLE = ["--settle-seconds", "1"]
API = ["--reencrypt-mode", "api"]
CANARY = ["/registry/secrets/kube-system/"]
CANARY_PREFIX = b"/registry/secrets/kube-system/atrest-canary-"
DONE_RE = re.compile(r"rotation (\S+): re-encrypt through the API server done: total (\d+), "
                     r"rewritten (\d+), skipped (\d+), conflicts (\d+), failed (\d+)")


def rot(node):
    return node.agent.status()["rotation"]


def wait_finished(c, timeout):
    def finished():
        return all(rot(n)["phase"] == "done" and rot(n)["history"] for n in c.nodes)
    try:
        c.wait(finished, timeout, "the rotation to finish")
    except AssertionError as e:
        raise AssertionError("%s\n%s" % (e, json.dumps(
            {n.name: rot(n) for n in c.nodes}, indent=1)[:6000])) from None
    return rot(c.nodes[0])["history"][-1]


def pass_results(c):
    """The API-mode passes the agents logged: [(node, rotation id, counts dict)]."""
    out = []
    for n in c.nodes:
        for m in DONE_RE.finditer(n.agent.log()):
            out.append((n.name, m.group(1), dict(zip(
                ("total", "rewritten", "skipped", "conflicts", "failed"),
                (int(x) for x in m.groups()[1:])))))
    return out


def pass_starts(c, rid):
    return sum(n.agent.log().count("rotation %s: re-encrypting " % rid) for n in c.nodes)


def canaries(c):
    return sum(1 for k, _v, _r in c.scan("secrets") if k.startswith(CANARY_PREFIX))


def knobs(node, **kw):
    st, doc = node.sim.sim("knobs", kw)
    assert st == 200, (node.name, st, doc)
    return doc


def sim_status(node):
    st, doc = node.sim.sim("status")
    assert st == 200, (node.name, st, doc)
    return doc


def test_full_rotation_api_mode_with_traffic(make_cluster, keys):
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = keyed_config("aescbc", k1), keyed_config("aescbc", k2)
    c = make_cluster(n=3, config=old, reload_s=0.5, agent_extra=SETTLE + API)
    c.wait_loaded()
    assert all(rot(n)["reencrypt"]["mode"] == "api" for n in c.nodes)
    c.seed(300, old)
    c.seed(40, old, resource="configmaps", ns="cm")
    chk = c.checker(ignore_keys=CANARY).start()
    tr = c.traffic(max_s=180, names=16).start()
    c.wait(lambda: tr.results()["names"] == 16, 30, "the writer to create its Secrets")
    c.push(new, gap_s=1.0)
    h = wait_finished(c, 120)
    assert h["result"] == "done", h
    c.wait_loaded(new)
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)
    for res in ("secrets", "configmaps"):
        census = c.census(res, probes=True)
        assert census and all(k == "aescbc/key2" for k in census), (res, census)

    runs = [r for r in pass_results(c) if r[1] == h["id"]]
    assert len(runs) == 1, runs
    n = runs[0][2]
    total = 300 + 40 + 16 + canaries(c)
    assert n["total"] == total, (n, total)
    assert n["failed"] == 0, n
    assert n["rewritten"] + n["skipped"] + n["conflicts"] == total, n
    # every seeded object was under key1 and nobody else wrote it: rewritten by the pass; the
    # writer's Secrets and the canaries were written with key2 after promote (skipped), or by
    # the writer between the list and the update (conflict), or rewritten when still stale.
    # (A leader change mid-pass, lease expiry on a loaded machine, restarts the pass: the first
    # one's rewrites then count as skipped in the second.)
    if pass_starts(c, h["id"]) == 1:
        assert 340 <= n["rewritten"] <= total, n
        assert n["skipped"] + n["conflicts"] <= 16 + canaries(c), n


def test_api_mode_counts_conflicts_and_honours_retry_after(make_cluster, keys):
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = keyed_config("aescbc", k1), keyed_config("aescbc", k2)
    c = make_cluster(n=3, config=old, reload_s=0.5, agent_extra=SETTLE + API)
    c.wait_loaded()
    c.seed(250, old)
    c.seed(30, old, resource="configmaps", ns="cm")
    # only conditional updates (with a resourceVersion) are hit: the pass's, not the canary's
    for node in c.nodes:
        knobs(node, conflictUpdates=7, throttleUpdates=5)
    chk = c.checker(ignore_keys=CANARY).start()
    c.push(new, gap_s=1.0)
    h = wait_finished(c, 120)
    assert h["result"] == "done", h
    c.wait_loaded(new)
    chk.final_check().assert_ok(min_samples=5)
    for res in ("secrets", "configmaps"):
        census = c.census(res, probes=True)
        assert census and all(k == "aescbc/key2" for k in census), (res, census)

    runs = [r for r in pass_results(c) if r[1] == h["id"]]
    assert len(runs) == 1, runs
    leader = c.node(runs[0][0])
    injected = sim_status(leader)["injected"]
    assert injected == {"conflicts": 7, "throttled": 5}, injected
    for node in c.nodes:  # the others' API servers saw no update of the pass
        if node is not leader:
            assert sim_status(node)["injected"] == {"conflicts": 0, "throttled": 0}
    n = runs[0][2]
    total = 250 + 30 + canaries(c)
    assert n == {"total": total, "rewritten": n["rewritten"], "skipped": n["skipped"],
                 "conflicts": 7, "failed": 0}, n
    assert n["rewritten"] + n["skipped"] == total - 7, n
    # the canaries (under key2 since promote) come first in key order: skipped or conflicts
    assert n["skipped"] + n["rewritten"] >= 280 - 7 and n["skipped"] <= canaries(c), n


def test_cli_api_mode_counts_and_refuses_wildcards(make_cluster, keys, tmp_path):
    """`atrest reencrypt --mode api`: the same pass from the CLI through one simulator: the
    first run rewrites every stale Secret, the second finds them all under the write key."""
    import subprocess
    from conftest import ATREST
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    new = keyed_config("aescbc", k2, k1)
    c = make_cluster(n=1, config=new, agents=False, reload_s=None)
    node = c.nodes[0]
    c.seed(120, keyed_config("aescbc", k1))
    cfg = tmp_path / "new.yaml"
    cfg.write_text(new)
    settings = tmp_path / "agent.yaml"
    settings.write_text("apiserver:\n  url: %s\n  cafile: %s\n  tokenFile: %s\n"
                        "reencrypt:\n  mode: api\n" % (
                            node.sim.url, node.sim.cert_dir / "ca.crt", node.token_file))

    def run(*extra):
        p = subprocess.run([ATREST, "reencrypt", "--config", str(cfg), "--settings",
                            str(settings), "--json", "--page-size", "50"] + list(extra),
                           capture_output=True, text=True, timeout=120)
        return p.returncode, p.stdout, p.stderr

    rc, out, err = run("--resource", "secrets")
    assert rc == 0, err
    first = json.loads(out)
    assert {k: first[k] for k in ("done", "total", "rewritten", "skipped", "conflicts",
                                  "failed")} == {"done": 120, "total": 120, "rewritten": 120,
                                                 "skipped": 0, "conflicts": 0, "failed": 0}
    assert dict(c.census()) == {"aescbc/key2": 120}
    knobs(node, throttleUpdates=3)
    rc, out, err = run("--resource", "secrets", "--max-inflight", "2", "--rate", "1000")
    assert rc == 0, err
    again = json.loads(out)
    assert (again["done"], again["rewritten"], again["skipped"]) == (120, 0, 120), again
    assert sim_status(node)["injected"]["throttled"] == 3
    rc, out, err = run("--resource", "*.apps")
    assert rc == 2 and "cannot list the wildcard selector *.apps: use mode etcd" in err, err


def test_full_rotation_svm_mode_with_traffic(make_cluster, keys):
    """reencrypt.mode svm: the leader creates one StorageVersionMigration per resource on its
    API server (the simulator's minimal controller does the no-op update of every object), a
    Failed one is deleted and created again, and the rotation finishes with nothing under the
    dropped key."""
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    old, new = keyed_config("aescbc", k1), keyed_config("aescbc", k2)
    c = make_cluster(n=3, config=old, reload_s=0.5,
                     agent_extra=SETTLE + ["--reencrypt-mode", "svm"])
    c.wait_loaded()
    assert all(rot(n)["reencrypt"]["mode"] == "svm" for n in c.nodes)
    c.seed(200, old)
    c.seed(30, old, resource="configmaps", ns="cm")
    for node in c.nodes:
        knobs(node, svmFail=1)  # the first migration on each server fails
    chk = c.checker(ignore_keys=CANARY).start()
    tr = c.traffic(max_s=180, names=8).start()
    c.wait(lambda: tr.results()["names"] == 8, 30, "the writer to create its Secrets")
    c.push(new, gap_s=1.0)
    h = wait_finished(c, 120)
    assert h["result"] == "done", h
    c.wait_loaded(new)
    tr.stop()
    chk.final_check(tr).assert_ok(min_samples=5)
    for res in ("secrets", "configmaps"):
        census = c.census(res, probes=True)
        assert census and all(k == "aescbc/key2" for k in census), (res, census)

    runs = [r for r in pass_results(c) if r[1] == h["id"]]
    assert len(runs) == 1, runs
    leader = c.node(runs[0][0])
    n = runs[0][2]
    total = 200 + 30 + 8 + canaries(c)
    assert n == {"total": total, "rewritten": total, "skipped": 0, "conflicts": 0,
                 "failed": 1}, n  # failed: the one Failed migration, recreated
    st, doc = leader.sim.request(
        "GET", "/apis/storagemigration.k8s.io/v1beta1/storageversionmigrations")
    assert st == 200, (st, doc)
    migs = {m["spec"]["resource"]["resource"]: [c["type"] for c in m["status"]["conditions"]
                                                if c["status"] == "True"]
            for m in doc["items"]}
    assert migs == {"secrets": ["Succeeded"], "configmaps": ["Succeeded"]}, doc
    assert knobs(leader)["svmFail"] == 0
    for node in c.nodes:
        if node is not leader:  # nobody else asked its server for a migration
            assert knobs(node)["svmFail"] == 1
