"""Helpers for the dashboard and rules tests: the generated files, the PromQL they contain with Grafana's variables
substituted, the metric names those queries read, and `promtool test rules` runs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from deploy.observability import generate
from deploy.observability.promql import Names
from deploy.observability.rules import RuleSettings, rule_groups
from tests.support.promtool import require_promtool

DEPLOY = Path(generate.__file__).resolve().parent

# What Grafana puts in place of each variable when everything is selected (job: the alternation of its values).
ALL_SELECTED = {
    "$__rate_interval": "1m",
    "$job": ".*",
    "$namespace": ".*",
    "$pod": ".*",
    "$model_name": ".*",
    "$engine": "vllm",
    "$ttft_slo": "1.0",
}


def substitute(text: str, values: Mapping[str, str]) -> str:
    """`text` with each `$variable` replaced (longest names first, so `$pod` never eats `$pods`)."""
    for name in sorted(values, key=len, reverse=True):
        text = text.replace(name, values[name])
    return text


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            yield panel


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every target, variables not substituted."""
    return [(panel["title"], target["expr"]) for panel in panels(dashboard) for target in panel["targets"]]


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable name, the series selector inside its `label_values(SELECTOR, label)`) of the query variables."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            definition = variable["definition"]
            assert definition.startswith("label_values(") and definition.endswith(")"), definition
            found.append((variable["name"], definition[len("label_values(") : definition.rindex(",")]))
    return found


def rules(groups: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in groups["groups"] for rule in group["rules"]]


def names_in(expr: str) -> set[str]:
    """Metric names an expression reads (vector selectors, also inside range selectors)."""
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def generated(prefix: str = "airuntime") -> dict[str, str]:
    return generate.render(RuleSettings(names=Names(prefix)))


def committed_dashboard() -> dict[str, Any]:
    result: dict[str, Any] = json.loads((DEPLOY / generate.DASHBOARD_FILE).read_text(encoding="utf-8"))
    return result


def committed_rules() -> dict[str, Any]:
    result: dict[str, Any] = yaml.safe_load((DEPLOY / generate.RULES_FILE).read_text(encoding="utf-8"))
    return result


def write_rules(path: Path, settings: RuleSettings) -> Path:
    path.write_text(generate.to_yaml(rule_groups(settings)), encoding="utf-8")
    return path


def promtool_test(tmp: Path, rule_file: Path, tests: list[dict[str, Any]], interval: str = "1m") -> str:
    """Run `promtool test rules` on `tests`; returns its output, fails the test with it on a non-zero exit."""
    promtool = require_promtool()
    spec = {"rule_files": [str(rule_file)], "evaluation_interval": interval, "tests": tests}
    test_file = tmp / "rules_test.yaml"
    test_file.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    proc = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output
