"""Request guards as aiohttp middlewares: the management API token, draining during shutdown, and the access log.

- With `--api-token`, every path except the probes (and `/metrics` unless `--protect-metrics`) needs
  `Authorization: Bearer TOKEN`; the comparison is constant-time, failures answer 401 JSON and never echo the header.
- While the sidecar drains after SIGTERM, requests that would start work (POST/PUT/DELETE) answer 503.
- One log line per management request (method, path without query, status, milliseconds); `/metrics` and the
  probes are never logged, so a 1 s scrape interval cannot flood the log.
"""

from __future__ import annotations

import hmac
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from runtime.server.jsonio import error_response
from runtime.server.state import SidecarState

PROBE_PATHS = frozenset({"/health", "/healthz", "/ready", "/readyz"})
QUIET_PATHS = PROBE_PATHS | {"/metrics"}
OPEN_PATHS = PROBE_PATHS | {"/openapi.json"}
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

access_log = logging.getLogger("airuntime.access")


def token_guard(token: str, protect_metrics: bool) -> Middleware:
    expected = f"Bearer {token}".encode()
    open_paths = OPEN_PATHS if protect_metrics else OPEN_PATHS | {"/metrics"}

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths:
            return await handler(request)
        given = request.headers.get("Authorization", "")
        scheme, _, credentials = given.partition(" ")
        candidate = f"Bearer {credentials.strip()}".encode() if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(candidate, expected):
            reason = "missing" if not given else "invalid"
            response = error_response(
                f"{reason} API token: send 'Authorization: Bearer <token>' (the sidecar's --api-token)", 401
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="airuntime"'
            return response
        return await handler(request)

    return require_token


@web.middleware
async def refuse_while_draining(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method in MUTATING_METHODS and SidecarState.of(request).draining:
        return error_response("the sidecar is shutting down; retry against the next instance", 503)
    return await handler(request)


@web.middleware
async def log_access(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in QUIET_PATHS:
        return await handler(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        access_log.info(
            "%s %s %d",
            request.method,
            request.path,
            status,
            extra={
                "fields": {
                    "method": request.method,
                    "path": request.path,
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                    "remote": request.remote,
                }
            },
        )
