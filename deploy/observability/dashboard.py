"""The airuntime Grafana dashboard: health, traffic, latency, saturation, and the sidecar's downloads and LoRA work,
built only on the unified names (`PREFIX:*`), the sidecar's own metrics and the recording rules of `rules.py`."""

from __future__ import annotations

from typing import Any

from deploy.observability.grafana import (
    Query,
    Row,
    datasource_variable,
    heatmap,
    layout,
    query_variable,
    stat,
    state_timeline,
    table,
    thresholds,
    timeseries,
)
from deploy.observability.promql import (
    LATENCY_HISTOGRAMS,
    Names,
    agg,
    increase,
    quantile,
    rate,
    safe_div,
    selector,
)
from deploy.observability.rules import LATENCY_GROUP

SCHEMA_VERSION = 39
TARGET = ('job=~"$job"', 'namespace=~"$namespace"', 'pod=~"$pod"')
MODEL = (*TARGET, 'model_name=~"$model_name"')
POD = ("pod", "instance")
POD_LEGEND = "{{pod}} {{instance}}"
QUANTILES = (0.5, 0.95, 0.99)


def health_row(n: Names) -> Row:
    up = selector(n.unified("engine_up"), TARGET)
    targets = selector(n.recorded("up", "sidecar_targets"), TARGET)
    errors = selector(n.unified("scrape_errors_total"), TARGET)
    scrape = selector(n.unified("scrape_duration_seconds_bucket"), TARGET)
    return Row(
        "Health",
        (
            stat(
                "Engines up",
                "Sidecars whose last scrape of their engine succeeded.",
                "none",
                Query(agg("sum", (), up)),
                thresholds(("red", None), ("green", 1)),
            ),
            stat(
                "Engines down",
                "Sidecars that cannot scrape their engine (engine_up 0).",
                "none",
                Query(f"count({up} == 0) or vector(0)"),
                thresholds(("green", None), ("red", 1)),
            ),
            stat(
                "Sidecar targets down",
                "Sidecar targets Prometheus cannot scrape (recording rule over `up`).",
                "none",
                Query(f"count({targets} == 0) or vector(0)"),
                thresholds(("green", None), ("red", 1)),
            ),
            stat(
                "Scrape error ratio",
                "Share of the sidecars' engine scrapes that failed.",
                "percentunit",
                Query(
                    safe_div(
                        agg("sum", (), rate(errors)),
                        agg("sum", (), rate(selector(n.unified("scrape_duration_seconds_count"), TARGET))),
                    )
                ),
                thresholds(("green", None), ("orange", 0.01), ("red", 0.05)),
            ),
            state_timeline(
                "Engine up by pod",
                "1 while the sidecar's last scrape of its engine succeeded.",
                Query(agg("max", POD, up), POD_LEGEND),
            ),
            table(
                "Engines and versions",
                "The engine each sidecar serves (configured or recognised) and the version it reports.",
                Query(
                    agg(
                        "max",
                        ("namespace", "pod", "instance", "engine", "version"),
                        selector(n.unified("engine_info"), TARGET),
                    )
                ),
            ),
            timeseries(
                "Scrape errors by reason",
                "Failed scrapes of the engine's metrics per second: connect, timeout, http_status, truncated, "
                "garbage, too_large, other.",
                "ops",
                Query(agg("sum", ("reason",), rate(errors)), "{{reason}}"),
                stack=True,
            ),
            timeseries(
                "Engine scrape duration",
                "How long the sidecars take to fetch and rewrite the engine's metrics (p50, p99).",
                "s",
                *(Query(quantile(q, POD, rate(scrape)), f"p{q * 100:g} {POD_LEGEND}") for q in (0.5, 0.99)),
            ),
        ),
    )


def traffic_row(n: Names) -> Row:
    success = selector(n.unified("request_success_total"), MODEL)
    errors = selector(n.recorded("request_errors", "rate5m"), MODEL)
    requests = selector(n.recorded("requests", "rate5m"), MODEL)
    return Row(
        "Traffic",
        (
            timeseries(
                "Finished requests by reason",
                "Requests the engines finished per second, by finish reason (stop, length, abort, error...).",
                "reqps",
                Query(agg("sum", ("finished_reason",), rate(success)), "{{finished_reason}}"),
                stack=True,
            ),
            timeseries(
                "Requests by model",
                "Finished requests per second for each model.",
                "reqps",
                Query(agg("sum", ("model_name",), rate(success)), "{{model_name}}"),
            ),
            timeseries(
                "Token throughput",
                "Prompt tokens processed and tokens generated per second, by model.",
                "short",
                Query(
                    agg("sum", ("model_name",), rate(selector(n.unified("prompt_tokens_total"), MODEL))),
                    "prompt {{model_name}}",
                ),
                Query(
                    agg("sum", ("model_name",), rate(selector(n.unified("generation_tokens_total"), MODEL))),
                    "generation {{model_name}}",
                ),
            ),
            timeseries(
                "Request error ratio",
                "Failed requests over all requests (5m rate; failure counters where the engine has them, else "
                "the 'error' finish reason).",
                "percentunit",
                Query(
                    safe_div(agg("sum", ("model_name",), errors), agg("sum", ("model_name",), requests)),
                    "{{model_name}}",
                ),
            ),
        ),
    )


def latency_panel(n: Names, histogram: str, title: str) -> Any:
    shared = selector(n.shared_buckets_rate(histogram), MODEL)
    mean = safe_div(
        agg("sum", ("model_name",), rate(selector(n.unified(f"{histogram}_sum"), MODEL))),
        agg("sum", ("model_name",), rate(selector(n.unified(f"{histogram}_count"), MODEL))),
    )
    queries = [
        Query(quantile(q, LATENCY_GROUP, shared), f"p{q * 100:g} {{{{engine}}}} {{{{model_name}}}}") for q in QUANTILES
    ]
    queries.append(Query(mean, "mean {{model_name}}"))
    description = (
        f"{title}: p50, p95 and p99 per engine and model (5m, over the bucket bounds every pod of that engine and "
        "model shares), and the mean per model."
    )
    return timeseries(title, description, "s", *queries)


def latency_row(n: Names) -> Row:
    panels = [latency_panel(n, histogram, title) for histogram, title in LATENCY_HISTOGRAMS]
    ttft = n.shared_buckets_rate("time_to_first_token_seconds")
    e2e = n.shared_buckets_rate("e2e_request_latency_seconds")
    by_engine = (*MODEL, 'engine="$engine"')
    panels += [
        heatmap(
            "Time to first token heatmap ($engine)",
            "Requests per second in each time-to-first-token bucket, for one engine's bucket layout.",
            "s",
            Query(agg("sum", ("le",), selector(ttft, by_engine))),
        ),
        heatmap(
            "End-to-end latency heatmap ($engine)",
            "Requests per second in each end-to-end latency bucket, for one engine's bucket layout.",
            "s",
            Query(agg("sum", ("le",), selector(e2e, by_engine))),
        ),
        timeseries(
            "TTFT SLO attainment (≤ $ttft_slo s)",
            "Share of requests whose time to first token is within the chosen bucket bound, per engine and model.",
            "percentunit",
            Query(
                safe_div(
                    agg("sum", LATENCY_GROUP, selector(ttft, (*MODEL, 'le="$ttft_slo"'))),
                    agg("sum", LATENCY_GROUP, selector(ttft, (*MODEL, 'le="+Inf"'))),
                ),
                "{{engine}} {{model_name}}",
            ),
            defaults={"min": 0, "max": 1},
        ),
    ]
    return Row("Latency", tuple(panels))


def saturation_row(n: Names) -> Row:
    hits = rate(selector(n.unified("prefix_cache_hits_total"), MODEL))
    queries = rate(selector(n.unified("prefix_cache_queries_total"), MODEL))
    return Row(
        "Saturation",
        (
            timeseries(
                "Running and waiting requests",
                "Requests in the engines' batches and in their queues, by pod.",
                "none",
                Query(agg("sum", POD, selector(n.unified("num_requests_running"), MODEL)), f"running {POD_LEGEND}"),
                Query(agg("sum", POD, selector(n.unified("num_requests_waiting"), MODEL)), f"waiting {POD_LEGEND}"),
            ),
            timeseries(
                "KV cache usage",
                "Fraction of the KV cache in use (0-1), by pod and model.",
                "percentunit",
                Query(
                    agg("max", (*POD, "model_name"), selector(n.unified("kv_cache_usage_perc"), MODEL)),
                    f"{POD_LEGEND} {{{{model_name}}}}",
                ),
                defaults={
                    "min": 0,
                    "max": 1,
                    "thresholds": thresholds(("green", None), ("orange", 0.9), ("red", 0.98)),
                },
            ),
            timeseries(
                "Preemptions",
                "Requests preempted (vLLM) or retracted (SGLang) per second: the KV cache is too small for the load.",
                "ops",
                Query(agg("sum", POD, rate(selector(n.unified("num_preemptions_total"), MODEL))), POD_LEGEND),
            ),
            timeseries(
                "Prefix cache hit ratio",
                "Prompt tokens served from the prefix cache over prompt tokens looked up, by model.",
                "percentunit",
                Query(
                    safe_div(agg("sum", ("model_name",), hits), agg("sum", ("model_name",), queries)), "{{model_name}}"
                ),
                defaults={"min": 0, "max": 1},
            ),
        ),
    )


def sidecar_row(n: Names) -> Row:
    def own(name: str) -> str:
        return selector(n.unified(name), TARGET)

    return Row(
        "Downloads, LoRA and the sidecar",
        (
            timeseries(
                "Download throughput",
                "Bytes per second fetched by model and adapter downloads, by source kind.",
                "Bps",
                Query(agg("sum", ("source",), rate(own("download_bytes_total"))), "{{source}}"),
            ),
            timeseries(
                "Downloads",
                "Files downloaded and verified, and failed downloads, per interval; downloads running now.",
                "short",
                Query(agg("sum", ("source",), increase(own("download_files_total"))), "files {{source}}"),
                Query(
                    agg("sum", ("source", "reason"), increase(own("download_failures_total"))),
                    "failed {{source}} {{reason}}",
                ),
                Query(agg("sum", (), own("downloads_active")), "running"),
            ),
            timeseries(
                "LoRA adapters by state",
                "Adapters the sidecars manage: downloading, loading, loaded, failed, unloading.",
                "none",
                Query(agg("sum", ("state",), own("lora_adapters")), "{{state}}"),
                stack=True,
            ),
            timeseries(
                "LoRA operations",
                "Load, reload (after the engine lost an adapter) and unload operations per second, by result.",
                "ops",
                Query(
                    agg("sum", ("operation", "result"), rate(own("lora_operations_total"))), "{{operation}} {{result}}"
                ),
            ),
            timeseries(
                "LoRA operation duration p95",
                "95th percentile duration of LoRA operations, downloads included.",
                "s",
                Query(
                    quantile(0.95, ("operation",), rate(own("lora_operation_duration_seconds_bucket"))), "{{operation}}"
                ),
            ),
            timeseries(
                "Sidecar CPU",
                "CPU seconds per second used by each sidecar process.",
                "short",
                Query(agg("sum", POD, rate(selector(n.process("cpu_seconds_total"), TARGET))), POD_LEGEND),
                width=6,
            ),
            timeseries(
                "Sidecar memory",
                "Resident memory of each sidecar process.",
                "bytes",
                Query(agg("sum", POD, selector(n.process("resident_memory_bytes"), TARGET)), POD_LEGEND),
                width=6,
            ),
        ),
    )


def variables(n: Names) -> list[dict[str, Any]]:
    up = n.unified("engine_up")
    return [
        datasource_variable(),
        query_variable("job", "Job", f"label_values({up}, job)", all_value=None),
        query_variable("namespace", "Namespace", f'label_values({up}{{job=~"$job"}}, namespace)'),
        query_variable("pod", "Pod", f'label_values({up}{{job=~"$job",namespace=~"$namespace"}}, pod)'),
        query_variable(
            "model_name",
            "Model",
            f"label_values({selector(n.unified('num_requests_running'), TARGET)}, model_name)",
        ),
        query_variable(
            "engine",
            "Engine (heatmaps)",
            f"label_values({selector(n.unified('engine_info'), TARGET)}, engine)",
            multi=False,
        ),
        query_variable(
            "ttft_slo",
            "TTFT SLO (s)",
            f"label_values({selector(n.shared_buckets_rate('time_to_first_token_seconds'), MODEL)}, le)",
            multi=False,
            regex="/^[0-9.]+(e[-+]?[0-9]+)?$/",
            sort=3,
            current="1.0",
        ),
    ]


def rows(n: Names) -> tuple[Row, ...]:
    return (health_row(n), traffic_row(n), latency_row(n), saturation_row(n), sidecar_row(n))


def dashboard(names: Names) -> dict[str, Any]:
    prefix = names.prefix
    return {
        "id": None,
        "uid": f"{prefix}-engines",
        "title": f"{prefix}: LLM engines",
        "description": f"Any inference engine behind an airuntime sidecar, through the unified {prefix}:* metrics.",
        "tags": ["airuntime", "llm", "inference"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "version": 1,
        "links": [],
        "annotations": {"list": []},
        "templating": {"list": variables(names)},
        "panels": layout(rows(names)),
    }
