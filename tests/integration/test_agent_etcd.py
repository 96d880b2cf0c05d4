"""Agents against a real etcd on loopback: connectivity in /status and /metrics, membership,
what an agent stores in etcd (never a key: S5), etcd going away and coming back."""
import base64
import http.client
import json
import signal
import time

from conftest import enc_config, run_cli, wait_for

TICK = 5      # the agent lists members every 5 s (agent/daemon.c COORD_TICK_MS)


def cfg(keys):
    return enc_config([(["secrets"], [("secretbox", [("k1", keys.new(32))]),
                                      ("aescbc", [("old", keys.new(32))]), ("identity",)])])


def etcd_state(a):
    return a.status().get("etcd", {}).get("state")


def test_two_agents_one_etcd(make_agent, make_etcd, keys, agent_bin):
    e = make_etcd().start()
    agents = []
    for node in ("node-a", "node-b"):
        a = make_agent(binary=agent_bin, sub=node,
                       node=node, extra=["--etcd-servers", e.endpoint])
        a.desired.write_text(cfg(keys))
        a.start()
        agents.append(a)
    for a in agents:
        wait_for(lambda: etcd_state(a) == "connected", 15, "etcd connected on " + a.node)
    # each sees both members (the read runs every TICK s)
    for a in agents:
        wait_for(lambda: sorted(m.get("node") for m in a.status().get("members", []))
                 == ["node-a", "node-b"], 2 * TICK + 5, "both members seen by " + a.node)
        ok = a.metric("atrest_etcd_requests_total", op="list", result="ok")
        assert ok and ok >= 1, a.metrics().get("atrest_etcd_requests_total")
    a = agents[0]
    p = run_cli(["status", "--addr", "127.0.0.1:%d" % a.port])
    out = p.stdout.decode()
    assert p.returncode == 0, p.stderr
    assert "connected" in out and "MEMBER" in out and "node-b" in out, out
    keys.scan(p.stdout, "atrest status")
    # S5: nothing stored in etcd holds key material
    kvs = e.dump()
    assert any(k.endswith(b"members/node-a") for k, _ in kvs), kvs
    for k, v in kvs:
        keys.scan(k + b" " + v, "etcd key %r" % k)
    for a in agents:
        assert a.stop() == 0


def test_etcd_down_and_back(make_agent, make_etcd, keys):
    e = make_etcd()                      # not started yet: its port is closed
    a = make_agent(extra=["--etcd-servers", e.endpoint])
    a.desired.write_text(cfg(keys))
    a.start()
    st = wait_for(lambda: (lambda s: s if s["etcd"]["state"] == "unreachable" else None)(
        a.status()), 15, "etcd unreachable")
    assert st["etcd"]["error"], st["etcd"]
    assert a.get("/readyz")[0] == 200     # the local job (valid effective file) goes on
    assert a.get("/healthz")[0] == 200
    # the first failure shown may be another request's (the session's lease): the register
    # attempt's error is counted when its own answer comes back
    wait_for(lambda: (a.metric("atrest_etcd_requests_total", op="register", result="error")
                      or 0) >= 1, 15, "a failed register counted")
    assert "etcd: unreachable" in a.log()
    e.start()
    wait_for(lambda: etcd_state(a) == "connected", 2 * TICK + 10, "etcd connected")
    assert "etcd: connected" in a.log()
    e.stop()
    wait_for(lambda: etcd_state(a) == "unreachable", 2 * TICK + 10, "etcd lost")
    assert a.stop(signal.SIGTERM) == 0    # a clean exit even with etcd gone


def test_password_file_too_large(make_agent, keys):
    """A password file beyond 4 KiB is refused at start with the reason, not cut short (a cut
    password fails later as a confusing authentication error)."""
    a = make_agent()
    pwfile = a.tmp / "etcd-password"
    pwfile.write_text("p" * 5000 + "\n")
    a.extra += ["--etcd-servers", "http://127.0.0.1:9", "--etcd-user", "atrest",
                "--etcd-password-file", str(pwfile)]
    a.desired.write_text(cfg(keys))
    a.start(wait_ready=False)
    assert a.proc.wait(15) == 1
    assert "etcd: cannot read the password file %s: File too large" % pwfile in a.log(), a.log()


def test_sighup_keeps_etcd_settings(make_agent, make_etcd, keys):
    """etcd settings changed under a running agent wait for a restart: after SIGHUP it still
    lists the members under the prefix it registered in, not half in the new one."""
    e = make_etcd().start()
    a = make_agent()
    conf = a.tmp / "agent.yaml"
    conf.write_text("etcd:\n  prefix: /atrest/\n")
    a.extra += ["--config", str(conf), "--etcd-servers", e.endpoint]
    a.desired.write_text(cfg(keys))
    a.start()

    def nodes():
        return [m.get("node") for m in a.status().get("members", [])]

    wait_for(lambda: nodes() == ["node-a"], 2 * TICK + 5, "the member listed")
    conf.write_text("etcd:\n  prefix: /elsewhere/\n")
    a.send_signal(signal.SIGHUP)
    wait_for(lambda: "etcd settings changes take effect at the next restart" in a.log(), 10,
             "the warning")
    n0 = a.metric("atrest_etcd_requests_total", op="list", result="ok")
    wait_for(lambda: a.metric("atrest_etcd_requests_total", op="list", result="ok") >= n0 + 2,
             3 * TICK + 5, "two more member lists")
    assert nodes() == ["node-a"]
    assert a.stop() == 0


def gw(e, path, body):
    """POST to etcd's JSON gateway; the decoded answer."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", e.client_port, timeout=5)
    try:
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        return json.loads(c.getresponse().read())
    finally:
        c.close()


def key_leases(e, prefix=b"/atrest/"):
    import base64
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    doc = gw(e, "/v3/kv/range", {"key": base64.b64encode(prefix).decode(),
                                 "range_end": base64.b64encode(end).decode()})
    return {base64.b64decode(kv["key"]).decode(): int(kv.get("lease", "0"))
            for kv in doc.get("kvs", [])}


def test_one_lease_per_agent(make_agent, make_etcd, keys):
    """The liveness key and the leader key ride on ONE lease (coord/session.c); a clean stop
    revokes it, so both keys go at once."""
    e = make_etcd().start()
    a = make_agent(node="solo", extra=["--etcd-servers", e.endpoint])
    a.desired.write_text(cfg(keys))
    a.start()
    wait_for(lambda: a.status().get("leader") == "solo", 15, "solo leads")
    wait_for(lambda: "/atrest/alive/solo" in key_leases(e), 10, "alive/solo written")
    leases = gw(e, "/v3/lease/leases", {}).get("leases", [])
    assert len(leases) == 1, leases
    kl = key_leases(e)
    lease = int(leases[0]["ID"])
    assert kl["/atrest/leader"] == lease and kl["/atrest/alive/solo"] == lease, kl
    assert kl["/atrest/members/solo"] == 0, kl  # the registration is persistent
    assert a.stop() == 0
    assert gw(e, "/v3/lease/leases", {}).get("leases", []) == []
    assert sorted(key_leases(e)) == ["/atrest/members/solo"]


def etcd_gw(e, path, doc):
    c = http.client.HTTPConnection("127.0.0.1", e.client_port, timeout=5)
    try:
        c.request("POST", path, json.dumps(doc), {"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200, (path, r.status)
        return json.loads(r.read())
    finally:
        c.close()


def test_first_install_waits_for_a_running_rotation(make_agent, make_etcd, keys):
    """A new node (no effective file yet) whose etcd shows a rotation running does not write its
    desired config: its peers do not use that config yet (S1). It writes it once the rotation
    has ended."""
    e = make_etcd().start()
    rot_key = base64.b64encode(b"/atrest/rotation").decode()
    etcd_gw(e, "/v3/kv/put", {"key": rot_key, "value": base64.b64encode(b"{}").decode()})
    a = make_agent(extra=["--etcd-servers", e.endpoint])
    a.desired.write_text(cfg(keys))
    a.start(wait_ready=False)  # not ready: nothing in force
    wait_for(lambda: "waits for the running rotation to end"
             in (a.status()["apply"]["waiting_for"] or ""), 15, "the first install to wait")
    time.sleep(2.5)  # past the 2 s an etcd that does not answer would get
    assert not a.effective.exists()
    assert a.get("/readyz")[0] == 503
    assert "the first install waits for the running rotation to end" in a.log()
    etcd_gw(e, "/v3/kv/deleterange", {"key": rot_key})
    wait_for(lambda: a.effective.exists(), 15, "the first install once the rotation ended")
    a.wait_ready()
    wait_for(lambda: not a.status()["apply"]["waiting_for"], 5, "nothing to wait for")
    assert a.stop() == 0
