"""`GET /metrics`: the engine's rewritten exposition followed by the sidecar's own metrics, gzip on request."""

from __future__ import annotations

import zlib

from aiohttp import web

from runtime.server.state import SidecarState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GZIP_MIN_BYTES = 1024


async def metrics_handler(request: web.Request) -> web.Response:
    state = SidecarState.of(request)
    assert state.scraper is not None
    result = await state.scraper.scrape()
    body = result.body + result.own_metrics
    headers = {"Content-Type": CONTENT_TYPE, "Vary": "Accept-Encoding"}
    if len(body) >= GZIP_MIN_BYTES and "gzip" in request.headers.get("Accept-Encoding", ""):
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
        body = compressor.compress(body) + compressor.flush()
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)
