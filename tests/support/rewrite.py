"""Test helpers over the product's modules: a whole payload through the rewriter, the OpenAPI document decoded."""

from __future__ import annotations

from typing import Any

import orjson

from runtime.metrics.rewriter import MetricsRewriter, RewriteCache
from runtime.metrics.rules import RuleSet
from runtime.server.openapi_route import spec_bytes


def rewrite_bytes(
    payload: bytes, rules: RuleSet, keep_raw: bool = True, cache: RewriteCache | None = None
) -> tuple[bytes, MetricsRewriter]:
    """Rewrite a whole payload; returns the output and the rewriter (for its counts)."""
    rewriter = MetricsRewriter(rules, keep_raw=keep_raw, cache=cache)
    rewriter.feed(payload)
    rewriter.finish()
    return rewriter.take_bytes(), rewriter


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = orjson.loads(spec_bytes())
    return spec
