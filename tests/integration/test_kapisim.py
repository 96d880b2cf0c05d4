"""kapisim, the kube-apiserver simulator (tests/kapisim/): its transformers against the
known-answer vectors, its storage encoding against recorded kube-apiserver bytes, and the
running simulator against a real etcd and the real `atrest encrypt` / `atrest decrypt`."""
import base64
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import time
import types

import pytest

from conftest import ROOT, enc_config, run_cli, wait_for

sys.path.insert(0, str(ROOT / "tests" / "kapisim"))
import etcd as etcdmod  # noqa: E402
import kapisim  # noqa: E402
import objects  # noqa: E402
import transformers as T  # noqa: E402

DATA = ROOT / "tests" / "data"
KAT = json.loads((DATA / "kat.json").read_text())
NS = "default"


def secret(name, data, ns=None, **kw):
    md = {"name": name}
    if ns:
        md["namespace"] = ns
    return dict({"apiVersion": "v1", "kind": "Secret", "metadata": md,
                 "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}, **kw)


def write(tmp, name, text):
    p = pathlib.Path(tmp) / name
    p.write_text(text)
    return p


def rewrite(path, text):
    tmp = str(path) + ".new"
    pathlib.Path(tmp).write_text(text)
    os.replace(tmp, path)


# ---- in-process: transformers, config loading, storage encoding -------------------------------

def _kat_config(case):
    if case["provider"] == "kms-v2":
        return ('{"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",'
                ' "resources": [{"resources": ["secrets"], "providers": [{"kms": {"apiVersion":'
                ' "v2", "name": "%s", "endpoint": "unix:///kms.sock"}}]}]}' % case["kms_name"])
    return enc_config([(["secrets"], [(case["provider"],
                                       [(case["key_name"], base64.b64decode(case["key_b64"]))])])])


def test_every_kat_case_decrypts_in_kapisim_transformers():
    plugin = {}
    for case in KAT["cases"]:
        if case["provider"] == "kms-v2":   # the recorded test plugin: Decrypt = base64-decode
            plugin[case["kms_name"]] = lambda src, key_id, ann: base64.b64decode(src)
        cfg = T.parse_config(_kat_config(case).encode(), kms_plugins=plugin)
        t = cfg.transformer("", "secrets")
        value = base64.b64decode(case["value_b64"])
        aad = case["aad"].encode()
        pt, stale = t.read(value, aad)
        assert pt == base64.b64decode(case["plaintext_b64"]), case["name"]
        assert stale is False
        if case["provider"] in ("aesgcm", "kms-v2"):     # the etcd key is authenticated
            with pytest.raises(T.TransformError, match="^cipher: message authentication failed$"):
                t.read(value, aad + b"x")
        elif case["provider"] != "kms-v2":               # aescbc, secretbox ignore it
            assert t.read(value, b"/other")[0] == pt
    assert len(KAT["cases"]) == 7


def test_kms_values_without_plugin_fail_like_kube_apiserver():
    case = [c for c in KAT["cases"] if c["provider"] == "kms-v2"][0]
    cfg = T.parse_config(_kat_config(case).encode())
    with pytest.raises(T.TransformError) as e:
        cfg.transformer("", "secrets").read(base64.b64decode(case["value_b64"]), b"/k")
    assert str(e.value).startswith("rpc error: code = Unavailable desc = ")
    # a resource without a rule uses identity's encrypt check
    with pytest.raises(T.TransformError, match="^identity transformer tried to read encrypted "
                                                "data$"):
        cfg.transformer("", "configmaps").read(base64.b64decode(case["value_b64"]), b"/k")


def test_stale_flags_and_list_errors():
    k1, k2, k3 = os.urandom(32), os.urandom(32), os.urandom(32)
    aad = b"/registry/secrets/ns/s"
    old = T.parse_config(enc_config([(["secrets"], [("aescbc", [("k1", k1)])])]).encode())
    sb = T.parse_config(enc_config([(["secrets"], [("secretbox", [("s", k3)])])]).encode())
    new = T.parse_config(enc_config([(["secrets"], [("aescbc", [("k2", k2), ("k1", k1)]),
                                                    ("secretbox", [("s", k3)]),
                                                    ("identity",)])]).encode())
    t = new.transformer("", "secrets")
    v_old = old.transformer("", "secrets").write(b"k8s\x00one", aad)
    assert v_old.startswith(b"k8s:enc:aescbc:v1:k1:")
    assert t.read(v_old, aad) == (b"k8s\x00one", True)          # second key
    v_new = t.write(b"k8s\x00two", aad)
    assert v_new.startswith(b"k8s:enc:aescbc:v1:k2:")
    assert t.read(v_new, aad) == (b"k8s\x00two", False)
    v_sb = sb.transformer("", "secrets").write(b"k8s\x00three", aad)
    assert t.read(v_sb, aad) == (b"k8s\x00three", True)          # second provider
    assert t.read(b"k8s\x00plain", aad) == (b"k8s\x00plain", True)   # identity, not first
    with pytest.raises(T.TransformError, match="^no matching key was found for the provided "
                                                "AES transformer$"):
        t.read(b"k8s:enc:aescbc:v1:k9:" + bytes(32), aad)
    with pytest.raises(T.TransformError, match="^no matching prefix found$"):
        old.transformer("", "secrets").read(b"k8s:enc:aesgcm:v1:x:" + bytes(40), aad)
    assert new.write_key("", "secrets") == "aescbc/k2"
    assert new.write_key("", "configmaps") == "identity"


@pytest.mark.parametrize("text,err", [
    ("", 'encryption provider configuration file "F" is empty'),
    ("apiVersion: v1\nkind: Foo\n", 'no kind "Foo" is registered for version "v1"'),
    (enc_config([(["secrets"], [("aescbc", [("k", b"12345")])])]),
     'resources[0].providers[0].aescbc.keys[0].secret: Invalid value: "REDACTED": secret is not '
     'of the expected length, got 5, expected one of [16 24 32]'),
    (enc_config([(["secrets"], [("secretbox", [("k", b"x" * 16)])])]),
     'expected one of [32]'),
    ('{"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration", '
     '"resources": [{"resources": ["*."], "providers": [{"identity": {}}]}, '
     '{"resources": ["secrets"], "providers": [{"identity": {}}]}]}',
     'resource "secrets" is masked by earlier rule "*."'),
    (enc_config([(["secrets"], [("identity",)])]) + "extra: 1\n", 'strict decoding error: unknown field "extra"'),
])
def test_config_errors(text, err):
    with pytest.raises(T.ConfigError) as e:
        T.parse_config(text.encode(), "F")
    assert str(e.value).startswith("error while parsing file: ")
    assert err in str(e.value)


def test_yaml_subset_reads_the_repository_configs_as_pyyaml_does():
    yaml = pytest.importorskip("yaml")     # not a dependency: a cross-check where it exists
    files = sorted((DATA / "k8s-encryptionconfig-testdata").rglob("*.yaml")) + \
        [DATA / "configs" / "special-names.yaml"]
    assert len(files) >= 10
    for f in files:
        text = f.read_text()
        assert T.parse_yaml(text) == yaml.safe_load(text), f


def test_protobuf_envelope_roundtrips_recorded_kube_apiserver_bytes():
    n = 0
    for case in KAT["cases"]:
        pt = base64.b64decode(case["plaintext_b64"])
        if not pt.startswith(b"k8s\x00\n"):
            continue
        obj = objects.decode(pt)
        assert obj["kind"] == "Secret" and obj["type"] == "Opaque"
        assert obj["metadata"]["namespace"] == "kms-v2-legacy-data"
        assert base64.b64decode(obj["data"]["api_key"]) == b"086a7ffc-0225-11e8-ba89-0ed5f89f718b"
        assert objects.encode(obj) == pt          # byte for byte, managedFields included
        n += 1
    assert n == 2
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "c", "namespace": "n", "labels": {"b": "2", "a": "1"}},
          "data": {"k": "v\x00w"}, "binaryData": {"b": base64.b64encode(b"\xff").decode()},
          "immutable": True}
    enc = objects.encode(cm)
    assert enc.startswith(b"k8s\x00\n\x0f\n\x02v1\x12\x09ConfigMap\x12")
    assert objects.decode(enc) == cm
    assert objects.decode(objects.encode(cm, "application/json")) == cm
    for bad in (b"k8s\x00\x12\xff", b"k8s\x00\n\x0c\n\x02v1\x12\x06Pod", b"\x00", b"{]"):
        with pytest.raises(objects.DecodeError):
            objects.decode(bad)


def _metrics_for(version, reload_on=True, succ=0, fail=0):
    args = types.SimpleNamespace(encryption_provider_config="", sim_refuse_reload=False,
                                 sim_reload_delay=0, sim_keep_old_write_key=False,
                                 encryption_provider_config_automatic_reload=reload_on,
                                 sim_metrics_version=version, sim_apiserver_host="testAPIServerID")
    enc = kapisim.Encryption(args)
    args.encryption_provider_config = "set"
    enc.cfg = T.parse_config(b'{"apiVersion":"v1","kind":"EncryptionConfig","resources":'
                             b'[{"resources":["secrets"],"providers":[{"identity":{}}]}]}')
    for _ in range(succ):
        enc._record(True)
    for _ in range(fail):
        enc._record(False, "x")
    from conftest import parse_metrics
    text = enc.metrics()
    return parse_metrics(text) if text else {}, enc.cfg


def test_reload_metrics_per_version():
    assert kapisim.apiserver_id("testAPIServerID") == "apiserver-5toptfq5wsd34qjmvecvmgbige"
    idh = "sha256:3c607df3b2bf22c9d9f01d5314b4bbf411c48ef43ff44ff29b1d55b41367c795"
    assert kapisim.apiserver_id_hash("testAPIServerID") == idh
    p = "apiserver_encryption_config_controller_"
    m, _ = _metrics_for("1.28")
    assert m[p + "automatic_reload_success_total"]["samples"] == {frozenset(): 0}
    assert m[p + "automatic_reload_failures_total"]["samples"] == {frozenset(): 0}
    m, _ = _metrics_for("1.28", succ=2, fail=1)
    assert m[p + "automatic_reload_success_total"]["samples"] == {frozenset(): 2}
    assert set(m[p + "automatic_reload_last_timestamp_seconds"]["samples"]) == {
        frozenset({("status", "success")}), frozenset({("status", "failure")})}
    m, _ = _metrics_for("1.29", succ=1)
    assert m[p + "automatic_reload_success_total"]["samples"] == {
        frozenset({("apiserver_id_hash", idh)}): 1}
    assert p + "automatic_reload_failures_total" not in m          # no child yet
    assert p + "automatic_reloads_total" not in m
    m, _ = _metrics_for("1.30", succ=1, fail=3)
    assert "(Deprecated since 1.30.0)" in m[p + "automatic_reload_success_total"]["help"]
    assert m[p + "automatic_reloads_total"]["samples"] == {
        frozenset({("apiserver_id_hash", idh), ("status", "success")}): 1,
        frozenset({("apiserver_id_hash", idh), ("status", "failure")}): 3}
    for v in ("1.31", "1.33"):
        m, _ = _metrics_for(v, succ=1)
        assert sorted(m) == [p + "automatic_reload_last_timestamp_seconds",
                             p + "automatic_reloads_total"], v
    m, cfg = _metrics_for("1.34", succ=1)
    assert m[p + "last_config_info"]["samples"] == {
        frozenset({("apiserver_id_hash", idh), ("hash", "sha256:" + cfg.sha256)}): 1}
    m, _ = _metrics_for("1.34", reload_on=False)       # set at startup even without reload
    assert list(m) == [p + "last_config_info"]
    m, _ = _metrics_for("1.33", reload_on=False)
    assert m == {}


# ---- the running simulator against a real etcd -----------------------------------------------

@pytest.fixture
def etcd(make_etcd):
    return make_etcd().start()


def _decrypt(cfg, key, value):
    p = run_cli(["decrypt", "--config", str(cfg), "--etcd-key", key], input=value)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("provider", ["aesgcm", "aescbc", "secretbox", "identity"])
def test_simulator_writes_decrypt_with_atrest(tmp_path, etcd, make_kapisim, keys, provider):
    spec = (provider,) if provider == "identity" else (provider, [("key1", keys.new(32))])
    cfg = write(tmp_path, "enc.yaml", enc_config([(["secrets", "configmaps"], [spec])]))
    sim = make_kapisim(etcd, cfg)
    st, doc = sim.create(NS, secret("s1", {"password": b"hunter2\x00\xff"}))
    assert st == 201, doc
    value = sim.raw("secrets/default/s1")
    if provider != "identity":
        assert value.startswith(("k8s:enc:%s:v1:key1:" % provider).encode())
        assert b"hunter2" not in value
    pt = _decrypt(cfg, "/registry/secrets/default/s1", value)
    assert pt.startswith(b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret\x12")   # NUL bytes and all
    stored = objects.decode(pt)
    assert stored["data"] == {"password": base64.b64encode(b"hunter2\x00\xff").decode()}
    assert stored["metadata"]["uid"] == doc["metadata"]["uid"]
    assert "resourceVersion" not in stored["metadata"]            # not stored, as upstream
    assert objects.encode(stored) == pt
    st, doc = sim.create(NS, {"metadata": {"name": "c1"}, "data": {"k": "v"}}, "configmaps")
    assert st == 201, doc
    cm = objects.decode(_decrypt(cfg, "/registry/configmaps/default/c1",
                                 sim.raw("configmaps/default/c1")))
    assert cm["kind"] == "ConfigMap" and cm["data"] == {"k": "v"}
    keys.scan(sim.log(), "kapisim log")


def test_values_from_atrest_encrypt_are_read_through_rest(tmp_path, etcd, make_kapisim, keys):
    cfg = write(tmp_path, "enc.yaml", enc_config([(["secrets"], [
        ("secretbox", [("sb", keys.new(32))]), ("aesgcm", [("g", keys.new(16))])])]))
    sim = make_kapisim(etcd, cfg)
    obj = secret("from-cli", {"token": b"\x00abc"}, ns=NS, type="Opaque")
    obj["metadata"].update(uid="u-1", creationTimestamp="2024-05-06T07:08:09Z")
    key = "/registry/secrets/default/from-cli"
    p = run_cli(["encrypt", "--config", str(cfg), "--etcd-key", key], input=objects.encode(obj))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(b"k8s:enc:secretbox:v1:sb:")
    rev = etcdmod.Etcd(etcd.endpoint).put(key.encode(), p.stdout)
    st, doc = sim.get(NS, "from-cli")
    assert st == 200, doc
    assert doc["data"] == {"token": base64.b64encode(b"\x00abc").decode()}
    assert doc["metadata"] == {"name": "from-cli", "namespace": NS, "uid": "u-1",
                               "creationTimestamp": "2024-05-06T07:08:09Z",
                               "resourceVersion": str(rev)}
    st, lst = sim.list()
    assert st == 200 and [i["metadata"]["name"] for i in lst["items"]] == ["from-cli"]
    # a JSON-stored object (--storage-media-type application/json) is read too
    js = json.dumps(secret("js", {"a": b"1"}, ns=NS)).encode()
    p = run_cli(["encrypt", "--config", str(cfg), "--etcd-key", "/registry/secrets/default/js"],
                input=js)
    etcdmod.Etcd(etcd.endpoint).put(b"/registry/secrets/default/js", p.stdout)
    st, doc = sim.get(NS, "js")
    assert st == 200 and doc["data"] == {"a": "MQ=="}, doc
    # a value atrest wrote with the second provider reads fine but is stale: a no-op update
    # rewrites it with the first (secretbox) key
    cfg2 = write(tmp_path, "gcm-first.yaml", enc_config([(["secrets"], [
        ("aesgcm", [("g", keys.keys[1])])])]))
    p = run_cli(["encrypt", "--config", str(cfg2), "--etcd-key", key], input=objects.encode(obj))
    rev = etcdmod.Etcd(etcd.endpoint).put(key.encode(), p.stdout)
    st, doc = sim.get(NS, "from-cli")
    st, upd = sim.update(NS, "from-cli", doc)
    assert st == 200 and int(upd["metadata"]["resourceVersion"]) > rev
    assert sim.raw("secrets/default/from-cli").startswith(b"k8s:enc:secretbox:v1:sb:")


def test_rest_crud_conflicts_and_auth(tmp_path, etcd, make_kapisim, keys):
    cfg = write(tmp_path, "enc.yaml", enc_config([(["secrets"], [("aescbc", [("k", keys.new())])])]))
    sim = make_kapisim(etcd, cfg)
    for path in ("/readyz", "/livez", "/healthz"):
        assert sim.request("GET", path, auth=None) == (200, "ok")
    st, doc = sim.request("GET", "/api/v1/secrets", auth=None)
    assert st == 403 and doc["reason"] == "Forbidden"
    st, doc = sim.request("GET", "/api/v1/secrets", auth="wrong-token")
    assert (st, doc["reason"]) == (401, "Unauthorized")
    st, doc = sim.create(NS, secret("a", {"x": b"1"}))
    assert st == 201
    rv1 = doc["metadata"]["resourceVersion"]
    st, dup = sim.create(NS, secret("a", {"x": b"2"}))
    assert (st, dup["reason"], dup["message"]) == (409, "AlreadyExists", 'secrets "a" already exists')
    st, got = sim.request("GET", sim.path("secrets", NS, "a"), auth="cert")   # client cert
    assert st == 200 and got == doc
    doc["data"]["x"] = base64.b64encode(b"2").decode()
    st, upd = sim.update(NS, "a", doc)
    assert st == 200
    rv2 = upd["metadata"]["resourceVersion"]
    assert int(rv2) > int(rv1)
    assert upd["metadata"]["uid"] == got["metadata"]["uid"]
    st, c = sim.update(NS, "a", doc)              # the resourceVersion of the first write
    assert (st, c["reason"]) == (409, "Conflict")
    assert c["message"].startswith('Operation cannot be fulfilled on secrets "a": the object '
                                   'has been modified')
    st, miss = sim.update(NS, "nope", secret("nope", {}))
    assert (st, miss["reason"]) == (404, "NotFound")
    st, d = sim.delete(NS, "a")
    assert st == 200 and d["status"] == "Success" and d["details"]["uid"] == upd["metadata"]["uid"]
    assert sim.get(NS, "a")[0] == 404 and sim.raw("secrets/default/a") is None
    st, _ = sim.create(NS, {"metadata": {"name": "cm"}, "data": {"a": "b"}}, "configmaps")
    assert st == 201 and sim.raw("configmaps/default/cm").startswith(b"k8s\x00")  # identity
    st, bad = sim.create("other", secret("x", {}, ns=NS))
    assert st == 400
    st, sd = sim.create(NS, {"metadata": {"name": "sd"}, "stringData": {"u": "root"},
                             "data": {"p": "cHc="}})
    assert st == 201 and sd["data"] == {"p": "cHc=", "u": "cm9vdA=="} and "stringData" not in sd


def test_concurrent_requests(tmp_path, etcd, make_kapisim):
    import concurrent.futures
    sim = make_kapisim(etcd, None)
    assert sim.create(NS, secret("shared", {"n": b"0"}))[0] == 201

    def work(i):
        a = sim.create(NS, secret("c%02d" % i, {"i": str(i).encode()}))[0]
        b = sim.update(NS, "shared", secret("shared", {"n": str(i).encode()}))[0]
        return a, b
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(work, range(16)))
    assert results == [(201, 200)] * 16
    st, lst = sim.list(NS)
    assert len(lst["items"]) == 17


def test_list_limit_continue_is_a_consistent_snapshot(tmp_path, etcd, make_kapisim):
    sim = make_kapisim(etcd, None, ["--sim-insecure-http"])     # plain HTTP, no config
    assert sim.url.startswith("http://")
    names = [("a", "s%d" % i) for i in range(4)] + [("b", "s%d" % i) for i in range(3)]
    for ns, n in names:
        assert sim.create(ns, secret(n, {"v": n.encode()}))[0] == 201
    seen, cont, pages = [], "", 0
    while True:
        st, lst = sim.list(limit=3, cont=cont)
        assert st == 200, lst
        assert lst["kind"] == "SecretList"
        seen += [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in lst["items"]]
        if pages == 0:
            rv = lst["metadata"]["resourceVersion"]
            assert lst["metadata"]["remainingItemCount"] == 4
            assert sim.create("a", secret("zz-late", {}))[0] == 201   # after the snapshot
        assert lst["metadata"]["resourceVersion"] == rv
        pages += 1
        cont = lst["metadata"].get("continue", "")
        if not cont:
            break
        assert pages < 10
    assert seen == names and pages == 3
    st, lst = sim.list("b")
    assert [i["metadata"]["name"] for i in lst["items"]] == ["s0", "s1", "s2"]
    assert sim.list(cont="bm90IGEgdG9rZW4=")[0] == 400


def test_noop_update_writes_only_stale_objects(tmp_path, etcd, make_kapisim, keys):
    k1, k2 = keys.new(), keys.new()
    cfg = write(tmp_path, "enc.yaml", enc_config([(["secrets"], [("aescbc", [("k1", k1)])])]))
    sim = make_kapisim(etcd, cfg, ["--encryption-provider-config-automatic-reload",
                                   "--sim-reload-interval", "600"])
    st, doc = sim.create(NS, secret("s", {"a": b"1"}))
    raw1 = sim.raw("secrets/default/s")
    st, same = sim.update(NS, "s", doc)             # current key: no write
    assert st == 200 and same["metadata"]["resourceVersion"] == doc["metadata"]["resourceVersion"]
    assert sim.raw("secrets/default/s") == raw1
    rewrite(cfg, enc_config([(["secrets"], [("aescbc", [("k2", k2), ("k1", k1)])])]))
    assert sim.sim("reload") == (200, {"result": "success"})
    assert sim.sim("reload") == (200, {"result": "unchanged"})
    st, re1 = sim.update(NS, "s", doc)              # stale: rewritten with k2, same plaintext
    assert st == 200 and int(re1["metadata"]["resourceVersion"]) > int(doc["metadata"]["resourceVersion"])
    raw2 = sim.raw("secrets/default/s")
    assert raw2.startswith(b"k8s:enc:aescbc:v1:k2:")
    assert _decrypt(cfg, "/registry/secrets/default/s", raw2) == \
        _decrypt(cfg, "/registry/secrets/default/s", raw1)
    st, re2 = sim.update(NS, "s", re1)              # no longer stale: no write
    assert re2["metadata"]["resourceVersion"] == re1["metadata"]["resourceVersion"]
    assert sim.raw("secrets/default/s") == raw2


def test_poll_reload_keeps_old_config_on_failure(tmp_path, etcd, make_kapisim, keys):
    k1, k2 = keys.new(), keys.new()
    cfg = write(tmp_path, "enc.yaml", enc_config([(["secrets"], [("aesgcm", [("k1", k1)])])]))
    sim = make_kapisim(etcd, cfg, ["--encryption-provider-config-automatic-reload=true",
                                   "--sim-reload-interval", "0.2"])
    p = "apiserver_encryption_config_controller_"
    h0 = "sha256:" + hashlib.sha256(cfg.read_bytes()).hexdigest()
    info = sim.metrics()[p + "last_config_info"]["samples"]
    assert [dict(k)["hash"] for k in info] == [h0]
    rewrite(cfg, "kind: EncryptionConfiguration\n")                       # invalid
    wait_for(lambda: sim.sim("status")[1]["reloads"]["failure"] >= 1, 10, "a failed reload")
    assert [dict(k)["hash"] for k in sim.metrics()[p + "last_config_info"]["samples"]] == [h0]
    assert sim.create(NS, secret("s", {}))[0] == 201
    assert sim.raw("secrets/default/s").startswith(b"k8s:enc:aesgcm:v1:k1:")
    new = enc_config([(["secrets"], [("secretbox", [("k2", k2)]), ("aesgcm", [("k1", k1)])])])
    rewrite(cfg, new)
    h1 = "sha256:" + hashlib.sha256(new.encode()).hexdigest()
    wait_for(lambda: [dict(k)["hash"] for k in
                      sim.metrics()[p + "last_config_info"]["samples"]] == [h1], 10, "reload")
    m = sim.metrics()[p + "automatic_reloads_total"]["samples"]
    assert {dict(k)["status"]: v for k, v in m.items()}["success"] == 1
    assert sim.create(NS, secret("t", {}))[0] == 201
    assert sim.raw("secrets/default/t").startswith(b"k8s:enc:secretbox:v1:k2:")
    assert sim.get(NS, "s")[0] == 200
    keys.scan(sim.log(), "kapisim log")


def test_knobs_refuse_delay_keep_old_write_key(tmp_path, etcd, make_kapisim, keys):
    k1, k2 = keys.new(), keys.new()
    cfg = write(tmp_path, "enc.yaml", enc_config([(["secrets"], [("aescbc", [("k1", k1)])])]))
    sim = make_kapisim(etcd, cfg, ["--encryption-provider-config-automatic-reload",
                                   "--sim-reload-interval", "600", "--sim-refuse-reload"])
    h0 = hashlib.sha256(cfg.read_bytes()).hexdigest()
    rewrite(cfg, enc_config([(["secrets"], [("aescbc", [("k2", k2), ("k1", k1)])])]))
    st, r = sim.sim("reload")
    assert r["result"] == "failure: kapisim: reload refused (--sim-refuse-reload)"
    assert sim.sim("status")[1]["configSha256"] == h0
    sim.sim("knobs", {"refuseReload": False, "reloadDelay": 0.5, "keepOldWriteKey": True})
    t0 = time.monotonic()
    assert sim.sim("reload")[1]["result"] == "success"
    assert time.monotonic() - t0 >= 0.5
    status = sim.sim("status")[1]
    assert status["configSha256"] == hashlib.sha256(cfg.read_bytes()).hexdigest()
    assert status["writeConfigSha256"] == h0 and status["writeKey"]["secrets"] == "aescbc/k1"
    # the broken server reports the new config but still writes with k1
    assert sim.create(NS, secret("s", {}))[0] == 201
    assert sim.raw("secrets/default/s").startswith(b"k8s:enc:aescbc:v1:k1:")


def test_restart_only_crash_and_restart(tmp_path, etcd, make_kapisim, keys):
    k1, k2 = keys.new(), keys.new()
    cfg = write(tmp_path, "enc.yaml", enc_config([(["secrets"], [("aescbc", [("k1", k1)])])]))
    sim = make_kapisim(etcd, cfg, ["--sim-crash-after", "2"])
    assert sim.create(NS, secret("a", {}))[0] == 201
    rewrite(cfg, enc_config([(["secrets"], [("aescbc", [("k2", k2), ("k1", k1)])])]))
    assert sim.sim("reload")[0] == 409                          # restart-only
    with pytest.raises(ConnectionError):
        sim.create(NS, secret("b", {}))                          # the 2nd write, then SIGKILL
    assert sim.proc.wait(10) == -9
    assert sim.raw("secrets/default/b").startswith(b"k8s:enc:aescbc:v1:k1:")
    port = sim.port
    sim.restart()                                                # picks up the new file
    assert sim.port == port
    assert sim.sim("status")[1]["writeKey"]["secrets"] == "aescbc/k2"
    assert sim.get(NS, "b")[0] == 200
    with pytest.raises(ConnectionError):
        sim.sim("crash")
    assert sim.proc.wait(10) == -9
    sim.restart()
    assert sim.get(NS, "a")[0] == 200
    assert sim.stop() == 0
    assert "kapisim: stopped" in sim.log()


def test_kms_values_fail_reads_through_rest(tmp_path, etcd, make_kapisim, keys):
    case = [c for c in KAT["cases"] if c["provider"] == "kms-v2"][0]
    cfg = write(tmp_path, "enc.yaml", enc_config([(["secrets"], [
        ("aescbc", [("k", keys.new())]),
        ("kms", [("apiVersion", "v2"), ("name", case["kms_name"]),
                 ("endpoint", "unix:///nonexistent.sock")])])]))
    sim = make_kapisim(etcd, cfg)
    etcdmod.Etcd(etcd.endpoint).put(b"/registry/secrets/default/k",
                                    base64.b64decode(case["value_b64"]))
    st, doc = sim.get(NS, "k")
    assert (st, doc["reason"]) == (500, "InternalError")
    assert doc["message"].startswith("Internal error occurred: rpc error: code = Unavailable")
    st, doc = sim.list()
    assert st == 500
    assert doc["message"].startswith('Internal error occurred: unable to transform key '
                                     '"/registry/secrets/default/k": rpc error')


def test_cli_help_and_bad_flags():
    p = subprocess.run(["/usr/bin/python3", str(ROOT / "tests" / "kapisim" / "kapisim.py"), "--help"],
                       capture_output=True, timeout=20)
    assert p.returncode == 0 and b"--sim-keep-old-write-key" in p.stdout
    p = subprocess.run(["/usr/bin/python3", str(ROOT / "tests" / "kapisim" / "kapisim.py"),
                        "--etcd-servers", "http://127.0.0.1:1",
                        "--encryption-provider-config-automatic-reload"],
                       capture_output=True, timeout=20)
    assert p.returncode == 2
    assert b"--encryption-provider-config-automatic-reload must be set with " \
           b"--encryption-provider-config" in p.stderr


def test_a_bad_config_at_start_is_fatal(tmp_path, etcd):
    cfg = write(tmp_path, "bad.yaml", enc_config([(["secrets"], [("aesgcm", [("k", b"short")])])]))
    p = subprocess.run(["/usr/bin/python3", str(ROOT / "tests" / "kapisim" / "kapisim.py"),
                        "--etcd-servers", etcd.endpoint, "--secure-port", "0",
                        "--encryption-provider-config", str(cfg), "--sim-insecure-http"],
                       capture_output=True, timeout=20)
    assert p.returncode == 1 and p.stdout == b""
    assert b"error while parsing file: resources[0].providers[0].aesgcm.keys[0].secret: " \
           b"Invalid value: \"REDACTED\"" in p.stderr
