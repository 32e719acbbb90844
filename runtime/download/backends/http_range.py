"""Ranged GETs over HTTP with aiohttp, shared by the HTTPS, HuggingFace and ModelScope backends, with failures
classified: connection problems, timeouts, 429 and 5xx are transient (retried; 429 and a 503 with Retry-After count
as throttling, and their Retry-After is passed on); other statuses are final and say why. Messages are one line and
name the status or the host, never a header value such as a token."""

from __future__ import annotations

import email.utils
import http.client
import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from http import HTTPStatus
from urllib.parse import urlsplit

import aiohttp

from runtime.errors import DownloadError, RetryableError

READ_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
_CUT_BODY = http.client.IncompleteRead | http.client.BadStatusLine | ssl.SSLEOFError  # http.client: dropped reads


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=READ_TIMEOUT,
        connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=300),
        auto_decompress=False,  # byte ranges refer to the stored bytes
        trust_env=True,  # HTTPS_PROXY and friends
    )


def status_text(status: int) -> str:
    """'503 Service Unavailable' (or just the number for a status without a standard phrase)."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def status_error(status: int, what: str, headers: Mapping[str, str] | None = None) -> DownloadError:
    if status in (401, 403):
        return DownloadError(
            f"{what}: access denied (HTTP {status}); check the token or keys", reason="unauthorized", status=403
        )
    if status == 404:
        return DownloadError(f"{what}: not found (HTTP 404)", reason="not_found", status=404)
    if status == 429 or status >= 500:
        retry_after = parse_retry_after((headers or {}).get("Retry-After"))
        hint = f" (Retry-After {retry_after:g}s)" if retry_after is not None else ""
        throttled = status == 429 or (status == 503 and retry_after is not None)
        return RetryableError(f"{what}: HTTP {status_text(status)}{hint}", throttled=throttled, retry_after=retry_after)
    return DownloadError(f"{what}: HTTP {status_text(status)}", reason="http_status", status=502)


def connection_error(exc: BaseException, url: str, what: str) -> RetryableError:
    """A one-line description of a failed connection or read, from aiohttp or from http.client (blocking_http.py):
    which host, and what happened."""
    host = urlsplit(url).hostname or url
    if isinstance(exc, aiohttp.ClientConnectorDNSError | socket.gaierror):
        return RetryableError(f"{what}: cannot resolve host {host}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else "cannot connect"
        return RetryableError(f"{what}: cannot connect to {host}: {reason.lower()}")
    if isinstance(exc, ConnectionRefusedError):
        return RetryableError(f"{what}: cannot connect to {host}: connection refused")
    if isinstance(exc, TimeoutError):
        return RetryableError(f"{what}: no data from {host} for {READ_TIMEOUT.sock_read:g}s")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError | ConnectionError | _CUT_BODY):
        return RetryableError(f"{what}: connection to {host} dropped mid-transfer")
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return RetryableError(f"{what}: {type(exc).__name__} from {host}" + (f": {detail}" if detail else ""))


async def read_range(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], start: int, end: int, what: str
) -> AsyncIterator[bytes]:
    """Bytes [start, end) of `url`. A server that ignores Range is handled by skipping to `start`."""
    request_headers = {**headers, "Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
    try:
        async with session.get(url, headers=request_headers) as response:
            if response.status not in (200, 206):
                raise status_error(response.status, what, response.headers)
            async for chunk in stream_range(response, start, end, what):
                yield chunk
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
        raise connection_error(exc, url, what) from None


async def stream_range(
    response: aiohttp.ClientResponse, start: int, end: int, what: str, total: int | None = None
) -> AsyncIterator[bytes]:
    """Bytes [start, end) from a 200 (the whole body: skipped to `start`) or 206 answer to a ranged GET.

    A 206 for another range is retried; with `total` (the size the listing gave), a body or Content-Range that
    announces another size is an error that says so (the object changed, or the listing is stale)."""
    content_range = parse_content_range(response.headers.get("Content-Range"))
    if response.status == 206:
        if content_range is None or content_range[0] != start:
            shown = response.headers.get("Content-Range", "none")
            raise RetryableError(f"{what}: asked for bytes {start}-{end - 1}, got Content-Range {shown}")
        announced = content_range[2]
        skip = 0
    else:
        length = response.headers.get("Content-Length", "")
        announced = int(length) if length.isdigit() else None
        skip = start  # the whole file came back
    if total is not None and announced is not None and announced != total:
        raise DownloadError(f"{what}: the source has {announced} bytes, the listing says {total}", reason="size")
    remaining = end - start
    async for chunk in response.content.iter_any():  # as received: no join into fixed-size chunks (a copy)
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


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """(first, last, total or None for `*`) from `bytes first-last/total`, or None."""
    if not value or not value.startswith("bytes "):
        return None
    span, _, size = value[6:].strip().partition("/")
    first, _, last = span.partition("-")
    if not (first.isdigit() and last.isdigit()) or not (size.isdigit() or size == "*"):
        return None
    return int(first), int(last), int(size) if size.isdigit() else None
