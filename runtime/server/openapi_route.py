"""`GET /openapi.json`: the sidecar's own OpenAPI 3.1 description of its HTTP API, shipped in the package.

The document lives beside this module (runtime/server/openapi.json); tests/unit/test_openapi.py keeps it and the
registered routes in step, and tests/e2e/test_api_fuzz_e2e.py fuzzes the API from it with schemathesis.
"""

from __future__ import annotations

import functools
from importlib import resources

import orjson
from aiohttp import web

SPEC_NAME = "openapi.json"


@functools.cache
def spec_bytes() -> bytes:
    """The document as served: read once, compacted."""
    raw = resources.files("runtime.server").joinpath(SPEC_NAME).read_bytes()
    return orjson.dumps(orjson.loads(raw))


async def openapi_handler(request: web.Request) -> web.Response:
    return web.Response(body=spec_bytes(), content_type="application/json")
