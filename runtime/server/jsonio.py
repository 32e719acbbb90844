"""JSON in and out of handlers: orjson responses, and request bodies that must be one JSON object."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def error_response(message: str, status: int, **extra: Any) -> web.Response:
    return json_response({"error": message, "status": status, **extra}, status=status)


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def read_json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if b"\\u0000" in raw and _has_nul(body):
        raise BadRequest("the request body holds a NUL character (\\u0000); no field may contain one")
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


def field_str(body: dict[str, Any], key: str, required: bool = True, status: int = 400) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise BadRequest(f"missing required field {key!r}", status)
        return None
    if not isinstance(value, str):
        raise BadRequest(f"field {key!r} must be a string", status)
    return value


def field_bool(body: dict[str, Any], key: str, default: bool, status: int = 400) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"field {key!r} must be true or false", status)
    return value


def field_int(body: dict[str, Any], key: str, default: int, low: int, high: int, status: int = 400) -> int:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"field {key!r} must be an integer from {low} to {high}", status)
    return value


def field_str_list(body: dict[str, Any], key: str, status: int = 400) -> tuple[str, ...]:
    value = body.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise BadRequest(f"field {key!r} must be a list of strings (or one comma-separated string)", status)
