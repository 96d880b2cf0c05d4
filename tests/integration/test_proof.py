"""Proof of load (agent/proof.c) through `atrest proof`, against the kube-apiserver simulator
(tests/kapisim) and a real etcd: canary READ and WRITE, metrics in the 1.28, 1.31 and 1.34
styles, restart, and the three ways to authenticate (token, client certificate, kubeconfig)."""
import base64
import hashlib
import os
import re
import threading
import time

import pytest

from conftest import enc_config, run_cli, wait_for

RELOAD = ["--encryption-provider-config-automatic-reload", "--sim-reload-interval", "1"]


class Env:
    def __init__(self, tmp, etcd, sim, enc, keys, k1, k2):
        self.tmp, self.etcd, self.sim, self.enc, self.keys = tmp, etcd, sim, enc, keys
        self.k1, self.k2 = k1, k2

    def settings(self, mode="canary", auth="token", extra=""):
        tok = self.tmp / "token"
        tok.write_text(self.sim.token + "\n")
        lines = ["node: cp-1", "etcd:", "  endpoints: [%s]" % self.etcd.endpoint,
                 "apiserver:"]
        if auth != "kubeconfig":
            lines.append("  url: %s" % self.sim.url)
            lines.append("  cafile: %s" % (self.sim.cert_dir / "ca.crt"))
        if auth == "token":
            lines.append("  tokenFile: %s" % tok)
        elif auth == "cert":
            lines.append("  certfile: %s" % (self.sim.cert_dir / "client.crt"))
            lines.append("  keyfile: %s" % (self.sim.cert_dir / "client.key"))
        elif auth == "kubeconfig":
            lines.append("  kubeconfig: %s" % (self.tmp / "kubeconfig"))
        lines += ["proof:", "  mode: %s" % mode, "  canaryNamespace: atrest-test",
                  "  canaryName: canary-1"]
        p = self.tmp / "agent.yaml"
        p.write_text("\n".join(lines) + "\n" + extra)
        return p

    def write_phase(self, providers):
        """Write the phase config into the file the simulator reads (as the agent would)."""
        tmp = self.enc.with_suffix(".tmp")
        tmp.write_text(enc_config([(["secrets"], providers)]))
        os.replace(tmp, self.enc)
        return self.enc

    def proof(self, settings, goal, typ=None, key=None, timeout=60, extra=()):
        args = ["proof", "--settings", str(settings), "--config", str(self.enc), "--goal", goal,
                "--phase", "stage", "--retry-ms", "200", "--timeout", str(timeout)]
        if typ:
            args += ["--type", typ]
        if key:
            args += ["--key", key]
        r = run_cli(args + list(extra), timeout=timeout + 30)
        out, err = r.stdout.decode(), r.stderr.decode()
        self.keys.scan(out + err, "atrest proof output")
        assert self.sim.token not in out + err, "the bearer token leaked into the output"
        return r.returncode, out, err

    def raw_canary(self):
        return self.sim.raw("secrets/atrest-test/canary-1-cp-1")


@pytest.fixture
def env(tmp_path, make_etcd, make_kapisim, keys):
    def make(sim_extra=(), first=None):
        etcd = make_etcd().start()
        k1, k2 = keys.new(), keys.new()
        enc = tmp_path / "enc.yaml"
        enc.write_text(enc_config([(["secrets"], first or [("aescbc", [("k1", k1)]),
                                                           ("identity",)])]))
        sim = make_kapisim(etcd, enc, list(sim_extra))
        return Env(tmp_path, etcd, sim, enc, keys, k1, k2)
    return make


def stage(e):
    return e.write_phase([("aescbc", [("k1", e.k1), ("k2", e.k2)]), ("identity",)])


def promote(e):
    return e.write_phase([("aescbc", [("k2", e.k2), ("k1", e.k1)]), ("identity",)])


# ---- canary -------------------------------------------------------------------------------------

def test_canary_read_succeeds_after_the_reload(env):
    e = env(RELOAD)
    st = e.settings()
    stage(e)
    rc, out, err = e.proof(st, "read", "aescbc", "k2")
    assert rc == 0, err
    assert out.startswith("proved: kind=canary goal=read "), out
    # the canary in etcd is encrypted with exactly k2 (a read key of the stage config) ...
    raw = e.raw_canary()
    assert raw.startswith(b"k8s:enc:aescbc:v1:k2:"), raw[:40]
    # ... and the simulator (an independent implementation) reads it as a v1 Secret
    status, obj = e.sim.get("atrest-test", "canary-1-cp-1")
    assert status == 200, obj
    assert obj["kind"] == "Secret" and obj["metadata"]["name"] == "canary-1-cp-1"
    assert obj["metadata"]["annotations"]["atrest.io/phase"] == "stage"
    assert len(base64.b64decode(obj["data"]["probe"])) == 16
    assert obj["metadata"]["uid"] and obj["metadata"]["creationTimestamp"].endswith("Z")


def test_canary_read_times_out_with_a_clear_message_when_never_loaded(env):
    e = env(["--encryption-provider-config-automatic-reload"])  # polls every 60 s
    st = e.settings()
    time.sleep(1.2)  # the simulator's first (immediate) poll is done
    stage(e)
    t0 = time.monotonic()
    rc, out, err = e.proof(st, "read", "aescbc", "k2", timeout=3)
    assert rc == 1 and out == "", err
    assert time.monotonic() - t0 < 20
    assert ("atrest proof: timed out after 3 s (--timeout): waiting for cp-1's API server to "
            "load phase stage: ") in err, err
    assert "it polls every 60 s; last attempt: GET the canary: HTTP 500" in err, err
    assert "no matching key was found for the provided AES transformer" in err, err
    assert "looks stuck" not in err
    # after proof.warnAfterSeconds the sentence says it looks stuck, and it keeps waiting
    rc, out, err = e.proof(st, "read", "aescbc", "k2", timeout=3,
                           extra=["--proof-warn-after", "1"])
    assert rc == 1
    assert re.search(r"load phase stage: [23] s, it polls every 60 s; it looks stuck \(no proof "
                     r"after 1 s\), still waiting; last attempt: GET the canary: HTTP 500", err), err


def test_canary_read_reports_a_key_the_config_lacks(env):
    e = env(RELOAD)
    st = e.settings()
    stage(e)
    rc, out, err = e.proof(st, "read", "aescbc", "nosuchkey")
    assert rc == 2, err
    assert "the key is not in secrets' providers of the config" in err


def test_canary_write_proves_the_new_write_key(env):
    e = env(RELOAD)
    st = e.settings()
    promote(e)
    rc, out, err = e.proof(st, "write", "aescbc", "k2")
    assert rc == 0, err
    assert out.startswith("proved: kind=canary goal=write "), out
    assert e.raw_canary().startswith(b"k8s:enc:aescbc:v1:k2:")


def test_canary_write_identity(env):
    e = env(RELOAD)
    st = e.settings()
    e.write_phase([("identity",), ("aescbc", [("k1", e.k1)])])
    rc, out, err = e.proof(st, "write", "identity")
    assert rc == 0, err
    assert not e.raw_canary().startswith(b"k8s:enc:")


def test_canary_write_catches_a_server_that_keeps_the_old_write_key(env):
    e = env(RELOAD + ["--sim-keep-old-write-key"])
    st = e.settings()
    promote(e)
    rc, out, err = e.proof(st, "write", "aescbc", "k2", timeout=60)
    assert rc == 1, (out, err)
    assert ("the API server loaded phase stage (sha256:%s) but writes secrets with aescbc:k1, "
            "not aescbc:k2" % hashlib.sha256(e.enc.read_bytes()).hexdigest()) in err, err
    assert e.raw_canary().startswith(b"k8s:enc:aescbc:v1:k1:")


# ---- metrics ------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["1.28", "1.31", "1.34"])
def test_metrics_proof(env, version):
    e = env(RELOAD + ["--sim-metrics-version", version])
    st = e.settings(mode="metrics")
    time.sleep(1.5)  # the written file is newer than the simulator's start
    stage(e)
    rc, out, err = e.proof(st, "loaded")
    assert rc == 0, err
    assert out.startswith("proved: kind=metrics goal=loaded "), out
    wait_for(lambda: e.sim.sim("status")[1]["configSha256"] ==
             hashlib.sha256(e.enc.read_bytes()).hexdigest(), 5, "simulator status")


@pytest.mark.parametrize("version", ["1.28", "1.34"])
def test_metrics_proof_waits_while_reloads_fail(env, version):
    e = env(RELOAD + ["--sim-metrics-version", version, "--sim-refuse-reload"])
    st = e.settings(mode="metrics")
    time.sleep(1.5)
    stage(e)
    rc, out, err = e.proof(st, "loaded", timeout=4)
    assert rc == 1, err
    assert "timed out after 4 s (--timeout): waiting for cp-1's API server to load phase" in err


def test_canary_loaded_uses_metrics_when_exposed(env):
    e = env(RELOAD + ["--sim-metrics-version", "1.34"])
    st = e.settings(mode="canary")
    e.write_phase([("aescbc", [("k1", e.k1)])])  # prune-like: only the write key remains
    rc, out, err = e.proof(st, "loaded")
    assert rc == 0, err
    assert out.startswith("proved: kind=metrics goal=loaded "), out


# ---- restart ------------------------------------------------------------------------------------

def test_restart_runs_the_command_then_waits_for_readyz(env, tmp_path):
    e = env([])  # restart-only: the simulator reads its file only at start
    flag, go = tmp_path / "flag", tmp_path / "go"
    script = tmp_path / "restart.sh"
    script.write_text("#!/bin/sh\ntouch %s\ni=0\nwhile [ ! -e %s ] && [ $i -lt 300 ]; do "
                      "sleep 0.1; i=$((i+1)); done\nexit 0\n" % (flag, go))
    script.chmod(0o755)
    st = e.settings(mode="restart", extra="")
    stage(e)

    def restarter():
        wait_for(flag.exists, 20, "the reload command")
        e.sim.restart()
        go.touch()
    t = threading.Thread(target=restarter)
    t.start()
    try:
        rc, out, err = e.proof(st, "loaded", extra=["--reload-command", str(script)])
    finally:
        t.join(40)
    assert rc == 0, err
    assert out.startswith("proved: kind=restart goal=loaded "), out
    assert e.sim.sim("status")[1]["configSha256"] == hashlib.sha256(e.enc.read_bytes()).hexdigest()


def test_restart_command_failure_is_reported(env):
    e = env([])
    st = e.settings(mode="restart")
    rc, out, err = e.proof(st, "loaded", extra=["--reload-command", "/bin/sh -c 'exit 3'"])
    assert rc == 1
    assert "atrest proof: not proven: the reload command exited with status 3" in err, err


# ---- authentication and TLS ---------------------------------------------------------------------

def test_client_certificate(env):
    e = env(RELOAD)
    st = e.settings(auth="cert")
    stage(e)
    rc, out, err = e.proof(st, "read", "aescbc", "k2")
    assert rc == 0, err


def write_kubeconfig(e, inline):
    ca = (e.sim.cert_dir / "ca.crt").read_bytes()
    if inline:
        cluster = "    certificate-authority-data: %s\n" % base64.b64encode(ca).decode()
        user = "    token: %s\n" % e.sim.token
    else:
        (e.tmp / "pki").mkdir(exist_ok=True)
        for f in ("ca.crt", "client.crt", "client.key"):
            (e.tmp / "pki" / f).write_bytes((e.sim.cert_dir / f).read_bytes())
        cluster = "    certificate-authority: pki/ca.crt\n"
        user = "    client-certificate: pki/client.crt\n    client-key: pki/client.key\n"
    (e.tmp / "kubeconfig").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: agent\n"
        "contexts:\n- name: agent\n  context:\n    cluster: local\n    user: atrest\n"
        "clusters:\n- name: local\n  cluster:\n    server: %s\n%s"
        "users:\n- name: atrest\n  user:\n%s" % (e.sim.url, cluster, user))


@pytest.mark.parametrize("inline", [True, False], ids=["inline-token", "files-cert"])
def test_kubeconfig(env, inline):
    e = env(RELOAD)
    write_kubeconfig(e, inline)
    st = e.settings(auth="kubeconfig")
    promote(e)
    rc, out, err = e.proof(st, "write", "aescbc", "k2", extra=["--log-level", "debug"])
    assert rc == 0, err


def test_kubeconfig_unsupported_field_is_refused_with_its_line(env):
    e = env(RELOAD)
    (e.tmp / "kubeconfig").write_text(
        "current-context: a\ncontexts:\n- name: a\n  context: {cluster: c, user: u}\n"
        "clusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\n"
        "users:\n- name: u\n  user:\n    exec: {command: get-token}\n")
    st = e.settings(auth="kubeconfig")
    rc, out, err = e.proof(st, "loaded")
    assert rc == 2
    assert "atrest proof: %s:11: user field \"exec\" is not supported by atrest" % (
        e.tmp / "kubeconfig") in err, err


def test_wrong_ca_is_refused(env):
    e = env(RELOAD)
    st = e.settings(mode="metrics")
    text = st.read_text().replace(str(e.sim.cert_dir / "ca.crt"),
                                  "/etc/ssl/certs/ca-certificates.crt")
    st.write_text(text)
    rc, out, err = e.proof(st, "loaded", timeout=20)
    assert rc == 1, err
    assert "atrest proof: not proven: GET /metrics: SSL certificate problem" in err, err


def test_wrong_token_is_refused(env):
    e = env(RELOAD)
    st = e.settings()
    stage(e)
    (e.tmp / "token").write_text("not-the-token\n")
    rc, out, err = e.proof(st, "read", "aescbc", "k2", timeout=5)
    assert rc == 1
    assert "atrest proof: not proven: GET the canary: HTTP 401 (credentials)" in err, err


def test_canary_loaded_without_reload_metrics_falls_back_to_reading_the_write_key(env):
    # 1.31 style shows no reload series before the first reload: the proof reads a canary
    # written with the config's write key instead (weaker, said in the log line). The poll is
    # 10 s so that the proof looks at the metrics before the first reload even on a loaded
    # machine (with 4 s the reload came first once and the metrics proved it: also right)
    e = env(["--encryption-provider-config-automatic-reload", "--sim-reload-interval", "10",
             "--sim-metrics-version", "1.31"])
    st = e.settings(mode="canary")
    promote(e)
    rc, out, err = e.proof(st, "loaded")
    assert rc == 0, err
    assert out.startswith("proved: kind=canary goal=loaded "), out
    assert "weaker than a metrics proof" in err, err
    assert "the canary reads with aescbc:k2 (the write key" in err, err
    # the proof removes its canary when it ends (fire and forget; DESIGN 4.3): whether that
    # delete went out before the CLI stopped its loop depends on timing, so the canary may be
    # gone; if it is there, it is under the write key
    raw = e.raw_canary()
    assert raw is None or raw.startswith(b"k8s:enc:aescbc:v1:k2:"), raw
