"""Writing a response body the way a failing server does, shared by the Hub and ModelScope emulators: in 64 KiB
pieces, optionally stalling once after some bytes, optionally closing the connection after some bytes (the full
Content-Length having been announced)."""

from __future__ import annotations

import asyncio

from aiohttp import web

CHUNK = 64 * 1024


async def write_body(
    request: web.Request,
    response: web.StreamResponse,
    body: bytes | memoryview,
    *,
    cut_after: int | None = None,
    stall_after: int | None = None,
    stall_seconds: float = 0.0,
) -> bool:
    """Send `body` on a prepared `response`; True when all of it went out and the response was finished, False when
    it was cut on purpose or the client went away (a read timeout during a stall, say)."""
    limit = len(body) if cut_after is None else min(len(body), max(cut_after, 0))
    stall_at = stall_after
    position = 0
    try:
        while position < limit:
            chunk_end = min(position + CHUNK, limit)
            if stall_at is not None and position < stall_at < chunk_end:
                chunk_end = stall_at
            await response.write(body[position:chunk_end])
            position = chunk_end
            if stall_at is not None and position >= stall_at:
                await asyncio.sleep(stall_seconds)
                stall_at = None
    except ConnectionResetError:
        return False
    if limit < len(body):
        await asyncio.sleep(0.05)  # let the partial body reach the socket before the close
        if request.transport is not None:
            request.transport.close()
        return False
    await response.write_eof()
    return True
