"""YAML anchors, aliases and merge keys as kube-apiserver reads them (sigs.k8s.io/yaml over
goyaml.v2, shared spec 2.1): `atrest lint` and the agent take an anchored config exactly as
its written-out twin (same fingerprint, the effective file written expanded), and refuse a
"billion laughs" document (CVE-2019-11253) with goyaml's error, quickly and in bounded memory,
while the agent keeps the last valid config in force. Keys are generated here; the fixtures
scan every output, response and log line for them.
"""
import hashlib
import os
import re
import time

from conftest import b64, enc_config, run_cli, wait_for

HEAD = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"

BILLION_LAUGHS_ERROR = "error converting YAML to JSON: yaml: document contains excessive aliasing"


def anchored_cfg(k1, k2):
    """A provider list, a key and a mapping reused through anchors, aliases and a merge key."""
    return HEAD + (
        "resources:\n"
        "  - resources: [secrets]\n"
        "    providers: &p\n"
        "      - aescbc:\n"
        "          keys:\n"
        "            - &k1 {name: k1, secret: %s}\n"
        "            - name: k2\n"
        "              secret: %s\n"
        "      - identity: {}\n"
        "  - resources: [configmaps]\n"
        "    providers: *p\n"
        "  - resources: [events]\n"
        "    providers:\n"
        "      - aesgcm: {keys: [*k1]}\n"
        "      - <<: {identity: {}}\n") % (b64(k1), b64(k2))


def expanded_cfg(k1, k2):
    """The same config written out."""
    both = [("aescbc", [("k1", k1), ("k2", k2)]), ("identity",)]
    return enc_config([(["secrets"], both), (["configmaps"], both),
                       (["events"], [("aesgcm", [("k1", k1)]), ("identity",)])])


def billion_laughs():
    """goyaml.v2's own excessive-aliasing test document (9^9 strings from 9 lines), as the
    resource lists of a config: 2 KiB that would expand to 387,420,489 strings."""
    out = [HEAD + "resources:",
           "- resources: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]",
           "  providers: [{identity: {}}]"]
    for x, y in zip("bcdefghi", "abcdefgh"):
        out += ["- resources: &%s [%s]" % (x, ",".join(["*" + y] * 9)),
                "  providers: [{identity: {}}]"]
    return "\n".join(out) + "\n"


def lint(path, keys=None):
    p = run_cli(["lint", str(path)])
    if keys:
        keys.scan(p.stdout + p.stderr, "atrest lint output")
    return p


def lint_valid(path, keys):
    """(fingerprint prefix, file hash) that `atrest lint` prints for a valid file."""
    p = lint(path, keys)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    m = re.search(rb"file (sha256:[0-9a-f]{64}), fingerprint (sha256:[0-9a-f]+)", p.stderr)
    assert m, p.stderr
    return m.group(2).decode(), m.group(1).decode()


def write_rename(path, text):
    tmp = str(path) + ".tmp-%d" % os.getpid()
    with open(tmp, "wb") as f:
        f.write(text.encode())
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def peak_rss_kib(pid):
    """VmHWM of a process: the most resident memory it ever had."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM for pid %d" % pid)


def test_lint_anchored_equals_expanded(tmp_path, keys):
    k1, k2 = keys.new(32), keys.new(16)
    a, e = tmp_path / "anchored.yaml", tmp_path / "expanded.yaml"
    a.write_text(anchored_cfg(k1, k2))
    e.write_text(expanded_cfg(k1, k2))
    fa, ha = lint_valid(a, keys)
    fe, he = lint_valid(e, keys)
    assert fa == fe
    # the file hash stays the hash of each file's own bytes
    assert ha == "sha256:" + hashlib.sha256(a.read_bytes()).hexdigest()
    assert he == "sha256:" + hashlib.sha256(e.read_bytes()).hexdigest()
    assert ha != he


def test_lint_alias_errors(tmp_path, keys):
    f = tmp_path / "bad.yaml"
    f.write_text(HEAD + "resources:\n  - resources: *nope\n    providers: [{identity: {}}]\n")
    p = lint(f)
    assert p.returncode == 1
    assert p.stdout.decode() == (
        "%s:4:16: error converting YAML to JSON: yaml: unknown anchor 'nope' referenced\n" % f)
    # a bad key used twice: reported at both places of use, where it is written
    short = keys.new(5)
    f.write_text(HEAD + "resources:\n"
                 "  - resources: [secrets]\n"
                 "    providers: [{aescbc: {keys: [&k {name: a, secret: %s}]}}]\n"
                 "  - resources: [configmaps]\n"
                 "    providers: [{aesgcm: {keys: [*k]}}]\n" % b64(short))
    p = lint(f, keys)
    assert p.returncode == 1
    detail = ('Invalid value: "REDACTED": secret is not of the expected length, got 5, '
              'expected one of [16 24 32]')
    assert p.stdout.decode().splitlines() == [
        "%s:5:55: resources[0].providers[0].aescbc.keys[0].secret: %s" % (f, detail),
        "%s:5:55: resources[1].providers[0].aesgcm.keys[0].secret: %s" % (f, detail)]


def test_lint_billion_laughs(tmp_path):
    f = tmp_path / "lol.yaml"
    f.write_text(billion_laughs())
    t0 = time.monotonic()
    p = lint(f)
    elapsed = time.monotonic() - t0
    assert p.returncode == 1
    assert p.stdout.decode().endswith(": " + BILLION_LAUGHS_ERROR + "\n"), p.stdout
    assert elapsed < 5, elapsed


def test_agent_applies_anchored_config(make_agent, keys, agent_bin):
    k1, k2 = keys.new(32), keys.new(16)
    a = make_agent(binary=agent_bin)
    write_rename(a.desired, anchored_cfg(k1, k2))
    twin = a.tmp / "twin.yaml"
    twin.write_text(expanded_cfg(k1, k2))
    a.start()
    st = wait_for(lambda: (lambda s: s if s.get("effective", {}).get("fingerprint") else None)(
        a.status()), 10, "effective fingerprint in /status")
    assert st["desired"]["fingerprint"] == st["effective"]["fingerprint"]
    # the effective file is written expanded: no anchor, alias or merge key, and it loads as
    # the written-out twin does
    text = a.effective.read_text()
    assert "&" not in text and "*p" not in text and "*k1" not in text and "<<" not in text
    assert text.count("- resources:") == 3
    assert lint_valid(a.effective, keys)[0] == lint_valid(twin, keys)[0]
    assert st["effective"]["fingerprint"].startswith(lint_valid(twin, keys)[0])
    assert a.stop() == 0


def test_agent_refuses_billion_laughs(make_agent, keys, agent_bin):
    """The effective file is untouched, the agent keeps running and serving, the error is
    goyaml's, it comes quickly and the agent's peak memory hardly moves."""
    k1, k2 = keys.new(32), keys.new(16)
    a = make_agent(binary=agent_bin)
    write_rename(a.desired, anchored_cfg(k1, k2))
    a.start()
    st0 = wait_for(lambda: (lambda s: s if s.get("effective", {}).get("fingerprint") else None)(
        a.status()), 10, "effective fingerprint in /status")
    good_fp = st0["effective"]["fingerprint"]
    eff_bytes = a.effective.read_bytes()
    f0 = a.metric("atrest_config_reloads_total", status="failure") or 0
    hwm0 = peak_rss_kib(a.proc.pid)

    t0 = time.monotonic()
    write_rename(a.desired, billion_laughs())
    wait_for(lambda: (a.metric("atrest_config_reloads_total", status="failure") or 0) > f0, 10,
             "the billion laughs refused")
    elapsed = time.monotonic() - t0
    st = a.status()
    err = st["desired"].get("error") or ""
    assert st["desired"]["valid"] is False
    assert BILLION_LAUGHS_ERROR in err, err
    assert "desired.yaml" in err, err
    assert a.alive()
    assert a.effective.read_bytes() == eff_bytes
    assert st["effective"]["fingerprint"] == good_fp
    assert a.metric("atrest_desired_config_invalid") == 1
    assert a.get("/readyz")[0] == 200
    assert a.get("/healthz")[0] == 200
    assert err in a.log()
    grown = peak_rss_kib(a.proc.pid) - hwm0
    print("billion laughs: refused %.0f ms after the write (debounce 40 ms), peak RSS +%d KiB"
          % (elapsed * 1e3, grown))
    assert elapsed < 5, elapsed
    assert grown < 32 * 1024, grown

    # the written-out twin is the same config: it is accepted and nothing changes
    write_rename(a.desired, expanded_cfg(k1, k2))
    wait_for(lambda: a.status()["desired"]["valid"] is True, 10, "recovery")
    assert a.status()["effective"]["fingerprint"] == good_fp
    assert a.stop() == 0
