"""The shipped rules under `promtool check rules` and `promtool test rules`: each alert just below and just above its
threshold (and its `for`), and the latency recording rules on two engines' real bucket layouts.

Inputs are in promtool's expanding notation (`a+bxn`: a, then n steps of +b, one step per minute)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.observability import generate
from deploy.observability.promql import Names
from deploy.observability.rules import RuleSettings, Thresholds
from runtime.cli import compile_rules
from runtime.metrics.rewriter import MetricsRewriter
from tests.support.fake_engine import FIXTURES
from tests.support.observability import DEPLOY, promtool_test, write_rules
from tests.support.promtool import require_promtool

T = Thresholds()
N = Names()
POD = {"job": "airuntime", "instance": "10.0.0.1:9000", "namespace": "llm", "pod": "vllm-0"}
OTHER_POD = {**POD, "instance": "10.0.0.2:9000", "pod": "vllm-1"}
WHERE = "{ns}/{pod} (airuntime {instance})"


def where(labels: dict[str, str]) -> str:
    return WHERE.format(ns=labels["namespace"], pod=labels["pod"], instance=labels["instance"])


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def alert(labels: dict[str, str], severity: str, summary: str, description: str) -> dict[str, Any]:
    return {
        "exp_labels": {**labels, "severity": severity},
        "exp_annotations": {"summary": summary, "description": description},
    }


def check(at: str, name: str, *alerts: dict[str, Any]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": list(alerts)}


@pytest.fixture(scope="module")
def rule_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rules(tmp_path_factory.mktemp("rules") / "rules.yaml", RuleSettings())


def test_shipped_rule_files_pass_promtool_check(tmp_path: Path) -> None:
    promtool = require_promtool()
    spec = yaml.safe_load((DEPLOY / generate.PROMETHEUS_RULE_FILE).read_text(encoding="utf-8"))["spec"]
    extracted = tmp_path / "prometheusrule-spec.yaml"
    extracted.write_text(yaml.safe_dump(spec), encoding="utf-8")
    for path in (DEPLOY / generate.RULES_FILE, extracted):
        proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "SUCCESS: 24 rules found" in proc.stdout, proc.stdout + proc.stderr


def test_engine_down_fires_after_for_and_not_while_the_model_loads(tmp_path: Path, rule_file: Path) -> None:
    down = alert(
        POD,
        "critical",
        "Inference engine is down",
        f"The sidecar at {where(POD)} cannot scrape its engine (see scrape_errors_total by reason).",
    )
    grace_minutes = T.engine_start_grace_seconds // 60
    promtool_test(
        tmp_path,
        rule_file,
        [
            {  # up for 20 minutes, then down: pending for `for`, then firing
                "interval": "1m",
                "input_series": [
                    series(N.unified("engine_up"), POD, "1x19 0x20"),
                    series(N.process("start_time_seconds"), POD, "0x40"),
                ],
                "alert_rule_test": [check("24m", "AiruntimeEngineDown"), check("25m", "AiruntimeEngineDown", down)],
            },
            {  # never up since the sidecar started: silent during the grace period, then after `for`
                "interval": "1m",
                "input_series": [
                    series(N.unified("engine_up"), POD, "0x40"),
                    series(N.process("start_time_seconds"), POD, "0x40"),
                ],
                "alert_rule_test": [
                    check(f"{grace_minutes + 5}m", "AiruntimeEngineDown"),
                    check(f"{grace_minutes + 6}m", "AiruntimeEngineDown", down),
                ],
            },
        ],
    )


def test_sidecar_target_down_only_for_targets_that_served_sidecar_metrics(tmp_path: Path, rule_file: Path) -> None:
    node = {"job": "node", "instance": "10.0.0.9:9100"}
    promtool_test(
        tmp_path,
        rule_file,
        [
            {
                "interval": "1m",
                "input_series": [
                    series("up", POD, "1x9 0x20"),
                    series(N.unified("engine_up"), POD, "1x9"),  # the sidecar's series stop with the target
                    series("up", node, "0x30"),  # another exporter down: not ours
                ],
                "alert_rule_test": [
                    check("14m", "AiruntimeSidecarTargetDown"),
                    check(
                        "15m",
                        "AiruntimeSidecarTargetDown",
                        alert(
                            POD,
                            "critical",
                            "airuntime sidecar cannot be scraped",
                            f"Prometheus cannot scrape the sidecar at {where(POD)}; engine metrics are not collected.",
                        ),
                    ),
                ],
            }
        ],
    )


def test_metrics_absent_and_unified_metrics_missing(tmp_path: Path, rule_file: Path) -> None:
    absent = alert(
        {},
        "warning",
        "No airuntime metrics in Prometheus",
        "No sidecar has been scraped: check the ServiceMonitor/PodMonitor labels or the scrape config.",
    )
    missing = alert(
        POD,
        "warning",
        "Engine answers but no unified metrics come out",
        f"The engine beside {where(POD)} is scraped but no airuntime:num_requests_running is served: "
        "wrong --engine, a metrics rules file that drops it, or engine metrics disabled.",
    )
    promtool_test(
        tmp_path,
        rule_file,
        [
            {
                "interval": "1m",
                "input_series": [series("up", {"job": "node", "instance": "n:9100"}, "1x30")],
                "alert_rule_test": [
                    check("9m", "AiruntimeMetricsAbsent"),
                    check("10m", "AiruntimeMetricsAbsent", absent),
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    series(N.unified("engine_up"), POD, "1x30"),
                    series(N.unified("engine_up"), OTHER_POD, "1x30"),
                    series(N.unified("num_requests_running"), {**OTHER_POD, "model_name": "m"}, "0x30"),
                ],
                "alert_rule_test": [
                    check("20m", "AiruntimeMetricsAbsent"),
                    check("9m", "AiruntimeUnifiedMetricsMissing"),
                    check("10m", "AiruntimeUnifiedMetricsMissing", missing),
                ],
            },
        ],
    )


def test_scrape_errors_above_the_ratio_while_the_engine_is_not_simply_down(tmp_path: Path, rule_file: Path) -> None:
    flaky, steady, down = POD, OTHER_POD, {**POD, "instance": "10.0.0.3:9000", "pod": "vllm-2"}
    scrapes_per_minute = 100
    above = T.scrape_error_ratio * 1.2 * scrapes_per_minute
    below = T.scrape_error_ratio * 0.8 * scrapes_per_minute
    inputs = []
    for labels, errors, up in ((flaky, above, "1 0" * 15), (steady, below, "1x30"), (down, scrapes_per_minute, "0x30")):
        inputs += [
            series(N.unified("scrape_errors_total"), {**labels, "reason": "timeout"}, f"0+{errors:g}x30"),
            series(N.unified("scrape_duration_seconds_count"), labels, f"0+{scrapes_per_minute}x30"),
            series(N.unified("engine_up"), labels, up),
        ]
    ratio = f"{T.scrape_error_ratio * 1.2 * 100:.4g}%"
    promtool_test(
        tmp_path,
        rule_file,
        [
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    check("10m", "AiruntimeScrapeErrors"),  # pending since 1m (the first rate)
                    check(
                        "12m",
                        "AiruntimeScrapeErrors",
                        alert(
                            {**flaky, "reason": "timeout"},
                            "warning",
                            "Engine scrapes fail intermittently",
                            f"{ratio} of the engine scrapes at {where(flaky)} fail with reason timeout.",
                        ),
                    ),
                ],
            }
        ],
    )


def test_engine_stalled_when_requests_run_and_no_token_comes(tmp_path: Path, rule_file: Path) -> None:
    model = {"model_name": "m"}
    promtool_test(
        tmp_path,
        rule_file,
        [
            {
                "interval": "1m",
                "input_series": [
                    series(N.unified("num_requests_running"), {**POD, **model}, "2x40"),
                    series(N.unified("generation_tokens_total"), {**POD, **model}, "0+100x10 1000x30"),
                    series(N.unified("num_requests_running"), {**OTHER_POD, **model}, "2x40"),
                    series(N.unified("generation_tokens_total"), {**OTHER_POD, **model}, "0+100x40"),
                ],
                "alert_rule_test": [
                    check("19m", "AiruntimeEngineStalled"),  # tokens stopped at 10m; rate 0 from 15m; for 5m
                    check(
                        "20m",
                        "AiruntimeEngineStalled",
                        alert(
                            POD,
                            "critical",
                            "Engine has running requests but generates no tokens",
                            f"2 requests are running at {where(POD)} and no token came out for 5m.",
                        ),
                    ),
                ],
            }
        ],
    )


def test_queue_growing_above_the_threshold_only(tmp_path: Path, rule_file: Path) -> None:
    model = {"model_name": "m"}
    flat = {**POD, "instance": "10.0.0.3:9000", "pod": "vllm-2"}
    promtool_test(
        tmp_path,
        rule_file,
        [
            {
                "interval": "1m",
                "input_series": [
                    series(N.unified("num_requests_waiting"), {**POD, **model}, "0+1x40"),  # above from 6m, growing
                    series(N.unified("num_requests_waiting"), {**OTHER_POD, **model}, "0+0.1x40"),  # growing, below
                    series(N.unified("num_requests_waiting"), {**flat, **model}, f"{T.queue_waiting * 4:g}x40"),  # flat
                ],
                "alert_rule_test": [
                    check("15m", "AiruntimeQueueGrowing"),
                    check(
                        "16m",
                        "AiruntimeQueueGrowing",
                        alert(
                            POD,
                            "warning",
                            "Request queue keeps growing",
                            f"16 requests are waiting at {where(POD)} and the queue is still growing.",
                        ),
                    ),
                    check(
                        "40m",
                        "AiruntimeQueueGrowing",
                        alert(
                            POD,
                            "warning",
                            "Request queue keeps growing",
                            f"40 requests are waiting at {where(POD)} and the queue is still growing.",
                        ),
                    ),
                ],
            }
        ],
    )


def test_kv_cache_near_full(tmp_path: Path, rule_file: Path) -> None:
    full, fine = {**POD, "model_name": "m"}, {**OTHER_POD, "model_name": "m"}
    promtool_test(
        tmp_path,
        rule_file,
        [
            {
                "interval": "1m",
                "input_series": [
                    series(N.unified("kv_cache_usage_perc"), full, f"{T.kv_cache_usage + 0.02:g}x30"),
                    series(N.unified("kv_cache_usage_perc"), fine, f"{T.kv_cache_usage - 0.02:g}x30"),
                ],
                "alert_rule_test": [
                    check("9m", "AiruntimeKVCacheNearFull"),
                    check(
                        "10m",
                        "AiruntimeKVCacheNearFull",
                        alert(
                            full,
                            "warning",
                            "KV cache nearly full",
                            f"KV cache usage of m at {where(POD)} is {(T.kv_cache_usage + 0.02) * 100:g}%.",
                        ),
                    ),
                ],
            }
        ],
    )


def test_preemptions_above_the_rate(tmp_path: Path, rule_file: Path) -> None:
    model = {"model_name": "m"}
    above, below = T.preemptions_per_second * 2 * 60, T.preemptions_per_second / 2 * 60
    promtool_test(
        tmp_path,
        rule_file,
        [
            {
                "interval": "1m",
                "input_series": [
                    series(N.unified("num_preemptions_total"), {**POD, **model}, f"0+{above:g}x30"),
                    series(N.unified("num_preemptions_total"), {**OTHER_POD, **model}, f"0+{below:g}x30"),
                ],
                "alert_rule_test": [
                    check("10m", "AiruntimePreemptions"),  # a 5m rate ramps up for 5m, then `for` 10m
                    check(
                        "20m",
                        "AiruntimePreemptions",
                        alert(
                            POD,
                            "warning",
                            "Engine preempts requests",
                            f"{T.preemptions_per_second * 2:.2f} preemptions/s at {where(POD)}: the KV cache is too small "
                            "for the load.",
                        ),
                    ),
                ],
            }
        ],
    )


TTFT_LAYOUT = ("0.5", "0.75", "1.0", "2.5", "5.0", "+Inf")


def ttft_series(labels: dict[str, str], per_minute: float, slowest_bucket_below: str) -> list[dict[str, str]]:
    """A TTFT histogram with `per_minute` requests all in the bucket that ends at `slowest_bucket_below`."""
    first = TTFT_LAYOUT.index(slowest_bucket_below)
    return [
        series(
            N.unified("time_to_first_token_seconds_bucket"),
            {**labels, "le": le},
            f"0+{per_minute if i >= first else 0:g}x40",
        )
        for i, le in enumerate(TTFT_LAYOUT)
    ]


def test_ttft_p95_high_with_a_traffic_floor(tmp_path: Path, rule_file: Path) -> None:
    busy = {**POD, "model_name": "busy"}
    quiet = {**OTHER_POD, "model_name": "quiet"}
    fast = {**POD, "instance": "10.0.0.3:9000", "pod": "vllm-2", "model_name": "fast"}
    floor_per_minute = T.ttft_min_requests_per_second * 60
    inputs = [
        *ttft_series(busy, floor_per_minute * 4, "5.0"),  # p95 = 2.5 + 2.5 * 0.95 = 4.875 s
        *ttft_series(quiet, floor_per_minute / 2, "5.0"),  # as slow, below the traffic floor
        *ttft_series(fast, floor_per_minute * 4, "0.75"),  # busy and fast: p95 0.7375 s
    ]
    for labels in (busy, quiet, fast):
        target = {key: labels[key] for key in POD}
        inputs.append(series(N.unified("engine_info"), {**target, "engine": "vllm", "version": "0.32.0"}, "1x40"))
    promtool_test(
        tmp_path,
        rule_file,
        [
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    check("10m", "AiruntimeTTFTHigh"),
                    check(
                        "20m",
                        "AiruntimeTTFTHigh",
                        alert(
                            {"namespace": "llm", "engine": "vllm", "model_name": "busy"},
                            "warning",
                            "Time to first token p95 is high",
                            "p95 time to first token of busy on vllm in llm is 4.875s.",
                        ),
                    ),
                ],
            }
        ],
    )


def test_request_errors_from_finish_reasons_and_failure_counters(tmp_path: Path, rule_file: Path) -> None:
    floor = T.error_min_requests_per_second * 60
    ok_per_minute = floor * 20
    above = ok_per_minute * T.error_ratio * 2  # ratio ~ 2x the threshold
    below = ok_per_minute * T.error_ratio / 2
    success = N.unified("request_success_total")
    vllm_bad = {**POD, "model_name": "bad"}
    vllm_good = {**OTHER_POD, "model_name": "good"}
    tgi = {**POD, "instance": "10.0.0.3:9000", "pod": "tgi-0"}  # TGI: no model_name, failures counted apart
    quiet = {**POD, "instance": "10.0.0.4:9000", "pod": "vllm-4", "model_name": "quiet"}
    inputs = [
        series(success, {**vllm_bad, "finished_reason": "stop"}, f"0+{ok_per_minute:g}x30"),
        series(success, {**vllm_bad, "finished_reason": "error"}, f"0+{above:g}x30"),
        series(success, {**vllm_good, "finished_reason": "stop"}, f"0+{ok_per_minute:g}x30"),
        series(success, {**vllm_good, "finished_reason": "error"}, f"0+{below:g}x30"),
        series(success, tgi, f"0+{ok_per_minute:g}x30"),
        series(N.unified("request_failure_total"), {**tgi, "err": "validation"}, f"0+{above:g}x30"),
        series(success, {**quiet, "finished_reason": "error"}, f"0+{floor / 2:g}x30"),  # all fail, below the floor
    ]
    ratio = f"{above / (ok_per_minute + above) * 100:.4g}%"
    promtool_test(
        tmp_path,
        rule_file,
        [
            {
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    check("10m", "AiruntimeRequestErrors"),
                    check(
                        "20m",
                        "AiruntimeRequestErrors",
                        alert(
                            {"namespace": "llm"},
                            "warning",
                            "Requests fail",
                            f"{ratio} of the requests for  in llm fail.",
                        ),
                        alert(
                            {"namespace": "llm", "model_name": "bad"},
                            "warning",
                            "Requests fail",
                            f"{ratio} of the requests for bad in llm fail.",
                        ),
                    ),
                ],
            }
        ],
    )


# --------------------------------------------------------------------------------------------- bucket layouts


def fixture_bounds(fixture: str, histogram: str) -> list[str]:
    """The `le` values of a unified histogram, as the sidecar serves it for a recorded engine exposition."""
    rewriter = MetricsRewriter(compile_rules("auto", None, "default", None))
    rewriter.feed((FIXTURES / fixture).read_bytes())
    rewriter.finish()
    bucket = N.unified(f"{histogram}_bucket") + "{"
    bounds: list[str] = []
    for line in rewriter.take_bytes().decode().splitlines():
        if line.startswith(bucket):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            if le not in bounds:
                bounds.append(le)
    return bounds


def histogram_series(
    labels: dict[str, str], bounds: list[str], per_minute: float, above: float, upto: float
) -> list[dict[str, str]]:
    """Buckets with `per_minute` observations each minute, all in (above, upto]: counted from the first bound >= upto
    (which must be a bound of the layout, and `above` the one before it)."""
    numeric = [float(b) for b in bounds]
    assert upto in numeric and above in numeric and numeric.index(above) == numeric.index(upto) - 1, bounds
    return [
        series(
            N.unified("time_to_first_token_seconds_bucket"),
            {**labels, "le": le},
            f"0+{per_minute if float(le) >= upto else 0:g}x20",
        )
        for le in bounds
    ]


def interpolate(lower: float, upper: float, fraction: float) -> float:
    """histogram_quantile's linear interpolation inside one bucket, in the same float operations."""
    return lower + (upper - lower) * fraction


def info(labels: dict[str, str], engine: str) -> dict[str, str]:
    return series(N.unified("engine_info"), {**labels, "engine": engine, "version": "x"}, "1x20")


def test_latency_quantiles_per_engine_on_real_bucket_layouts(tmp_path: Path, rule_file: Path) -> None:
    """vLLM and SGLang both serve a model called "tiny" with their own TTFT buckets (from the recorded fixtures).
    Summed by `le` alone the layouts mix; the recorded series keep each engine apart."""
    vllm = fixture_bounds("vllm-0.32.0-metrics.txt", "time_to_first_token_seconds")
    sglang = fixture_bounds("sglang-0.5.23-metrics.txt", "time_to_first_token_seconds")
    assert vllm != sglang and "0.06" in vllm and "0.06" not in sglang and "0.4" in sglang and "0.4" not in vllm
    vllm_pod = {**POD, "model_name": "tiny"}
    sglang_pod = {**OTHER_POD, "pod": "sglang-0", "model_name": "tiny"}
    inputs = [
        *histogram_series(vllm_pod, vllm, 60, 0.04, 0.06),  # every TTFT in (0.04, 0.06]
        info(vllm_pod, "vllm"),
        *histogram_series(sglang_pod, sglang, 60, 0.2, 0.4),  # every TTFT in (0.2, 0.4]
        info(sglang_pod, "sglang"),
    ]
    shared = N.shared_buckets_rate("time_to_first_token_seconds")
    promtool_test(
        tmp_path,
        rule_file,
        [
            {
                "interval": "1m",
                "input_series": inputs,
                "promql_expr_test": [
                    {  # per engine: 0.04 + 0.02 * 0.75 and 0.2 + 0.2 * 0.75, each inside its own engine's bucket
                        "expr": f"histogram_quantile(0.75, sum by (le, engine, model_name) ({shared}))",
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": '{engine="vllm",model_name="tiny"}', "value": interpolate(0.04, 0.06, 0.75)},
                            {"labels": '{engine="sglang",model_name="tiny"}', "value": interpolate(0.2, 0.4, 0.75)},
                        ],
                    },
                    {  # what the recording rules prevent: one sum over both layouts puts p75 at 0.9 s, above every
                        # observation (all are <= 0.4 s), because each engine's counts are missing at the other's bounds
                        "expr": "histogram_quantile(0.75, sum by (le) "
                        f"(rate({N.unified('time_to_first_token_seconds_bucket')}[5m])))",
                        "eval_time": "10m",
                        "exp_samples": [{"labels": "{}", "value": 0.9}],
                    },
                ],
            }
        ],
    )


def test_one_engine_with_two_layouts_keeps_only_the_shared_bounds(tmp_path: Path, rule_file: Path) -> None:
    """A vLLM pod with custom buckets beside one with the defaults: only the bounds both have are kept, so the SLO
    share at any offered bound is exact (a naive sum says half the requests are within 0.5 s; all of them are)."""
    default = fixture_bounds("vllm-0.32.0-metrics.txt", "time_to_first_token_seconds")
    custom = ["0.1", "0.3", "0.6", "1.0", "+Inf"]
    shared = [b for b in default if b in custom]
    assert shared == ["0.1", "1.0", "+Inf"]
    pod_default = {**POD, "model_name": "tiny"}
    pod_custom = {**OTHER_POD, "model_name": "tiny"}
    inputs = [
        *histogram_series(pod_default, default, 60, 0.25, 0.5),  # all in (0.25, 0.5]
        info(pod_default, "vllm"),
        *histogram_series(pod_custom, custom, 60, 0.1, 0.3),  # all in (0.1, 0.3]
        info(pod_custom, "vllm"),
    ]
    recorded = N.shared_buckets_rate("time_to_first_token_seconds")
    raw = N.unified("time_to_first_token_seconds_bucket")
    promtool_test(
        tmp_path,
        rule_file,
        [
            {
                "interval": "1m",
                "input_series": inputs,
                "promql_expr_test": [
                    {
                        "expr": f"count by (le) ({recorded})",
                        "eval_time": "10m",
                        "exp_samples": [{"labels": f'{{le="{le}"}}', "value": 2} for le in shared],
                    },
                    {  # SLO share within 1.0 s from the recorded series: exact
                        "expr": f'sum({recorded}{{le="1.0"}}) / sum({recorded}{{le="+Inf"}})',
                        "eval_time": "10m",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    },
                    {  # the same from raw buckets at a bound only one layout has: half, where the truth is all
                        "expr": f'sum(rate({raw}{{le="0.5"}}[5m])) / sum(rate({raw}{{le="+Inf"}}[5m]))',
                        "eval_time": "10m",
                        "exp_samples": [{"labels": "{}", "value": 0.5}],
                    },
                ],
            }
        ],
    )
