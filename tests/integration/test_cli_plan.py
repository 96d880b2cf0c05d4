"""Black-box tests of `atrest plan --from A --to B [--json] [--out DIR]`.

Runs the release and the ASan build (agent_bin). Keys are generated at test time; the key
fingerprints and config fingerprints in the expected output are computed here independently
(sha256 of the secret; the canonical serialization documented in crypto/config.c).
"""
import hashlib
import json
import os
import stat
import struct
import subprocess

from conftest import SANITIZER_MARKERS, enc_config


def run(binary, args):
    p = subprocess.run([binary] + args, capture_output=True, timeout=60)
    err = p.stderr.decode()
    for m in SANITIZER_MARKERS:
        assert m not in err, err
    return p


def kfp(k):
    return hashlib.sha256(k).hexdigest()[:16]


def config_fp(rules):
    """The canonical fingerprint of enc_config(rules) (no KMS)."""
    h = hashlib.sha256()

    def u64(v):
        h.update(struct.pack(">Q", v))

    def s(b):
        if isinstance(b, str):
            b = b.encode()
        u64(len(b))
        h.update(b)

    s("atrest-encryption-config-fingerprint-v1")
    u64(len(rules))
    for resources, providers in rules:
        u64(len(resources))
        for r in resources:
            s(r)
        u64(len(providers))
        for p in providers:
            s(p[0])
            if p[0] != "identity":
                u64(len(p[1]))
                for name, k in p[1]:
                    s(name)
                    s(k)
    return "sha256:" + h.hexdigest()


def write(tmp_path, name, rules):
    p = tmp_path / name
    p.write_text(enc_config(rules))
    return str(p)


def file_sha(path):
    with open(path, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def case(tmp_path, keys):
    k1, k2 = keys.new(), keys.new()
    frm = [(["secrets", "configmaps"], [("aescbc", [("k1", k1)]), ("identity",)])]
    to = [(["secrets"], [("aescbc", [("k2", k2)]), ("identity",)])]
    return k1, k2, frm, to, write(tmp_path, "from.yaml", frm), write(tmp_path, "to.yaml", to)


def test_plan_exact_output(agent_bin, tmp_path, keys):
    k1, k2, frm, to, fa, fb = case(tmp_path, keys)
    out = tmp_path / "phases"
    p = run(agent_bin, ["plan", "--from", fa, "--to", fb, "--out", str(out)])
    assert p.returncode == 0, p
    a, b = "k1 " + kfp(k1), "k2 " + kfp(k2)
    f = [str(out / n) for n in ("1-stage.yaml", "2-promote.yaml", "3-reencrypt.yaml",
                                "4-verify.yaml", "5-prune.yaml")]
    h = [file_sha(x) for x in f]
    assert h[1] == h[2] == h[3]
    want = f"""from: {fa}  fingerprint {config_fp(frm)}
to:   {fb}  fingerprint {config_fp(to)}
phases: stage promote reencrypt verify prune

1. stage  file {h[0]}
   written to {f[0]}
   configmaps: aescbc({a}), identity
   secrets: aescbc({a}, {b}), identity
   change secrets:
     before: aescbc({a}), identity
     after:  aescbc({a}, {b}), identity

2. promote  file {h[1]}
   written to {f[1]}
   configmaps: identity, aescbc({a})
   secrets: aescbc({b}, {a}), identity
   change configmaps:
     before: aescbc({a}), identity
     after:  identity, aescbc({a})
   change secrets:
     before: aescbc({a}, {b}), identity
     after:  aescbc({b}, {a}), identity

3. reencrypt  file {h[1]}
   written to {f[2]}
   config: the same as phase 2
   rewrites: configmaps, secrets

4. verify  file {h[1]}
   written to {f[3]}
   config: the same as phase 2
   must count zero objects under: aescbc {a}

5. prune  file {h[4]}
   written to {f[4]}
   secrets: aescbc({b}), identity
   change secrets:
     before: aescbc({b}, {a}), identity
     after:  aescbc({b}), identity
   change configmaps:
     before: identity, aescbc({a})
     after:  (no rule: identity)
   drops: aescbc {a}
"""
    assert p.stdout.decode() == want
    assert p.stderr == b""
    keys.scan(p.stdout + p.stderr, "plan output")


def test_plan_json_and_out_files(agent_bin, tmp_path, keys):
    k1, k2, frm, to, fa, fb = case(tmp_path, keys)
    out = tmp_path / "o"
    p = run(agent_bin, ["plan", "--from", fa, "--to", fb, "--json", "--out", str(out)])
    assert p.returncode == 0, p
    keys.scan(p.stdout + p.stderr, "plan --json")
    doc = json.loads(p.stdout)
    assert doc["from"] == {"file": fa, "fingerprint": config_fp(frm)}
    assert doc["to"] == {"file": fb, "fingerprint": config_fp(to)}
    assert doc["nothing_to_do"] is False
    ph = doc["phases"]
    assert [x["phase"] for x in ph] == ["stage", "promote", "reencrypt", "verify", "prune"]
    assert [x["order"] for x in ph] == [1, 2, 3, 4, 5]
    for x in ph:
        assert set(x) >= {"order", "phase", "fingerprint", "file_sha256", "resources", "changes",
                          "file"}
        assert x["file"] == str(out / ("%d-%s.yaml" % (x["order"], x["phase"])))
        assert x["file_sha256"] == file_sha(x["file"])
        assert stat.S_IMODE(os.stat(x["file"]).st_mode) == 0o600
        # every phase config loads with lint, and lint agrees on its hash
        lint = run(agent_bin, ["lint", x["file"]])
        assert lint.returncode == 0, lint
        assert lint.stdout == b""
        assert x["file_sha256"] in lint.stderr.decode()
    j1 = {"name": "k1", "fingerprint": kfp(k1)}
    j2 = {"name": "k2", "fingerprint": kfp(k2)}
    ident = {"type": "identity"}
    assert ph[0]["resources"] == [
        {"resource": "configmaps", "providers": [{"type": "aescbc", "keys": [j1]}, ident]},
        {"resource": "secrets", "providers": [{"type": "aescbc", "keys": [j1, j2]}, ident]}]
    assert ph[0]["changes"] == [
        {"resource": "secrets", "before": [{"type": "aescbc", "keys": [j1]}, ident],
         "after": [{"type": "aescbc", "keys": [j1, j2]}, ident]}]
    assert ph[4]["changes"][1] == {"resource": "configmaps",
                                   "before": [ident, {"type": "aescbc", "keys": [j1]}],
                                   "after": []}
    assert ph[2]["changes"] == [] and ph[2]["resources"] == ph[1]["resources"]
    assert ph[2]["rewrite"] == ["configmaps", "secrets"]
    drop = [{"type": "aescbc", "name": "k1", "fingerprint": kfp(k1)}]
    assert ph[3]["drops"] == drop and ph[4]["drops"] == drop
    assert ph[1]["fingerprint"] == ph[2]["fingerprint"] == ph[3]["fingerprint"]
    # the last phase config is `to`: same canonical fingerprint, and planning from it is a no-op
    assert ph[4]["fingerprint"] == config_fp(to)
    p = run(agent_bin, ["plan", "--from", ph[4]["file"], "--to", fb])
    assert p.returncode == 0
    assert p.stdout.decode().endswith("nothing to do: from and to are the same config\n")


def test_plan_nothing_to_do(agent_bin, tmp_path, keys):
    k1 = keys.new()
    rules = [(["secrets"], [("aescbc", [("k1", k1)])])]
    fa, fb = write(tmp_path, "a.yaml", rules), write(tmp_path, "b.yaml", rules)
    p = run(agent_bin, ["plan", "--from", fa, "--to", fb])
    assert p.returncode == 0
    fp = config_fp(rules)
    assert p.stdout.decode() == (f"from: {fa}  fingerprint {fp}\nto:   {fb}  fingerprint {fp}\n"
                                 "nothing to do: from and to are the same config\n")
    p = run(agent_bin, ["plan", "--from", fa, "--to", fb, "--json", "--out",
                        str(tmp_path / "none")])
    doc = json.loads(p.stdout)
    assert doc["nothing_to_do"] is True and doc["phases"] == []
    assert not (tmp_path / "none").exists()


def test_plan_errors(agent_bin, tmp_path, keys):
    k1, k1b = keys.new(), keys.new()
    good = write(tmp_path, "good.yaml", [(["secrets"], [("aescbc", [("k1", k1)])])])
    bad = tmp_path / "bad.yaml"
    bad.write_text(enc_config([(["secrets"], [("aescbc", [("k1", k1[:5])])])]))
    lint = run(agent_bin, ["lint", str(bad)])
    assert lint.returncode == 1
    p = run(agent_bin, ["plan", "--from", good, "--to", str(bad)])
    assert p.returncode == 1
    assert p.stdout == lint.stdout
    assert p.stdout.decode() == (
        "%s:10:23: resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\": "
        "secret is not of the expected length, got 5, expected one of [16 24 32]\n" % bad)
    # both invalid: both files' errors
    p = run(agent_bin, ["plan", "--from", str(bad), "--to", str(bad)])
    assert p.returncode == 1 and p.stdout == lint.stdout + lint.stdout
    # a key name reused with another secret is refused, not merged
    coll = write(tmp_path, "coll.yaml", [(["secrets"], [("aescbc", [("k1", k1b)])])])
    p = run(agent_bin, ["plan", "--from", good, "--to", coll, "--json"])
    assert p.returncode == 1
    assert p.stdout.decode() == (
        "%s:9:15: resources[0].providers[0].aescbc.keys[0].name: Invalid value: \"k1\": key k1 "
        "has another secret in the from config; give the new key a new name\n" % coll)
    missing = str(tmp_path / "missing.yaml")
    p = run(agent_bin, ["plan", "--from", good, "--to", missing])
    assert p.returncode == 1
    assert p.stdout.decode() == (
        '%s:0:0: error reading encryption provider configuration file "%s": open %s: no such '
        'file or directory\n' % (missing, missing, missing))
    assert run(agent_bin, ["plan", "--from", good]).returncode == 2
    assert run(agent_bin, ["plan", "--from", good, "--to", good, "extra"]).returncode == 2
    for args in (["--from", good, "--to", str(bad)], ["--from", good, "--to", coll]):
        p = run(agent_bin, ["plan"] + args)
        keys.scan(p.stdout + p.stderr, "plan error output")
