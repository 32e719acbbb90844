"""Ranged GETs over HTTP with aiohttp, shared by the HTTPS and HuggingFace backends, with failures classified:
connection problems, timeouts, 429 and 5xx are transient (retried); other statuses are final and say why."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from runtime.download.backends.base import DownloadError, RetryableError

CHUNK = 1024 * 1024
READ_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=READ_TIMEOUT,
        connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=300),
        auto_decompress=False,  # byte ranges refer to the stored bytes
        trust_env=True,  # HTTPS_PROXY and friends
    )


def status_error(status: int, what: str) -> DownloadError:
    if status in (401, 403):
        return DownloadError(f"{what}: access denied (HTTP {status}); check the token or keys", "unauthorized", 403)
    if status == 404:
        return DownloadError(f"{what}: not found (HTTP 404)", "not_found", 404)
    if status == 429 or status >= 500:
        return RetryableError(f"{what}: HTTP {status}")
    return DownloadError(f"{what}: HTTP {status}", "http_status", 502)


async def read_range(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], start: int, end: int, what: str
) -> AsyncIterator[bytes]:
    """Bytes [start, end) of `url`. A server that ignores Range is handled by skipping to `start`."""
    request_headers = {**headers, "Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
    try:
        async with session.get(url, headers=request_headers) as response:
            if response.status == 200:
                skip = start  # the whole file came back
            elif response.status == 206:
                skip = 0
            else:
                raise status_error(response.status, what)
            remaining = end - start
            async for chunk in response.content.iter_chunked(CHUNK):
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk = chunk[skip:]
                    skip = 0
                if len(chunk) >= remaining:
                    yield chunk[:remaining]
                    return
                remaining -= len(chunk)
                yield chunk
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
        raise RetryableError(f"{what}: {type(exc).__name__}: {str(exc)[:200]}") from None
