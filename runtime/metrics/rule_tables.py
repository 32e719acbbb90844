"""Rename-rule data, parsed strictly into typed records: the shipped engine tables and name profiles, and a user's
`--metrics-rules` file. An unknown key anywhere is an error naming the file and the key, never silently ignored
(a typo such as `divde_by` would otherwise leave values unconverted).

An engine table, `runtime/metrics/tables/<engine>.json`:

    {"engine": "vllm", "health_path": "/health", "metrics_path": "/metrics", "version_path": "/version",
     "version_field": "version", "comment": "...",
     "families": [{"name": "kv_cache_usage_perc", "type": "gauge",
                   "sources": ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]}, ...]}

`name` is the unified family name without prefix; `sources` are engine family names as exposed in text format
0.0.4 (counters with `_total`), newest first: when several appear in one scrape the first listed wins. A source may
also be `{"name": ..., "match": {"label": "value"}, "divide_by": 1000}`: only the series carrying that label value
(the label dropped from the copy), and values converted to the unified unit by exact division.

A profile, `tables/profile-<name>.json`, renames unified families for users of another product's names and keeps
only those it lists: `{"prefix": "aibrix", "comment": "...", "names": {"num_requests_waiting": "queue_size"}}`.

A user rules file (`--metrics-rules`, JSON, or YAML by extension) has a `families` list like a table's, merged by
name (a listed family replaces the shipped one), and an optional `drop` list of unified names to remove.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from runtime.engine.identity import AUTO_ENGINE, EngineInfo
from runtime.errors import RulesError

KINDS = ("counter", "gauge", "histogram", "summary", "untyped")
DEFAULT_PROFILE = "default"
PROFILE_FILE_PREFIX = "profile-"
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
NAME_PART = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True)
class SourceSpec:
    """One engine family feeding a unified family."""

    name: str
    match: tuple[str, str] | None = None  # (label, value) the series must carry; the label is dropped
    divide_by: float | None = None  # unit conversion by exact division (ms -> s: 1000)

    @property
    def match_bytes(self) -> bytes | None:
        """The label pair as it appears on the wire: b'label="value"' (value escaped)."""
        if self.match is None:
            return None
        label, value = self.match
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{label}="{escaped}"'.encode()


@dataclass(frozen=True)
class FamilySpec:
    name: str
    kind: str
    sources: tuple[SourceSpec, ...]


@dataclass(frozen=True)
class EngineTable:
    info: EngineInfo
    families: tuple[FamilySpec, ...]


@dataclass(frozen=True)
class Profile:
    prefix: str
    names: dict[str, tuple[str, ...]]  # unified name -> the profile's name(s) for it


@dataclass(frozen=True)
class UserRules:
    families: tuple[FamilySpec, ...] = ()
    drop: tuple[str, ...] = ()


# -- what ships --------------------------------------------------------------------------------------------------
def _tables() -> Any:
    return resources.files("runtime.metrics") / "tables"


def available_engines() -> list[str]:
    return sorted(
        entry.name.removesuffix(".json")
        for entry in _tables().iterdir()
        if entry.name.endswith(".json") and not entry.name.startswith(PROFILE_FILE_PREFIX)
    )


def available_profiles() -> list[str]:
    names = [
        entry.name.removeprefix(PROFILE_FILE_PREFIX).removesuffix(".json")
        for entry in _tables().iterdir()
        if entry.name.startswith(PROFILE_FILE_PREFIX) and entry.name.endswith(".json")
    ]
    return sorted([DEFAULT_PROFILE, *names])


def engine_choices() -> list[str]:
    return [AUTO_ENGINE, *available_engines()]


def _shipped(kind: str, name: str, known: list[str], file_name: str) -> tuple[dict[str, Any], str]:
    """One loader for every shipped table: (the document as an object, its name for messages)."""
    if name not in known:
        raise RulesError(f"unknown {kind} {name!r}; known: {', '.join(known)}")
    where = f"runtime/metrics/tables/{file_name}"
    document = json.loads((_tables() / file_name).read_text(encoding="utf-8"))
    return _object(document, where, required=(), optional=()), where


def load_engine_table(engine: str) -> EngineTable:
    raw, where = _shipped("engine", engine, available_engines(), f"{engine}.json")
    keys = ("engine", "health_path", "metrics_path", "version_path", "version_field", "families")
    document = _object(raw, where, required=("engine", "families"), optional=keys)
    info = EngineInfo(
        name=engine,
        health_path=_text(document, "health_path", where) or "/health",
        metrics_path=_text(document, "metrics_path", where) or "/metrics",
        version_path=_text(document, "version_path", where),
        version_field=_text(document, "version_field", where),
    )
    return EngineTable(info=info, families=_families(document["families"], where))


def load_profile(profile: str) -> Profile:
    raw, where = _shipped("metrics profile", profile, available_profiles(), f"{PROFILE_FILE_PREFIX}{profile}.json")
    document = _object(raw, where, required=("prefix", "names"), optional=())
    names = document["names"]
    if not isinstance(names, dict):
        raise RulesError(f"{where}: 'names' must be an object")
    parsed: dict[str, tuple[str, ...]] = {}
    for unified, theirs in names.items():
        listed = [theirs] if isinstance(theirs, str) else theirs
        if not isinstance(listed, list) or not all(isinstance(item, str) for item in listed):
            raise RulesError(f"{where}: names[{unified!r}] must be a name or a list of names")
        for item in listed:
            _check(NAME_PART, item, f"{where}: names[{unified!r}]")
        parsed[str(unified)] = tuple(listed)
    prefix = str(document["prefix"])
    _check(NAME_PART, prefix, f"{where}: prefix")
    return Profile(prefix=prefix, names=parsed)


# -- a user's rules file ---------------------------------------------------------------------------------------
def load_rules_file(path: str | Path) -> UserRules:
    """Read a user rules file (JSON, or YAML by extension .yaml/.yml); errors name the file and the key."""
    file_path = Path(path)
    try:
        text = file_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"cannot read rules file {file_path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        if file_path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # both parsers' errors carry the position in their message
        raise RulesError(f"rules file {file_path} is not valid {file_path.suffix or 'JSON'}: {exc}") from None
    return parse_rules(data, f"rules file {file_path}")


def parse_rules(data: Any, where: str = "rules") -> UserRules:
    """A user's rules document (the decoded file) as typed records; RulesError names `where` and the key."""
    document = _object(data, where, required=(), optional=("families", "drop"))
    drop = document.get("drop", [])
    if not isinstance(drop, list) or not all(isinstance(name, str) for name in drop):
        raise RulesError(f"{where}: 'drop' must be a list of unified names")
    families = _families(document["families"], where) if "families" in document else ()
    return UserRules(families=families, drop=tuple(drop))


# -- strict parsing ------------------------------------------------------------------------------------------------
def _object(raw: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    """`raw` as an object holding every required key and no key outside required + optional + `comment` (with
    both empty, any keys: the caller checks them)."""
    if not isinstance(raw, dict):
        raise RulesError(f"{where} must be an object")
    if required or optional:
        unknown = sorted(str(key) for key in raw if key not in required and key not in optional and key != "comment")
        if unknown:
            allowed = ", ".join(sorted({*required, *optional}))
            raise RulesError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {allowed}, comment")
        missing = [key for key in required if key not in raw]
        if missing:
            raise RulesError(f"{where}: missing {', '.join(map(repr, missing))}")
    return raw


def _text(document: dict[str, Any], key: str, where: str) -> str | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise RulesError(f"{where}: {key!r} must be a non-empty string")
    return value


def _families(raw: Any, where: str) -> tuple[FamilySpec, ...]:
    if not isinstance(raw, list):
        raise RulesError(f"{where}: 'families' must be a list")
    return tuple(_family(entry, f"{where}: families[{index}]") for index, entry in enumerate(raw))


def _family(raw: Any, label: str) -> FamilySpec:
    entry = _object(raw, label, required=("name", "type", "sources"), optional=())
    name, kind, sources = entry["name"], entry["type"], entry["sources"]
    if not isinstance(name, str):
        raise RulesError(f"{label}: 'name' must be a string")
    _check(NAME_PART, name, f"{label} name")
    if kind not in KINDS:
        raise RulesError(f"{label} ({name}): 'type' must be one of {', '.join(KINDS)}")
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list) or not sources:
        raise RulesError(f"{label} ({name}): 'sources' must be a non-empty list")
    return FamilySpec(
        name, kind, tuple(_source(source, f"{label} ({name}) sources[{i}]") for i, source in enumerate(sources))
    )


def _source(raw: Any, label: str) -> SourceSpec:
    if isinstance(raw, str):
        raw = {"name": raw}
    entry = _object(raw, label, required=("name",), optional=("match", "divide_by"))
    name = entry["name"]
    if not isinstance(name, str):
        raise RulesError(f"{label}: 'name' must be a metric name")
    _check(METRIC_NAME, name, label)
    match = entry.get("match")
    pair: tuple[str, str] | None = None
    if match is not None:
        if not isinstance(match, dict) or len(match) != 1:
            raise RulesError(f"{label}: 'match' must be an object with exactly one label")
        ((label_name, label_value),) = match.items()
        _check(NAME_PART, str(label_name), f"{label}: match label")
        if not isinstance(label_value, str):  # YAML's `true` would become "True" and never match
            raise RulesError(f"{label}: the match value of {label_name!r} must be a string (quote it)")
        pair = (str(label_name), label_value)
    divide_by = entry.get("divide_by")
    if divide_by is not None and (
        isinstance(divide_by, bool) or not isinstance(divide_by, int | float) or not divide_by > 0
    ):
        raise RulesError(f"{label}: 'divide_by' must be a positive number")
    return SourceSpec(name=name, match=pair, divide_by=float(divide_by) if divide_by else None)


def _check(pattern: re.Pattern[str], name: str, label: str) -> None:
    if not pattern.fullmatch(name):
        raise RulesError(f"{label}: {name!r} must match {pattern.pattern}")
