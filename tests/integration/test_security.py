"""Security checks (issue 10), as they apply to today's agent.

Covered here:
- no key material (raw, base64, base64url, hex; conftest's Keys scanner) in the agent's log,
  /status, /metrics or etcd, for a run with etcd: a valid config, a second one applied, and
  failed reloads of bad files that hold valid keys (including a typo that turns a secret into
  a field name, which error messages quote);
- core dumps off in the running agent: /proc/<pid>/limits "Max core file size 0 0", and the
  process non-dumpable (its /proc/<pid> files belong to root although it runs as nobody);
- the effective file and its history copies are 0600 even under umask 000;
- the status endpoint listens on loopback only (/proc/net/tcp{,6} for the agent's own
  sockets), and a non-loopback status.listen is refused unless status.allowNonLoopback;
- the unit: CapabilityBoundingSet= empty, NoNewPrivileges=yes, LimitCORE=0, as written and as
  systemd-analyze security reads it.

Elsewhere (not repeated here): the overall `systemd-analyze security` exposure <= 2.0 is
tests/test_unit_security.sh (make check's unit-security target); every agent test's log and
HTTP bodies are scanned for keys at teardown (conftest Agent.finish); etcd after a valid run
is scanned in test_agent_etcd.py::test_two_agents_one_etcd and test_agent_cluster.py; the
effective file's 0600 on every write is test_agent_reload.py (assert_effective_ok and
test_effective_never_partial); the settings check of status.listen is tests/unit/
test_settings.c; ar_crypto_init's RLIMIT_CORE/PR_SET_DUMPABLE in a child is tests/unit/
test_config.c.
"""
import os
import pathlib
import re
import socket
import stat
import subprocess

import pytest

from conftest import (NOBODY, ROOT, b64, enc_config, free_port, run_as_nobody, run_cli,
                      wait_for)

HEAD = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"


def write_rename(path, text):
    tmp = str(path) + ".tmp-sec"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def cfg(keys):
    """Every call a new config with new keys that keeps the earlier ones (one more aesgcm read
    key): without etcd the agent never drops a key, so a change that dropped one would wait
    before prune instead of being written."""
    st = keys.__dict__.setdefault("_sec_cfg", None)
    if st is None:
        st = keys._sec_cfg = {"gcm": [("g1", keys.new(32)), ("g0", keys.new(16))],
                              "box": [("s1", keys.new(32))], "cbc": [("c1", keys.new(24))]}
    else:
        st["gcm"].append(("g%d" % (len(st["gcm"]) + 1), keys.new(32)))
    return enc_config([(["secrets", "configmaps"], [
        ("aesgcm", list(st["gcm"])), ("secretbox", list(st["box"])),
        ("aescbc", list(st["cbc"])), ("identity",)])])


def failures(a):
    return a.metric("atrest_config_reloads_total", status="failure") or 0


def bad_files_with_keys(keys):
    """Invalid desired files that each hold valid keys, some where an error message looks."""
    k = b64(keys.new(32))
    keyed = HEAD + ("resources:\n  - resources: [secrets]\n    providers:\n      - aescbc:\n"
                    "          keys:\n            - name: k1\n              secret: %s\n" % k)
    return [
        ("syntax error after the key", keyed + "  - resources: [\n"),
        ("a second key of the wrong length",
         keyed + "            - name: k2\n              secret: %s\n" % b64(keys.new(31))),
        ("unknown field beside the key", keyed + "              secrets: %s\n" % k),
        ("duplicate secret", keyed + "              secret: %s\n" % b64(keys.new(32))),
        ("key as a type error", keyed.replace("secret: " + k, "secret: [%s]" % k)),
        # flow style without the space after the colon: "secret:KEY" is a field name
        ("secret typo in flow style", HEAD + "resources:\n  - resources: [secrets]\n"
         "    providers:\n      - aescbc: {keys: [{name: k1, secret:%s}]}\n" % b64(keys.new(32))),
        ("secret typo, space for colon", HEAD + "resources:\n  - resources: [secrets]\n"
         "    providers:\n      - aescbc: {keys: [{name: k1, secret %s}]}\n" % b64(keys.new(32))),
    ]


def test_no_key_material_anywhere(make_agent, make_etcd, keys, agent_bin):
    """S5: keys in none of log, /status, /metrics, etcd, after valid and failed reloads."""
    e = make_etcd().start()
    a = make_agent(binary=agent_bin, extra=["--etcd-servers", e.endpoint])
    write_rename(a.desired, cfg(keys))
    a.start()
    wait_for(lambda: a.status()["etcd"]["state"] == "connected", 15, "etcd connected")
    fp0 = a.status()["desired"]["fingerprint"]
    # a second valid config: with etcd it goes to the rotation (which, without an API server to
    # prove against, waits and says why: its messages are scanned too)
    write_rename(a.desired, cfg(keys))
    wait_for(lambda: a.status()["desired"]["fingerprint"] not in (None, fp0), 10,
             "the second desired config read")
    wait_for(lambda: any(k.endswith(b"alive/node-a") for k, _ in e.dump()), 15, "alive key")
    good = a.desired.read_text()
    for what, text in bad_files_with_keys(keys):
        f0 = failures(a)
        write_rename(a.desired, text)
        wait_for(lambda: failures(a) > f0, 10, "failed reload: " + what)
        st_body = a.get("/status")[2]
        keys.scan(st_body, "/status after a failed reload (%s)" % what)
        keys.scan(a.get("/metrics")[2], "/metrics after a failed reload (%s)" % what)
        keys.scan(a.log_path.read_bytes(), "the log after a failed reload (%s)" % what)
        write_rename(a.desired, good)
        wait_for(lambda: a.status()["desired"]["valid"] is True, 10, "recovery after " + what)
    # a reload attempt also reaches etcd (the alive record carries fingerprints): scan it all
    dump = e.dump()
    assert any(k.endswith(b"members/node-a") for k, _ in dump), dump
    for k, v in dump:
        keys.scan(k + b" " + v, "etcd key %r" % k)
    keys.scan(a.get("/status")[2], "/status")
    keys.scan(a.get("/metrics")[2], "/metrics")
    p = run_cli(["status", "--addr", "127.0.0.1:%d" % a.port, "--json"])
    assert p.returncode == 0, p.stderr
    keys.scan(p.stdout + p.stderr, "atrest status --json")
    assert a.stop() == 0
    keys.scan(a.log_path.read_bytes(), "the agent's log")


def test_lint_never_prints_a_key(keys, tmp_path):
    """The same bad files through `atrest lint`: errors, and no key in the output."""
    for i, (what, text) in enumerate(bad_files_with_keys(keys)):
        f = tmp_path / ("bad%d.yaml" % i)
        f.write_text(text)
        p = run_cli(["lint", str(f)])
        assert p.returncode == 1, (what, p.stdout, p.stderr)
        assert p.stdout.startswith(str(f).encode() + b":"), (what, p.stdout)
        keys.scan(p.stdout + p.stderr, "lint output for " + what)


# ---- core dumps ---------------------------------------------------------------------------------

def test_core_dumps_disabled(nobody_tree, make_agent, keys):
    a = make_agent(base=nobody_tree)
    write_rename(a.desired, cfg(keys))
    as_nobody = run_as_nobody(a, nobody_tree)
    a.start()
    pid = a.proc.pid
    limits = pathlib.Path("/proc/%d/limits" % pid).read_text()
    m = re.search(r"^Max core file size\s+(\S+)\s+(\S+)\s+bytes\s*$", limits, re.M)
    assert m and m.groups() == ("0", "0"), limits
    status = pathlib.Path("/proc/%d/status" % pid).read_text()
    assert re.search(r"^CoreDumping:\s+0$", status, re.M), status
    if as_nobody:
        # non-dumpable (PR_SET_DUMPABLE 0): the kernel makes /proc/<pid>/* root's although
        # the process runs as nobody (with dumpable 1 they would belong to nobody)
        assert re.search(r"^Uid:\s+%d\s+%d\s+%d\s+%d$" % ((NOBODY,) * 4), status, re.M), status
        for f in ("status", "environ", "mem"):
            st = os.stat("/proc/%d/%s" % (pid, f))
            assert (st.st_uid, st.st_gid) == (0, 0), (f, st.st_uid, st.st_gid)
        # the control: a dumpable process started the same way has them as nobody's
        ctl = subprocess.Popen(["sleep", "30"], preexec_fn=a.preexec, start_new_session=True)
        try:
            wait_for(lambda: os.stat("/proc/%d/status" % ctl.pid).st_uid == NOBODY, 5,
                     "the control process's /proc files owned by nobody")
        finally:
            ctl.kill()
            ctl.wait(5)
    else:
        pytest.skip("not root: cannot run the agent as another user to see its dumpable flag")
    assert a.stop() == 0
    a.finish()


# ---- file modes ---------------------------------------------------------------------------------

def test_effective_0600_under_umask_000(make_agent, keys):
    """Even when started with umask 000: the effective file, its history copies and the state
    directory admit no one but the owner."""
    a = make_agent()
    write_rename(a.desired, cfg(keys))
    a.preexec = lambda: os.umask(0)
    a.start()
    wait_for(lambda: a.status()["effective"]["fingerprint"], 10, "effective written")
    fp0 = a.status()["effective"]["fingerprint"]
    write_rename(a.desired, cfg(keys))
    wait_for(lambda: a.status()["effective"]["fingerprint"] != fp0, 10, "second write")
    assert stat.S_IMODE(os.stat(a.effective).st_mode) == 0o600
    hist = sorted((a.state_dir / "history").glob("effective-*.yaml"))
    assert hist, list(a.state_dir.rglob("*"))
    for h in hist:
        assert stat.S_IMODE(os.stat(h).st_mode) == 0o600, (h, oct(os.stat(h).st_mode))
    for d in [a.state_dir / "history"]:
        assert stat.S_IMODE(os.stat(d).st_mode) & 0o077 == 0, (d, oct(os.stat(d).st_mode))
    leftovers = [p for p in a.effective.parent.iterdir() if p.name != a.effective.name]
    assert not leftovers, leftovers
    assert a.stop() == 0


# ---- the status endpoint ------------------------------------------------------------------------

def listeners(pid):
    """(family, ip, port) of every TCP socket in LISTEN state that process pid holds."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", t)
        if m:
            inodes.add(m.group(1))
    out = []
    for fam in ("tcp", "tcp6"):
        with open("/proc/net/" + fam) as f:
            next(f)
            for line in f:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if state != "0A" or inode not in inodes:
                    continue
                hexip, hexport = local.split(":")
                raw = bytes.fromhex(hexip)
                if fam == "tcp":
                    ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
                else:   # four 32-bit words, each in host (little-endian) order
                    ip = socket.inet_ntop(socket.AF_INET6, b"".join(
                        raw[i:i + 4][::-1] for i in range(0, 16, 4)))
                out.append((fam, ip, int(hexport, 16)))
    return out


def test_status_listens_on_loopback_only(make_agent, keys):
    a = make_agent()
    write_rename(a.desired, cfg(keys))
    a.start()
    got = listeners(a.proc.pid)
    assert got == [("tcp", "127.0.0.1", a.port)], got
    # not reachable on this machine's other addresses
    for ip in other_addresses():
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((ip, a.port)) != 0, ip
    assert a.stop() == 0


def other_addresses():
    """This machine's non-loopback IPv4 addresses (from the routing to a documentation
    address; nothing is sent)."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            ip = s.getsockname()[0]
            if not ip.startswith("127."):
                out.append(ip)
        except OSError:
            pass
    return out


def test_status_default_listen_is_loopback(make_agent, keys):
    """No --status-listen at all: the built-in default (127.0.0.1:9798), loopback."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 9798)) == 0:
            pytest.skip("something listens on 127.0.0.1:9798")
    a = make_agent()
    write_rename(a.desired, cfg(keys))
    args = a.args()
    i = args.index("--status-listen")
    del args[i:i + 2]
    a.args = lambda: args
    a.port = 9798
    a.start()
    assert listeners(a.proc.pid) == [("tcp", "127.0.0.1", 9798)]
    assert a.stop() == 0


@pytest.mark.parametrize("addr", ["0.0.0.0", "[::]", "192.0.2.1", "[2001:db8::1]"])
def test_non_loopback_listen_refused(make_agent, keys, addr):
    a = make_agent()
    write_rename(a.desired, cfg(keys))
    args = a.args()
    i = args.index("--status-listen")
    args[i + 1] = "%s:%d" % (addr, a.port)
    p = subprocess.run(args[:2] + ["--check"] + args[2:], capture_output=True, timeout=30)
    assert p.returncode != 0, p
    err = (p.stdout + p.stderr).decode()
    assert "is not a loopback address" in err and "allowNonLoopback" in err, err
    # the daemon itself refuses too, and never listens
    p = subprocess.run(args, capture_output=True, timeout=30)
    assert p.returncode != 0
    assert "is not a loopback address" in (p.stdout + p.stderr).decode()


def test_non_loopback_listen_allowed_when_asked(make_agent, keys):
    a = make_agent()
    write_rename(a.desired, cfg(keys))
    a.port = free_port()
    base = a.args
    a.args = lambda: [x if x != "127.0.0.1:%d" % a.port else "0.0.0.0:%d" % a.port
                      for x in base()] + ["--status-allow-non-loopback"]
    a.start()
    assert listeners(a.proc.pid) == [("tcp", "0.0.0.0", a.port)]
    assert a.stop() == 0


# ---- the systemd unit ---------------------------------------------------------------------------

UNIT = ROOT / "systemd" / "atrest.service"


def unit_settings():
    """[Service] assignments as systemd reads them: the last one of each wins (an empty one
    resets list settings such as CapabilityBoundingSet=)."""
    out = {}
    section = None
    for line in UNIT.read_text().split("\n"):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_unit_hardening_directives():
    s = unit_settings()
    assert s["CapabilityBoundingSet"] == [""], s.get("CapabilityBoundingSet")
    assert s.get("AmbientCapabilities", [""]) == [""], s.get("AmbientCapabilities")
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["LimitCORE"] == ["0"]


def test_unit_capabilities_as_systemd_sees_them(tmp_path):
    """systemd-analyze security's own reading of the unit: no capability in the bounding set,
    no_new_privs. (The overall score is tests/test_unit_security.sh.)"""
    import json
    unit = tmp_path / "atrest.service"
    unit.write_text(UNIT.read_text().replace("@BINDIR@", "/usr/local/bin"))
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--json=short",
                        str(unit)], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    items = {i["json_field"]: i for i in json.loads(p.stdout)}
    caps = [i for f, i in items.items() if f.startswith("CapabilityBoundingSet_")]
    assert len(caps) >= 10, sorted(items)
    held = [i["name"] for i in caps if not i["set"]]
    assert not held, held
    assert items["NoNewPrivileges"]["set"] is True
    assert items["AmbientCapabilities"]["set"] is True
    # the check that runs in make check is wired there
    mk = (ROOT / "Makefile").read_text()
    assert re.search(r"^check-inner:.*\bunit-security\b", mk, re.M)
    assert "tests/test_unit_security.sh 2.0" in mk

