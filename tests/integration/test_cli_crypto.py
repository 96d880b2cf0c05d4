"""Black-box tests of the offline CLI contract: atrest lint, encrypt, decrypt, genkey.

Every value is checked against an independent implementation of kube-apiserver's wire
formats (python3-cryptography and python3-nacl), so a byte of difference fails.
Keys are generated at test time.
"""
import base64
import json
import os
import pathlib
import subprocess

import nacl.secret
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = pathlib.Path(__file__).resolve().parents[2]
ATREST = os.environ.get("ATREST", str(ROOT / "atrest"))
DATA = ROOT / "tests" / "data"
AAD = "/registry/secrets/default/db-password"


def run(args, stdin=b"", check=None):
    p = subprocess.run([ATREST] + args, input=stdin, capture_output=True, timeout=30)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def b64(b):
    return base64.b64encode(b).decode()


def write_cfg(tmp_path, providers, resources=("secrets",), name="enc.yaml"):
    lines = ["apiVersion: apiserver.config.k8s.io/v1", "kind: EncryptionConfiguration",
             "resources:", "  - resources:"]
    lines += ["      - " + r for r in resources]
    lines.append("    providers:")
    for ptype, keys in providers:
        if ptype == "identity":
            lines.append("      - identity: {}")
            continue
        lines += ["      - %s:" % ptype, "          keys:"]
        for kname, kbytes in keys:
            lines += ["            - name: %s" % kname, "              secret: %s" % b64(kbytes)]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- independent reference implementation of the wire formats ----------------------------

def ref_decrypt(ptype, key, body, aad):
    if ptype == "aescbc":
        iv, ct = body[:16], body[16:]
        d = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        padded = d.update(ct) + d.finalize()
        u = padding.PKCS7(128).unpadder()
        return u.update(padded) + u.finalize()
    if ptype == "aesgcm":
        return AESGCM(key).decrypt(body[:12], body[12:], aad.encode())
    if ptype == "secretbox":
        return nacl.secret.SecretBox(key).decrypt(body[24:], body[:24])
    raise AssertionError(ptype)


def ref_encrypt(ptype, key, plain, aad):
    if ptype == "aescbc":
        iv = os.urandom(16)
        p = padding.PKCS7(128).padder()
        padded = p.update(plain) + p.finalize()
        e = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        return iv + e.update(padded) + e.finalize()
    if ptype == "aesgcm":
        n = os.urandom(12)
        return n + AESGCM(key).encrypt(n, plain, aad.encode())
    if ptype == "secretbox":
        n = os.urandom(24)
        return n + nacl.secret.SecretBox(key).encrypt(plain, n).ciphertext
    raise AssertionError(ptype)


CASES = [("aescbc", 16), ("aescbc", 24), ("aescbc", 32), ("aesgcm", 16), ("aesgcm", 24),
         ("aesgcm", 32), ("secretbox", 32)]
PLAINS = [b"", b"k8s\x00", b"k8s\x00" + os.urandom(13), os.urandom(4096 + 5)]


@pytest.mark.parametrize("ptype,size", CASES)
def test_encrypt_matches_reference(tmp_path, ptype, size):
    key = os.urandom(size)
    cfg = write_cfg(tmp_path, [(ptype, [("k1", key), ("k2", os.urandom(size))]), ("identity", [])])
    prefix = ("k8s:enc:%s:v1:k1:" % ptype).encode()
    for plain in PLAINS:
        p = run(["encrypt", "--config", str(cfg), "--etcd-key", AAD], plain, check=0)
        assert p.stdout.startswith(prefix)
        assert p.stderr == b""
        assert ref_decrypt(ptype, key, p.stdout[len(prefix):], AAD) == plain
        # and back through atrest
        q = run(["decrypt", "--config", str(cfg), "--etcd-key", AAD], p.stdout, check=0)
        assert q.stdout == plain


@pytest.mark.parametrize("ptype,size", CASES)
def test_decrypt_reference_values_and_stale(tmp_path, ptype, size):
    k1, k2 = os.urandom(size), os.urandom(size)
    cfg = write_cfg(tmp_path, [(ptype, [("k1", k1), ("k2", k2)])])
    plain = b"k8s\x00" + os.urandom(100)
    for kname, key, stale in (("k1", k1, "false"), ("k2", k2, "true")):
        value = ("k8s:enc:%s:v1:%s:" % (ptype, kname)).encode() + ref_encrypt(ptype, key, plain, AAD)
        p = run(["decrypt", "--config", str(cfg), "--etcd-key", AAD, "--explain"], value, check=0)
        assert p.stdout == plain
        assert ("stale=%s" % stale).encode() in p.stderr
        assert ('"%s"' % kname).encode() in p.stderr
        assert ptype.encode() in p.stderr


def test_decrypt_failure_contract(tmp_path):
    key = os.urandom(32)
    cfg = write_cfg(tmp_path, [("aesgcm", [("k1", key)])])
    value = b"k8s:enc:aesgcm:v1:k1:" + ref_encrypt("aesgcm", key, b"hello", AAD)
    # a changed etcd key must fail authentication
    p = run(["decrypt", "--config", str(cfg), "--etcd-key", "/registry/secrets/default/other"],
            value, check=1)
    assert p.stdout == b""
    assert p.stderr.count(b"\n") == 1
    assert b"cipher: message authentication failed" in p.stderr
    # one flipped byte
    bad = bytearray(value)
    bad[-1] ^= 1
    p = run(["decrypt", "--config", str(cfg), "--etcd-key", AAD], bytes(bad), check=1)
    assert p.stdout == b"" and b"message authentication failed" in p.stderr
    # an unknown key name: the key list's error
    p = run(["decrypt", "--config", str(cfg), "--etcd-key", AAD],
            b"k8s:enc:aesgcm:v1:nope:" + os.urandom(40), check=1)
    assert p.stdout == b""
    assert b"no matching key was found for the provided AES transformer" in p.stderr
    # plaintext where only aesgcm is configured: no provider matches
    p = run(["decrypt", "--config", str(cfg), "--etcd-key", AAD], b"k8s\x00plain", check=1)
    assert b"no matching prefix found" in p.stderr
    # aescbc: a value of exactly one IV is an error, not a crash
    cfg2 = write_cfg(tmp_path, [("aescbc", [("k1", key)])], name="cbc.yaml")
    p = run(["decrypt", "--config", str(cfg2), "--etcd-key", AAD],
            b"k8s:enc:aescbc:v1:k1:" + os.urandom(16), check=1)
    assert p.stdout == b"" and p.stderr.count(b"\n") == 1


def test_unmatched_resource_is_identity(tmp_path):
    cfg = write_cfg(tmp_path, [("aesgcm", [("k1", os.urandom(32))])])
    key = "/registry/configmaps/default/cm1"
    p = run(["encrypt", "--config", str(cfg), "--etcd-key", key, "--explain"], b"k8s\x00cm", check=0)
    assert p.stdout == b"k8s\x00cm"
    p = run(["decrypt", "--config", str(cfg), "--etcd-key", key], b"k8s:enc:aesgcm:v1:k1:xx", check=1)
    assert b"identity transformer tried to read encrypted data" in p.stderr


def test_resource_flag_and_prefix(tmp_path):
    key = os.urandom(32)
    cfg = write_cfg(tmp_path, [("secretbox", [("s", key)])], resources=("deployments.apps",))
    # derived from the key under a custom prefix
    k = "/custom/deployments/ns/d1"
    p = run(["encrypt", "--config", str(cfg), "--etcd-key", k, "--etcd-prefix", "/custom"],
            b"x", check=0)
    assert p.stdout.startswith(b"k8s:enc:secretbox:v1:s:")
    # given explicitly
    p = run(["encrypt", "--config", str(cfg), "--etcd-key", "/anything", "--resource",
             "deployments.apps"], b"x", check=0)
    assert p.stdout.startswith(b"k8s:enc:secretbox:v1:s:")


def test_kat_vectors_through_cli(tmp_path):
    kat = json.loads((DATA / "kat.json").read_text())
    n = 0
    for case in kat["cases"]:
        if case["provider"] not in ("aescbc", "aesgcm", "secretbox"):
            continue
        key = base64.b64decode(case["key_b64"])
        cfg = write_cfg(tmp_path, [(case["provider"], [(case["key_name"], key)])],
                        name=case["name"] + ".yaml")
        aad = case["aad"] or "/registry/secrets/default/x"
        p = run(["decrypt", "--config", str(cfg), "--etcd-key", aad, "--resource", "secrets"],
                base64.b64decode(case["value_b64"]), check=0)
        assert p.stdout == base64.b64decode(case["plaintext_b64"]), case["name"]
        n += 1
    assert n >= 5


def test_genkey():
    seen = set()
    for args, size in (([], 32), (["--bytes", "16"], 16), (["--provider", "aesgcm", "--bytes", "24"], 24),
                       (["--provider", "secretbox"], 32)):
        p = run(["genkey"] + args, check=0)
        out = p.stdout.decode().strip()
        assert len(base64.b64decode(out, validate=True)) == size
        assert out not in seen
        seen.add(out)
    run(["genkey", "--provider", "secretbox", "--bytes", "16"], check=2)
    run(["genkey", "--bytes", "20"], check=2)
    run(["genkey", "--provider", "rot13"], check=2)


def test_genkey_output_loads(tmp_path):
    k = run(["genkey"], check=0).stdout.decode().strip()
    cfg = tmp_path / "g.yaml"
    cfg.write_text("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
                   "resources:\n  - resources: [secrets]\n    providers:\n"
                   "      - aescbc:\n          keys:\n            - name: k\n"
                   "              secret: %s\n" % k)
    run(["lint", str(cfg)], check=0)


def test_lint_valid_and_invalid_testdata():
    td = DATA / "k8s-encryptionconfig-testdata"
    valid = sorted((td / "valid-configs").rglob("*.*"))
    invalid = sorted((td / "invalid-configs").rglob("*.*"))
    assert len(valid) >= 10 and len(invalid) >= 5
    for f in valid:
        p = run(["lint", str(f)])
        assert p.returncode == 0, (f, p.stdout, p.stderr)
        assert p.stdout == b""
    for f in invalid:
        p = run(["lint", str(f)])
        assert p.returncode == 1, (f, p.stdout, p.stderr)
        lines = p.stdout.decode().splitlines()
        assert lines, f
        for line in lines:
            assert line.startswith(str(f) + ":"), line
            fields = line.split(":", 4)
            assert fields[1].isdigit() and fields[2].isdigit(), line


def test_lint_reports_every_error_with_position(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: apiserver.config.k8s.io/v1\n"
                 "kind: EncryptionConfiguration\n"
                 "resources:\n"
                 "  - resources:\n"
                 "      - secrets\n"
                 "    providers:\n"
                 "      - aescbc:\n"
                 "          keys:\n"
                 "            - name: k1\n"
                 "              secret: c2hvcnQ=\n"
                 "      - secretbox:\n"
                 "          keys:\n"
                 "            - name: k2\n"
                 "              secret: not*base64\n")
    p = run(["lint", str(f)], check=1)
    out = p.stdout.decode()
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert lines[0].startswith("%s:10:" % f)
    assert "resources[0].providers[0].aescbc.keys[0].secret" in lines[0]
    assert "secret is not of the expected length, got 5, expected one of [16 24 32]" in lines[0]
    assert lines[1].startswith("%s:14:" % f)
    assert "resources[0].providers[1].secretbox.keys[0].secret" in lines[1]
    assert "secrets must be base64 encoded" in lines[1]
    assert "c2hvcnQ" not in out and "not*base64" not in out and "REDACTED" in out


def test_lint_prints_kube_apiserver_hash():
    f = DATA / "k8s-encryptionconfig-testdata" / "ec_config.yaml"
    p = run(["lint", "--kmsv1", str(f)], check=0)
    # the value kube-apiserver's reload controller test expects for this file
    assert ("file sha256:6bc9f4aa2e5587afbb96074e1809550cbc4de3cc3a35717dac8ff2800a147fd3"
            .encode()) in p.stderr, p.stderr
    assert b"warning" not in p.stderr


def test_lint_missing_file_and_usage(tmp_path):
    p = run(["lint", str(tmp_path / "nope.yaml")], check=1)
    assert str(tmp_path / "nope.yaml").encode() in p.stdout
    run(["lint"], check=2)
    p = run(["lint", "--help"], check=0)
    assert b"usage: atrest lint" in p.stdout
    for cmd in ("encrypt", "decrypt", "genkey"):
        assert b"usage: atrest " + cmd.encode() in run([cmd, "--help"], check=0).stdout
    run(["decrypt", "--config", "x"], check=2)
    assert b"usage: atrest" in run(["--help"], check=0).stdout
