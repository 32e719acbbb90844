"""JSON in and out of handlers: orjson responses, error bodies, and request bodies that must be one JSON object."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from runtime.errors import ApiError


def json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def error_response(message: str, status: int, **extra: Any) -> web.Response:
    return json_response({"error": message, "status": status, **extra}, status=status)


async def read_json_object(request: web.Request, status: int = 400) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        raise ApiError("the request body is empty; send a JSON object", status)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(f"the request body is not valid JSON: {exc}", status) from None
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object", status)
    if b"\\u0000" in raw and _has_nul(body):
        raise ApiError("the request body holds a NUL character (\\u0000); no field may contain one", status)
    return body


def _has_nul(value: Any) -> bool:
    """Whether any string (key or value) in a decoded JSON document holds U+0000; iterative, so depth is no limit."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False
