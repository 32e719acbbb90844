"""The sidecar's own metrics, rendered after the engine's on every `/metrics` answer.

They live in a registry of their own (runtime/metrics/registry.py), named with the metrics prefix, so they never
collide with the engine's families (engines export `process_*` and `python_*` too). The families are declared as
data (`FAMILIES`): name, type, help, labels and, for histograms, buckets. The KV-event relay adds its own families
to the same registry when it runs.
"""

from __future__ import annotations

from typing import Any

from runtime import __version__
from runtime.metrics.process_metrics import ProcessMetrics
from runtime.metrics.registry import Counter, Gauge, Histogram, Registry

DOWNLOAD_SOURCES = ("hf", "ms", "s3", "tos", "obs", "gs", "az", "local", "https")
LORA_OPERATIONS = ("load", "reload", "unload")
SCRAPE_ERROR_REASONS = ("connect", "timeout", "http_status", "truncated", "garbage", "too_large", "other")
SCRAPE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LORA_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# attribute: (type, name after PREFIX:, help, labels, buckets)
FAMILIES: dict[str, tuple[type[Any], str, str, tuple[str, ...], tuple[float, ...] | None]] = {
    "engine_up": (Gauge, "engine_up", "1 when the last scrape of the engine's metrics succeeded, else 0.", (), None),
    "scrape_errors": (
        Counter, "scrape_errors", "Failed scrapes of the engine's metrics, by reason.", ("reason",), None,
    ),
    "scrape_duration": (
        Histogram, "scrape_duration_seconds", "Time to fetch and rewrite the engine's metrics.", (), SCRAPE_BUCKETS,
    ),
    "invalid_lines": (
        Counter, "invalid_lines",
        "Lines of the engine's exposition that were not valid text format and were dropped.", (), None,
    ),
    "sidecar_info": (
        Gauge, "sidecar_info", "Constant 1, labelled with the sidecar's version and what it serves.",
        ("version", "engine", "pod", "model"), None,
    ),
    "engine_info": (
        Gauge, "engine_info",
        "Constant 1, labelled with the engine beside the sidecar (configured or recognised) and its version.",
        ("engine", "version"), None,
    ),
    "download_bytes": (
        Counter, "download_bytes",
        "Bytes fetched by model and adapter downloads, by source kind (hf, s3, tos, obs, gs, az, local, https).",
        ("source",), None,
    ),
    "download_files": (
        Counter, "download_files", "Files downloaded and verified (skipped ones not counted), by source kind.",
        ("source",), None,
    ),
    "download_failures": (
        Counter, "download_failures", "Downloads that failed, by source kind and reason.", ("source", "reason"), None,
    ),
    "downloads_active": (Gauge, "downloads_active", "Downloads running now.", (), None),
    "lora_adapters": (
        Gauge, "lora_adapters",
        "LoRA adapters managed by the sidecar, by state (downloading, loading, loaded, failed, unloading).",
        ("state",), None,
    ),
    "lora_operations": (
        Counter, "lora_operations",
        "LoRA load, reload (after the engine lost an adapter) and unload operations, by result.",
        ("operation", "result"), None,
    ),
    "lora_operation_duration": (
        Histogram, "lora_operation_duration_seconds", "Duration of LoRA operations, downloads included.",
        ("operation",), LORA_BUCKETS,
    ),
}  # fmt: skip


class SidecarMetrics:
    """Counters and gauges about scraping the engine, downloads and adapters, plus the process's resource use."""

    engine_up: Gauge
    scrape_errors: Counter
    scrape_duration: Histogram
    invalid_lines: Counter
    sidecar_info: Gauge
    engine_info: Gauge
    download_bytes: Counter
    download_files: Counter
    download_failures: Counter
    downloads_active: Gauge
    lora_adapters: Gauge
    lora_operations: Counter
    lora_operation_duration: Histogram

    def __init__(self, prefix: str, engine: str, pod: str = "", model: str = "") -> None:
        self.registry = Registry()
        for attribute, (kind, name, help_text, labels, buckets) in FAMILIES.items():
            options: dict[str, Any] = {"registry": self.registry}
            if buckets is not None:
                options["buckets"] = buckets
            setattr(self, attribute, kind(f"{prefix}:{name}", help_text, labels, **options))
        # Label sets known in advance exist from the start at 0: the first event of each is then visible to rate().
        for reason in SCRAPE_ERROR_REASONS:
            self.scrape_errors.labels(reason)
        for source in DOWNLOAD_SOURCES:
            self.download_bytes.labels(source)
            self.download_files.labels(source)
        for operation in LORA_OPERATIONS:
            self.lora_operation_duration.labels(operation)
            for result in ("ok", "error"):
                self.lora_operations.labels(operation, result)
        self.sidecar_info.labels(__version__, engine, pod, model).set(1)
        process = ProcessMetrics(prefix + "_sidecar")
        self.registry.register(process, process.names)

    def set_engine_info(self, engine: str, version: str) -> None:
        """`engine_info{engine,version} 1` for the engine beside the sidecar (one series: the old one is removed)."""
        self.engine_info.clear()
        self.engine_info.labels(engine, version).set(1)

    def render(self) -> bytes:
        return self.registry.render()
