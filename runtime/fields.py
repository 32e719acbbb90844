"""Typed fields of a decoded JSON object (a request body, a config object): each reader checks one field's type and
range and raises ApiError naming the field, with the status the caller answers (400, AIBrix's 422)."""

from __future__ import annotations

from typing import Any, Literal, overload

from runtime.errors import ApiError


def split_list(raw: str | None) -> tuple[str, ...]:
    """`a, b,,c` -> ('a', 'b', 'c'): the comma-separated lists of variables and request fields."""
    return tuple(part.strip() for part in (raw or "").split(",") if part.strip())


@overload
def field_str(body: dict[str, Any], key: str, required: Literal[True] = True, status: int = 400) -> str: ...
@overload
def field_str(body: dict[str, Any], key: str, required: Literal[False], status: int = 400) -> str | None: ...
def field_str(body: dict[str, Any], key: str, required: bool = True, status: int = 400) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise ApiError(f"missing required field {key!r}", status)
        return None
    if not isinstance(value, str):
        raise ApiError(f"field {key!r} must be a string", status)
    return value


def field_bool(body: dict[str, Any], key: str, default: bool, status: int = 400) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(f"field {key!r} must be true or false", status)
    return value


def field_int(body: dict[str, Any], key: str, default: int, low: int, high: int, status: int = 400) -> int:
    """The field's value, or `default` when absent (the default is the caller's and is not range-checked here)."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(f"field {key!r} must be an integer from {low} to {high}", status)
    return value


def field_str_list(body: dict[str, Any], key: str, status: int = 400) -> tuple[str, ...]:
    value = body.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        return split_list(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ApiError(f"field {key!r} must be a list of strings (or one comma-separated string)", status)
