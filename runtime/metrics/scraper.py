"""One scrape of the engine's /metrics, run through the rewriter as the bytes arrive.

Every failure becomes a reason (`connect`, `timeout`, `http_status`, `truncated`, `garbage`, `too_large`,
`other`) counted in the sidecar's own metrics; a failed scrape yields no engine lines and `engine_up 0`, never an
error page. Each scrape also tells the engine's identity which engine's families it held (`--engine auto`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from runtime.engine.bounded_read import BodyTooLarge, iter_bounded
from runtime.engine.client import EngineClient, describe_exception
from runtime.engine.identity import EngineIdentity
from runtime.metrics.rewriter import MetricsRewriter, RewriteCache
from runtime.metrics.rules import RuleSet
from runtime.metrics.self_metrics import SidecarMetrics

log = logging.getLogger("airuntime.scrape")

READ_CHUNK = 16 * 1024  # small steps: /health never waits behind more than one of them


@dataclass(frozen=True)
class ScrapeResult:
    ok: bool
    body: bytes
    reason: str | None = None
    detail: str = ""
    families_by_engine: Counter[str] = field(default_factory=Counter)


class ScrapeFailure(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(eq=False)
class EngineScraper:
    client: EngineClient
    metrics_path: str
    rules: RuleSet
    keep_raw: bool
    max_bytes: int
    metrics: SidecarMetrics
    identity: EngineIdentity
    last_failure: ScrapeResult | None = None
    cache: RewriteCache = field(default_factory=RewriteCache)  # what repeats from one scrape to the next

    async def scrape(self) -> ScrapeResult:
        """The engine's rewritten exposition, or a failure with its reason; never raises."""
        started = time.perf_counter()
        result = await self._scrape_classified()
        self.metrics.scrape_duration.observe(time.perf_counter() - started)
        self.metrics.engine_up.set(1 if result.ok else 0)
        self.identity.observe(result.families_by_engine if result.ok else None)
        if result.ok:
            if self.last_failure is not None:
                log.info("engine scrape recovered")
                self.last_failure = None
            return result
        reason = result.reason or "other"
        self.metrics.scrape_errors.labels(reason).inc()
        if self.last_failure is None or self.last_failure.reason != reason:
            log.warning("engine scrape failed", extra={"fields": {"reason": reason, "detail": result.detail}})
        self.last_failure = result
        return result

    async def _scrape_classified(self) -> ScrapeResult:
        timeout = self.client.timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._fetch_and_rewrite()
        except ScrapeFailure as failure:
            return _failed(failure.reason, failure.detail)
        except TimeoutError:
            return _failed("timeout", f"no complete answer within {timeout:g}s")
        except aiohttp.ClientPayloadError as exc:
            return _failed("truncated", f"body cut short: {exc}")
        except (aiohttp.ClientConnectionError, OSError) as exc:
            return _failed("connect", describe_exception(exc))
        except Exception as exc:  # any other failure still yields an answer with engine_up 0
            log.exception("unexpected scrape failure")
            return _failed("other", describe_exception(exc))

    async def _fetch_and_rewrite(self) -> ScrapeResult:
        rewriter = MetricsRewriter(self.rules, keep_raw=self.keep_raw, cache=self.cache)
        async with self.client.stream(self.metrics_path) as response:
            if response.status != 200:
                shown = self.client.public(self.metrics_path)
                raise ScrapeFailure("http_status", f"engine answered HTTP {response.status} on {shown}")
            try:
                async for chunk in iter_bounded(response, self.max_bytes, READ_CHUNK):
                    rewriter.feed(chunk)
                    await asyncio.sleep(0)  # let /health and other requests run between chunks
            except BodyTooLarge:
                limit = self.max_bytes
                raise ScrapeFailure("too_large", f"engine metrics exceed {limit} bytes (--max-scrape-bytes)") from None
        rewriter.finish()
        if rewriter.invalid_lines:
            self.metrics.invalid_lines.inc(rewriter.invalid_lines)
        if rewriter.sample_lines == 0 and rewriter.invalid_lines > 0:
            raise ScrapeFailure("garbage", f"engine answer has no valid sample line ({rewriter.invalid_lines} invalid)")
        return ScrapeResult(ok=True, body=rewriter.take_bytes(), families_by_engine=rewriter.families_by_engine)


def _failed(reason: str, detail: str) -> ScrapeResult:
    return ScrapeResult(ok=False, body=b"", reason=reason, detail=detail)
