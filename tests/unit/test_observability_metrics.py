"""Every metric name the dashboard and the rules read is one the sidecar really serves: the unified families of each
engine's recorded exposition (tests/fixtures, rewritten by the real rewriter), the sidecar's own registry, the
rules' recorded series, or Prometheus' `up`. The README's per-engine panel table is computed here too."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from deploy.observability.dashboard import dashboard
from deploy.observability.promql import Names
from deploy.observability.rules import RuleSettings, rule_groups
from runtime.cli import compile_rules
from runtime.metrics.rewriter import MetricsRewriter
from runtime.metrics.self_metrics import SidecarMetrics
from tests.support.exposition import families_of
from tests.support.fake_engine import FIXTURES
from tests.support.observability import dashboard_queries, names_in, panels, rules, substitute, variable_queries

README = Path(__file__).resolve().parents[2] / "README.md"
# engine column -> (--engine, recorded exposition)
ENGINE_FIXTURES = {
    "vLLM": ("vllm", "vllm-0.32.0-metrics.txt"),
    "SGLang": ("sglang", "sglang-0.5.23-metrics.txt"),
    "TGI": ("tgi", "tgi-metrics.txt"),
    "llama.cpp": ("llamacpp", "llamacpp-metrics.txt"),
    "trtllm-serve": ("trtllm", "trtllm-serve-metrics.txt"),
    "Triton": ("trtllm", "triton-trtllm-metrics.txt"),
    "LMDeploy": ("lmdeploy", "lmdeploy-metrics.txt"),
}
PROMETHEUS_OWN = {"up"}
ENGINE_ROWS = ("Traffic", "Latency", "Saturation")


@cache
def engine_names(engine: str, fixture: str, prefix: str) -> frozenset[str]:
    """Sample names of the unified families the sidecar serves for this recorded exposition."""
    rewriter = MetricsRewriter(compile_rules(engine, prefix, "default", None))
    rewriter.feed((FIXTURES / fixture).read_bytes())
    rewriter.finish()
    names = set()
    for line in rewriter.take_bytes().decode().splitlines():
        if line.startswith(prefix + ":"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return frozenset(names)


@cache
def sidecar_names(prefix: str) -> frozenset[str]:
    """Sample names the sidecar's own registry can serve (labelled families included before their first child)."""
    suffixes = {"counter": ("",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for family, kind in families_of(SidecarMetrics(prefix, "vllm").render()).items():
        names.update(family + suffix for suffix in suffixes[kind])
    return frozenset(names)


def documents(prefix: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    names = Names(prefix)
    return dashboard(names), rules(rule_groups(RuleSettings(names=names)))


def all_expressions(prefix: str) -> list[str]:
    board, rule_list = documents(prefix)
    queries = [substitute(expr, {"$__rate_interval": "1m"}) for _title, expr in dashboard_queries(board)]
    queries += [selector for _name, selector in variable_queries(board)]
    return queries + [rule["expr"] for rule in rule_list]


@pytest.mark.parametrize("prefix", ["airuntime", "kthena"])
def test_every_name_read_is_served_by_the_sidecar(prefix: str) -> None:
    _board, rule_list = documents(prefix)
    recorded = {rule["record"] for rule in rule_list if "record" in rule}
    served = set(sidecar_names(prefix)) | recorded | PROMETHEUS_OWN
    for engine, fixture in ENGINE_FIXTURES.values():
        served |= engine_names(engine, fixture, prefix)
    used = set().union(*(names_in(expr) for expr in all_expressions(prefix)))
    assert used - served == set()
    assert all(name.startswith(prefix) or name in PROMETHEUS_OWN for name in used)
    # the engine-independent part: sidecar metrics and recorded series the dashboard reads exist for any engine
    assert {n for n in used if n.startswith(f"{prefix}:engine") or "_sidecar_process_" in n} <= sidecar_names(prefix)


def available(node: Any, names: frozenset[str], recorded: dict[str, Any]) -> bool:
    """Whether an expression can return a series when only `names` exist (`or` needs one side, `and` both)."""
    if isinstance(node, promql_parser.VectorSelector):
        if node.name in recorded:
            return available(recorded[node.name], names, recorded)
        return node.name in names
    if isinstance(node, promql_parser.MatrixSelector):
        return available(node.vector_selector, names, recorded)
    if isinstance(node, promql_parser.BinaryExpr):
        left, right = available(node.lhs, names, recorded), available(node.rhs, names, recorded)
        return {"or": left or right, "unless": left}.get(str(node.op), left and right)
    if isinstance(node, promql_parser.Call):
        if node.func.name in {"absent", "vector"}:
            return True
        return all(available(arg, names, recorded) for arg in node.args if not _literal(arg))
    if isinstance(node, promql_parser.AggregateExpr | promql_parser.ParenExpr | promql_parser.UnaryExpr):
        return available(node.expr, names, recorded)
    return True


def _literal(node: Any) -> bool:
    return isinstance(node, promql_parser.NumberLiteral | promql_parser.StringLiteral)


def coverage(prefix: str = "airuntime") -> list[tuple[str, str, dict[str, bool]]]:
    """(row, panel title, {engine: shows data}) for the panels of the engine-dependent rows."""
    board, rule_list = documents(prefix)
    recorded = {rule["record"]: promql_parser.parse(rule["expr"]) for rule in rule_list if "record" in rule}
    per_engine = {
        column: engine_names(engine, fixture, prefix) | sidecar_names(prefix) | PROMETHEUS_OWN
        for column, (engine, fixture) in ENGINE_FIXTURES.items()
    }
    table = []
    row = ""
    for panel in board["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        if row not in ENGINE_ROWS:
            continue
        exprs = [promql_parser.parse(substitute(t["expr"], {"$__rate_interval": "1m"})) for t in panel["targets"]]
        shows = {column: any(available(e, names, recorded) for e in exprs) for column, names in per_engine.items()}
        table.append((row, panel["title"], shows))
    return table


def coverage_markdown() -> str:
    lines = ["| row | panel | " + " | ".join(ENGINE_FIXTURES) + " |", "|---|---|" + "---|" * len(ENGINE_FIXTURES)]
    for row, title, shows in coverage():
        cells = " | ".join("✓" if shows[column] else "—" for column in ENGINE_FIXTURES)
        lines.append(f"| {row} | {title} | {cells} |")
    return "\n".join(lines) + "\n"


def test_readme_panel_table_matches_what_each_engine_serves() -> None:
    expected = coverage_markdown()
    assert expected in README.read_text(encoding="utf-8"), "README panel table is stale; paste this:\n" + expected


def test_every_panel_shows_data_for_some_engine_and_vllm_fills_every_panel() -> None:
    for _row, title, shows in coverage():
        assert any(shows.values()), title
        assert shows["vLLM"], title  # the e2e suite runs vLLM: every panel must be checkable there
    assert len(list(panels(dashboard(Names())))) > len(coverage())
