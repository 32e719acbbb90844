"""Grafana and PromQL conventions of the generated dashboard and rules, checked on real PromQL syntax trees:
one `datasource` variable everywhere, no hard-coded UIDs, `$__rate_interval` in every rate, chained
job -> namespace -> pod -> model_name variables in every selector, counters and buckets only inside rate/increase,
`le` kept in every quantile, divisions that cannot yield NaN or +Inf."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import promql_parser
import pytest

from tests.support.observability import committed_dashboard, committed_rules, panels, rules, variable_queries

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE_SENTINEL = "4321s"  # stands for $__rate_interval, which is not PromQL until Grafana replaces it
CHAIN = ("job", "namespace", "pod", "model_name")
COUNTER_LIKE = ("_total", "_bucket", "_sum", "_count")
RANGE_FUNCTIONS = {"rate", "increase", "deriv", "present_over_time", "max_over_time"}
DASHBOARD = committed_dashboard()
RULES = rules(committed_rules())
PROMQL = [(p["title"], t["expr"]) for p in panels(DASHBOARD) for t in p["targets"]]
RULE_PROMQL = [(r.get("record") or r["alert"], r["expr"]) for r in RULES]


def parse(expr: str) -> Any:
    return promql_parser.parse(expr.replace("$__rate_interval", RATE_SENTINEL))


def children(node: Any) -> list[Any]:
    if isinstance(node, promql_parser.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, promql_parser.AggregateExpr):
        return [node.expr] + ([node.param] if node.param is not None else [])
    if isinstance(node, promql_parser.Call):
        return list(node.args)
    if isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
        return [node.expr]
    if isinstance(node, promql_parser.MatrixSelector):
        return [node.vector_selector]
    return []


def walk(node: Any, parents: tuple[Any, ...] = ()) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """Every node with the chain of its ancestors (innermost last)."""
    yield node, parents
    for child in children(node):
        yield from walk(child, (*parents, node))


def nodes(expr: str, kind: type) -> list[tuple[Any, tuple[Any, ...]]]:
    return [(node, parents) for node, parents in walk(parse(expr)) if isinstance(node, kind)]


def matchers(selector: Any) -> dict[str, str]:
    return {m.name: m.value for m in selector.matchers.matchers if m.name != "__name__"}


def json_keys(value: Any, key: str) -> Iterator[Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key:
                yield v
            yield from json_keys(v, key)
    elif isinstance(value, list):
        for item in value:
            yield from json_keys(item, key)


# --------------------------------------------------------------------------------------------- Grafana


def test_one_datasource_variable_used_by_every_panel_and_target_and_no_hard_coded_uid() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels(DASHBOARD):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    uids = [uid for uid in json_keys(DASHBOARD["panels"], "uid") if uid != "${datasource}"]
    uids += [uid for uid in json_keys(DASHBOARD["templating"], "uid") if uid != "${datasource}"]
    assert uids == [], "hard-coded datasource UIDs"
    assert DASHBOARD["id"] is None and DASHBOARD["uid"] == "airuntime-engines" and "__inputs" not in DASHBOARD


def test_every_panel_has_a_title_a_description_a_unit_and_a_place_of_its_own() -> None:
    cells: set[tuple[int, int]] = set()
    ids: set[int] = set()
    for panel in DASHBOARD["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] != "row":
            assert panel["title"] and panel["description"], panel
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
    rows = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert rows == ["Health", "Traffic", "Latency", "Saturation", "Downloads, LoRA and the sidecar"]


def test_variables_chain_job_namespace_pod_model_name() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    selectors = dict(variable_queries(DASHBOARD))
    for index, name in enumerate(CHAIN):
        variable = variables[name]
        assert variable["refresh"] == 2, f"{name}: refresh on time-range change"
        assert variable["multi"] and variable["includeAll"], name
        parsed = parse(selectors[name])
        assert isinstance(parsed, promql_parser.VectorSelector)
        assert matchers(parsed) == {before: f"${before}" for before in CHAIN[:index]}, name
    assert variables["job"]["allValue"] is None, "All = the jobs that have sidecars, not every job"
    assert list(variables)[: len(CHAIN) + 1] == ["datasource", *CHAIN]


def test_heatmaps_read_one_engine_and_keep_buckets() -> None:
    heatmaps = [p for p in panels(DASHBOARD) if p["type"] == "heatmap"]
    assert len(heatmaps) == 2
    for panel in heatmaps:
        (target,) = panel["targets"]
        assert target["format"] == "heatmap" and target["legendFormat"] == "{{le}}"
        (aggregation, _parents), *_ = nodes(target["expr"], promql_parser.AggregateExpr)
        assert list(aggregation.modifier.labels) == ["le"]
        (selector, _), *_ = nodes(target["expr"], promql_parser.VectorSelector)
        assert matchers(selector)["engine"] == "$engine"


# --------------------------------------------------------------------------------------------- PromQL


@pytest.mark.parametrize(("title", "expr"), PROMQL, ids=[f"{i}-{t}" for i, (t, _) in enumerate(PROMQL)])
def test_dashboard_query_selects_by_the_variables(title: str, expr: str) -> None:
    selectors = nodes(expr, promql_parser.VectorSelector)
    for selector, _parents in selectors:
        found = matchers(selector)
        for label in CHAIN[:3]:
            assert found.get(label) == f"${label}", f'{selector.name}: no {label}=~"${label}"'
        engine_series = ":" in selector.name and selector.name.split(":")[1] not in SIDECAR_OWN
        if engine_series:
            assert found.get("model_name") == "$model_name", f'{selector.name}: no model_name=~"$model_name"'
    assert selectors or expr == "vector(0)", expr


SIDECAR_OWN = {
    "engine_up", "engine_info", "scrape_errors_total", "scrape_duration_seconds_bucket",
    "scrape_duration_seconds_count", "download_bytes_total", "download_files_total", "download_failures_total",
    "downloads_active", "lora_adapters", "lora_operations_total", "lora_operation_duration_seconds_bucket", "up",
}  # fmt: skip


@pytest.mark.parametrize(("where", "expr"), PROMQL + RULE_PROMQL)
def test_counters_and_buckets_only_inside_range_functions(where: str, expr: str) -> None:
    for selector, parents in nodes(expr, promql_parser.VectorSelector):
        if selector.name.endswith(COUNTER_LIKE):
            assert parents and isinstance(parents[-1], promql_parser.MatrixSelector), f"{where}: bare {selector.name}"
            call = parents[-2]
            assert isinstance(call, promql_parser.Call) and call.func.name in RANGE_FUNCTIONS, where


@pytest.mark.parametrize(("title", "expr"), PROMQL)
def test_dashboard_rates_use_rate_interval(title: str, expr: str) -> None:
    for matrix, _parents in nodes(expr, promql_parser.MatrixSelector):
        assert matrix.range == promql_parser.parse_duration(RATE_SENTINEL), f"{title}: not $__rate_interval"
    assert "[5m]" not in expr and "[1m]" not in expr


@pytest.mark.parametrize(("where", "expr"), PROMQL + RULE_PROMQL)
def test_quantiles_keep_le_and_divisions_are_safe(where: str, expr: str) -> None:
    for call, _parents in nodes(expr, promql_parser.Call):
        if call.func.name == "histogram_quantile":
            inner = call.args[1]
            assert isinstance(inner, promql_parser.AggregateExpr) and str(inner.op) == "sum", where
            assert "le" in list(inner.modifier.labels), f"{where}: quantile without le"
            assert "by" in str(inner.modifier), where
    for binary, _parents in nodes(expr, promql_parser.BinaryExpr):
        if str(binary.op) != "/":
            continue
        denominator = binary.rhs
        if isinstance(denominator, promql_parser.NumberLiteral):
            assert denominator.val != 0
            continue
        assert isinstance(denominator, promql_parser.ParenExpr), f"{where}: unguarded division"
        guard = denominator.expr
        assert isinstance(guard, promql_parser.BinaryExpr) and str(guard.op) == ">", f"{where}: unguarded division"
        assert isinstance(guard.rhs, promql_parser.NumberLiteral) and guard.rhs.val == 0
        assert not (guard.modifier and guard.modifier.return_bool), f"{where}: `> bool` keeps the zeros"


def test_rules_are_named_and_labelled_by_convention() -> None:
    for rule in RULES:
        parse(rule["expr"])
        if "record" in rule:
            prefix, name, operation = rule["record"].split(":")
            assert prefix == "airuntime" and name and operation, rule["record"]
        else:
            assert rule["alert"].startswith("Airuntime"), rule["alert"]
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert set(rule["annotations"]) == {"summary", "description"}
            assert rule["for"].endswith("m"), rule["alert"]
    alerts = {rule["alert"] for rule in RULES if "alert" in rule}
    assert alerts == {
        "AiruntimeEngineDown", "AiruntimeSidecarTargetDown", "AiruntimeMetricsAbsent",
        "AiruntimeUnifiedMetricsMissing", "AiruntimeScrapeErrors", "AiruntimeEngineStalled", "AiruntimeQueueGrowing",
        "AiruntimeKVCacheNearFull", "AiruntimePreemptions", "AiruntimeTTFTHigh", "AiruntimeRequestErrors",
    }  # fmt: skip


def test_the_lint_catches_what_it_looks_for() -> None:
    """The checks above on bad queries: each must fail."""
    bad = {
        "quantile without le": ("histogram_quantile(0.9, sum by (job) (rate(a_bucket[5m])))", "quantile"),
        "division by a bare sum": ("sum(rate(a_total[5m])) / sum(rate(b_total[5m]))", "division"),
        "counter without rate": ("sum(a_total)", "counter"),
        "fixed window": ('sum(rate(airuntime:a_total{job=~"$job"}[5m]))', "rate"),
    }
    checks = {
        "quantile": lambda e: test_quantiles_keep_le_and_divisions_are_safe("x", e),
        "division": lambda e: test_quantiles_keep_le_and_divisions_are_safe("x", e),
        "counter": lambda e: test_counters_and_buckets_only_inside_range_functions("x", e),
        "rate": lambda e: test_dashboard_rates_use_rate_interval("x", e),
    }
    for name, (expr, check) in bad.items():
        with pytest.raises(AssertionError):
            checks[check](expr)
            pytest.fail(f"not caught: {name}")
    with pytest.raises(AssertionError):
        test_dashboard_query_selects_by_the_variables("x", 'sum(airuntime:num_requests_running{job=~"$job"})')
