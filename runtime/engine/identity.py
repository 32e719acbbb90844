"""Which engine is beside the sidecar, and its version: configured, or recognised from the families it serves.

With `--engine auto` the engine is the one whose rule table recognised the most families in the last successful
scrape; it is re-detected on every scrape, so a pod whose engine is swapped is followed. The version is asked
from the engine's own endpoint (vLLM `/version`, TGI `/info`, ...) when the engine is recognised or comes back after
a failed scrape. Every change is reported to `on_change` (the metrics export `PREFIX:engine_info{engine,version}`)
and `/ready` shows both.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.engine.client import EngineClient


log = logging.getLogger("airuntime.engine")

UNKNOWN = "unknown"
AUTO_ENGINE = "auto"
DEFAULT_HEALTH_PATH = "/health"


@dataclass(frozen=True)
class EngineInfo:
    """What an engine's table says about it besides the metric rules: its health, metrics and version endpoints."""

    name: str
    health_path: str = DEFAULT_HEALTH_PATH
    metrics_path: str = "/metrics"
    version_path: str | None = None
    version_field: str | None = None


class EngineIdentity:
    def __init__(
        self,
        configured: str,
        engines: Mapping[str, EngineInfo],
        client: EngineClient,
        on_change: Callable[[str, str], None],
    ) -> None:
        self._configured = configured
        self._engines = engines
        self._client = client
        self._on_change = on_change
        self.engine = configured if configured != AUTO_ENGINE else UNKNOWN
        self.version = ""
        self._version_task: asyncio.Task[None] | None = None
        self._was_up = False
        if self.engine != UNKNOWN:
            on_change(self.engine, self.version)

    @property
    def health_path(self) -> str:
        info = self._engines.get(self.engine)
        return info.health_path if info is not None else DEFAULT_HEALTH_PATH

    def observe(self, families_by_engine: Counter[str] | None) -> None:
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
            self._on_change(self.engine, self.version)
        if (changed or not self._was_up) and engine != UNKNOWN:
            self._refresh_version()
        self._was_up = True

    def _refresh_version(self) -> None:
        info = self._engines.get(self.engine)
        if info is None or info.version_path is None or info.version_field is None:
            return
        if self._version_task is not None and not self._version_task.done():
            return
        self._version_task = asyncio.ensure_future(self._fetch_version(info.version_path, info.version_field))

    async def _fetch_version(self, path: str, field: str) -> None:
        document = await self._client.get_json(path)
        value = document.get(field) if isinstance(document, dict) else None
        if isinstance(value, str) and value and value != self.version:
            self.version = value[:64]
            self._on_change(self.engine, self.version)
