"""The agent as a process: signals, exit codes, its status server (both listeners), the
`atrest status` command, and process hygiene."""
import json
import os
import signal
import socket
import stat
import time

import pytest

from conftest import ATREST, enc_config, parse_metrics, run_cli, wait_for


def good(keys):
    return enc_config([(["secrets"], [("aesgcm", [("k1", keys.new(32))]), ("identity",)])])


def started(make_agent, keys, binary=ATREST, **kw):
    a = make_agent(binary=binary, **kw)
    a.desired.write_text(good(keys))
    a.start()
    return a


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_clean_exit(make_agent, keys, agent_bin, sig):
    a = started(make_agent, keys, agent_bin)
    pid = a.proc.pid
    assert a.stop(sig) == 0, a.log()
    assert not a.leftovers()
    # the status socket is gone, and the port is free again
    assert not os.path.exists(a.sock)
    with socket.socket() as s:
        s.bind(("127.0.0.1", a.port))
    assert not os.path.exists("/proc/%d" % pid)


def test_endpoints(make_agent, keys):
    a = started(make_agent, keys)
    for path in ("/healthz", "/readyz"):
        st, hd, body = a.get(path)
        assert st == 200, (path, body)
        assert hd["content-type"].startswith("text/plain"), hd
    st, hd, body = a.get("/status")
    assert st == 200 and hd["content-type"].startswith("application/json")
    doc = json.loads(body)
    assert doc.get("node") == "node-a"
    st, hd, body = a.get("/metrics")
    assert st == 200
    assert hd["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    m = parse_metrics(body.decode())
    for name in ("atrest_config_reloads_total", "atrest_config_last_config_info",
                 "atrest_desired_config_invalid", "atrest_build_info",
                 "atrest_effective_writes_total"):
        assert name in m, name
    assert a.get("/nope")[0] == 404
    for method in ("POST", "PUT", "DELETE"):
        st, hd, _ = a.request("/status", method)
        assert st == 405 and hd.get("allow") == "GET, HEAD", (method, st, hd)
    st, hd, body = a.request("/status", "HEAD")
    assert st == 200 and body == b""
    # the unix socket serves the same, with mode 0660
    assert stat.S_IMODE(os.stat(a.sock).st_mode) == 0o660
    st, _, body = a.get("/status", via_socket=True)
    assert st == 200 and json.loads(body)["node"] == "node-a"


def test_status_command(make_agent, keys):
    a = started(make_agent, keys)
    wait_for(lambda: a.status().get("effective", {}).get("fingerprint"), 10, "effective")
    p = run_cli(["status", "--addr", "http://127.0.0.1:%d" % a.port])
    out = p.stdout.decode()
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "node-a" in out
    assert "secrets" in out
    fp = a.status()["effective"]["fingerprint"]
    assert fp.split(":")[-1][:12] in out
    a.keys.scan(p.stdout + p.stderr, "atrest status output")
    assert "ready" in out and "(= desired)" in out
    # a bad desired file: the table says so, with the error, and the last valid config stays
    f0 = a.metric("atrest_config_reloads_total", status="failure")
    a.desired.write_text(enc_config([(["secrets"], [("aesgcm", [("k1", a.keys.new(20))])])]))
    wait_for(lambda: a.metric("atrest_config_reloads_total", status="failure") > f0, 10, "fail")
    p = run_cli(["status", "--addr", "http://127.0.0.1:%d/" % a.port])
    out = p.stdout.decode()
    assert p.returncode == 0, p.stderr
    assert "(INVALID: last valid kept)" in out, out
    assert "got 20, expected one of [16 24 32]" in out, out
    assert "1 failed" in out, out
    assert "(differs from desired)" not in out   # desired fp = last valid one
    a.keys.scan(p.stdout + p.stderr, "atrest status output")
    p = run_cli(["status", "--socket", a.sock, "--json"])
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["node"] == "node-a"
    a.keys.scan(p.stdout, "atrest status --json output")


def test_status_command_agent_down(tmp_path):
    port = __import__("conftest").free_port()
    p = run_cli(["status", "--addr", "127.0.0.1:%d" % port])
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "cannot reach the agent at http://127.0.0.1:%d" % port in err, err
    assert "is it running?" in err
    p = run_cli(["status", "--socket", str(tmp_path / "none.sock")])
    assert p.returncode == 1
    assert "cannot reach the agent at unix socket" in p.stderr.decode()
    p = run_cli(["status", "--bogus"])
    assert p.returncode == 2
    p = run_cli(["status", "--addr", "x", "--socket", "y"])
    assert p.returncode == 2


def test_status_command_reads_agent_yaml(make_agent, keys, tmp_path):
    a = started(make_agent, keys)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("desiredConfig: %s\neffectiveConfig:\n  path: %s\nstatus:\n"
                   "  listen: 127.0.0.1:%d\n" % (a.desired, a.effective, a.port))
    p = run_cli(["status", "--config", str(cfg), "--json"])
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["node"] == "node-a"
    # status.socket wins over status.listen
    cfg.write_text("desiredConfig: %s\neffectiveConfig:\n  path: %s\nstatus:\n"
                   "  listen: 127.0.0.1:1\n  socket: %s\n" % (a.desired, a.effective, a.sock))
    p = run_cli(["status", "--config", str(cfg)])
    assert p.returncode == 0, p.stderr
    assert b"node-a" in p.stdout
    # a broken settings file named explicitly is an error that says where
    cfg.write_text("status:\n  listen: [\n")
    p = run_cli(["status", "--config", str(cfg)])
    assert p.returncode == 1
    assert str(cfg).encode() in p.stderr, p.stderr


def test_leak_scanner_detects_every_form(keys):
    """The scanner the fixtures run over every log and response must catch each form."""
    k = keys.new(32)
    for form, needle in keys.forms(k):
        with pytest.raises(AssertionError, match="key #0 leaked"):
            keys.scan(b"xx " + needle + b" yy", "self-test")
    keys.scan(b"nothing here", "self-test")


def test_status_command_default_address():
    """No flags and no /etc/atrest/agent.yaml: the built-in default, said in the error."""
    if os.path.exists("/etc/atrest/agent.yaml"):
        pytest.skip("/etc/atrest/agent.yaml exists on this machine")
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 9798)) == 0:
            pytest.skip("something listens on 127.0.0.1:9798")
    p = run_cli(["status"])
    assert p.returncode == 1
    assert p.stderr.decode().startswith(
        "atrest status: cannot reach the agent at http://127.0.0.1:9798 (built-in default; "
        "/etc/atrest/agent.yaml not found): "), p.stderr


BAD_DESIRED = ("apiVersion: apiserver.config.k8s.io/v1\n"
               "kind: EncryptionConfiguration\nresources: []\n")
BAD_LINE = "desired.yaml:3:12: resources: Required value: at least one resources is required"


def test_start_with_bad_desired_keeps_effective(make_agent, keys):
    """An invalid desired file at start (say, after a reboot): the agent starts anyway, keeps
    the effective file kube-apiserver already runs, and says why in its log, /status and
    /metrics. `atrest agent --check` (the unit's ExecStartPre) refuses the same file."""
    a = make_agent()
    previous = good(keys)
    a.effective.write_text(previous)
    a.desired.write_text(BAD_DESIRED)
    a.start()                               # ready: a valid effective config is in force
    doc = a.status()
    assert doc["desired"]["valid"] is False
    assert BAD_LINE in doc["desired"]["error"], doc["desired"]
    assert doc["last_reload"]["result"] == "invalid"
    assert BAD_LINE in a.log()
    assert a.metric("atrest_desired_config_invalid") == 1.0
    assert a.effective.read_text() == previous
    p = run_cli(a.args()[1:] + ["--check"])
    assert p.returncode == 1
    assert BAD_LINE.encode() in p.stderr, p.stderr
    assert a.stop() == 0, a.log()


def test_start_with_nothing_valid_is_not_ready(make_agent, keys):
    """Neither the desired nor the effective file is valid: the agent runs and reports, is not
    ready, and touches neither file."""
    a = make_agent()
    a.effective.write_text("previous: content\n")
    a.desired.write_text(BAD_DESIRED)
    a.start(wait_ready=False)
    wait_for(lambda: a.get("/readyz")[0] == 503, 15, "/readyz 503")
    assert a.alive(), a.log()
    assert BAD_LINE in a.status()["desired"]["error"]
    assert a.effective.read_text() == "previous: content\n"
    # a valid desired file arrives: applied, ready
    a.desired.write_text(good(keys))
    a.wait_ready()
    assert a.status()["desired"]["valid"] is True
    assert a.stop() == 0, a.log()


def test_connection_flood_recovers(make_agent, keys):
    """More idle connections than the status server's limit (64): the agent stays up, and
    serves again as soon as the clients go away."""
    a = started(make_agent, keys)
    for _ in range(3):      # the first flood used to pass and the second to hang for good
        socks = []
        try:
            for _ in range(80):
                socks.append(socket.create_connection(("127.0.0.1", a.port), timeout=2))
            time.sleep(0.2)
            assert a.alive()
        finally:
            for s in socks:
                s.close()
        t0 = time.monotonic()
        wait_for(lambda: a.get("/readyz")[0] == 200, 10, "readyz after the flood")
        assert time.monotonic() - t0 < 3
    assert a.get("/healthz")[0] == 200
    assert a.stop() == 0
