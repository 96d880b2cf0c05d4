"""The agent follows its desired file: every way a file gets changed, and every kind of bad
file. A bad file never reaches the effective file, and is reported in /status (file, line and
field), in /metrics (failure counter, invalid gauge) and in the log. Keys are generated here,
and the fixtures scan every response and log line for them.
"""
import hashlib
import os
import threading
import pathlib
import re
import shutil
import signal
import stat
import tempfile
import time

import pytest

from conftest import ATREST, enc_config, run_cli, wait_for


# ---- helpers over /status (tolerant of the exact schema) -------------------------------------

def jget(d, *paths):
    for p in paths:
        cur = d
        for k in p.split("."):
            cur = cur.get(k) if isinstance(cur, dict) else None
        if cur is not None:
            return cur
    return None


def fp_desired(st):
    return jget(st, "desired.fingerprint")


def fp_effective(st):
    return jget(st, "effective.fingerprint")


def desired_valid(st):
    return jget(st, "desired.valid")


def desired_error(st):
    return jget(st, "desired.error") or ""


def failures(agent):
    return agent.metric("atrest_config_reloads_total", status="failure") or 0


def successes(agent):
    return agent.metric("atrest_config_reloads_total", status="success") or 0


def lint_fp(path):
    """The fingerprint prefix `atrest lint` prints for a valid file."""
    p = run_cli(["lint", str(path)])
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    m = re.search(rb"fingerprint (sha256:[0-9a-f]+)", p.stderr)
    assert m, p.stderr
    return m.group(1).decode()


def assert_effective_ok(agent, want_fp=None):
    """The effective file: mode 0600, loads, and (if given) has the fingerprint want_fp."""
    st = os.stat(agent.effective)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    fp = lint_fp(agent.effective)
    if want_fp:
        assert want_fp.startswith(fp) or fp.startswith(want_fp), (fp, want_fp)
    return fp


def write_in_place(path, text):
    with open(path, "r+b" if os.path.exists(path) else "wb") as f:
        f.seek(0)
        f.truncate()
        f.write(text.encode() if isinstance(text, str) else text)
        f.flush()
        os.fsync(f.fileno())


def write_rename(path, text):
    tmp = str(path) + ".tmp-%d" % os.getpid()
    with open(tmp, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def valid_cfg(keys, n=1):
    """A config with n aescbc keys key0..key<n-1> (key0 writes) plus identity. The keys are
    generated once per test (per `keys`), so a config with more keys only adds read keys:
    without etcd the agent applies such a change all the way, while a change that drops a key
    waits before prune (test_drop_key_waits_before_prune)."""
    stable = keys.__dict__.setdefault("_reload_keys", [])
    while len(stable) < n:
        stable.append(keys.new(32))
    ks = [("key%d" % i, stable[i]) for i in range(n)]
    return enc_config([(["secrets", "configmaps"], [("aescbc", ks), ("identity",)])])


@pytest.fixture
def running(make_agent, keys):
    """An agent with a valid desired config in force."""
    a = make_agent()
    write_rename(a.desired, valid_cfg(keys))
    a.start()
    wait_for(lambda: fp_effective(a.status()), 10, "first effective config")
    return a


# ---- valid changes ------------------------------------------------------------------------

def test_start_writes_effective(make_agent, keys, agent_bin):
    a = make_agent(binary=agent_bin)
    write_rename(a.desired, valid_cfg(keys, 2))
    a.start()
    st = wait_for(lambda: (lambda s: s if fp_effective(s) else None)(a.status()), 10,
                  "effective fingerprint in /status")
    assert fp_desired(st) == fp_effective(st)
    assert desired_valid(st) is True
    # a first install (no effective file yet) is applied directly through coord's node driver,
    # nothing waits, and no proof of load is claimed
    assert st["apply"] == {"mode": "direct", "step": "idle", "proof": "none",
                           "waiting_for": None}, st["apply"]
    assert_effective_ok(a, fp_desired(st))
    assert lint_fp(a.desired) == lint_fp(a.effective)
    assert a.get("/healthz")[0] == 200
    assert a.get("/readyz")[0] == 200
    m = a.metrics()
    assert m["atrest_build_info"]["type"] == "gauge"
    assert list(m["atrest_build_info"]["samples"].values()) == [1.0]
    last = m["atrest_config_last_config_info"]["samples"]
    assert len(last) == 1 and list(last.values()) == [1.0]
    (labels,) = last.keys()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", dict(labels)["hash"])
    assert m["atrest_desired_config_invalid"]["samples"][frozenset()] == 0
    # kube-apiserver's last_config_info hash: sha256 of the raw file bytes
    assert dict(labels)["hash"] == "sha256:" + hashlib.sha256(a.effective.read_bytes()).hexdigest()
    (dl,) = m["atrest_desired_config_info"]["samples"].keys()
    assert dict(dl)["hash"] == "sha256:" + hashlib.sha256(a.desired.read_bytes()).hexdigest()
    assert m["atrest_effective_writes_total"]["samples"][frozenset()] == 1
    assert a.stop() == 0


@pytest.mark.parametrize("how", ["in_place", "rename", "configmap"])
def test_change_desired(make_agent, keys, how):
    a = make_agent()
    if how == "configmap":
        # Kubernetes' atomic writer: desired.yaml -> ..data/desired.yaml, ..data -> ..<ts>
        d = a.desired.parent
        ts1 = d / "..2024_01_01_00_00_00.1"
        ts1.mkdir()
        (ts1 / "desired.yaml").write_text(valid_cfg(keys))
        os.symlink(ts1.name, d / "..data")
        os.symlink("..data/desired.yaml", a.desired)
    else:
        write_rename(a.desired, valid_cfg(keys))
    a.start()
    st0 = wait_for(lambda: (lambda s: s if fp_effective(s) else None)(a.status()), 10, "start")
    ok0 = successes(a)
    new = valid_cfg(keys, 2)
    if how == "in_place":
        write_in_place(a.desired, new)
    elif how == "rename":
        write_rename(a.desired, new)
    else:
        ts2 = d / "..2024_01_01_00_00_01.2"
        ts2.mkdir()
        (ts2 / "desired.yaml").write_text(new)
        os.symlink(ts2.name, d / "..data_tmp")
        os.rename(d / "..data_tmp", d / "..data")
    st = wait_for(lambda: (lambda s: s if fp_effective(s) not in (None, fp_effective(st0))
                           else None)(a.status()), 10, "new effective fingerprint")
    assert fp_effective(st) == fp_desired(st)
    assert_effective_ok(a, fp_effective(st))
    assert lint_fp(a.effective) == lint_fp(a.desired)
    assert successes(a) == ok0 + 1
    assert a.stop() == 0


def aescbc_cfg(ks):
    return enc_config([(["secrets"], [("aescbc", ks), ("identity",)])])


def test_drop_key_waits_before_prune(make_agent, keys):
    """Without etcd, a desired config that drops k1 (aescbc{k1} -> aescbc{k2}) runs stage and
    promote on this node and stops there: the effective file is the promote config
    aescbc{k2, k1} (k1 still reads), never the desired one, and /status and the log say why.
    A read-key-only change (aescbc{k2, k1} -> aescbc{k2, k1, k3}) goes all the way."""
    k1, k2, k3 = ("k1", keys.new(32)), ("k2", keys.new(32)), ("k3", keys.new(32))
    a = make_agent()
    write_rename(a.desired, aescbc_cfg([k1]))
    a.start()
    st0 = wait_for(lambda: (lambda s: s if fp_effective(s) else None)(a.status()), 10, "start")
    assert st0["apply"]["mode"] == "direct"      # first install
    promote = a.tmp / "promote.yaml"
    promote.write_text(aescbc_cfg([k2, k1]))
    write_rename(a.desired, aescbc_cfg([k2]))
    st = wait_for(lambda: (lambda s: s if s["apply"]["waiting_for"] else None)(a.status()), 10,
                  "the wait before prune")
    want = ("waiting before prune: without etcd atrest cannot verify that nothing stored is still "
            "under aescbc key k1; re-encrypt and verify with `atrest reencrypt` / `atrest "
            "verify`, then push a desired config that keeps those keys, or configure etcd")
    assert st["apply"] == {"mode": "local", "step": "idle", "proof": "none",
                           "waiting_for": want}, st["apply"]
    assert fp_effective(st).startswith(lint_fp(promote))   # lint prints a prefix
    assert fp_effective(st) != fp_desired(st)
    assert lint_fp(a.effective) == lint_fp(promote)
    assert want in a.log()
    # a later desired config restarts from the effective one: keeping k1 and adding k3 is a
    # read-key-only change from there, applied all the way
    write_rename(a.desired, aescbc_cfg([k2, k1, k3]))
    st = wait_for(lambda: (lambda s: s if fp_effective(s) == fp_desired(s) and
                           fp_effective(s) != fp_effective(st) else None)(a.status()), 10,
                  "the read-key-only change")
    assert st["apply"]["waiting_for"] is None, st["apply"]
    assert st["apply"]["mode"] == "local"
    assert lint_fp(a.effective) == lint_fp(a.desired)
    assert a.stop() == 0


def test_sighup_reload(running, keys):
    a = running
    st0 = a.status()
    ok0 = successes(a)
    # Change the file while pretending the watch missed it: SIGHUP makes the agent look now.
    write_in_place(a.desired, valid_cfg(keys, 3))
    a.send_signal(signal.SIGHUP)
    st = wait_for(lambda: (lambda s: s if fp_effective(s) != fp_effective(st0) else None)(
        a.status()), 10, "reload after SIGHUP")
    assert fp_effective(st) == fp_desired(st)
    assert successes(a) == ok0 + 1
    assert st["last_reload"]["result"] == "applied", st["last_reload"]
    assert "SIGHUP" in a.log()
    # A SIGHUP with nothing changed is not a reload (kube-apiserver records neither).
    t0 = st["last_reload"]["time"]
    a.send_signal(signal.SIGHUP)
    st = wait_for(lambda: (lambda s: s if s["last_reload"]["time"] != t0 else None)(a.status()),
                  10, "second SIGHUP handled")
    assert st["last_reload"]["result"] == "unchanged", st["last_reload"]
    assert a.alive()
    assert successes(a) == ok0 + 1 and failures(a) == 0
    assert_effective_ok(a, fp_effective(st))


# ---- bad files -------------------------------------------------------------------------------

def _good_rule(keys, ptype="aescbc", n=32, name="k1"):
    return (["secrets"], [(ptype, [(name, keys.new(n))])])


def bad_cases(keys):
    """(id, writer(agent), expected substrings of the error) — writer leaves a bad desired."""
    k = keys.new(32)
    kb = __import__("base64").b64encode(k).decode()
    head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"

    def text(t):
        return lambda a: write_rename(a.desired, t)

    def truncated(a):
        full = enc_config([(["secrets"], [("aescbc", [("k1", keys.new(32))])])])
        cut = full.index("secret: ") + len("secret: ") + 10
        write_in_place(a.desired, full[:cut])        # a writer stopped mid-key

    def directory(a):
        os.unlink(a.desired)
        os.mkdir(a.desired)

    def loop(a):
        os.unlink(a.desired)
        os.symlink(a.desired.name, a.desired)         # points at itself

    def huge(a):
        body = enc_config([_good_rule(keys)])
        pad = ("# " + "x" * 1000 + "\n") * 5000     # ~5 MB of comments
        write_rename(a.desired, body + pad)

    def vanished(a):
        os.unlink(a.desired)

    return [
        ("bad-yaml", text(head + "resources:\n  - resources: [secrets\n    providers: ]]\n"),
         ["error converting YAML to JSON: yaml: line 4: did not find expected ',' or ']'"]),
        ("key-length", text(enc_config([_good_rule(keys, n=20)])),
         [":10:23: resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\"",
          "secret is not of the expected length, got 20, expected one of [16 24 32]"]),
        ("bad-base64", text(head + "resources:\n  - resources: [secrets]\n    providers:\n"
                            "      - aesgcm:\n          keys:\n            - name: k1\n"
                            "              secret: '!!notbase64!!'\n"),
         [":9:23: resources[0].providers[0].aesgcm.keys[0].secret",
          "secrets must be base64 encoded"]),
        ("empty", text(""), [":0:0: empty file"]),
        ("truncated", truncated, ["aescbc.keys[0].secret", "secrets must be base64 encoded"]),
        ("directory", directory, [":0:0: is a directory"]),
        ("symlink-loop", loop, [":0:0: too many levels of symbolic links"]),
        ("huge", huge, [":0:0: too large"]),
        ("unknown-field", text(head + "resources:\n  - resources: [secrets]\n    providers:\n"
                               "      - aescbc:\n          keys:\n            - name: k1\n"
                               "              secret: %s\n          pandas: 1\n" % kb),
         [':10:11: resources[0].providers[0].aescbc.pandas: strict decoding error: '
          'unknown field "resources[0].providers[0].aescbc.pandas"']),
        ("duplicate-field", text(head + "kind: EncryptionConfiguration\nresources:\n"
                                 "  - resources: [secrets]\n    providers:\n"
                                 "      - identity: {}\n"),
         [":3:1: kind: strict decoding error", 'key "kind" already set in map']),
        ("wrong-kind", text(enc_config([_good_rule(keys)], kind="EncryptionConfigurations")),
         [':2:7: no kind "EncryptionConfigurations" is registered for version '
          '"apiserver.config.k8s.io/v1"']),
        ("wrong-apiversion", text(enc_config([_good_rule(keys)], api_version="v2")),
         ['no kind "EncryptionConfiguration" is registered for version "v2"']),
        ("json-syntax", text('{"apiVersion": "apiserver.config.k8s.io/v1", "kind": '
                             '"EncryptionConfiguration", "resources": [{"resources": '),
         ["error converting YAML to JSON"]),
        ("binary-garbage", lambda a: write_rename(a.desired, bytes(range(256)) * 3),
         ["control characters are not allowed"]),
        ("kms-bad-endpoint", text(enc_config([(["secrets"], [("kms", [
            ("apiVersion", "v2"), ("name", "vault"), ("endpoint", "tcp://127.0.0.1:1")])])])),
         ["kms.endpoint", "unsupported scheme \"tcp\" for KMS provider, only unix is supported"]),
        ("overlapping", text(enc_config([(["secrets", "secrets"], [("identity",)])])),
         ["the same resource cannot be specified multiple times"]),
        ("masked-rule", text(enc_config([(['"*."'], [("identity",)]),
                                         (["secrets"], [("identity",)])])),
         ['resource "secrets" is masked by earlier rule "*."']),
        ("secretbox-16", text(enc_config([_good_rule(keys, "secretbox", 16)])),
         ["secretbox.keys[0].secret", "got 16, expected one of [32]"]),
        ("missing-providers", text(head + "resources:\n  - resources: [secrets]\n"),
         ["resources[0].providers", "at least one resources[0].providers is required"]),
        ("no-resources", text(head + "resources: []\n"),
         ["at least one resources is required"]),
        ("empty-key-name", text(enc_config([_good_rule(keys, name="''")])),
         ["keys[0].name", "name is a mandatory field for a key"]),
        ("two-types", text(head + "resources:\n  - resources: [secrets]\n    providers:\n"
                           "      - identity: {}\n        aescbc:\n          keys:\n"
                           "            - name: k1\n              secret: %s\n" % kb),
         ["more than one provider specified in a single element"]),
        ("capital-resource", text(enc_config([(["Secrets"], [("identity",)])])),
         ["resource name should not contain capital letters"]),
        ("star-resource", text(enc_config([(['"*"'], [("identity",)])])),
         ["use '*.' to encrypt all the resources from core API group"]),
        ("kms-colon-name", text(enc_config([(["secrets"], [("kms", [
            ("apiVersion", "v2"), ("name", "a:b"), ("endpoint", "unix:///tmp/kms.sock")])])])),
         ["invalid KMS provider name a:b, must not contain ':'"]),
        ("extensions-group", text(enc_config([(["deployments.extensions"], [("identity",)])])),
         ["'extensions' group has been removed"]),
        ("nul-bytes", lambda a: write_rename(a.desired, enc_config([_good_rule(keys)]).encode()
                                             .replace(b"kind:", b"ki\0nd:")),
         ["control characters are not allowed"]),
        ("vanished", vanished, [":0:0: no such file"]),
    ]


def test_bad_files(make_agent, keys, agent_bin):
    """Each bad file in turn; between cases the good file is restored."""
    a = make_agent(binary=agent_bin)
    good = valid_cfg(keys, 2)
    write_rename(a.desired, good)
    a.start()
    st0 = wait_for(lambda: (lambda s: s if fp_effective(s) else None)(a.status()), 10, "start")
    good_fp = fp_effective(st0)
    eff_bytes = a.effective.read_bytes()
    cases = bad_cases(keys)
    assert len(cases) >= 20
    for name, writer, want in cases:
        f0 = failures(a)
        log0 = len(a.log())
        writer(a)
        wait_for(lambda: failures(a) > f0, 10, "failure counted for case %s" % name)
        st = a.status()
        err = desired_error(st)
        assert desired_valid(st) is False, (name, st)
        for w in want:
            assert w in err, "case %s: %r not in status error %r" % (name, w, err)
        assert "desired.yaml" in err, (name, err)
        # the effective file did not move, and still loads
        assert a.effective.read_bytes() == eff_bytes, name
        assert fp_effective(st) == good_fp, name
        assert a.metric("atrest_desired_config_invalid") == 1, name
        assert a.metric("atrest_config_reloads_total", status="failure") == f0 + 1, name
        new_log = a.log()[log0:]
        assert err in new_log, "case %s: error not logged:\n%s" % (name, new_log)
        assert a.get("/readyz")[0] == 200, name    # the last valid config is still in force
        # restore the good file (an empty directory or a loop must be removed first)
        if a.desired.is_dir() and not a.desired.is_symlink():
            os.rmdir(a.desired)
        elif a.desired.is_symlink():
            os.unlink(a.desired)
        write_rename(a.desired, good)
        wait_for(lambda: desired_valid(a.status()) is True, 10, "recovery after %s" % name)
    assert_effective_ok(a, good_fp)
    assert a.effective.read_bytes() == eff_bytes
    assert successes(a) == 1     # restoring the content in force is not a reload
    assert a.stop() == 0


def test_unreadable_file(make_agent, keys):
    """chmod 000. Root ignores file modes, so when the tests run as root the agent runs as
    nobody (setuid in the child) over a directory tree it owns, outside pytest's 0700 tmp."""
    base = tempfile.mkdtemp(prefix="atrest-it-")
    try:
        a = make_agent(base=base)
        write_rename(a.desired, valid_cfg(keys))
        if os.geteuid() == 0:
            uid = 65534
            # nobody may not be able to reach the binary where it was built (CI clones into a
            # 0700 directory): run a copy from the tree nobody owns
            (pathlib.Path(base) / "bin").mkdir()
            a.binary = shutil.copy2(a.binary, pathlib.Path(base) / "bin" / "atrest")
            for p in [pathlib.Path(base)] + list(pathlib.Path(base).rglob("*")):
                os.lchown(p, uid, uid)
            a.preexec = lambda: (os.setgid(uid), os.setuid(uid))
        a.start()
        wait_for(lambda: fp_effective(a.status()), 10, "start")
        eff = a.effective.read_bytes()
        f0 = failures(a)
        os.chmod(a.desired, 0)
        a.send_signal(signal.SIGHUP)
        wait_for(lambda: failures(a) > f0, 10, "failure for an unreadable file")
        err = desired_error(a.status())
        assert "desired.yaml:0:0: " in err and "ermission denied" in err, err
        assert a.effective.read_bytes() == eff
        assert a.metric("atrest_desired_config_invalid") == 1
        os.chmod(a.desired, 0o644)
        a.send_signal(signal.SIGHUP)
        wait_for(lambda: desired_valid(a.status()) is True, 10, "recovery")
        assert a.stop() == 0
        a.finish()      # the leak and leftover checks, before the tree goes
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_effective_never_partial(make_agent, keys):
    """While the desired file changes 25 times (valid and invalid alternately), a reader
    polling the effective file never sees it missing, half-written, with another mode, or
    holding an invalid config."""
    a = make_agent()
    write_rename(a.desired, valid_cfg(keys))
    a.start()
    wait_for(lambda: fp_effective(a.status()), 10, "start")
    seen, problems, stop = set(), [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                fd = os.open(a.effective, os.O_RDONLY)
            except FileNotFoundError:
                problems.append("effective file missing")
                continue
            try:
                mode = stat.S_IMODE(os.fstat(fd).st_mode)
                data = b""
                while True:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    data += chunk
            finally:
                os.close(fd)
            if mode != 0o600:
                problems.append("mode %o" % mode)
            seen.add(data)

    t = threading.Thread(target=reader)
    t.start()
    try:
        ok0 = successes(a)
        for i in range(25):
            if i % 2:
                write_in_place(a.desired, valid_cfg(keys, 1 + i % 3)[:-40])   # cut short
            else:
                write_rename(a.desired, valid_cfg(keys, 1 + i % 3))
            time.sleep(0.06)
        wait_for(lambda: successes(a) > ok0, 10, "some reloads")
    finally:
        stop.set()
        t.join(10)
    assert not problems, problems[:5]
    assert len(seen) >= 2, "the effective file never changed"
    for i, data in enumerate(sorted(seen)):
        p = a.tmp / ("snapshot-%d.yaml" % i)
        p.write_bytes(data)
        lint_fp(p)          # every version a reader could see loads and validates


# ---- failures that pass ------------------------------------------------------------------------

def test_write_retried_until_it_succeeds(make_agent, keys):
    """The effective file's directory goes away (the settings check refuses that at start):
    the write of a new desired config fails and is reported, and it is tried again on its own,
    without any further change to the desired file, until the directory is back."""
    a = make_agent()
    write_rename(a.desired, valid_cfg(keys))
    a.start()
    st0 = wait_for(lambda: (lambda s: s if fp_effective(s) else None)(a.status()), 10, "start")
    shutil.rmtree(a.effective.parent)
    write_rename(a.desired, valid_cfg(keys, 2))
    st = wait_for(lambda: (lambda s: s if s["last_reload"]["result"] == "failed" else None)(
        a.status()), 10, "the failed write")
    assert "No such file or directory" in st["last_reload"]["error"], st["last_reload"]
    assert fp_effective(st) == fp_effective(st0)
    time.sleep(1.5)
    a.effective.parent.mkdir()
    st = wait_for(lambda: (lambda s: s if fp_effective(s) != fp_effective(st0) else None)(
        a.status()), 10, "the write retried")
    assert fp_effective(st) == fp_desired(st)
    assert st["last_reload"]["result"] == "applied", st["last_reload"]
    assert_effective_ok(a, fp_effective(st))
    assert "trying again in 1 s" in a.log() and "trying again in 2 s" in a.log()
    assert a.stop() == 0


def test_sighup_with_invalid_settings(make_agent, keys):
    """SIGHUP with a broken settings file: the running settings stay, and /status says the
    reload was refused (the desired file's unchanged result does not hide it)."""
    a = make_agent()
    cfg = a.tmp / "agent.yaml"
    cfg.write_text("logLevel: debug\n")
    a.extra += ["--config", str(cfg)]
    write_rename(a.desired, valid_cfg(keys))
    a.start()
    st0 = wait_for(lambda: (lambda s: s if fp_effective(s) else None)(a.status()), 10, "start")
    f0 = failures(a)
    cfg.write_text("logLevel: loud\n")
    a.send_signal(signal.SIGHUP)
    st = wait_for(lambda: (lambda s: s if s["last_reload"]["result"] == "invalid" else None)(
        a.status()), 10, "the refused reload in /status")
    assert "logLevel" in st["last_reload"]["error"], st["last_reload"]
    assert failures(a) == f0 + 1
    assert fp_effective(st) == fp_effective(st0)
    assert "keeping the running ones" in a.log()
    # fixed settings: the next SIGHUP clears it
    cfg.write_text("logLevel: info\n")
    t0 = st["last_reload"]["time"]
    a.send_signal(signal.SIGHUP)
    st = wait_for(lambda: (lambda s: s if s["last_reload"]["time"] != t0 else None)(a.status()),
                  10, "second SIGHUP")
    assert st["last_reload"]["result"] == "unchanged", st["last_reload"]
    assert st["last_reload"]["error"] is None
    assert a.stop() == 0
