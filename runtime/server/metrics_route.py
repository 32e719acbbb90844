"""`GET /metrics`: the shared answer of the current scrape (runtime/metrics/answer.py), gzipped on request."""

from __future__ import annotations

from aiohttp import web

from runtime.server.state import SidecarState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header admits gzip: `gzip`, `gzip;q=0.5` or `*` do, `gzip;q=0` does not (a named
    coding overrides `*`)."""
    qualities: dict[str, float] = {}
    for item in header.split(","):
        coding, _, params = item.partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        qualities[coding.strip().lower()] = quality
    for coding in ("gzip", "x-gzip", "*"):
        if coding in qualities:
            return qualities[coding] > 0
    return False


async def metrics_handler(request: web.Request) -> web.Response:
    answer = await SidecarState.of(request).publisher.answer()
    headers = {"Content-Type": CONTENT_TYPE, "Vary": "Accept-Encoding"}
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        gzipped = answer.gzipped
        if gzipped is not None:
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=gzipped, headers=headers)
    return web.Response(body=answer.body, headers=headers)
