"""YAML anchors, aliases and merge keys as kube-apiserver reads them (sigs.k8s.io/yaml over
goyaml.v2, shared spec 2.1): `atrest lint` and the agent take an anchored config exactly as
its written-out twin (same fingerprint, the effective file written expanded), and refuse a
"billion laughs" document (CVE-2019-11253) with goyaml's error, quickly and in bounded memory,
while the agent keeps the last valid config in force. Keys are generated here; the fixtures
scan every output, response and log line for them.
"""
import hashlib
import os
import random
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


# ---- goyaml.v2's decode, replayed in full, against atrest on random anchored documents ------

class Node:
    def __init__(self, kind, value=None, kids=(), target=None, merge=False):
        self.kind, self.value, self.kids, self.target, self.merge = kind, value, list(kids), \
            target, merge


class GoyamlError(Exception):
    pass


def allowed_alias_ratio(decodes):
    if decodes <= 400000:
        return 0.99
    if decodes >= 4000000:
        return 0.10
    return 0.99 - 0.89 * (float(decodes - 400000) / 3600000.0)


class GoyamlDecode:
    """decoder.unmarshal/alias/merge of gopkg.in/yaml.v2 decode.go, expanding every alias:
    every call counts, calls under an alias count as aliased, and the ratio is checked at
    each call. Returns the first hard error, as goyaml.v2 does."""

    def __init__(self):
        self.decodes, self.aliased, self.depth, self.active = 1, 0, 0, set()  # 1: document

    def unmarshal(self, n):
        self.decodes += 1
        if self.depth > 0:
            self.aliased += 1
        if self.aliased > 100 and self.decodes > 1000 and \
                self.aliased / self.decodes > allowed_alias_ratio(self.decodes):
            raise GoyamlError("document contains excessive aliasing")
        if n.kind == "alias":
            if id(n) in self.active:
                raise GoyamlError("value contains itself")
            self.active.add(id(n))
            self.depth += 1
            self.unmarshal(n.target)
            self.depth -= 1
            self.active.discard(id(n))
        elif n.kind == "seq":
            for k in n.kids:
                self.unmarshal(k)
        elif n.kind == "map":
            for k, v in zip(n.kids[::2], n.kids[1::2]):
                if k.merge:
                    self.merge(v)
                else:
                    self.unmarshal(k)
                    self.unmarshal(v)

    def merge(self, v):
        for m in (reversed(v.kids) if v.kind == "seq" else [v]):
            if (m.target if m.kind == "alias" else m).kind != "map":
                raise GoyamlError("map merge requires map or sequence of maps as the value")
            self.unmarshal(m)


def goyaml_verdict(root):
    try:
        GoyamlDecode().unmarshal(root)
    except GoyamlError as e:
        return str(e)
    return "ok"


def random_document(rng):
    """(text, tree) of a document of anchored sequences and mappings (aliases, merges) and
    lists of aliases, sized around goyaml's thresholds."""
    lines, root, anchors = [], Node("map"), []

    def scalar(s):
        return Node("scalar", s)

    def put(key, text, node):
        lines.append("%s: %s" % (key, text))
        root.kids += [scalar(key), node]

    for i in range(rng.randint(1, 6)):
        items, texts = [], []
        for _ in range(rng.randint(1, rng.choice([5, 60, 300]))):
            r = rng.random()
            if anchors and r < 0.5:
                name, node = rng.choice(anchors)
                items.append(Node("alias", target=node))
                texts.append("*" + name)
            elif r < 0.6:
                k = "k%d" % rng.randint(0, 3)
                items.append(Node("map", kids=[scalar(k), scalar("x")]))
                texts.append("{%s: x}" % k)
            else:
                items.append(scalar("s"))
                texts.append("s")
        node = Node("seq", kids=items)
        put("a%d" % i, "&a%d [%s]" % (i, ",".join(texts)), node)
        anchors.append(("a%d" % i, node))
    maps = []
    for i in range(rng.randint(0, 5)):
        node, texts = Node("map"), []
        for k in range(rng.randint(0, 30)):
            node.kids += [scalar("x%d" % k), scalar("s")]
            texts.append("x%d: s" % k)
        if maps and rng.random() < 0.7:
            srcs = [rng.choice(maps) for _ in range(rng.randint(1, 3))]
            node.kids += [Node("scalar", "<<", merge=True),
                          Node("seq", kids=[Node("alias", target=m) for _, m in srcs])]
            texts.append("<<: [%s]" % ",".join("*" + n for n, _ in srcs))
        if rng.random() < 0.5:
            name, target = rng.choice(anchors)
            node.kids += [scalar("y"), Node("alias", target=target)]
            texts.append("y: *" + name)
        if rng.random() < 0.05:  # a merge of a sequence: goyaml refuses it
            name, target = rng.choice(anchors)
            node.kids += [Node("scalar", "<<", merge=True), Node("alias", target=target)]
            texts.append("<<: *" + name)
        put("m%d" % i, "&m%d {%s}" % (i, ", ".join(texts)), node)
        maps.append(("m%d" % i, node))
    anchors += maps
    for j in range(rng.randint(1, 4)):
        refs = [rng.choice(anchors) for _ in range(rng.randint(1, rng.choice([10, 40, 120, 400])))]
        put("u%d" % j, "[%s]" % ",".join("*" + n for n, _ in refs),
            Node("seq", kids=[Node("alias", target=t) for _, t in refs]))
    return "\n".join(lines) + "\n", root


def test_alias_bound_matches_goyaml(tmp_path):
    """atrest's verdict (replayed from per-node counts, never expanding) equals the full
    expansion's on random documents: excessive aliasing, a bad merge, or neither."""
    rng = random.Random(20191125)  # fixed: a failure names its document
    f = tmp_path / "doc.yaml"
    seen = {}
    for i in range(200):
        text, tree = random_document(rng)
        want = goyaml_verdict(tree)
        f.write_text(text)
        out = lint(f).stdout.decode()
        got = next((e for e in ("document contains excessive aliasing",
                                "map merge requires map or sequence of maps as the value")
                    if "error converting YAML to JSON: yaml: " + e in out), "ok")
        assert got == want, "document %d:\n%s\natrest: %s" % (i, text, out)
        seen[want] = seen.get(want, 0) + 1
    print("verdicts:", seen)
    assert seen.get("ok", 0) > 30 and seen.get("document contains excessive aliasing", 0) > 30
