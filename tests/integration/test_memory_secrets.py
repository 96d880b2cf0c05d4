"""Secrets in memory (issue 10): after a full rotation with the re-encrypt pass (one node: a
real etcd, the kube-apiserver simulator, a real agent; key1 -> key2, key1 dropped), read the
live agent's memory (/proc/<pid>/maps + /proc/<pid>/mem, as root) and look for every test
key (raw, base64, hex) and every seeded Secret value (raw, base64).

Reported (MEMSCAN lines): what is found and where ([heap], [stack], anonymous mappings,
file-backed data, and whether the mapping is mlocked, as sodium_malloc's are). Asserted: the
old, pruned key and the Secrets' plaintext are nowhere; the key in use (key2) and the API
server's bearer token live only in locked memory (sodium_malloc'd, crypto/buf.h). The token
check is the regression test of libcurl's wiping allocator (agent/main.c) and M_PERTURB
(agent/daemon.c): with neither, two copies of the token stayed in freed heap (libcurl's
header list and request buffers); with M_PERTURB alone, one copy in one run of two. The scan
itself is checked: it must find key2 (the agent needs it).
"""
import base64
import collections
import os
import re

import pytest

from cluster import TOKEN, keyed_config

SETTLE = ["--settle-seconds", "1"]
SEEDED = 300


def rot(node):
    return node.agent.status()["rotation"]


MAP_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")


def regions(pid):
    """[(start, end, perms, name, locked_kib)] from /proc/<pid>/smaps."""
    out, cur = [], None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            m = MAP_RE.match(line)
            if m:
                cur = [int(m.group(1), 16), int(m.group(2), 16), m.group(3),
                       m.group(4).strip(), 0]
                out.append(cur)
            elif line.startswith("Locked:") and cur is not None:
                cur[4] = int(line.split()[1])
    return out


def label(name):
    if name in ("[heap]", "[stack]"):
        return name
    if not name:
        return "anon"
    if name.startswith("["):
        return name
    return "file:" + os.path.basename(name)


def read_memory(pid):
    """[(label, locked, bytes)] of every readable mapping (vvar/vsyscall left out)."""
    out = []
    with open("/proc/%d/mem" % pid, "rb", buffering=0) as mem:
        for start, end, perms, name, locked in regions(pid):
            if perms[0] != "r" or name in ("[vvar]", "[vsyscall]", "[vdso]"):
                continue
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except OSError:
                continue
            out.append((label(name), locked > 0, data))
    return out


def secret_forms(raw):
    return [("raw", raw), ("base64", base64.b64encode(raw))]


def key_forms(k):
    b = base64.b64encode(k)
    return [("raw", k), ("base64", b), ("hex", k.hex().encode()),
            ("HEX", k.hex().upper().encode())]


def scan(mem, needles):
    """needles: [(what, form, bytes)] -> {(what, form): Counter(region label (+locked))}."""
    found = collections.defaultdict(collections.Counter)
    for lab, locked, data in mem:
        where = lab + (" (mlocked)" if locked else "")
        for what, form, needle in needles:
            n = data.count(needle)
            if n:
                found[(what, form)][where] += n
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's memory needs root")
def test_no_old_key_nor_secret_plaintext_in_memory(make_cluster, keys):
    k1, k2 = keys.new(), keys.new()
    old, new = keyed_config("aescbc", ("key1", k1)), keyed_config("aescbc", ("key2", k2))
    c = make_cluster(n=1, config=old, reload_s=0.2, agent_extra=SETTLE)
    c.wait_loaded()
    c.seed(SEEDED, old)
    c.push(new)
    c.wait(lambda: rot(c.nodes[0])["phase"] == "done" and rot(c.nodes[0])["history"], 120,
           "the rotation to finish")
    h = rot(c.nodes[0])["history"][-1]
    assert h["result"] == "done" and "reencrypt" in h["phases"], h
    c.wait_loaded(new)
    assert set(c.census()) == {"aescbc/key2"}, c.census()   # every Secret went through the pass
    a = c.nodes[0].agent
    mem = read_memory(a.proc.pid)
    total = sum(len(d) for _, _, d in mem)
    needles = [("old key1", f, b) for f, b in key_forms(k1)]
    needles += [("current key2", f, b) for f, b in key_forms(k2)]
    # the API server's bearer token: libcurl copies it into header lists and request buffers
    # it frees unwiped; the agent's libcurl allocator wipes them (agent/main.c)
    needles += [("api token", "raw", TOKEN.encode())]
    secrets = [base64.b64decode(d["v"]) for (r, _, _), d in c.seeded.items() if r == "secrets"]
    assert len(secrets) == SEEDED
    for raw in secrets:
        needles += [("secret", f, b) for f, b in secret_forms(raw)]
    found = scan(mem, needles)
    print("MEMSCAN agent pid %d: %d mappings, %d MiB read, %d needles" % (
        a.proc.pid, len(mem), total >> 20, len(needles)))
    for (what, form), where in sorted(found.items()):
        print("MEMSCAN found %-12s %-6s in %s" % (what, form, dict(where)))
    if not found:
        print("MEMSCAN found nothing")
    assert ("current key2", "raw") in found, "the scan did not find the key in use: it is broken"
    bad = {k: dict(v) for k, v in found.items() if k[0] in ("old key1", "secret")}
    assert not bad, "left in the agent's memory: %r" % bad
    unlocked = {k: dict(v) for k, v in found.items()
                if k[0] in ("current key2", "api token") and any("mlocked" not in w for w in v)}
    assert not unlocked, "the key in use or the token outside locked memory: %r" % unlocked
