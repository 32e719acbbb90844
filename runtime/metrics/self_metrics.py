"""The sidecar's own metrics (prometheus-client), rendered after the engine's on every `/metrics` answer.

They live in a registry of their own, named with the metrics prefix, so they never collide with the engine's
families (engines export `process_*` and `python_*` too).
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest

from runtime import __version__

SCRAPE_ERROR_REASONS = ("connect", "timeout", "http_status", "truncated", "garbage", "too_large", "other")

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class SidecarMetrics:
    """Counters and gauges about scraping the engine, plus the process's own resource use."""

    def __init__(self, prefix: str, engine: str, pod: str = "", model: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        name = prefix + ":"
        self.engine_up = Gauge(
            name + "engine_up",
            "1 when the last scrape of the engine's metrics succeeded, else 0.",
            registry=self.registry,
        )
        self.scrape_errors = Counter(
            name + "scrape_errors",
            "Failed scrapes of the engine's metrics, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in SCRAPE_ERROR_REASONS:
            self.scrape_errors.labels(reason)
        self.scrape_duration = Histogram(
            name + "scrape_duration_seconds",
            "Time to fetch and rewrite the engine's metrics.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.invalid_lines = Counter(
            name + "invalid_lines",
            "Lines of the engine's exposition that were not valid text format and were dropped.",
            registry=self.registry,
        )
        self.sidecar_info = Gauge(
            name + "sidecar_info",
            "Constant 1, labelled with the sidecar's version and what it serves.",
            ["version", "engine", "pod", "model"],
            registry=self.registry,
        )
        self.sidecar_info.labels(__version__, engine, pod, model).set(1)
        self.engine_info = Gauge(
            name + "engine_info",
            "Constant 1, labelled with the engine beside the sidecar (configured or recognised) and its version.",
            ["engine", "version"],
            registry=self.registry,
        )
        self.download_bytes = Counter(
            name + "download_bytes",
            "Bytes fetched by model and adapter downloads, by source kind (hf, s3, tos, obs, gs, az, local, https).",
            ["source"],
            registry=self.registry,
        )
        self.download_files = Counter(
            name + "download_files",
            "Files downloaded and verified (skipped ones not counted), by source kind.",
            ["source"],
            registry=self.registry,
        )
        self.download_failures = Counter(
            name + "download_failures",
            "Downloads that failed, by source kind and reason.",
            ["source", "reason"],
            registry=self.registry,
        )
        self.downloads_active = Gauge(
            name + "downloads_active",
            "Downloads running now.",
            registry=self.registry,
        )
        self.lora_adapters = Gauge(
            name + "lora_adapters",
            "LoRA adapters managed by the sidecar, by state (downloading, loading, loaded, failed, unloading).",
            ["state"],
            registry=self.registry,
        )
        self.lora_operations = Counter(
            name + "lora_operations",
            "LoRA load, reload (after the engine lost an adapter) and unload operations, by result.",
            ["operation", "result"],
            registry=self.registry,
        )
        self.lora_operation_duration = Histogram(
            name + "lora_operation_duration_seconds",
            "Duration of LoRA operations, downloads included.",
            ["operation"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
            registry=self.registry,
        )
        ProcessCollector(namespace=prefix + "_sidecar", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
