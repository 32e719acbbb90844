"""The committed dashboard, rules, PrometheusRule and ConfigMap are exactly what the generator writes today, the
PrometheusRule and the ConfigMap carry the same content as the plain files, and other prefixes and thresholds
come out of the same source."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from deploy.observability import generate
from tests.support.observability import DEPLOY, dashboard_queries, generated, rules

REPO = DEPLOY.parents[1]


def test_committed_files_are_what_the_generator_writes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.observability.generate", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr + "\nrun: python -m deploy.observability.generate"
    for name, content in generated().items():
        assert (DEPLOY / name).read_text(encoding="utf-8") == content, name


def test_check_reports_a_stale_file(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path)]) == 0
    (tmp_path / generate.RULES_FILE).write_text("groups: []\n", encoding="utf-8")
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1


def test_prometheus_rule_and_configmap_carry_the_plain_files() -> None:
    files = generated()
    plain = yaml.safe_load(files[generate.RULES_FILE])
    operator = yaml.safe_load(files[generate.PROMETHEUS_RULE_FILE])
    assert operator["apiVersion"] == "monitoring.coreos.com/v1" and operator["kind"] == "PrometheusRule"
    assert operator["spec"] == plain
    configmap = yaml.safe_load(files[generate.CONFIGMAP_FILE])
    assert configmap["kind"] == "ConfigMap" and configmap["metadata"]["labels"] == {"grafana_dashboard": "1"}
    (content,) = configmap["data"].values()
    assert json.loads(content) == json.loads(files[generate.DASHBOARD_FILE])


def test_another_prefix_renames_every_metric(tmp_path: Path) -> None:
    assert generate.main(["--prefix", "kthena", "--out", str(tmp_path), "--rule-label", "release=prom"]) == 0
    board = json.loads((tmp_path / generate.DASHBOARD_FILE).read_text(encoding="utf-8"))
    text = "".join(path.read_text(encoding="utf-8") for path in tmp_path.iterdir())
    assert "airuntime:" not in text and "airuntime_sidecar" not in text
    assert board["uid"] == "kthena-engines"
    assert all("kthena" in expr for _title, expr in dashboard_queries(board) if expr != "vector(0)")
    operator = yaml.safe_load((tmp_path / generate.PROMETHEUS_RULE_FILE).read_text(encoding="utf-8"))
    assert operator["metadata"]["labels"] == {"app.kubernetes.io/name": "airuntime", "release": "prom"}
    assert "--prefix kthena --rule-label release=prom" in text  # the header says how to make it again


def test_thresholds_are_parameters(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path), "--threshold", "kv_cache_usage=0.9", "--threshold",
                          "engine_down_for=1m"]) == 0  # fmt: skip
    groups = yaml.safe_load((tmp_path / generate.RULES_FILE).read_text(encoding="utf-8"))
    by_name = {rule.get("alert"): rule for rule in rules(groups)}
    assert by_name["AiruntimeKVCacheNearFull"]["expr"].endswith("> 0.9")
    assert by_name["AiruntimeEngineDown"]["for"] == "1m"


def test_bad_parameters_end_with_one_line(tmp_path: Path) -> None:
    for args, message in (
        (["--threshold", "nope=1"], "unknown threshold 'nope'"),
        (["--threshold", "kv_cache_usage=high"], "kv_cache_usage needs a float"),
        (["--prefix", "bad-prefix"], "--prefix must be a metric name part"),
        (["--rule-label", "novalue"], "expected KEY=VALUE"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "deploy.observability.generate", "--out", str(tmp_path), *args],
            cwd=REPO, capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
