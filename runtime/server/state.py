"""What the request handlers share: configuration, rules, metrics, the engine client, identity and the /metrics
publisher, plus the draining flag set on SIGTERM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aiohttp import web

from runtime.config import ServeConfig
from runtime.engine.client import EngineClient
from runtime.engine.identity import EngineIdentity
from runtime.metrics.answer import MetricsPublisher
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
    client: EngineClient
    identity: EngineIdentity
    scraper: EngineScraper
    publisher: MetricsPublisher
    allowed_roots: AllowedRoots
    draining: bool = False  # set on SIGTERM: /ready answers 503 and no new work starts

    @property
    def health_path(self) -> str:
        return self.config.engine_health_path or self.identity.health_path

    @classmethod
    def of(cls, request: web.Request) -> SidecarState:
        return request.app[cls.KEY]
