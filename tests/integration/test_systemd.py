"""The agent under a (simulated) systemd: the sd_notify messages it sends on start, SIGHUP,
watchdog and SIGTERM, read from a real NOTIFY_SOCKET; and `make install` with DESTDIR/PREFIX."""
import os
import pathlib
import signal
import socket
import subprocess
import time

from conftest import enc_config, wait_for

ROOT = pathlib.Path(__file__).resolve().parents[2]


class NotifySocket:
    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []

    def drain(self):
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                return

    def wait(self, pred, what, timeout=10):
        def seen():
            self.drain()
            return [m for m in self.messages if pred(m)]
        return wait_for(seen, timeout, what)

    def close(self):
        self.sock.close()


def fields(msg):
    return dict(line.split("=", 1) for line in msg.split("\n") if "=" in line)


def test_notify_protocol(make_agent, keys, tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    a = make_agent()
    a.desired.write_text(enc_config([(["secrets"], [("aesgcm", [("k1", keys.new(32))])])]))
    saved = {k: os.environ.get(k) for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    try:
        # Agent.start() drops NOTIFY_SOCKET from its environment: start by hand here.
        env = dict(os.environ, NOTIFY_SOCKET=ns.path, WATCHDOG_USEC="400000")
        env.pop("JOURNAL_STREAM", None)
        a.logf = open(a.log_path, "ab")
        a.proc = subprocess.Popen(a.args(), stdin=subprocess.DEVNULL, stdout=a.logf,
                                  stderr=subprocess.STDOUT, env=env, start_new_session=True)
        ready = ns.wait(lambda m: "READY=1" in m.split("\n"), "READY=1")
        assert a.get("/readyz")[0] == 200        # READY=1 only once serving
        assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in ns.messages), ns.messages
        assert ready
        # the watchdog is pinged (at half the interval) while healthy
        ns.wait(lambda m: "WATCHDOG=1" in m.split("\n"), "WATCHDOG=1", timeout=5)
        n_before = len(ns.messages)
        # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again
        a.send_signal(signal.SIGHUP)
        rel = ns.wait(lambda m: "RELOADING=1" in m.split("\n"), "RELOADING=1")
        f = fields(rel[-1])
        usec = int(f["MONOTONIC_USEC"])
        assert abs(usec / 1e6 - time.monotonic()) < 30, (usec, time.monotonic())
        idx = ns.messages.index(rel[-1])
        assert idx >= n_before
        wait_for(lambda: (ns.drain() or True) and any(
            "READY=1" in m.split("\n") for m in ns.messages[idx + 1:]), 10, "READY=1 after reload")
        # SIGTERM: STOPPING=1, exit 0
        assert a.stop(signal.SIGTERM) == 0, a.log()
        ns.drain()
        assert any("STOPPING=1" in m.split("\n") for m in ns.messages), ns.messages
        # nothing the agent sent carries key material
        for m in ns.messages:
            keys.scan(m.encode(), "sd_notify message")
    finally:
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v
        ns.close()


def test_make_install_destdir(tmp_path):
    dest = tmp_path / "root"
    p = subprocess.run(["make", "-s", "install", "DESTDIR=%s" % dest, "PREFIX=/usr"], cwd=ROOT,
                       capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    binary = dest / "usr" / "bin" / "atrest"
    assert binary.is_file() and os.access(binary, os.X_OK)
    unit = (dest / "lib" / "systemd" / "system" / "atrest.service").read_text()
    assert "ExecStart=/usr/bin/atrest agent --config /etc/atrest/agent.yaml" in unit
    assert "@BINDIR@" not in unit
    assert (dest / "usr" / "lib" / "sysusers.d" / "atrest.conf").is_file()
    assert (dest / "usr" / "lib" / "tmpfiles.d" / "atrest.conf").is_file()
    cfg = dest / "etc" / "atrest" / "agent.yaml"
    assert cfg.is_file() and (cfg.stat().st_mode & 0o777) == 0o600
    # an existing agent.yaml is never overwritten
    cfg.write_text("node: mine\n")
    p = subprocess.run(["make", "-s", "install", "DESTDIR=%s" % dest, "PREFIX=/usr"], cwd=ROOT,
                       capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert cfg.read_text() == "node: mine\n"
    # the installed binary runs: settings without desiredConfig are refused, naming the field
    p = subprocess.run([str(binary), "agent", "--check", "--config", str(cfg)],
                       capture_output=True, timeout=30)
    assert p.returncode == 1 and b"desiredConfig" in p.stderr, p.stderr
