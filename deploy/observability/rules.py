"""The Prometheus rules: recording rules (per-engine latency buckets, request and error rates, sidecar targets) and
the alerts, as one `groups:` document and as a PrometheusRule for the Prometheus Operator built from it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from deploy.observability.promql import (
    JOIN_LABELS,
    LATENCY_HISTOGRAMS,
    RULE_WINDOW,
    TARGET_LABELS,
    Names,
    agg,
    by,
    quantile,
    rate,
    safe_div,
    selector,
)

# Grouping of latency quantiles: one bucket layout per engine (and its shared bounds), per model.
LATENCY_GROUP = ("engine", "model_name")
ERROR_GROUP = ("namespace", "model_name")
# vLLM counts failed requests as finished with this reason; TGI and Triton have a failure counter instead.
ERROR_FINISH_REASON = "error"


@dataclass(frozen=True)
class Thresholds:
    """Alert thresholds and durations; every one is a generator parameter (see `generate.py --help`)."""

    engine_down_for: str = "5m"
    engine_start_grace_seconds: int = 900  # a sidecar younger than this is loading (or downloading) its model
    target_down_for: str = "5m"
    metrics_absent_for: str = "10m"
    scrape_error_ratio: float = 0.05
    scrape_errors_for: str = "10m"
    stalled_for: str = "5m"
    queue_waiting: float = 5
    queue_for: str = "10m"
    kv_cache_usage: float = 0.95
    kv_cache_for: str = "10m"
    preemptions_per_second: float = 0.1
    preemptions_for: str = "10m"
    ttft_p95_seconds: float = 2.0
    ttft_min_requests_per_second: float = 0.05
    ttft_for: str = "10m"
    error_ratio: float = 0.05
    error_min_requests_per_second: float = 0.05
    errors_for: str = "10m"


@dataclass(frozen=True)
class RuleSettings:
    names: Names = field(default_factory=Names)
    thresholds: Thresholds = field(default_factory=Thresholds)
    absent_matchers: tuple[str, ...] = ()  # e.g. ('job="airuntime"',) to watch one job only
    prometheus_rule_labels: tuple[tuple[str, str], ...] = (("app.kubernetes.io/name", "airuntime"),)

    def with_thresholds(self, **changes: Any) -> RuleSettings:
        return replace(self, thresholds=replace(self.thresholds, **changes))


# --------------------------------------------------------------------------------------------- recording


def histogram_rules(n: Names, histogram: str) -> list[dict[str, str]]:
    """Two rules per latency histogram: bucket rates per target with `engine` attached, then only the bounds that
    every target of the same (engine, model_name) has, so summing across targets never mixes bucket layouts."""
    bucket = n.unified(f"{histogram}_bucket")
    per_target = n.buckets_rate(histogram)
    info = agg("max", (*JOIN_LABELS, "engine"), n.unified("engine_info"))
    # Aggregate first: the engine's own `engine` label (vLLM's and LMDeploy's engine index) must be gone before the
    # sidecar's `engine` (vllm, sglang, ...) is joined in.
    attached = (
        f"{agg('sum', (*TARGET_LABELS, 'model_name', 'le'), rate(bucket, RULE_WINDOW))}\n"
        f"* on ({by(JOIN_LABELS)}) group_left (engine)\n{info}"
    )
    group = by(LATENCY_GROUP)
    targets_in_group = agg("count", LATENCY_GROUP, selector(per_target, ('le="+Inf"',)))
    shared = (
        f"{per_target}\nand on ({group}, le)\n"
        f"(\n  count by ({group}, le) ({per_target})\n  == on ({group}) group_left ()\n  {targets_in_group}\n)"
    )
    return [
        {"record": per_target, "expr": attached},
        {"record": n.shared_buckets_rate(histogram), "expr": shared},
    ]


def request_rules(n: Names) -> list[dict[str, str]]:
    """Finished requests (any reason, plus failures where the engine counts them apart) and failed requests."""
    success = n.unified("request_success_total")
    failure = n.unified("request_failure_total")
    labels = (*TARGET_LABELS, "model_name")
    success_rate = agg("sum", labels, rate(success, RULE_WINDOW))
    failure_rate = agg("sum", labels, rate(failure, RULE_WINDOW))
    error_finishes = agg(
        "sum", labels, rate(selector(success, (f'finished_reason="{ERROR_FINISH_REASON}"',)), RULE_WINDOW)
    )
    return [
        {
            "record": n.recorded("requests", "rate5m"),
            "expr": f"{success_rate}\n+ ({failure_rate} or {success_rate} * 0)",
        },
        {"record": n.recorded("request_errors", "rate5m"), "expr": f"{failure_rate}\nor {error_finishes}"},
    ]


def sidecar_target_rule(n: Names) -> dict[str, str]:
    """`up` of the targets that served sidecar metrics within a day: their `up` alone, whatever the job is called."""
    return {
        "record": n.recorded("up", "sidecar_targets"),
        "expr": f"up\nand on ({by(JOIN_LABELS)})\npresent_over_time({n.unified('engine_up')}[1d])",
    }


def recording_rules(n: Names) -> list[dict[str, str]]:
    rules = [sidecar_target_rule(n), *request_rules(n)]
    for histogram, _title in LATENCY_HISTOGRAMS:
        rules += histogram_rules(n, histogram)
    return rules


# --------------------------------------------------------------------------------------------- alerts


def _alert(name: str, expr: str, duration: str, severity: str, summary: str, description: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": duration,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    }


WHERE = "{{ $labels.namespace }}/{{ $labels.pod }} ({{ $labels.job }} {{ $labels.instance }})"


def availability_alerts(s: RuleSettings) -> list[dict[str, Any]]:
    n, t = s.names, s.thresholds
    started = n.process("start_time_seconds")
    return [
        _alert(
            "AiruntimeEngineDown",
            f"{n.unified('engine_up')} == 0\nand on ({by(JOIN_LABELS)})\n"
            f"(time() - {started}) > {t.engine_start_grace_seconds}",
            t.engine_down_for,
            "critical",
            "Inference engine is down",
            f"The sidecar at {WHERE} cannot scrape its engine (see scrape_errors_total by reason).",
        ),
        _alert(
            "AiruntimeSidecarTargetDown",
            f"{n.recorded('up', 'sidecar_targets')} == 0",
            t.target_down_for,
            "critical",
            "airuntime sidecar cannot be scraped",
            f"Prometheus cannot scrape the sidecar at {WHERE}; engine metrics are not collected.",
        ),
        _alert(
            "AiruntimeMetricsAbsent",
            f"absent({selector(n.unified('engine_up'), s.absent_matchers)})",
            t.metrics_absent_for,
            "warning",
            "No airuntime metrics in Prometheus",
            "No sidecar has been scraped: check the ServiceMonitor/PodMonitor labels or the scrape config.",
        ),
        _alert(
            "AiruntimeUnifiedMetricsMissing",
            f"{n.unified('engine_up')} == 1\nunless on ({by(JOIN_LABELS)})\n{n.unified('num_requests_running')}",
            t.metrics_absent_for,
            "warning",
            "Engine answers but no unified metrics come out",
            f"The engine beside {WHERE} is scraped but no {n.unified('num_requests_running')} is served: wrong "
            "--engine, a metrics rules file that drops it, or engine metrics disabled.",
        ),
        _alert(
            "AiruntimeScrapeErrors",
            f"{agg('sum', (*TARGET_LABELS, 'reason'), rate(n.unified('scrape_errors_total'), RULE_WINDOW))}\n"
            f"/ on ({by(TARGET_LABELS)}) group_left ()\n"
            f"({agg('sum', TARGET_LABELS, rate(n.unified('scrape_duration_seconds_count'), RULE_WINDOW))} > 0)\n"
            f"> {t.scrape_error_ratio:g}\n"
            f"and on ({by(JOIN_LABELS)})\nmax_over_time({n.unified('engine_up')}[{RULE_WINDOW}]) == 1",
            t.scrape_errors_for,
            "warning",
            "Engine scrapes fail intermittently",
            f"{{{{ $value | humanizePercentage }}}} of the engine scrapes at {WHERE} fail with "
            "reason {{ $labels.reason }}.",
        ),
    ]


def saturation_alerts(s: RuleSettings) -> list[dict[str, Any]]:
    n, t = s.names, s.thresholds
    running = agg("sum", TARGET_LABELS, n.unified("num_requests_running"))
    tokens = agg("sum", TARGET_LABELS, rate(n.unified("generation_tokens_total"), RULE_WINDOW))
    waiting = agg("sum", TARGET_LABELS, n.unified("num_requests_waiting"))
    growth = agg("sum", TARGET_LABELS, f"deriv({n.unified('num_requests_waiting')}[10m])")
    return [
        _alert(
            "AiruntimeEngineStalled",
            f"{running} > 0\nand on ({by(JOIN_LABELS)})\n{tokens} == 0",
            t.stalled_for,
            "critical",
            "Engine has running requests but generates no tokens",
            f"{{{{ $value }}}} requests are running at {WHERE} and no token came out for {RULE_WINDOW}.",
        ),
        _alert(
            "AiruntimeQueueGrowing",
            f"{waiting} > {t.queue_waiting:g}\nand on ({by(JOIN_LABELS)})\n{growth} > 0",
            t.queue_for,
            "warning",
            "Request queue keeps growing",
            f"{{{{ $value }}}} requests are waiting at {WHERE} and the queue is still growing.",
        ),
        _alert(
            "AiruntimeKVCacheNearFull",
            f"{agg('max', (*TARGET_LABELS, 'model_name'), n.unified('kv_cache_usage_perc'))} > {t.kv_cache_usage:g}",
            t.kv_cache_for,
            "warning",
            "KV cache nearly full",
            f"KV cache usage of {{{{ $labels.model_name }}}} at {WHERE} is {{{{ $value | humanizePercentage }}}}.",
        ),
        _alert(
            "AiruntimePreemptions",
            f"{agg('sum', TARGET_LABELS, rate(n.unified('num_preemptions_total'), RULE_WINDOW))}"
            f" > {t.preemptions_per_second:g}",
            t.preemptions_for,
            "warning",
            "Engine preempts requests",
            f'{{{{ $value | printf "%.2f" }}}} preemptions/s at {WHERE}: the KV cache is too small for the load.',
        ),
    ]


def service_alerts(s: RuleSettings) -> list[dict[str, Any]]:
    n, t = s.names, s.thresholds
    ttft = n.shared_buckets_rate("time_to_first_token_seconds")
    ttft_group = ("namespace", *LATENCY_GROUP)
    ttft_traffic = agg("sum", ttft_group, selector(ttft, ('le="+Inf"',)))
    errors = agg("sum", ERROR_GROUP, n.recorded("request_errors", "rate5m"))
    requests = agg("sum", ERROR_GROUP, n.recorded("requests", "rate5m"))
    return [
        _alert(
            "AiruntimeTTFTHigh",
            f"{quantile(0.95, ttft_group, ttft)} > {t.ttft_p95_seconds:g}\n"
            f"and on ({by(ttft_group)})\n{ttft_traffic} > {t.ttft_min_requests_per_second:g}",
            t.ttft_for,
            "warning",
            "Time to first token p95 is high",
            "p95 time to first token of {{ $labels.model_name }} on {{ $labels.engine }} in {{ $labels.namespace }} "
            "is {{ $value | humanizeDuration }}.",
        ),
        _alert(
            "AiruntimeRequestErrors",
            f"{safe_div(errors, requests)} > {t.error_ratio:g}\n"
            f"and on ({by(ERROR_GROUP)})\n{requests} > {t.error_min_requests_per_second:g}",
            t.errors_for,
            "warning",
            "Requests fail",
            "{{ $value | humanizePercentage }} of the requests for {{ $labels.model_name }} in "
            "{{ $labels.namespace }} fail.",
        ),
    ]


def alert_rules(s: RuleSettings) -> list[dict[str, Any]]:
    return [*availability_alerts(s), *saturation_alerts(s), *service_alerts(s)]


# --------------------------------------------------------------------------------------------- documents


def rule_groups(s: RuleSettings) -> dict[str, Any]:
    """The plain Prometheus rules file (`rule_files:`).

    One group: its rules run in order at each evaluation, so an alert reads the recording rules of the same instant.
    Groups run independently (concurrently in Prometheus, in no fixed order in `promtool test rules`), and an alert
    in a second group could see a recorded series one interval late, which shifts when it fires.
    """
    return {"groups": [{"name": s.names.prefix, "rules": [*recording_rules(s.names), *alert_rules(s)]}]}


def prometheus_rule(s: RuleSettings) -> dict[str, Any]:
    """The same groups as a `monitoring.coreos.com/v1` PrometheusRule."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": f"{s.names.prefix}-rules", "labels": dict(s.prometheus_rule_labels)},
        "spec": rule_groups(s),
    }
