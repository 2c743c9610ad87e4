#!/usr/bin/env python3
"""Cross-check the two CID oracles (see scripts/README.md).

Builds a scratch tree (files of boundary sizes, nested directories,
symlinks, dotfiles, directories on both sides of Kubo's HAMT threshold),
then checks that scripts/jsipfs-oracle.mjs (v0) agrees with real Kubo
(scripts/kubo-oracle.py) on every entry, and that the known vectors hold.

  scripts/oracle-crosscheck.py [--quick]     (--quick: no 45-91 MB files,
                                              no 10k-entry directories)
Exit status 0 if everything agrees. Run it inside
`unshare -n sh -c 'ip link set lo up; ...'` for a no-network guarantee.
"""

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
C = 262144

KNOWN = [
    # (relative path, mode, expected CID)
    ("hello", "v0", "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"),
    ("hello", "v1", "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"),
    ("hello-no-newline", "v1", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"),
    ("empty", "v0", "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"),
    ("empty", "v1", "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"),
    ("emptydir", "v0", "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"),
    ("emptydir", "v1", "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"),
]


def build(root, quick):
    rnd = random.Random(42)

    def write(rel, data):
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)

    write("hello", b"hello world\n")
    write("hello-no-newline", b"hello world")
    write("empty", b"")
    os.makedirs(os.path.join(root, "emptydir"))
    sizes = [1, C - 1, C, C + 1, 3 * C]
    if not quick:
        sizes += [174 * C, 174 * C + 1, 2 * 174 * C + 12345]
    for n in sizes:
        write(f"rand-{n}", rnd.randbytes(n))
    write("nested/a/b/c/deep.txt", b"deep\n")
    write("nested/a/x", rnd.randbytes(C + 7))
    for name in ["Z", "a.b", "a-b", "\u00fcn\u00efc\u00f8d\u00e9", ".hidden", ".git/config"]:
        write(f"nested/{name}", name.encode() + b"\n")
    os.makedirs(os.path.join(root, "nested/empty/deeper"))
    os.symlink("a/b/c/deep.txt", os.path.join(root, "nested/link"))
    os.symlink("does-not-exist", os.path.join(root, "nested/dangling"))
    os.symlink("/etc/hostname", os.path.join(root, "nested/outside"))
    # 30-char names + 34-byte CIDv0 = 64 bytes per entry: 4095 entries stay
    # a flat directory, 4096 (exactly 256 KiB) become a HAMT shard.
    # Subdirectories only in the bigger ones: Kubo takes 20-45 s on a HAMT
    # directory of 4096-4110 entries that holds subdirectories (see README).
    counts = [4095, 4096, 4200] if quick else [4095, 4096, 4200, 10000]
    for n in counts:
        d = os.path.join(root, f"dir-{n}")
        os.makedirs(d)
        for i in range(n):
            name = "f%029d" % i
            if i % 13 == 0 and n >= 4200:
                os.makedirs(os.path.join(d, name))
                open(os.path.join(d, name, "x"), "w").write(str(i))
            elif i % 17 == 0:
                os.symlink(f"target-{i}", os.path.join(d, name))
            else:
                open(os.path.join(d, name), "w").write(str(i))


class Proc:
    def __init__(self, cmd):
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        line = self.p.stderr.readline().strip()
        if line != "ready":
            sys.exit(f"{cmd}: did not start: {line} {self.p.stderr.read()}")

    def ask(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def main():
    quick = "--quick" in sys.argv
    root = tempfile.mkdtemp(prefix="shoal-crosscheck-")
    try:
        build(root, quick)
        kubo = Proc([sys.executable, os.path.join(HERE, "kubo-oracle.py")])
        js = Proc(["node", os.path.join(HERE, "jsipfs-oracle.mjs")])
        bad = 0
        for rel, mode, want in KNOWN:
            got = js.ask(f"{mode} {os.path.join(root, rel)}")
            if mode == "v0":
                k = kubo.ask(os.path.join(root, rel))
                got = got if got == k else f"{got} (kubo: {k})"
            ok = got == want
            bad += not ok
            print(f"{'ok  ' if ok else 'FAIL'} known  {mode} {rel:22s} {got}")
        for rel in sorted(os.listdir(root)):
            path = os.path.join(root, rel)
            t = time.time()
            k = kubo.ask(path)
            tk = time.time() - t
            t = time.time()
            j = js.ask(f"v0 {path}")
            tj = time.time() - t
            ok = k == j and not k.startswith("error")
            bad += not ok
            print(f"{'ok  ' if ok else 'FAIL'} v0     {rel:25s} kubo {k} ({tk*1e3:.0f} ms)"
                  + ("" if ok else f" js {j}") + f" js {tj*1e3:.0f} ms")
        kubo.close()
        js.close()
        print("all agree" if not bad else f"{bad} disagreement(s)")
        sys.exit(1 if bad else 0)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
