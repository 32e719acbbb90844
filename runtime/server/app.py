"""The aiohttp application: routes, shared client session, JSON errors, and the run loop on uvloop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from runtime.config import ServeConfig
from runtime.kv_events.service import relay_context
from runtime.lora.desired_file import DesiredFileWatcher
from runtime.lora.engine_api import EngineLoraApi
from runtime.lora.manager import LoraManager
from runtime.metrics.identity import EngineIdentity
from runtime.metrics.rules import RuleSet
from runtime.metrics.scraper import EngineScraper
from runtime.metrics.self_metrics import SidecarMetrics
from runtime.server import download_routes, lora_routes, openapi_route, probes
from runtime.server.allowed_roots import AllowedRoots
from runtime.server.guards import log_access, refuse_while_draining, token_guard
from runtime.server.jsonio import BadRequest, error_response
from runtime.server.lora_routes import LORA
from runtime.server.metrics_route import metrics_handler
from runtime.server.state import SidecarState

log = logging.getLogger("airuntime.server")

LORA_ENGINE_TIMEOUT = 300.0  # loading a large adapter can take minutes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is a JSON body with a message; never an HTML page or a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            limit = SidecarState.of(request).config.max_request_bytes
            return error_response(f"the request body is larger than {limit} bytes (--max-request-bytes)", 413)
        return error_response(exc.reason, exc.status)
    except BadRequest as exc:
        return error_response(str(exc), exc.status)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response("internal error; see the sidecar's log", 500)


def create_app(config: ServeConfig, rules: RuleSet) -> web.Application:
    middlewares: list[Middleware] = [log_access, json_errors]
    if config.api_token:
        middlewares.append(token_guard(config.api_token, config.protect_metrics))
    middlewares.append(refuse_while_draining)
    app = web.Application(middlewares=middlewares, client_max_size=config.max_request_bytes)
    metrics = SidecarMetrics(rules.prefix, config.engine, pod=config.pod, model=config.model)
    identity = EngineIdentity(
        config.engine, rules, metrics, config.engine_url, config.engine_api_key, config.scrape_timeout
    )
    state = SidecarState(
        config=config, rules=rules, metrics=metrics, identity=identity, allowed_roots=AllowedRoots(config.allowed_roots)
    )
    app[SidecarState.KEY] = state

    async def open_session(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=16, keepalive_timeout=30, ttl_dns_cache=60)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False)
        state.session = session
        state.scraper = EngineScraper(
            session,
            config.engine_url,
            config.engine_metrics_path or rules.metrics_path,
            rules,
            keep_raw=config.raw_metrics,
            timeout=config.scrape_timeout,
            api_key=config.engine_api_key,
            metrics=metrics,
            identity=identity,
            max_bytes=config.max_scrape_bytes,
        )

    def session() -> aiohttp.ClientSession:
        assert state.session is not None, "the client session opens when the server starts"
        return state.session

    lora = LoraManager(
        identity,
        EngineLoraApi(session, config.engine_url, LORA_ENGINE_TIMEOUT),
        metrics,
        config.adapters_dir,
        config.engine_api_key,
    )
    app[LORA] = lora
    background: list[asyncio.Task[None]] = []

    async def start_background(app: web.Application) -> None:
        background.append(asyncio.ensure_future(lora.run_reconciler(config.lora_reconcile_interval)))
        if config.lora_adapters_file:
            watcher = DesiredFileWatcher(config.lora_adapters_file, lora)
            background.append(asyncio.ensure_future(watcher.run(config.lora_reconcile_interval)))

    async def close_session(app: web.Application) -> None:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await lora.stop()
        if state.session is not None:
            await state.session.close()

    app.on_startup.append(open_session)
    app.on_startup.append(start_background)
    app.on_cleanup.append(close_session)
    app.cleanup_ctx.append(relay_context(config.kv_events, metrics.registry, rules.prefix))
    app.router.add_get("/metrics", metrics_handler)
    probes.add_routes(app.router)
    download_routes.add_routes(app, state)
    lora_routes.add_routes(app)
    openapi_route.add_routes(app.router)
    return app
