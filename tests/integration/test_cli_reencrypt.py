"""Black-box tests of `atrest reencrypt` against a real etcd.

The stored values are made here by a second implementation of kube-apiserver's wire formats
(python3-cryptography for aescbc, python3-nacl for secretbox), put into etcd through its JSON
gateway, and read back and decrypted here after the pass. Keys are generated at test time; no
output may contain one. Checks the exact counts, the JSON, the exit codes 0 / 1 / 2 and the
checkpoint, with the release and the ASan+UBSan build.
"""
import json
import os
import pathlib
import subprocess

from wire import Gateway, aescbc_dec, aescbc_enc, b64, secretbox_dec, secretbox_enc
from wire import stored_object as obj

ROOT = pathlib.Path(__file__).resolve().parents[2]
ATREST = os.environ.get("ATREST", str(ROOT / "atrest"))


def run(args, binary=ATREST, check=None):
    p = subprocess.run([binary, "reencrypt"] + args, capture_output=True, timeout=60)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def config(tmp_path, k1, k2, s2):
    """The promote config: secrets written with aescbc k2 (k1 still read), everything else
    with secretbox s2; configmaps stay identity."""
    text = """apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - aescbc: {keys: [{name: k2, secret: "%s"}, {name: k1, secret: "%s"}]}
      - identity: {}
  - resources: [configmaps]
    providers: [identity: {}]
  - resources: ["*.*"]
    providers:
      - secretbox: {keys: [{name: s2, secret: "%s"}]}
      - aescbc: {keys: [{name: k1, secret: "%s"}]}
      - identity: {}
""" % (b64(k2), b64(k1), b64(s2), b64(k1))
    p = tmp_path / "promote.yaml"
    p.write_text(text)
    return p


def test_reencrypt(tmp_path, make_etcd, keys, agent_bin):
    etcd = make_etcd().start()
    gw = Gateway(etcd.endpoint)
    k1, k2, s2, k9 = keys.new(), keys.new(), keys.new(), keys.new()
    cfg = str(config(tmp_path, k1, k2, s2))
    plain = {}
    kvs = []
    for i in range(300):
        k = "/registry/secrets/ns-%d/s-%04d" % (i % 3, i)
        plain[k] = obj(k)
        kvs.append((k, aescbc_enc("k1", k1, plain[k])))
    for i in range(20):
        k = "/registry/secrets/ns/already-%02d" % i
        plain[k] = obj(k)
        kvs.append((k, aescbc_enc("k2", k2, plain[k])))
    for i in range(5):
        k = "/registry/secrets/ns/plain-%d" % i
        plain[k] = obj(k)
        kvs.append((k, plain[k]))
    for i in range(7):
        k = "/registry/deployments/ns/d-%d" % i
        plain[k] = obj(k)
        kvs.append((k, aescbc_enc("k1", k1, plain[k])))
    kvs.append(("/registry/configmaps/ns/c", obj("c")))
    kvs.append(("/registry/secrets/ns/zz-lost", aescbc_enc("k9", k9, obj("lost"))))
    gw.put_many(kvs)
    flags = ["--config", cfg, "--etcd-servers", etcd.endpoint]

    p = run(flags + ["--resource", "secrets", "--resource", "*.*", "--json", "--page-size", "50",
                     "--checkpoint", "/atrest/reencrypt/cli"], agent_bin, check=1)
    out = json.loads(p.stdout)
    assert {k: out[k] for k in ("done", "rewritten", "skipped", "conflicts", "failed")} == {
        "done": 333, "rewritten": 312, "skipped": 20, "conflicts": 0, "failed": 1}
    assert out["first_failed"] == ("/registry/secrets/ns/zz-lost: no matching key was found "
                                   "for the provided AES transformer")
    assert p.stderr.decode() == ("atrest reencrypt: 1 object left as they are; first: "
                                 "/registry/secrets/ns/zz-lost: no matching key was found for "
                                 "the provided AES transformer\n")
    keys.scan(p.stdout + p.stderr, "reencrypt output")

    # read back in Python: every value under the write key, the same plaintext
    stored = gw.get_prefix("/registry/")
    for k, pt in plain.items():
        v, version = stored[k]
        if "/secrets/" in k:
            assert v.startswith(b"k8s:enc:aescbc:v1:k2:"), k
            assert aescbc_dec(k2, v[len(b"k8s:enc:aescbc:v1:k2:"):]) == pt
            assert version == (1 if "already" in k else 2), k
        else:
            assert v.startswith(b"k8s:enc:secretbox:v1:s2:"), k
            assert secretbox_dec(s2, v[len(b"k8s:enc:secretbox:v1:s2:"):]) == pt
            assert version == 2
    assert stored["/registry/configmaps/ns/c"][1] == 1  # identity writes identity: untouched
    assert stored["/registry/secrets/ns/zz-lost"][1] == 1

    # the checkpoint says done: a second run resumes after it and writes nothing
    ck = json.loads(gw.get_prefix("/atrest/reencrypt/")["/atrest/reencrypt/cli"][0])
    assert ck["selector"] == 2 and ck["cursor"] == "" and ck["done"] == 333
    p = run(flags + ["--resource", "secrets", "--resource", "*.*", "--json",
                     "--checkpoint", "/atrest/reencrypt/cli"], agent_bin, check=1)
    assert json.loads(p.stdout)["rewritten"] == 312  # the recorded counts, nothing new
    assert gw.get_prefix("/registry/secrets/ns-0/s-0000")["/registry/secrets/ns-0/s-0000"][1] == 2

    # without --resource: every selector of the config; nothing left to rewrite
    p = run(flags, agent_bin, check=1)
    assert p.stdout.decode().startswith("objects 334: rewritten 0, already under the write key "
                                        "333, rewritten meanwhile by an API server 0, failed 1 (")


def test_reencrypt_usage_and_unreachable(tmp_path, keys):
    cfg = str(config(tmp_path, keys.new(), keys.new(), keys.new()))
    p = run([], check=2)
    assert b"--config is required" in p.stderr
    p = run(["--config", cfg, "--etcd-servers", "http://127.0.0.1:9", "--resource", "nosuch"],
            check=2)
    assert p.stderr.startswith(b"atrest reencrypt: --resource nosuch: no etcd range known for it")
    p = run(["--config", cfg, "--rate", "-1", "--etcd-servers", "http://127.0.0.1:9"], check=2)
    assert p.stderr.startswith(b"atrest reencrypt: --rate must be a positive number")
    p = run(["--config", cfg, "--etcd-servers", "http://127.0.0.1:9", "--timeout", "2"], check=2)
    assert p.stderr.startswith(b"atrest reencrypt: ")
    assert b"127.0.0.1:9" in p.stderr
