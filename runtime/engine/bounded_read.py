"""Read an HTTP response body with a ceiling: an engine (or anything else) answering 50 MB cannot exhaust memory.

The declared Content-Length is checked before a byte is read; the body is then read in chunks and abandoned the
moment it passes the limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

SMALL_BODY_LIMIT = 1024 * 1024  # health, version and LoRA answers are a few hundred bytes


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.limit = limit


async def iter_bounded(response: aiohttp.ClientResponse, limit: int, chunk: int) -> AsyncIterator[bytes]:
    """The body in chunks of up to `chunk` bytes; BodyTooLarge as soon as it (or its declared length) passes `limit`."""
    declared = response.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    received = 0
    async for piece in response.content.iter_chunked(chunk):
        received += len(piece)
        if received > limit:
            raise BodyTooLarge(limit)
        yield piece


async def read_bounded(response: aiohttp.ClientResponse, limit: int = SMALL_BODY_LIMIT) -> bytes:
    return b"".join([piece async for piece in iter_bounded(response, limit, 64 * 1024)])
