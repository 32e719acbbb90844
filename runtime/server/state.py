"""What the request handlers share: configuration, rules, metrics, the engine client session and scraper."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import aiohttp
from aiohttp import web

from runtime.config import ServeConfig
from runtime.metrics.identity import EngineIdentity
from runtime.metrics.rules import RuleSet
from runtime.metrics.scraper import EngineScraper
from runtime.metrics.self_metrics import SidecarMetrics
from runtime.server.allowed_roots import AllowedRoots


@dataclass
class SidecarState:
    KEY: ClassVar[web.AppKey[SidecarState]] = web.AppKey("airuntime_state")

    config: ServeConfig
    rules: RuleSet
    metrics: SidecarMetrics
    identity: EngineIdentity
    allowed_roots: AllowedRoots = field(default_factory=lambda: AllowedRoots(()))
    session: aiohttp.ClientSession | None = None
    draining: bool = False  # set on SIGTERM: /ready answers 503 and no new work starts
    scraper: EngineScraper | None = None

    @property
    def health_url(self) -> str:
        path = self.config.engine_health_path or self.identity.health_path
        return self.config.engine_url + path

    @classmethod
    def of(cls, request: web.Request) -> SidecarState:
        return request.app[cls.KEY]
