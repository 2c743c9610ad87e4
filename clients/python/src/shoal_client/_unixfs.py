"""Just enough UnixFS, CID and CAR encoding to upload a small file to a node
that predates ``POST /v1/files``: a file below one chunk (256 KiB) is one
dag-pb leaf, whose CIDv0 is the one ``shoal add`` (and Kubo's defaults) give it.
"""

from __future__ import annotations

import hashlib
from typing import Tuple

__all__ = ["CHUNK_SIZE", "varint", "file_leaf", "cid_v0", "base58btc", "single_block_car", "small_file_car"]

#: The importer's chunk size: a smaller file is a single block.
CHUNK_SIZE = 262_144

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, wire: int) -> bytes:
    return varint((num << 3) | wire)


def file_leaf(data: bytes) -> bytes:
    """A dag-pb node holding ``data`` as a UnixFS file (Type=File, Data, filesize)."""
    inner = _field(1, 0) + varint(2)
    if data:
        inner += _field(2, 2) + varint(len(data)) + data
    inner += _field(3, 0) + varint(len(data))
    return _field(1, 2) + varint(len(inner)) + inner


def base58btc(b: bytes) -> str:
    n = int.from_bytes(b, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    pad = len(b) - len(b.lstrip(b"\0"))
    return "1" * pad + out


def cid_v0(block: bytes) -> Tuple[bytes, str]:
    """The CIDv0 of a dag-pb block: its binary form (a sha2-256 multihash) and its text."""
    mh = b"\x12\x20" + hashlib.sha256(block).digest()
    return mh, base58btc(mh)


def single_block_car(cid_bytes: bytes, block: bytes) -> bytes:
    """A CARv1 with one root and its one block."""
    # dag-cbor {"roots": [CID], "version": 1}; keys in length-first order.
    link = b"\x00" + cid_bytes
    if len(link) > 255:
        raise ValueError("cid too long")
    header = (
        b"\xa2"
        + b"\x65roots"
        + b"\x81\xd8\x2a\x58"
        + bytes([len(link)])
        + link
        + b"\x67version\x01"
    )
    section = cid_bytes + block
    return varint(len(header)) + header + varint(len(section)) + section


def small_file_car(data: bytes) -> Tuple[str, bytes]:
    """The CID ``shoal add`` gives ``data`` (below :data:`CHUNK_SIZE`) and a CAR of it."""
    if len(data) >= CHUNK_SIZE:
        raise ValueError(f"a file of {len(data)} bytes is more than one chunk ({CHUNK_SIZE} bytes)")
    block = file_leaf(data)
    mh, text = cid_v0(block)
    return text, single_block_car(mh, block)
