"""The one HTTP client to the engine: its session, its URLs, its auth header, bounded reads, health and JSON calls.

Metrics scraping, the engine's identity (version), readiness and each engine's LoRA API all go through here, so
the engine's Bearer token (`--engine-api-key`) is attached in one place and never shown: URLs in messages carry no
user or password (`public_url`). Every answer is read with a ceiling (`bounded_read`): a misbehaving engine that
answers 50 MB cannot exhaust the sidecar's memory.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
from yarl import URL

from runtime.engine.bounded_read import BodyTooLarge, read_bounded
from runtime.errors import EngineError
from runtime.urls import public_url

SCRAPE_ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"


def is_loopback(url: str) -> bool:
    host = URL(url).host or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_exception(exc: BaseException) -> str:
    """An exception as one short line (the first of its message, or its type's name)."""
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


class EngineClient:
    """Open with `open()` when the server starts and `close()` when it stops (one aiohttp session, keep-alive)."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._auth = f"Bearer {api_key}" if api_key else None
        self._session: aiohttp.ClientSession | None = None
        # On loopback compression only costs the engine CPU; across a network it saves bytes.
        self.scrape_headers = {
            "Accept": SCRAPE_ACCEPT,
            "Accept-Encoding": "identity" if is_loopback(base_url) else "gzip",
            "User-Agent": "airuntime",
            **self.auth_header(),
        }

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=16, keepalive_timeout=30, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the engine client opens when the server starts")
        return self._session

    def url(self, path: str) -> str:
        return self.base_url + path

    def public(self, path: str = "") -> str:
        """The engine URL as it may appear in logs, errors and answers."""
        return public_url(self.base_url + path)

    def auth_header(self, override: str | None = None) -> dict[str, str]:
        """`Authorization` for the engine: the caller's own (forwarded), else `--engine-api-key`, else none."""
        value = override or self._auth
        return {"Authorization": value} if value else {}

    @asynccontextmanager
    async def stream(self, path: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """A GET with the scrape headers whose body the caller reads as it arrives (the metrics scrape)."""
        async with self.session.get(self.url(path), headers=self.scrape_headers, allow_redirects=True) as response:
            yield response

    async def probe(self, path: str, timeout: float | None = None) -> tuple[bool, str]:
        """(healthy, reason) from one GET of the engine's health endpoint; never raises."""
        timeout = self.timeout if timeout is None else timeout
        shown = self.public(path)
        try:
            async with asyncio.timeout(timeout), self.session.get(self.url(path), headers=self.auth_header()) as answer:
                await read_bounded(answer)
                if answer.status == 200:
                    return True, "engine healthy"
                return False, f"engine health check {shown} answered HTTP {answer.status}"
        except TimeoutError:
            return False, f"engine health check {shown} timed out after {timeout:g}s"
        except BodyTooLarge as exc:
            return False, f"engine health check {shown}: {exc}"
        except (aiohttp.ClientError, OSError) as exc:
            return False, f"engine health check {shown} failed: {describe_exception(exc)}"

    async def get_json(self, path: str) -> Any:
        """The JSON document of a 200 answer, or None for anything else (a version probe: failures are quiet)."""
        try:
            async with asyncio.timeout(self.timeout), self.session.get(self.url(path), headers=self.auth_header()) as r:
                if r.status != 200:
                    return None
                return orjson.loads(await read_bounded(r))
        except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError, BodyTooLarge, RuntimeError):
            return None  # RuntimeError: the client closed under a late version probe at shutdown

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None, auth: str | None, timeout: float
    ) -> tuple[int, Any]:
        """(status, decoded answer) of a management call (a LoRA load); EngineError when there is no answer."""
        headers = {"Content-Type": "application/json", **self.auth_header(auth)}
        data = orjson.dumps(body) if body is not None else None
        try:
            async with asyncio.timeout(timeout):
                async with self.session.request(method, self.url(path), data=data, headers=headers) as response:
                    raw = await read_bounded(response)
                    status = response.status
        except TimeoutError:
            raise EngineError(f"engine did not answer {path} within {timeout:g}s", 504) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise EngineError(f"engine unreachable at {self.public()}: {type(exc).__name__}", 502) from None
        except BodyTooLarge as exc:
            raise EngineError(f"engine answer to {path} rejected: {exc}", 502) from None
        try:
            payload: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            payload = raw.decode("utf-8", "replace")[:500]
        return status, payload
