"""The block hash Kthena's router looks up: SHA-256 of each block's token ids, the first 8 bytes, top bit cleared.

Byte for byte what the router's `computeStandardizedHash` and Kthena's sidecar compute: every token as a uint32
big-endian, SHA-256 over the block, the first 8 digest bytes as a big-endian integer `& 0x7FFF_FFFF_FFFF_FFFF`, an
empty block hashing to 0. The hash is per block, not chained: no parent, model, LoRA or salt goes in.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from hashlib import sha256

MASK = 0x7FFF_FFFF_FFFF_FFFF
_UINT32 = "I" if array("I").itemsize == 4 else "L"
_SWAP = sys.byteorder == "little"


class TokenError(ValueError):
    """Token ids that are not uint32 integers (a bigram pair, a negative id...), or that do not split into blocks."""


def standardized_hash(tokens: Sequence[int]) -> int:
    """The router's hash of one block of token ids."""
    if not tokens:
        return 0
    return content_hashes(tokens, 1)[0]


def content_hashes(tokens: Sequence[int], blocks: int, chunk: int | None = None) -> list[int]:
    """The hash of each of `blocks` equal blocks of `tokens`, or of each `chunk` tokens of every block (the router's
    block size when it is smaller than the engine's: block i then gives ceil(size / chunk) hashes)."""
    total = len(tokens)
    if blocks <= 0 or total == 0 or total % blocks:
        raise TokenError(f"{total} token ids do not split into {blocks} equal blocks")
    try:
        packed = array(_UINT32, tokens)
    except (TypeError, OverflowError):
        raise TokenError("token ids must be integers from 0 to 2**32-1") from None
    if _SWAP:
        packed.byteswap()
    raw = memoryview(packed).cast("B")
    size = total // blocks
    step = 4 * (chunk if chunk and chunk < size else size)
    hashes = []
    if step == 4 * size:
        for start in range(0, 4 * total, step):
            hashes.append(int.from_bytes(sha256(raw[start : start + step]).digest()[:8], "big") & MASK)
        return hashes
    block_bytes = 4 * size
    for block_start in range(0, 4 * total, block_bytes):
        block_end = block_start + block_bytes
        for start in range(block_start, block_end, step):
            piece = raw[start : min(start + step, block_end)]
            hashes.append(int.from_bytes(sha256(piece).digest()[:8], "big") & MASK)
    return hashes
