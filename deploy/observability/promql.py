"""PromQL building blocks shared by the dashboard and the rules: metric names for a prefix, selectors, rates,
aggregations, safe division and histogram quantiles that always keep `le`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

RATE_INTERVAL = "$__rate_interval"
RULE_WINDOW = "5m"

# The labels one sidecar target is known by: Prometheus' own (job, instance) plus Kubernetes' (namespace, pod).
TARGET_LABELS = ("job", "namespace", "pod", "instance")
# How an engine series is joined to its sidecar's `engine_info`: both come from the same scrape target.
JOIN_LABELS = ("job", "instance")
# Latency histograms with a unified name (`PREFIX:<name>_bucket`), each with its dashboard title.
LATENCY_HISTOGRAMS: tuple[tuple[str, str], ...] = (
    ("time_to_first_token_seconds", "Time to first token"),
    ("request_time_per_output_token_seconds", "Time per output token (per request)"),
    ("time_per_output_token_seconds", "Inter-token latency"),
    ("e2e_request_latency_seconds", "End-to-end latency"),
    ("request_queue_time_seconds", "Queue time"),
)


@dataclass(frozen=True)
class Names:
    """Metric names under one `--metrics-prefix` (unified families, the sidecar's own, the recorded series)."""

    prefix: str = "airuntime"

    def unified(self, name: str) -> str:
        """`PREFIX:name`: a unified engine family or one of the sidecar's own metrics."""
        return f"{self.prefix}:{name}"

    def process(self, name: str) -> str:
        """The sidecar's process collector: `PREFIX_sidecar_process_<name>`."""
        return f"{self.prefix}_sidecar_process_{name}"

    def recorded(self, name: str, operation: str) -> str:
        """A recording rule's output: `PREFIX:<name>:<operation>`."""
        return f"{self.prefix}:{name}:{operation}"

    def buckets_rate(self, histogram: str) -> str:
        """Per-target bucket rates with the sidecar's `engine` label attached."""
        return self.recorded(f"{histogram}_bucket", "rate5m")

    def shared_buckets_rate(self, histogram: str) -> str:
        """`buckets_rate` restricted to the bounds every target of its (engine, model_name) group has."""
        return self.recorded(f"{histogram}_bucket", "rate5m_shared_le")


def selector(metric: str, matchers: Iterable[str] = ()) -> str:
    """`metric{m1,m2}`; just `metric` without matchers."""
    inner = ",".join(matchers)
    return f"{metric}{{{inner}}}" if inner else metric


def by(labels: Sequence[str]) -> str:
    return ", ".join(labels)


def rate(series: str, window: str = RATE_INTERVAL) -> str:
    return f"rate({series}[{window}])"


def increase(series: str, window: str = RATE_INTERVAL) -> str:
    return f"increase({series}[{window}])"


def agg(op: str, labels: Sequence[str], expr: str) -> str:
    """`op by (labels) (expr)`, or `op(expr)` without labels."""
    return f"{op} by ({by(labels)}) ({expr})" if labels else f"{op}({expr})"


def safe_div(numerator: str, denominator: str) -> str:
    """A ratio that is absent instead of NaN or +Inf while the denominator is 0 (no traffic)."""
    return f"{numerator} / ({denominator} > 0)"


def quantile(q: float, labels: Sequence[str], bucket_rates: str) -> str:
    """`histogram_quantile` over bucket rates summed by `le` plus `labels` (never without `le`)."""
    return f"histogram_quantile({q:g}, sum by (le, {by(labels)}) ({bucket_rates}))"
