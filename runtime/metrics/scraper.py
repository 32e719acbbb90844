"""Fetch the engine's /metrics and run it through the rewriter as it arrives; probe the engine's health.

Concurrent `/metrics` requests share one in-flight engine scrape (and its rewritten output), so a burst of
scrapers costs the engine one request. Every failure becomes a reason (`connect`, `timeout`, `http_status`,
`truncated`, `garbage`, `too_large`, `other`) counted in the sidecar's own metrics; a failed scrape yields no engine
lines and `engine_up 0`, never an error page.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from dataclasses import dataclass, field, replace

import aiohttp
from yarl import URL

from runtime.bounded_read import BodyTooLarge, read_bounded
from runtime.config import public_url
from runtime.metrics.identity import EngineIdentity
from runtime.metrics.rewriter import MetricsRewriter, RewriteCache
from runtime.metrics.rules import RuleSet
from runtime.metrics.self_metrics import SidecarMetrics

log = logging.getLogger("airuntime.scrape")

SCRAPE_ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"
READ_CHUNK = 16 * 1024  # small steps: /health never waits behind more than one of them


@dataclass(frozen=True)
class ScrapeResult:
    ok: bool
    body: bytes
    reason: str | None = None
    detail: str = ""
    families_by_engine: Counter[str] = field(default_factory=Counter)
    own_metrics: bytes = b""  # the sidecar's own metrics right after this scrape, shared by coalesced requests


class ScrapeFailure(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def is_loopback(url: str) -> bool:
    host = URL(url).host or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def engine_headers(api_key: str | None, engine_url: str) -> dict[str, str]:
    headers = {
        "Accept": SCRAPE_ACCEPT,
        # On loopback compression only costs the engine CPU; across a network it saves bytes.
        "Accept-Encoding": "identity" if is_loopback(engine_url) else "gzip",
        "User-Agent": "airuntime",
    }
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class EngineScraper:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        engine_url: str,
        metrics_path: str,
        rules: RuleSet,
        keep_raw: bool,
        timeout: float,
        api_key: str | None,
        metrics: SidecarMetrics,
        identity: EngineIdentity,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._session = session
        self._max_bytes = max_bytes
        self._public_url = public_url(engine_url + metrics_path)
        self._identity = identity
        self._url = engine_url + metrics_path
        self._rules = rules
        self._keep_raw = keep_raw
        self._timeout = timeout
        self._headers = engine_headers(api_key, engine_url)
        self._metrics = metrics
        self._inflight: asyncio.Future[ScrapeResult] | None = None
        self._cache = RewriteCache()
        self.last_failure: ScrapeResult | None = None

    async def scrape(self) -> ScrapeResult:
        """The engine's rewritten exposition; joins a scrape already in flight."""
        task = self._inflight
        if task is None:
            task = self._inflight = asyncio.ensure_future(self._scrape_once())
            task.add_done_callback(self._clear_inflight)
        return await asyncio.shield(task)

    def _clear_inflight(self, task: asyncio.Future[ScrapeResult]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _scrape_once(self) -> ScrapeResult:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._fetch_and_rewrite()
        except ScrapeFailure as failure:
            result = ScrapeResult(ok=False, body=b"", reason=failure.reason, detail=failure.detail)
        except TimeoutError:
            result = ScrapeResult(
                ok=False, body=b"", reason="timeout", detail=f"no complete answer within {self._timeout:g}s"
            )
        except aiohttp.ClientPayloadError as exc:
            result = ScrapeResult(ok=False, body=b"", reason="truncated", detail=f"body cut short: {exc}")
        except (aiohttp.ClientConnectionError, OSError) as exc:
            result = ScrapeResult(ok=False, body=b"", reason="connect", detail=_describe(exc))
        except Exception as exc:  # any other failure still yields an answer with engine_up 0
            log.exception("unexpected scrape failure")
            result = ScrapeResult(ok=False, body=b"", reason="other", detail=_describe(exc))
        self._metrics.scrape_duration.observe(time.perf_counter() - started)
        self._metrics.engine_up.set(1 if result.ok else 0)
        self._identity.observe(self._session, result.families_by_engine if result.ok else None)
        if not result.ok:
            assert result.reason is not None
            self._metrics.scrape_errors.labels(result.reason).inc()
            if self.last_failure is None or self.last_failure.reason != result.reason:
                log.warning(
                    "engine scrape failed", extra={"fields": {"reason": result.reason, "detail": result.detail}}
                )
            self.last_failure = result
        elif self.last_failure is not None:
            log.info("engine scrape recovered")
            self.last_failure = None
        return replace(result, own_metrics=self._metrics.render())

    async def _fetch_and_rewrite(self) -> ScrapeResult:
        rewriter = MetricsRewriter(self._rules, keep_raw=self._keep_raw, cache=self._cache)
        async with self._session.get(self._url, headers=self._headers, allow_redirects=True) as response:
            if response.status != 200:
                raise ScrapeFailure("http_status", f"engine answered HTTP {response.status} on {self._public_url}")
            limit = self._max_bytes
            too_large = ScrapeFailure("too_large", f"engine metrics exceed {limit} bytes (--max-scrape-bytes)")
            declared = response.content_length
            if declared is not None and declared > self._max_bytes:
                raise too_large
            received = 0
            async for chunk in response.content.iter_chunked(READ_CHUNK):
                received += len(chunk)
                if received > self._max_bytes:
                    raise too_large
                rewriter.feed(chunk)
                await asyncio.sleep(0)  # let /health and other requests run between chunks
        rewriter.finish()
        if rewriter.invalid_lines:
            self._metrics.invalid_lines.inc(rewriter.invalid_lines)
        if rewriter.sample_lines == 0 and rewriter.invalid_lines > 0:
            raise ScrapeFailure("garbage", f"engine answer has no valid sample line ({rewriter.invalid_lines} invalid)")
        return ScrapeResult(ok=True, body=rewriter.take_bytes(), families_by_engine=rewriter.families_by_engine)


async def probe_health(
    session: aiohttp.ClientSession, url: str, timeout: float, api_key: str | None
) -> tuple[bool, str]:
    """(ready, reason) from one GET of the engine's health endpoint."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    shown = public_url(url)
    try:
        async with asyncio.timeout(timeout), session.get(url, headers=headers) as response:
            await read_bounded(response)
            if response.status == 200:
                return True, "engine healthy"
            return False, f"engine health check {shown} answered HTTP {response.status}"
    except TimeoutError:
        return False, f"engine health check {shown} timed out after {timeout:g}s"
    except BodyTooLarge as exc:
        return False, f"engine health check {shown}: {exc}"
    except (aiohttp.ClientError, OSError) as exc:
        return False, f"engine health check {shown} failed: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
