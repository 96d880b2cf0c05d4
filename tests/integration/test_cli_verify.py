"""Black-box tests of `atrest verify` against a real etcd.

The stored values are made here, by a second implementation of kube-apiserver's wire formats
(python3-cryptography for aescbc/aesgcm, python3-nacl for secretbox, KMS v2 EncryptedObjects
encoded by hand), and put into etcd through its JSON gateway. Keys are generated at test time;
no output may contain one. Checks the exact table, the exact JSON and the exit codes
0 / 1 / 3 / 2, with the release and the ASan+UBSan build.
"""
import json
import os
import pathlib
import pty
import subprocess

from wire import Gateway, b64, kmsv2
from wire import aescbc_enc as aescbc
from wire import aesgcm_enc as aesgcm
from wire import secretbox_enc as secretbox
from wire import stored_object as obj

ROOT = pathlib.Path(__file__).resolve().parents[2]
ATREST = os.environ.get("ATREST", str(ROOT / "atrest"))


def run(args, check=None, binary=ATREST):
    p = subprocess.run([binary, "verify"] + args, capture_output=True, timeout=30)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def config(tmp_path, k1, k2, s1):
    text = """apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - aesgcm: {keys: [{name: k2, secret: "%s"}]}
      - aescbc: {keys: [{name: key1, secret: "%s"}]}
      - kms: {apiVersion: v2, name: kv2, endpoint: "unix:///run/kv2.sock"}
      - identity: {}
  - resources: [configmaps]
    providers: [identity: {}, aescbc: {keys: [{name: key1, secret: "%s"}]}]
  - resources: [widgets.example.com]
    providers: [secretbox: {keys: [{name: s1, secret: "%s"}]}]
""" % (b64(k2), b64(k1), b64(k1), b64(s1))
    p = tmp_path / "enc.yaml"
    p.write_text(text)
    return p


TABLE = """\
RESOURCE                       PROVIDER:KEY     OBJECTS
configmaps                     aescbc:key1      1
configmaps                     identity *       2
configmaps                     stale            1
configmaps                     undecryptable    0
configmaps                     total            3
secrets                        aescbc:key1      2
secrets                        aesgcm:k2 *      3
secrets                        identity         1
secrets                        kms:kv2:kid-1    2
secrets                        kms:kv2:kid-2    1
secrets                        stale            3
secrets                        undecryptable    0
secrets                        total            9
widgets.example.com            secretbox:s1 *   2
widgets.example.com            stale            0
widgets.example.com            undecryptable    0
widgets.example.com            total            2
masterleases (not a resource)  identity         1
masterleases (not a resource)  total            1

15 objects at revision %d: 0 undecryptable, 4 stale (* = the resource's write key)
"""


def test_verify(tmp_path, make_etcd, keys, agent_bin):
    """Run with the release and the ASan+UBSan build (exact stderr: no sanitizer report)."""
    def run(args, check=None):
        return globals()["run"](args, check, agent_bin)

    etcd = make_etcd().start()
    gw = Gateway(etcd.endpoint)
    k1, k2, s1, k9 = keys.new(), keys.new(), keys.new(), keys.new()
    cfg = str(config(tmp_path, k1, k2, s1))

    kvs = []
    for i in range(3):
        k = "/registry/secrets/default/gcm-%d" % i
        kvs.append((k, aesgcm("k2", k2, obj(k), k)))
    for i in range(2):
        k = "/registry/secrets/default/cbc-%d" % i
        kvs.append((k, aescbc("key1", k1, obj(k))))
    kvs.append(("/registry/secrets/default/plain", obj("plain")))
    kvs.append(("/registry/secrets/kube-system/kms-a", kmsv2("kv2", "kid-1")))
    kvs.append(("/registry/secrets/kube-system/kms-b", kmsv2("kv2", "kid-1")))
    kvs.append(("/registry/secrets/kube-system/kms-c", kmsv2("kv2", "kid-2")))
    kvs.append(("/registry/configmaps/default/a", obj("a")))
    kvs.append(("/registry/configmaps/default/b", obj("b")))
    kvs.append(("/registry/configmaps/default/c", aescbc("key1", k1, obj("c"))))
    for n in ("w1", "w2"):
        kvs.append(("/registry/example.com/widgets/default/" + n, secretbox("s1", s1, obj(n))))
    kvs.append(("/registry/masterleases/10.0.0.1", obj("lease")))
    kvs.append(("compact_rev_key", b"\x00" * 8))  # outside /registry: not counted
    gw.put_many(kvs)
    rev = int(gw.post("/v3/kv/range", {"key": b64(b"\x00"), "count_only": True})
              ["header"]["revision"])

    etcd_flags = ["--etcd-servers", etcd.endpoint]
    p = run(["--config", cfg] + etcd_flags, check=0)
    assert p.stdout.decode() == TABLE % rev
    assert p.stderr == b""  # not a terminal: no progress
    keys.scan(p.stdout, "verify table")

    p = run(["--config", cfg, "--json", "--page-size", "2"] + etcd_flags, check=0)
    keys.scan(p.stdout, "verify JSON")
    got = json.loads(p.stdout)
    assert got == {
        "revision": rev, "objects": 15, "undecryptable": 0, "stale": 4, "revision_restarts": 0,
        "resources": [
            {"group": "", "resource": "configmaps", "known": True, "write": "identity",
             "not_under_write": 1,
             "counts": {"aescbc:key1": 1, "identity": 2, "stale": 1, "undecryptable": 0,
                        "total": 3}},
            {"group": "", "resource": "secrets", "known": True, "write": "aesgcm:k2",
             "not_under_write": 6,
             "counts": {"aescbc:key1": 2, "aesgcm:k2": 3, "identity": 1, "kms:kv2:kid-1": 2,
                        "kms:kv2:kid-2": 1, "stale": 3, "undecryptable": 0, "total": 9}},
            {"group": "example.com", "resource": "widgets", "known": True,
             "write": "secretbox:s1", "not_under_write": 0,
             "counts": {"secretbox:s1": 2, "stale": 0, "undecryptable": 0, "total": 2}},
            {"group": "", "resource": "masterleases", "known": False, "write": None,
             "not_under_write": None, "counts": {"identity": 1, "total": 1}},
        ],
        "undecryptable_keys": [], "undecryptable_keys_truncated": False,
    }

    # what prune needs: everything under its resource's write key
    p = run(["--config", cfg, "--require-write-key"] + etcd_flags, check=3)
    assert p.stderr.decode() == (
        "atrest verify: configmaps: 1 object not under the write key identity\n"
        "atrest verify: secrets: 6 objects not under the write key aesgcm:k2\n")
    p = run(["--config", cfg, "--require-write-key", "--resource", "widgets.example.com"]
            + etcd_flags, check=0)
    assert p.stdout.decode().splitlines()[1:5] == [
        "widgets.example.com  secretbox:s1 *  2",
        "widgets.example.com  stale           0",
        "widgets.example.com  undecryptable   0",
        "widgets.example.com  total           2"]

    # undecryptable: a key the config lacks, a value moved to another key (aesgcm's AAD)
    gw.put_many([
        ("/registry/secrets/default/lacking", aescbc("key9", k9, obj("lacking"))),
        ("/registry/secrets/default/moved", aesgcm("k2", k2, obj("moved"),
                                                   "/registry/secrets/default/elsewhere")),
    ])
    for extra in ([], ["--require-write-key"]):
        p = run(["--config", cfg, "--json"] + extra + etcd_flags, check=1)
        got = json.loads(p.stdout)
        assert got["undecryptable"] == 2 and got["objects"] == 17
        assert got["undecryptable_keys"] == [
            {"key": "/registry/secrets/default/lacking", "resource": "secrets",
             "reason": "no matching key was found for the provided AES transformer"},
            {"key": "/registry/secrets/default/moved", "resource": "secrets",
             "reason": "cipher: message authentication failed"}]
        assert got["resources"][1]["counts"]["undecryptable"] == 2
        keys.scan(p.stdout + p.stderr, "verify output")
    p = run(["--config", cfg] + etcd_flags, check=1)
    out = p.stdout.decode()
    assert ("17 objects at revision %d: 2 undecryptable, 4 stale" % (rev + 1)) in out
    assert out.endswith(
        "undecryptable: /registry/secrets/default/lacking (secrets): no matching key was found "
        "for the provided AES transformer\n"
        "undecryptable: /registry/secrets/default/moved (secrets): cipher: message "
        "authentication failed\n")
    # only configmaps: nothing undecryptable there
    run(["--config", cfg, "--resource", "configmaps"] + etcd_flags, check=0)

    # progress goes to stderr only when it is a terminal, and is erased before the table
    master, slave = pty.openpty()
    try:
        p = subprocess.run([agent_bin, "verify", "--config", cfg, "--page-size", "4",
                            "--parallel", "1", "--resource", "secrets"] + etcd_flags,
                           stdout=subprocess.PIPE, stderr=slave, timeout=30)
        os.close(slave)
        slave = None
        tty = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            tty += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert p.returncode == 1  # the two undecryptable secrets
    assert tty == (b"\ratrest verify: 4 objects, 0 undecryptable ..."
                   b"\ratrest verify: 8 objects, 2 undecryptable ..."  # lacking, moved
                   b"\r\033[K"), tty
    assert p.stdout.decode().startswith("RESOURCE  PROVIDER:KEY     OBJECTS\nsecrets   ")

    # pieces read at once (the default, 4; and 16 pieces of 1 key): the same table and JSON
    # as page after page
    for fmt in ([], ["--json"]):
        seq = run(["--config", cfg, "--parallel", "1"] + fmt + etcd_flags, check=1).stdout
        for extra in ([], ["--parallel", "16", "--page-size", "1"]):
            par = run(["--config", cfg] + extra + fmt + etcd_flags, check=1).stdout
            if fmt:     # the scan's revision and page count differ; the counts do not
                a, b = json.loads(seq), json.loads(par)
                for d in (a, b):
                    d.pop("revision", None)
                    d.pop("pages", None)
                assert a == b, (a, b)
            else:
                assert par == seq, (par, seq)
    run(["--config", cfg, "--parallel", "17"] + etcd_flags, check=2)

    # the etcd settings from the agent's settings file
    settings = tmp_path / "agent.yaml"
    settings.write_text("desiredConfig: %s\neffectiveConfig:\n  path: %s\n"
                        "etcd:\n  endpoints: [%s]\n" % (cfg, tmp_path / "eff.yaml", etcd.endpoint))
    p = run(["--config", cfg, "--settings", str(settings), "--resource", "configmaps"], check=0)
    assert "configmaps  total          3" in p.stdout.decode()


def test_verify_usage_and_unreachable(tmp_path, keys):
    cfg = str(config(tmp_path, keys.new(), keys.new(), keys.new()))
    p = run([], check=2)
    assert p.stderr.decode().startswith("atrest verify: --config is required\n")
    run(["--config", cfg], check=2)  # no etcd endpoints
    run(["--config", cfg, "--etcd-servers", "http://127.0.0.1:1", "extra"], check=2)
    run(["--config", cfg, "--etcd-servers", "http://127.0.0.1:1", "--page-size", "0"], check=2)
    run(["--config", cfg, "--etcd-servers", "http://127.0.0.1:1", "--bogus"], check=2)
    p = run(["--config", str(tmp_path / "missing.yaml"), "--etcd-servers",
             "http://127.0.0.1:1"], check=2)
    assert p.stderr.decode().startswith("atrest verify: invalid config: ")
    # a closed loopback port: one clear line, exit 2 (no verdict)
    port = 1
    p = run(["--config", cfg, "--etcd-servers", "http://127.0.0.1:%d" % port, "--timeout", "1"],
            check=2)
    err = p.stderr.decode()
    assert err.startswith("atrest verify: etcd http://127.0.0.1:1: ") and err.count("\n") == 1
    assert p.stdout == b""
