"""Compile rename rules into the lookups the rewriter reads: the engine tables (runtime/metrics/rule_tables.py)
with a prefix, a name profile and a user's overrides applied.

`build_ruleset("auto", ...)` compiles every engine's table into one rule set: engines' source names do not overlap,
so whichever engine answers is rewritten, and the engine is recognised from the families it serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from runtime.engine.identity import AUTO_ENGINE, DEFAULT_HEALTH_PATH, EngineInfo
from runtime.errors import RulesError
from runtime.metrics.rule_tables import (
    DEFAULT_PROFILE,
    NAME_PART,
    FamilySpec,
    UserRules,
    available_engines,
    load_engine_table,
    load_profile,
    load_rules_file,
)

DEFAULT_PREFIX = "airuntime"

__all__ = ["DEFAULT_PREFIX", "RuleSet", "SourceRule", "build_ruleset", "load_rules_file"]


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


@dataclass
class RuleSet:
    """Compiled rules for one engine (or all, for `auto`): lookups by engine family name, the order of unified
    families, and what each engine's table says of its endpoints. Built once by `build_ruleset`, then read only."""

    engine: str
    prefix: str
    health_path: str
    metrics_path: str = "/metrics"
    engines: dict[str, EngineInfo] = field(default_factory=dict)  # one entry, or every engine for `auto`
    by_source: dict[str, list[SourceRule]] = field(default_factory=dict)  # incl. the `vllm_x` spelling of `vllm:x`
    targets: list[str] = field(default_factory=list)

    @cached_property
    def by_source_bytes(self) -> dict[bytes, list[SourceRule]]:
        """`by_source` keyed by bytes, as the rewriter reads names off the wire."""
        return {name.encode(): found for name, found in self.by_source.items()}

    @cached_property
    def targets_bytes(self) -> list[bytes]:
        return [target.encode() for target in self.targets]


def build_ruleset(
    engine: str,
    prefix: str | None = None,
    profile: str = DEFAULT_PROFILE,
    overrides: UserRules | None = None,
) -> RuleSet:
    """Compile the rules for `engine` with `prefix`, a `profile` and a user's `overrides` applied."""
    engines = available_engines() if engine == AUTO_ENGINE else [engine]
    tables = {name: load_engine_table(name) for name in engines}
    chosen = load_profile(profile) if profile != DEFAULT_PROFILE else None
    effective_prefix = prefix or (chosen.prefix if chosen else DEFAULT_PREFIX)
    if not NAME_PART.fullmatch(effective_prefix):
        raise RulesError(f"metrics prefix {effective_prefix!r} must match {NAME_PART.pattern}")
    auto = engine == AUTO_ENGINE
    first = tables[engines[0]].info
    ruleset = RuleSet(
        engine=engine,
        prefix=effective_prefix,
        health_path=DEFAULT_HEALTH_PATH if auto else first.health_path,
        metrics_path="/metrics" if auto else first.metrics_path,
        engines={name: table.info for name, table in tables.items()},
    )
    per_engine = {name: list(table.families) for name, table in tables.items()}
    if overrides is not None:
        per_engine = _apply_overrides(per_engine, overrides)
    for name, families in per_engine.items():
        for family in families:
            unified_names = (family.name,) if chosen is None else chosen.names.get(family.name, ())
            for unified in unified_names:
                _add_family(ruleset, family, f"{effective_prefix}:{unified}", name)
    return ruleset


def _apply_overrides(per_engine: dict[str, list[FamilySpec]], overrides: UserRules) -> dict[str, list[FamilySpec]]:
    known = {family.name for families in per_engine.values() for family in families}
    known |= {family.name for family in overrides.families}
    unknown_drops = [name for name in overrides.drop if name not in known]
    if unknown_drops:
        raise RulesError(f"rules file: cannot drop {', '.join(map(repr, unknown_drops))}: no such unified family")
    merged: dict[str, list[FamilySpec]] = {}
    for engine, families in per_engine.items():
        by_name = {family.name: family for family in families}
        by_name.update({family.name: family for family in overrides.families})
        merged[engine] = [family for name, family in by_name.items() if name not in overrides.drop]
    return merged


def _add_family(ruleset: RuleSet, family: FamilySpec, target: str, engine: str) -> None:
    if family.kind == "counter" and not target.endswith("_total"):
        target += "_total"
    if target not in ruleset.targets:
        ruleset.targets.append(target)
    for priority, source in enumerate(family.sources):
        rule = SourceRule(
            source=source.name,
            target=target,
            kind=family.kind,
            priority=priority,
            contested=len(family.sources) > 1,
            match_label=source.match_bytes,
            divide_by=source.divide_by,
            engine=engine,
        )
        ruleset.by_source.setdefault(rule.source, []).append(rule)
        if ":" in rule.source:  # `vllm_x`: the spelling some re-exporters and OpenMetrics renderers put on the wire
            ruleset.by_source.setdefault(rule.source.replace(":", "_"), []).append(rule)
