"""Liveness and readiness: `/health` answers for the sidecar itself, `/ready` asks the engine.

AIBrix's `/healthz` and the Kubernetes-style `/readyz` are aliases. `/health` never touches the engine, so a slow
or dead engine cannot delay it.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from runtime.server.state import SidecarState

_HEALTHY = orjson.dumps({"status": "ok"})


async def health(request: web.Request) -> web.Response:
    return web.Response(body=_HEALTHY, content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    state = SidecarState.of(request)
    if state.draining:
        return web.Response(
            body=orjson.dumps({"status": "not ready", "reason": "the sidecar is shutting down"}),
            status=503,
            content_type="application/json",
        )
    ok, reason = await state.client.probe(state.health_path)
    body: dict[str, object] = {
        "status": "ready" if ok else "not ready",
        "engine": state.identity.engine,
        "engine_version": state.identity.version,
        "reason": reason,
    }
    failure = state.scraper.last_failure
    body["metrics"] = "ok" if failure is None else f"failing ({failure.reason}): {failure.detail}"
    return web.Response(body=orjson.dumps(body), status=200 if ok else 503, content_type="application/json")
