#!/usr/bin/python3
"""bench/bench_reencrypt_api.py: the re-encrypt pass in API mode (issue 9), for reference.

Starts a real etcd and one kube-apiserver simulator (tests/kapisim, HTTPS, the test harness of
tests/integration/cluster.py) whose config writes with key2 and still reads key1. Seeds N
(env API_N, default 2000) Secrets of 1 KiB under key1 straight into etcd and runs `atrest reencrypt
--mode etcd` (the direct-etcd engine: the baseline); then deletes them, seeds N new ones under
key1 and runs `atrest reencrypt --mode api` through the simulator (list + no-op update, page
1000, 8 updates in flight). Each run must leave every Secret under key2 with nothing failed.
Prints, on stdout:
  BENCH name=reencrypt-api-rate value=<objects/s> unit=objects/s baseline=<etcd engine> ratio=<r>
The API rate is bounded by the simulator (Python, one thread per request), not by atrest: a
reference figure, not a target.
"""
import base64
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from conftest import ATREST, Keys  # noqa: E402
from cluster import Cluster, REGISTRY, keyed_config  # noqa: E402


def run(args):
    p = subprocess.run([ATREST, "reencrypt"] + args, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit("bench_reencrypt_api: atrest reencrypt %s exited %d"
                         % (" ".join(args[-4:]), p.returncode))
    return json.loads(p.stdout)


def drop_secrets(c):
    start = (REGISTRY + "secrets/").encode()
    end = start[:-1] + bytes([start[-1] + 1])
    c.kv.call("/v3/kv/deleterange", {"key": base64.b64encode(start).decode(),
                                     "range_end": base64.b64encode(end).decode()})


def check(c, out, n, what):
    census = c.census("secrets", probes=True)
    if out["failed"] or out["done"] != n or dict(census) != {"aescbc/key2": n}:
        raise SystemExit("bench_reencrypt_api: %s: %s, census %s" % (what, out, dict(census)))


def main():
    n = int(os.environ.get("API_N", "2000"))
    keys = Keys()
    k1, k2 = ("key1", keys.new()), ("key2", keys.new())
    new = keyed_config("aescbc", k2, k1)
    with tempfile.TemporaryDirectory(prefix="bench-reencrypt-api-") as tmp:
        c = Cluster(tmp, keys, n=1, config=new, agents=False, reload_s=None)
        try:
            c.start()
            node = c.nodes[0]
            cfg = pathlib.Path(tmp) / "new.yaml"
            cfg.write_text(new)
            settings = pathlib.Path(tmp) / "agent.yaml"
            settings.write_text("apiserver:\n  url: %s\n  cafile: %s\n  tokenFile: %s\n" % (
                node.sim.url, node.sim.cert_dir / "ca.crt", node.token_file))
            old = keyed_config("aescbc", k1)

            c.seed(n, old, size=1024, prefix="e")
            base = run(["--config", str(cfg), "--resource", "secrets", "--json", "--mode", "etcd",
                        "--etcd-servers", c.etcd.endpoint])
            check(c, base, n, "etcd engine")

            drop_secrets(c)
            c.seed(n, old, size=1024, prefix="a")
            api = run(["--config", str(cfg), "--resource", "secrets", "--json", "--mode", "api",
                       "--settings", str(settings)])
            check(c, api, n, "API mode")
            if api["rewritten"] != n:
                raise SystemExit("bench_reencrypt_api: API mode rewrote %d of %d"
                                 % (api["rewritten"], n))
            sys.stderr.write("bench_reencrypt_api: N=%d etcd engine %.0f objects/s, API mode %.0f "
                             "objects/s through kapisim\n" % (n, base["rate"], api["rate"]))
            print("BENCH name=reencrypt-api-rate value=%.0f unit=objects/s baseline=%.0f "
                  "ratio=%.3f" % (api["rate"], base["rate"],
                                  api["rate"] / base["rate"] if base["rate"] else 0))
        finally:
            c.close()


if __name__ == "__main__":
    main()
