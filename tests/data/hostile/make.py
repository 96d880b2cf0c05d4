#!/usr/bin/python3
"""The hostile desired-file corpus: bad EncryptionConfiguration files the agent must refuse.

Nothing here is committed as a data file: the cases are written out at test time (so the repo
stays small, the huge and binary ones included, and every key in them is fresh). Each case
has a name; tests/data/hostile/expect.tsv holds, per name, the line:col and a substring of the
first error the loader reports (the agent's /status desired.error and `atrest lint` stdout).

    make.py OUTDIR          write every "file" case to OUTDIR/<name> and OUTDIR/manifest.json

As a module: generate(outdir, newkey) -> [{"name", "kind", "path"}]; newkey(n) returns n fresh
random bytes (the tests pass their Keys registry, so the leak scanner knows every key).

Kinds: "file" (the bytes at path are the desired file), and the filesystem cases the test sets
up itself: "dir", "symlink-self", "symlink-pair", "symlink-dangling", "symlink-dir", "fifo",
"socket", "devnull", "unreadable", "writeonly", "vanished", "rewritten" (rewritten in place
while the agent reads it; path holds the bytes left at the end).
"""
import base64
import json
import os
import sys

HEAD = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
LIMIT = 4 << 20          # agent/effective.h AR_DESIRED_MAX_BYTES

FS_KINDS = ["dir", "symlink-self", "symlink-pair", "symlink-dangling", "symlink-dir", "fifo",
            "socket", "devnull", "unreadable", "writeonly", "vanished", "rewritten"]


def _cases(newkey):
    def k(n=32):
        return base64.b64encode(newkey(n)).decode()

    def prov(ptype, secret, name="k1"):
        return ("resources:\n  - resources:\n      - secrets\n    providers:\n"
                "      - %s:\n          keys:\n            - name: %s\n"
                "              secret: %s\n" % (ptype, name, secret))

    def good():
        return HEAD + prov("aescbc", k())

    def js(doc):
        return json.dumps(doc, indent=1)

    def jdoc(resources):
        return {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
                "resources": resources}

    def jaescbc(secret):
        return [{"resources": ["secrets"], "providers": [
            {"aescbc": {"keys": [{"name": "k1", "secret": secret}]}}]}]

    c = {}
    # ---- malformed YAML
    c["yaml-flow-seq-unclosed"] = HEAD + "resources:\n  - resources: [secrets\n"
    c["yaml-flow-map-unclosed"] = HEAD + "resources:\n  - {resources: [secrets], providers: [\n"
    c["yaml-stray-bracket"] = HEAD + "resources: ]\n"
    c["yaml-bad-indent"] = HEAD + "resources:\n  - resources:\n      - secrets\n   providers: []\n"
    c["yaml-tab-indent"] = HEAD + "resources:\n\t- resources: [secrets]\n"
    c["yaml-dquote-unterminated"] = HEAD + 'resources:\n  - resources: ["secrets]\n'
    c["yaml-squote-unterminated"] = HEAD + "resources:\n  - resources: ['secrets]\n"
    c["yaml-map-in-scalar"] = "apiVersion: a: b\n" + "kind: EncryptionConfiguration\n"
    c["yaml-seq-after-map"] = HEAD + "- resources: [secrets]\n"
    c["yaml-bad-escape"] = HEAD + 'resources:\n  - resources: ["\\q"]\n'
    c["yaml-undefined-alias"] = HEAD + "resources: *nope\n"
    c["yaml-bad-directive"] = "%YAML 2.0\n---\n" + good()
    c["yaml-only-comment"] = "# nothing here\n"
    c["yaml-only-doc-marker"] = "---\n"
    c["yaml-scalar-doc"] = "hello\n"
    c["yaml-seq-doc"] = "- a\n- b\n"
    c["yaml-null-doc"] = "null\n"
    c["yaml-complex-key"] = HEAD + "? [a, b]\n: c\n"
    c["yaml-empty-key"] = HEAD + ": x\n"
    c["yaml-bom-midfile"] = HEAD + "\ufeffresources: []\n"
    c["yaml-crlf-short-key"] = (HEAD + prov("aescbc", k(20))).replace("\n", "\r\n")
    c["yaml-tag-int-bad"] = HEAD + "resources: !!int abc\n"
    c["yaml-tag-binary"] = HEAD + "resources: !!binary AAAA\n"
    c["yaml-anchor-no-node"] = HEAD + "resources: &a\n  - ]\n"
    c["yaml-block-scalar-bad"] = HEAD + "resources: |x\n  a\n"
    c["yaml-truncated-mid-key"] = good()[:-30]
    c["yaml-first-doc-bad"] = HEAD + "resources: [\n---\n" + good()
    # ---- malformed and mistyped JSON
    g = jdoc(jaescbc(k()))
    c["json-unclosed-object"] = js(g)[:-1]
    c["json-unclosed-string"] = '{"apiVersion": "apiserver.config.k8s.io/v1, "kind": 1}\n'
    c["json-unquoted-garbage"] = '{"apiVersion": apiserver.config.k8s.io/v1 "x"}\n'
    c["json-array-top"] = "[]\n"
    c["json-string-top"] = '"EncryptionConfiguration"\n'
    c["json-number-top"] = "42\n"
    c["json-resources-string"] = js(jdoc("secrets"))
    c["json-resources-null"] = js(jdoc(None))
    c["json-providers-object"] = js(jdoc([{"resources": ["secrets"], "providers": {}}]))
    c["json-duplicate-key"] = js(g)[:-2] + ',\n "kind": "EncryptionConfiguration"\n}\n'
    c["json-deep-arrays"] = '{"resources": ' + "[" * 200 + "]" * 200 + "}\n"
    c["json-unknown-field"] = js(dict(g, extra={"a": 1}))
    c["json-bad-unicode-escape"] = '{"apiVersion": "\\u12", "kind": "x"}\n'
    c["json-key-short"] = js(jdoc(jaescbc(k(8))))
    c["json-key-bad-base64"] = js(jdoc(jaescbc("%%%%")))
    c["json-secret-number"] = js(jdoc(jaescbc(12345)))
    c["json-name-number"] = js(jdoc([{"resources": ["secrets"], "providers": [
        {"aescbc": {"keys": [{"name": 7, "secret": k()}]}}]}]))
    c["json-keys-null"] = js(jdoc([{"resources": ["secrets"], "providers": [
        {"aescbc": {"keys": None}}]}]))
    c["json-comma-missing"] = js(g).replace('",\n', '"\n', 1)
    # ---- wrong types
    c["type-apiversion-int"] = "apiVersion: 1\nkind: EncryptionConfiguration\nresources: []\n"
    c["type-kind-list"] = "apiVersion: apiserver.config.k8s.io/v1\nkind: [a]\nresources: []\n"
    c["type-resources-map"] = HEAD + "resources: {a: b}\n"
    c["type-resources-scalar"] = HEAD + "resources: secrets\n"
    c["type-rule-scalar"] = HEAD + "resources:\n  - secrets\n"
    c["type-rule-resources-scalar"] = HEAD + "resources:\n  - resources: secrets\n" \
        "    providers:\n      - identity: {}\n"
    c["type-providers-map"] = HEAD + "resources:\n  - resources: [secrets]\n" \
        "    providers: {identity: {}}\n"
    c["type-provider-scalar"] = HEAD + "resources:\n  - resources: [secrets]\n" \
        "    providers:\n      - aescbc\n"
    c["type-aescbc-list"] = HEAD + "resources:\n  - resources: [secrets]\n" \
        "    providers:\n      - aescbc: []\n"
    c["type-keys-map"] = HEAD + "resources:\n  - resources: [secrets]\n" \
        "    providers:\n      - aescbc:\n          keys: {name: k1}\n"
    c["type-key-scalar"] = HEAD + "resources:\n  - resources: [secrets]\n" \
        "    providers:\n      - aescbc:\n          keys:\n            - k1\n"
    c["type-secret-bool"] = HEAD + prov("aescbc", "true")
    c["type-secret-list"] = HEAD + prov("aescbc", "[a, b]")
    c["type-identity-list"] = HEAD + "resources:\n  - resources: [secrets]\n" \
        "    providers:\n      - identity: []\n"
    c["type-identity-scalar"] = HEAD + "resources:\n  - resources: [secrets]\n" \
        "    providers:\n      - identity: yes\n"
    kms = HEAD + "resources:\n  - resources: [secrets]\n    providers:\n      - kms:\n" \
        "          apiVersion: v2\n          name: vault\n" \
        "          endpoint: unix:///tmp/kms.sock\n"
    c["type-kms-timeout-word"] = kms + "          timeout: soon\n"
    c["type-kms-timeout-number"] = kms + "          timeout: 3\n"
    c["type-kms-cachesize-float"] = kms.replace("v2", "v1") + "          cachesize: 1.5\n"
    c["type-kms-cachesize-huge"] = kms.replace("v2", "v1") + \
        "          cachesize: 99999999999999999999999\n"
    c["type-kms-name-map"] = kms.replace("name: vault", "name: {a: b}")
    # ---- duplicate fields
    c["dup-apiversion"] = HEAD + "apiVersion: apiserver.config.k8s.io/v1\nresources: []\n"
    c["dup-resources"] = good() + "resources: []\n"
    c["dup-key-name"] = (HEAD + prov("aescbc", k())).replace(
        "            - name: k1\n", "            - name: k1\n              name: k2\n")
    c["dup-secret"] = HEAD + prov("aescbc", k()) + "              secret: %s\n" % k()
    c["dup-provider-type"] = HEAD + "resources:\n  - resources: [secrets]\n    providers:\n" \
        "      - identity: {}\n        identity: {}\n"
    c["dup-keys-field"] = (HEAD + prov("aescbc", k())).replace(
        "          keys:\n", "          keys: []\n          keys:\n")
    c["dup-case-fold"] = HEAD + "Kind: EncryptionConfiguration\nresources: []\n"
    # ---- bad base64
    for name, s in [("bang", "'!!notbase64!!'"), ("short-pad", "abc"),
                    ("inner-space", "'YWJj ZGVm'"),
                    ("urlsafe", "'-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_8='"),
                    ("pad-only", "'===='"), ("data-after-pad", "'AAAA=AAA'"),
                    ("unicode", "'ÄÖÜß'"), ("empty", "''")]:
        c["b64-" + name] = HEAD + prov("aescbc", s)
    # ---- wrong key lengths
    for ptype, n in [("aescbc", 1), ("aescbc", 15), ("aescbc", 33), ("aescbc", 64),
                     ("aesgcm", 8), ("aesgcm", 31), ("secretbox", 16), ("secretbox", 24),
                     ("secretbox", 33)]:
        c["len-%s-%d" % (ptype, n)] = HEAD + prov(ptype, k(n))
    # ---- NUL and control bytes, invalid UTF-8 (bytes)
    gb = good().encode()
    c["nul-first"] = b"\0" + gb
    c["nul-in-value"] = gb.replace(b"EncryptionConfiguration", b"Encryption\0Configuration")
    c["nul-in-key-name"] = gb.replace(b"name: k1", b"name: k\0")
    c["nul-trailing"] = gb + b"\0"
    c["nul-only"] = b"\0" * 4096
    c["ctl-escape"] = gb.replace(b"name: k1", b"name: k\x1b[31m")
    c["ctl-del"] = gb.replace(b"name: k1", b"name: k\x7f")
    c["ctl-bell-comment"] = b"# \x07\n" + gb
    c["utf8-ff"] = gb.replace(b"name: k1", b"name: k\xff")
    c["utf8-truncated"] = gb.replace(b"name: k1", b"name: k\xc3")
    c["utf8-overlong"] = gb.replace(b"name: k1", b"name: k\xc0\xaf")
    c["utf8-surrogate"] = gb.replace(b"name: k1", b"name: k\xed\xa0\x80")
    c["utf8-f5"] = gb.replace(b"name: k1", b"name: k\xf5\x80\x80\x80")
    c["utf8-in-comment"] = b"# \xfe\xfe\n" + gb
    c["utf16-bom"] = b"\xff\xfe" + gb
    c["binary-random"] = bytes((i * 73 + 41) % 256 for i in range(8192))
    # ---- deep nesting
    c["deep-flow-seq"] = HEAD + "resources: " + "[" * 100 + "]" * 100 + "\n"
    c["deep-flow-map"] = HEAD + "resources: " + "{a: " * 100 + "b" + "}" * 100 + "\n"
    c["deep-flow-33"] = HEAD + "resources: " + "[" * 33 + "]" * 33 + "\n"
    c["deep-block-seq"] = HEAD + "resources:\n" + "".join(
        "  " * i + "-\n" for i in range(60)) + "  " * 60 + "- x\n"
    c["deep-block-map"] = HEAD + "resources:\n" + "".join(
        "  " * (i + 1) + "a%d:\n" % i for i in range(60)) + "  " * 61 + "x: y\n"
    c["deep-unclosed-100k"] = HEAD + "resources: " + "[" * 100000 + "\n"
    merges = "".join("m%d: &m%d {<<: *m%d, v%d: 1}\n" % (i, i, i - 1, i) for i in range(1, 40))
    c["deep-merge-chain"] = "m0: &m0 {v0: 0}\n" + merges + HEAD + "resources: []\n"
    # ---- anchors and aliases that expand
    laughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, ch in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        laughs.append("%s: &%s [%s]" % (ch, ch, ",".join(["*" + prev] * 9)))
    c["alias-billion-laughs"] = "\n".join(laughs) + "\n" + HEAD + "resources: []\n"
    c["alias-laughs-in-resources"] = HEAD + "x: &x [a, a, a, a, a, a, a, a, a, a]\n" + "".join(
        "x%d: &x%d [%s]\n" % (i, i, ",".join(["*x" if i == 1 else "*x%d" % (i - 1)] * 10))
        for i in range(1, 8)) + "resources: *x7\n"
    c["alias-self"] = HEAD + "resources: &r [*r]\n"
    c["alias-merge-seq"] = HEAD + "s: &s [a]\nresources:\n  - <<: *s\n"
    c["alias-merge-scalar"] = HEAD + "s: &s hello\nresources:\n  - <<: *s\n"
    c["alias-merge-sets-twice"] = HEAD + "resources:\n" \
        "  - &p {resources: [secrets], providers: [{identity: {}}]}\n" \
        "  - <<: *p\n    resources: [configmaps]\n"
    c["alias-bad-key-reused"] = HEAD + "resources:\n  - resources: [secrets]\n    providers:\n" \
        "      - &p {aescbc: {keys: [{name: k1, secret: %s}]}}\n" \
        "  - resources: [configmaps]\n    providers:\n      - *p\n" % k(7)
    wide = "w: &w [" + ",".join(["x"] * 2000) + "]\n" + "v: [" + ",".join(["*w"] * 2000) + "]\n"
    c["alias-wide-fanout"] = wide + HEAD + "resources: []\n"
    # ---- validation (kube-apiserver's rules) on otherwise well-formed files
    c["val-no-resources"] = HEAD + "resources: []\n"
    c["val-no-providers"] = HEAD + "resources:\n  - resources: [secrets]\n    providers: []\n"
    c["val-kind-wrong"] = good().replace("kind: EncryptionConfiguration", "kind: Secret")
    c["val-apiversion-v2"] = good().replace("config.k8s.io/v1", "config.k8s.io/v2")
    c["val-kms-no-endpoint"] = HEAD + "resources:\n  - resources: [secrets]\n    providers:\n" \
        "      - kms:\n          apiVersion: v2\n          name: vault\n"
    c["val-kms-v2-cachesize"] = kms + "          cachesize: 10\n"
    c["val-capital-resource"] = HEAD + "resources:\n  - resources: [Secrets]\n    providers:\n" \
        "      - identity: {}\n"
    c["val-kms-colon-name"] = kms.replace("name: vault", "name: a:b")
    # ---- keys where error messages quote text (the leak scan reads every log and response)
    c["leak-secret-typo-flow"] = HEAD + "resources:\n  - resources: [secrets]\n    providers:\n" \
        "      - aescbc: {keys: [{name: k1, secret:%s}]}\n" % k()
    c["leak-secret-typo-space"] = HEAD + "resources:\n  - resources: [secrets]\n    providers:\n" \
        "      - aescbc: {keys: [{name: k1, secret %s}]}\n" % k()
    c["leak-key-as-field"] = HEAD + prov("aescbc", k()) + "              %s: x\n" % k()
    # ---- huge files (the agent reads at most 4 MiB)
    pad = ("# " + "x" * 1021 + "\n").encode()          # 1 KiB lines
    c["huge-over-limit"] = pad * ((LIMIT // len(pad)) + 1) + gb
    c["huge-limit-plus-one"] = gb + b"#" * (LIMIT + 1 - len(gb) - 1) + b"\n"
    c["huge-long-scalar"] = HEAD.encode() + b"resources:\n  - resources: [" + \
        b"A" * (3 << 20) + b"]\n    providers: [{identity: {}}]\n"
    c["huge-many-keys-bad"] = HEAD.encode() + (
        "resources:\n  - resources: [secrets]\n    providers:\n      - aescbc:\n"
        "          keys:\n").encode() + b"".join(
        ("            - name: k%d\n              secret: %s\n" % (i, "QUJD")).encode()
        for i in range(20000))
    c["huge-many-rules-dup"] = HEAD.encode() + b"resources:\n" + \
        b"  - resources: [secrets]\n    providers: [{identity: {}}]\n" * 40000
    c["huge-comments-then-bad"] = pad * 3500 + (HEAD + prov("aescbc", k(5))).encode()
    return c


def generate(outdir, newkey=os.urandom):
    """Write every case below outdir; return the manifest (also written as manifest.json)."""
    os.makedirs(outdir, exist_ok=True)
    out = []
    for name, data in _cases(newkey).items():
        p = os.path.join(outdir, name)
        with open(p, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        out.append({"name": name, "kind": "file", "path": p})
    # filesystem cases: the bytes are a valid-looking file the test puts behind the obstacle
    keyed = (HEAD + "resources:\n  - resources: [secrets]\n    providers:\n      - aesgcm:\n"
             "          keys:\n            - name: k1\n              secret: %s\n")
    for kind in FS_KINDS:
        p = os.path.join(outdir, "fs-" + kind)
        with open(p, "w") as f:
            # "rewritten" ends on a 5-byte key (invalid); the others hold a valid config that
            # must still never be read through the obstacle
            f.write(keyed % base64.b64encode(newkey(5 if kind == "rewritten" else 32)).decode())
        out.append({"name": "fs-" + kind, "kind": kind, "path": p})
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def load_expect(path=None):
    """expect.tsv -> {name: (linecol, substring, lint_substring)}; '#' lines are comments."""
    path = path or os.path.join(os.path.dirname(os.path.abspath(__file__)), "expect.tsv")
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t")
            assert len(parts) in (3, 4), "bad expect.tsv line %r" % line
            assert parts[0] not in out, "case %s twice in expect.tsv" % parts[0]
            out[parts[0]] = (parts[1], parts[2], parts[3] if len(parts) == 4 else parts[2])
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make.py OUTDIR")
    m = generate(sys.argv[1])
    print("%d cases in %s" % (len(m), sys.argv[1]))
