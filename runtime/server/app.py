"""The aiohttp application: its parts wired together, each resource paired with its teardown, errors as JSON.

Wiring: one engine client (runtime/engine/), the engine's identity, the scraper and the /metrics publisher, the
download job registry, the LoRA manager. Every resource that lives as long as the server is opened and closed by
one `cleanup_ctx` generator (aiohttp's pattern), so what starts together stops together, in reverse order: the
engine client first opened, last closed. Running the app (bind, uvloop, SIGTERM drain) is runtime/server/lifecycle.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from runtime.config import ServeConfig
from runtime.download.jobs import JobRegistry
from runtime.engine.client import EngineClient
from runtime.engine.identity import EngineIdentity
from runtime.errors import SidecarError
from runtime.lora.desired_file import DesiredFileWatcher
from runtime.lora.engine_api import EngineLoraApi
from runtime.lora.manager import LoraManager
from runtime.metrics.answer import MetricsPublisher
from runtime.metrics.rules import RuleSet
from runtime.metrics.scraper import EngineScraper
from runtime.metrics.self_metrics import SidecarMetrics
from runtime.server import download_routes, lora_routes, openapi_route, probes
from runtime.server.allowed_roots import AllowedRoots
from runtime.server.download_routes import DOWNLOADS
from runtime.server.guards import log_access, refuse_while_draining, token_guard
from runtime.server.jsonio import error_response
from runtime.server.lora_routes import LORA
from runtime.server.metrics_route import metrics_handler
from runtime.server.state import SidecarState

log = logging.getLogger("airuntime.server")

LORA_ENGINE_TIMEOUT = 300.0  # loading a large adapter can take minutes


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
    except SidecarError as exc:
        return error_response(exc.message, exc.status)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response("internal error; see the sidecar's log", 500)


ROUTES = [
    web.get("/metrics", metrics_handler),
    web.get("/metrics/", metrics_handler),  # AIBrix serves it there
    web.get("/health", probes.health),
    web.get("/healthz", probes.health),  # AIBrix
    web.get("/ready", probes.ready),
    web.get("/readyz", probes.ready),
    web.get("/openapi.json", openapi_route.openapi_handler),
    web.post("/v1/download_model", download_routes.kthena_download),  # Kthena
    web.post("/v1/model/download", download_routes.aibrix_download),  # AIBrix
    web.get("/v1/model/list", download_routes.aibrix_list),  # AIBrix
    web.get("/v1/downloads", download_routes.list_downloads),
    web.get("/v1/downloads/{job_id}", download_routes.get_download),
    web.post("/v1/load_lora_adapter", lora_routes.kthena_load),  # Kthena
    web.post("/v1/unload_lora_adapter", lora_routes.unload),  # Kthena
    web.post("/v1/lora_adapter/load", lora_routes.aibrix_load),  # AIBrix
    web.post("/v1/lora_adapter/unload", lora_routes.aibrix_unload),  # AIBrix
    web.get("/v1/models", lora_routes.engine_models),  # AIBrix: the engine's model list, through the sidecar
    web.get("/v1/lora_adapters", lora_routes.list_adapters),
]


def create_app(config: ServeConfig, rules: RuleSet) -> web.Application:
    middlewares: list[Middleware] = [log_access, json_errors]
    if config.api_token:
        middlewares.append(token_guard(config.api_token, config.protect_metrics))
    middlewares.append(refuse_while_draining)
    app = web.Application(middlewares=middlewares, client_max_size=config.max_request_bytes)
    state = app[SidecarState.KEY] = _state(config, rules)
    jobs = app[DOWNLOADS] = JobRegistry(on_finished=download_routes.count_finished(state.metrics))
    state.metrics.downloads_active.set_function(jobs.running)
    lora = app[LORA] = LoraManager(
        state.identity, EngineLoraApi(state.client, LORA_ENGINE_TIMEOUT), state.metrics, config.adapters_dir
    )

    async def engine_client(app: web.Application) -> AsyncIterator[None]:
        await state.client.open()
        yield
        await state.client.close()

    async def download_jobs(app: web.Application) -> AsyncIterator[None]:
        yield
        await jobs.cancel_all()  # running downloads checkpoint their parts: the next run resumes

    async def lora_adapters(app: web.Application) -> AsyncIterator[None]:
        lora.spawn(lora.run_reconciler(config.lora_reconcile_interval))
        if config.lora_adapters_file:
            lora.spawn(DesiredFileWatcher(config.lora_adapters_file, lora).run(config.lora_reconcile_interval))
        yield
        await lora.stop()

    app.cleanup_ctx.extend([engine_client, download_jobs, lora_adapters])  # set up in order, torn down in reverse
    app.router.add_routes(ROUTES)
    return app


def _state(config: ServeConfig, rules: RuleSet) -> SidecarState:
    metrics = SidecarMetrics(rules.prefix, config.engine, pod=config.pod, model=config.model)
    client = EngineClient(config.engine_url, config.engine_api_key, config.scrape_timeout)
    identity = EngineIdentity(config.engine, rules.engines, client, metrics.set_engine_info)
    scraper = EngineScraper(
        client=client,
        metrics_path=config.engine_metrics_path or rules.metrics_path,
        rules=rules,
        keep_raw=config.raw_metrics,
        max_bytes=config.max_scrape_bytes,
        metrics=metrics,
        identity=identity,
    )
    return SidecarState(
        config=config,
        rules=rules,
        metrics=metrics,
        client=client,
        identity=identity,
        scraper=scraper,
        publisher=MetricsPublisher(scraper, metrics),
        allowed_roots=AllowedRoots(config.allowed_roots),
    )
