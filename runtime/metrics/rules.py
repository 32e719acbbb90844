"""Metric rename rules: load the per-engine tables (data), apply overrides and profiles, compile a lookup.

A table is JSON shipped in `runtime/metrics/tables/<engine>.json`:

    {"engine": "vllm", "health_path": "/health",
     "families": [{"name": "kv_cache_usage_perc", "type": "gauge",
                   "sources": ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]}, ...]}

`name` is the unified family name without prefix; `sources` are engine family names as exposed in text format
0.0.4 (counters with `_total`), newest first: when several appear in one scrape the first listed wins. A source may
also be an object `{"name": ..., "match": {"label": "value"}}` to take only the series carrying that label value
(the label is then dropped from the unified copy).

A user rules file (`--metrics-rules`, JSON or YAML) has the same `families` list, merged by `name` (a listed family
replaces the shipped one), plus an optional `drop` list of unified names to remove.

A profile (`tables/profile-<name>.json`) renames unified families for users of another product's names and keeps
only the families it lists: `{"prefix": "aibrix", "names": {"num_requests_waiting": "queue_size", ...}}`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

KINDS = ("counter", "gauge", "histogram", "summary", "untyped")
DEFAULT_PREFIX = "airuntime"
DEFAULT_PROFILE = "default"
AUTO_ENGINE = "auto"
PROFILE_FILE_PREFIX = "profile-"


class RulesError(ValueError):
    """A rules table, rules file or profile is malformed or names something unknown."""


@dataclass(frozen=True)
class SourceRule:
    """One engine family feeding one unified family."""

    source: str
    target: str  # full unified family name, prefix included (counters end in `_total`)
    kind: str
    priority: int  # 0 is the preferred (newest) source of `target`
    contested: bool  # `target` has more than one source: the winner is known only at the end of a scrape
    match_label: bytes | None = None  # b'label="value"' the series must carry (dropped from the copy)
    divide_by: float | None = None  # unit conversion to the unified unit (ms -> s: 1000), exact division
    engine: str = ""


@dataclass(frozen=True)
class EngineInfo:
    """What a table says about its engine besides the rules: probe and metrics paths, version endpoint."""

    name: str
    health_path: str
    metrics_path: str
    version_path: str | None
    version_field: str | None


@dataclass
class RuleSet:
    """Compiled rules for one engine: lookups by engine family name, and the order of unified families."""

    engine: str
    prefix: str
    health_path: str
    metrics_path: str = "/metrics"
    engines: dict[str, EngineInfo] = field(default_factory=dict)  # one entry, or every engine for `auto`

    @cached_property
    def by_source_bytes(self) -> dict[bytes, list[SourceRule]]:
        """`by_source` keyed by bytes, as the rewriter reads names off the wire."""
        return {name.encode(): found for name, found in self.by_source.items()}

    @cached_property
    def targets_bytes(self) -> list[bytes]:
        return [target.encode() for target in self.targets]

    by_source: dict[str, list[SourceRule]] = field(default_factory=dict)  # incl. the `vllm_x` spelling of `vllm:x`
    targets: list[str] = field(default_factory=list)


def available_engines() -> list[str]:
    return sorted(
        entry.name.removesuffix(".json")
        for entry in _tables_dir().iterdir()
        if entry.name.endswith(".json") and not entry.name.startswith(PROFILE_FILE_PREFIX)
    )


def available_profiles() -> list[str]:
    names = [
        entry.name.removeprefix(PROFILE_FILE_PREFIX).removesuffix(".json")
        for entry in _tables_dir().iterdir()
        if entry.name.startswith(PROFILE_FILE_PREFIX) and entry.name.endswith(".json")
    ]
    return sorted([DEFAULT_PROFILE, *names])


def engine_choices() -> list[str]:
    return [AUTO_ENGINE, *available_engines()]


def load_engine_table(engine: str) -> dict[str, Any]:
    if engine not in available_engines():
        raise RulesError(f"unknown engine {engine!r}; known engines: {', '.join(available_engines())}")
    data = json.loads((_tables_dir() / f"{engine}.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise RulesError(f"table for {engine} is not an object")
    return data


def load_rules_file(path: str | Path) -> dict[str, Any]:
    """Read a user rules file (JSON, or YAML by extension .yaml/.yml) into a dict; errors name the file."""
    file_path = Path(path)
    try:
        text = file_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"cannot read rules file {file_path}: {exc.strerror or exc}") from exc
    try:
        if file_path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # both parsers' errors carry the position in their message
        raise RulesError(f"rules file {file_path} is not valid {file_path.suffix or 'JSON'}: {exc}") from exc
    if not isinstance(data, dict):
        raise RulesError(f"rules file {file_path} must hold an object with a 'families' list")
    return data


def build_ruleset(
    engine: str,
    prefix: str | None = None,
    profile: str = DEFAULT_PROFILE,
    overrides: dict[str, Any] | None = None,
) -> RuleSet:
    """Compile the rules for `engine` with `prefix`, a `profile` and user `overrides` applied.

    `engine="auto"` compiles every engine's table into one rule set: engines' source names do not overlap, so
    whichever engine answers is rewritten, and the engine is recognised from the families it serves.
    """
    engines = available_engines() if engine == AUTO_ENGINE else [engine]
    tables = {name: load_engine_table(name) for name in engines}

    profile_names: dict[str, list[str]] | None = None
    profile_prefix = DEFAULT_PREFIX
    if profile != DEFAULT_PROFILE:
        profile_data = _load_profile(profile)
        profile_prefix = str(profile_data.get("prefix", DEFAULT_PREFIX))
        names = profile_data.get("names")
        if not isinstance(names, dict):
            raise RulesError(f"profile {profile} has no 'names' object")
        profile_names = {str(k): [v] if isinstance(v, str) else [str(n) for n in v] for k, v in names.items()}

    effective_prefix = prefix or profile_prefix
    _check_name_part(effective_prefix, "metrics prefix")
    infos = {name: _engine_info(name, table) for name, table in tables.items()}
    first = infos[engines[0]]
    auto = engine == AUTO_ENGINE
    ruleset = RuleSet(
        engine=engine,
        prefix=effective_prefix,
        health_path="/health" if auto else first.health_path,
        metrics_path="/metrics" if auto else first.metrics_path,
        engines=infos,
    )
    per_engine = {name: _validated_families(table.get("families"), f"table {name}") for name, table in tables.items()}
    if overrides:
        known = {family["name"] for families in per_engine.values() for family in families}
        drops = overrides.get("drop", [])
        if not isinstance(drops, list):
            raise RulesError("rules file: 'drop' must be a list of unified names")
        unknown_drops = [name for name in drops if name not in known]
        if unknown_drops:
            raise RulesError(f"rules file: cannot drop {', '.join(map(repr, unknown_drops))}: no such unified family")
        per_engine = {name: _merge_overrides(families, overrides) for name, families in per_engine.items()}
    for name, families in per_engine.items():
        for family in families:
            names = [family["name"]] if profile_names is None else profile_names.get(family["name"], [])
            for unified in names:
                _add_family(ruleset, family, f"{effective_prefix}:{unified}", name)
    return ruleset


def _engine_info(name: str, table: dict[str, Any]) -> EngineInfo:
    version_path = table.get("version_path")
    version_field = table.get("version_field")
    return EngineInfo(
        name=name,
        health_path=str(table.get("health_path", "/health")),
        metrics_path=str(table.get("metrics_path", "/metrics")),
        version_path=str(version_path) if version_path else None,
        version_field=str(version_field) if version_field else None,
    )


def _add_family(ruleset: RuleSet, family: dict[str, Any], target: str, engine: str) -> None:
    kind = family["type"]
    if kind == "counter" and not target.endswith("_total"):
        target += "_total"
    sources = family["sources"]
    if target not in ruleset.targets:
        ruleset.targets.append(target)
    for priority, source in enumerate(sources):
        rule = SourceRule(
            source=source["name"],
            target=target,
            kind=kind,
            priority=priority,
            contested=len(sources) > 1,
            match_label=source["match_bytes"],
            divide_by=source["divide_by"],
            engine=engine,
        )
        ruleset.by_source.setdefault(rule.source, []).append(rule)
        alias = _underscore_spelling(rule.source)
        if alias is not None:
            ruleset.by_source.setdefault(alias, []).append(rule)


def _tables_dir() -> Any:
    return resources.files("runtime.metrics") / "tables"


def _load_profile(profile: str) -> dict[str, Any]:
    if profile not in available_profiles():
        raise RulesError(f"unknown metrics profile {profile!r}; known profiles: {', '.join(available_profiles())}")
    data = json.loads((_tables_dir() / f"{PROFILE_FILE_PREFIX}{profile}.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise RulesError(f"profile {profile} is not an object")
    return data


def _validated_families(raw: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise RulesError(f"{where}: 'families' must be a list")
    families: list[dict[str, Any]] = []
    for index, entry in enumerate(raw):
        label = f"{where}: families[{index}]"
        if not isinstance(entry, dict):
            raise RulesError(f"{label} must be an object")
        name = entry.get("name")
        kind = entry.get("type")
        sources = entry.get("sources")
        if not isinstance(name, str) or not name:
            raise RulesError(f"{label} needs a 'name'")
        _check_name_part(name, f"{label} name")
        if kind not in KINDS:
            raise RulesError(f"{label} ({name}): 'type' must be one of {', '.join(KINDS)}")
        if isinstance(sources, str):
            sources = [sources]
        if not isinstance(sources, list) or not sources:
            raise RulesError(f"{label} ({name}): 'sources' must be a non-empty list")
        families.append({"name": name, "type": kind, "sources": [_source(s, f"{label} ({name})") for s in sources]})
    return families


def _source(raw: Any, label: str) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise RulesError(f"{label}: each source is a metric name or an object with a 'name'")
    name = raw["name"]
    _check_metric_name(name, label)
    match = raw.get("match")
    match_bytes: bytes | None = None
    if match is not None:
        if not isinstance(match, dict) or len(match) != 1:
            raise RulesError(f"{label}: 'match' must be an object with exactly one label")
        ((label_name, label_value),) = match.items()
        escaped = str(label_value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        match_bytes = f'{label_name}="{escaped}"'.encode()
    divide_by = raw.get("divide_by")
    if divide_by is not None and (
        isinstance(divide_by, bool) or not isinstance(divide_by, int | float) or not divide_by > 0
    ):
        raise RulesError(f"{label}: 'divide_by' must be a positive number")
    return {"name": name, "match_bytes": match_bytes, "divide_by": float(divide_by) if divide_by else None}


def _merge_overrides(families: list[dict[str, Any]], overrides: dict[str, Any]) -> list[dict[str, Any]]:
    merged = {family["name"]: family for family in families}
    if "families" in overrides:
        for family in _validated_families(overrides["families"], "rules file"):
            merged[family["name"]] = family
    drop = overrides.get("drop", [])
    if not isinstance(drop, list):
        raise RulesError("rules file: 'drop' must be a list of unified names")
    for name in drop:
        merged.pop(name, None)
    unknown = set(overrides) - {"families", "drop", "comment"}
    if unknown:
        raise RulesError(f"rules file: unknown keys {', '.join(sorted(unknown))} (expected families, drop)")
    return list(merged.values())


def _underscore_spelling(name: str) -> str | None:
    """`vllm:x` -> `vllm_x`: the spelling some re-exporters and OpenMetrics renderers put on the wire."""
    if ":" not in name:
        return None
    return name.replace(":", "_")


def _check_metric_name(name: str, label: str) -> None:
    if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name):
        raise RulesError(f"{label}: {name!r} is not a valid metric name")


def _check_name_part(name: str, label: str) -> None:
    if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
        raise RulesError(f"{label}: {name!r} must match [a-zA-Z_][a-zA-Z0-9_]*")
