"""Read an HTTP response body with a ceiling: an engine (or anything else) answering 50 MB cannot exhaust memory.

The declared Content-Length is checked before a byte is read; the body is then read in chunks and abandoned the
moment it passes the limit.
"""

from __future__ import annotations

import aiohttp

SMALL_BODY_LIMIT = 1024 * 1024  # health, version and LoRA answers are a few hundred bytes


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.limit = limit


def check_declared_length(response: aiohttp.ClientResponse, limit: int) -> None:
    declared = response.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)


async def read_bounded(response: aiohttp.ClientResponse, limit: int = SMALL_BODY_LIMIT) -> bytes:
    check_declared_length(response, limit)
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
