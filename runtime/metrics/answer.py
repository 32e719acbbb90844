"""The `/metrics` answer: the engine's rewritten exposition followed by the sidecar's own metrics, built once per
scrape and shared.

Concurrent `/metrics` requests join the scrape already in flight, so a burst of scrapers costs the engine one
request; they also share its result: the body is joined once, and gzipped at most once, however many of them
asked.
"""

from __future__ import annotations

import asyncio
import zlib
from functools import cached_property

from runtime.metrics.scraper import EngineScraper, ScrapeResult
from runtime.metrics.self_metrics import SidecarMetrics

GZIP_MIN_BYTES = 1024


class MetricsAnswer:
    """One scrape's answer; `gzipped` is computed by the first request that wants it."""

    def __init__(self, result: ScrapeResult, own_metrics: bytes) -> None:
        self.result = result
        self.body = result.body + own_metrics

    @cached_property
    def gzipped(self) -> bytes | None:
        """The body gzipped (level 1: fast), or None when it is too small for compression to pay."""
        if len(self.body) < GZIP_MIN_BYTES:
            return None
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
        return compressor.compress(self.body) + compressor.flush()


class MetricsPublisher:
    def __init__(self, scraper: EngineScraper, metrics: SidecarMetrics) -> None:
        self._scraper = scraper
        self._metrics = metrics
        self._inflight: asyncio.Future[MetricsAnswer] | None = None

    async def answer(self) -> MetricsAnswer:
        """The answer of the scrape in flight, or of a new one."""
        task = self._inflight
        if task is None:
            task = self._inflight = asyncio.ensure_future(self._build())
            task.add_done_callback(self._clear_inflight)
        return await asyncio.shield(task)

    def _clear_inflight(self, task: asyncio.Future[MetricsAnswer]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _build(self) -> MetricsAnswer:
        result = await self._scraper.scrape()
        return MetricsAnswer(result, self._metrics.render())
