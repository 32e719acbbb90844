"""Which engine is beside the sidecar, and its version: configured, or recognised from the families it serves.

With `--engine auto` the engine is the one whose rule table recognised the most families in the last successful
scrape; it is re-detected on every scrape, so a pod whose engine is swapped is followed. The version is asked
from the engine's own endpoint (vLLM `/version`, TGI `/info`, ...) when the engine is recognised or comes back after
a failed scrape. Both are exported as `PREFIX:engine_info{engine,version} 1` and shown by `/ready`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import aiohttp
import orjson

from runtime.bounded_read import BodyTooLarge, read_bounded
from runtime.metrics.rules import AUTO_ENGINE, RuleSet
from runtime.metrics.self_metrics import SidecarMetrics

log = logging.getLogger("airuntime.engine")

UNKNOWN = "unknown"


class EngineIdentity:
    def __init__(
        self,
        configured: str,
        rules: RuleSet,
        metrics: SidecarMetrics,
        engine_url: str,
        api_key: str | None,
        timeout: float,
    ) -> None:
        self._configured = configured
        self._rules = rules
        self._metrics = metrics
        self._engine_url = engine_url
        self._api_key = api_key
        self._timeout = timeout
        self.engine = configured if configured != AUTO_ENGINE else UNKNOWN
        self.version = ""
        self._version_task: asyncio.Task[None] | None = None
        self._was_up = False
        if self.engine != UNKNOWN:
            self._export()

    @property
    def health_path(self) -> str:
        info = self._rules.engines.get(self.engine)
        return info.health_path if info is not None else self._rules.health_path

    def observe(self, session: aiohttp.ClientSession, families_by_engine: Counter[str] | None) -> None:
        """Record one scrape: `None` when it failed, else the engines whose families it held."""
        if families_by_engine is None:
            self._was_up = False
            return
        engine = self.engine
        if self._configured == AUTO_ENGINE and families_by_engine:
            engine = families_by_engine.most_common(1)[0][0]
        changed = engine != self.engine
        if changed:
            log.info("engine recognised", extra={"fields": {"engine": engine, "previous": self.engine}})
            self.engine = engine
            self.version = ""
            self._export()
        if (changed or not self._was_up) and engine != UNKNOWN:
            self._refresh_version(session)
        self._was_up = True

    def _refresh_version(self, session: aiohttp.ClientSession) -> None:
        info = self._rules.engines.get(self.engine)
        if info is None or info.version_path is None or info.version_field is None:
            return
        if self._version_task is not None and not self._version_task.done():
            return
        url = self._engine_url + info.version_path
        self._version_task = asyncio.ensure_future(self._fetch_version(session, url, info.version_field))

    async def _fetch_version(self, session: aiohttp.ClientSession, url: str, field: str) -> None:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            async with asyncio.timeout(self._timeout), session.get(url, headers=headers) as response:
                if response.status != 200:
                    return
                document = orjson.loads(await read_bounded(response))
        except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError, BodyTooLarge):
            return
        value = document.get(field) if isinstance(document, dict) else None
        if isinstance(value, str) and value and value != self.version:
            self.version = value[:64]
            self._export()

    def _export(self) -> None:
        self._metrics.engine_info.clear()
        self._metrics.engine_info.labels(self.engine, self.version).set(1)
