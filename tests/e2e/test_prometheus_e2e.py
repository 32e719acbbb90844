"""Real Prometheus scrapes the sidecar, which scrapes a fake vLLM engine; PromQL must see the unified names.

Needs the `prometheus` binary (Debian: `apt-get install -y --no-install-recommends prometheus`, which also
gives `promtool`); skipped without it, failed without it when CI=true.
Run with `python -m pytest -m e2e tests/e2e/test_prometheus_e2e.py`.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fake_engine import FakeEngine, vllm_payload
from tests.support.prometheus import Prometheus, running_prometheus
from tests.support.promtool import assert_valid_exposition
from tests.support.sidecar import running_sidecar

pytestmark = pytest.mark.e2e

JOB = "airuntime"
PREFIX = "airuntime:"
WAIT_SECONDS = 30.0
T = TypeVar("T")


def engine_samples(payload: bytes, sample_name: str) -> dict[frozenset[tuple[str, str]], float]:
    """{labels: value} of every sample called `sample_name` in an exposition."""
    found: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(payload.decode("utf-8")):
        for sample in family.samples:
            if sample.name == sample_name:
                found[frozenset(sample.labels.items())] = float(sample.value)
    return found


def replace_values(payload: bytes, sample_name: str, new_value: Callable[[float], float]) -> bytes:
    """`payload` with every `sample_name` sample's value replaced by `new_value(old)`."""
    pattern = re.compile(rb"^(" + re.escape(sample_name.encode()) + rb"(?:\{[^\n]*\})?[ \t]+)(\S+)", re.MULTILINE)
    return pattern.sub(lambda m: m.group(1) + repr(new_value(float(m.group(2)))).encode(), payload)


@dataclass
class Stack:
    engine: FakeEngine
    sidecar_url: str
    prometheus: Prometheus
    payload: bytes

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = WAIT_SECONDS) -> T:
        """Poll `probe` until it returns a non-None value; fail with the last value and Prometheus' view."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                result = probe()
                if result is not None:
                    return result
            except (OSError, AssertionError, ValueError, KeyError) as exc:
                last = exc
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        targets = self.prometheus.api("/api/v1/targets")
        pytest.fail(
            f"timed out after {timeout}s waiting for {what}; last error: {last!r}\n"
            f"prometheus targets: {json.dumps(targets.get('activeTargets'), indent=1)}\n"
            f"prometheus log tail:\n{self.prometheus.log_tail()}"
        )


def _series_match(expected: dict[frozenset[tuple[str, str]], float], result: list[dict[str, Any]]) -> bool:
    """Every expected engine series is in `result` (its labels a subset) with the expected value."""
    if not expected:
        return False
    for labels, value in expected.items():
        matching = [item for item in result if labels <= set(item["metric"].items())]
        if len(matching) != 1 or float(matching[0]["value"][1]) != value:
            return False
    return True


def probe_for(
    expected: dict[frozenset[tuple[str, str]], float], promql: str, stack: Stack
) -> list[dict[str, Any]] | None:
    """The query result if it matches `expected` (see `_series_match`), else None (keep waiting)."""
    result = stack.prometheus.query(promql)
    return result if _series_match(expected, result) else None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    payload = vllm_payload()
    with (
        FakeEngine(payload) as engine,
        running_sidecar(["--engine", "vllm", "--engine-url", engine.url]) as url,
    ):
        target = url.removeprefix("http://")
        config = (
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            f"  - job_name: {JOB}\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        with running_prometheus(tmp_path_factory.mktemp("prometheus"), config) as prometheus:
            yield Stack(engine, url, prometheus, payload)


def test_target_is_up_and_scrapes_cleanly(stack: Stack) -> None:
    def healthy() -> dict[str, Any] | None:
        targets = stack.prometheus.api("/api/v1/targets")["activeTargets"]
        ours = [t for t in targets if t["labels"].get("job") == JOB]
        assert len(ours) == 1, targets
        return ours[0] if ours[0]["health"] == "up" else None

    target = stack.wait_for(f"target job={JOB} to be up", healthy)
    assert target["lastError"] == "", target

    up_query = f'up{{job="{JOB}"}} == 1'
    up = stack.wait_for(up_query, lambda: stack.prometheus.query(up_query) or None)
    assert len(up) == 1
    samples = stack.prometheus.query(f'scrape_samples_scraped{{job="{JOB}"}}')
    assert samples and float(samples[0]["value"][1]) > 0, samples

    # Prometheus accepts duplicate series / out-of-order samples but drops and counts them: must stay 0.
    with urllib.request.urlopen(f"{stack.prometheus.url}/metrics", timeout=5) as response:
        own = response.read().decode()
    for name in (
        "prometheus_target_scrapes_sample_duplicate_timestamp_total",
        "prometheus_target_scrapes_sample_out_of_order_total",
        "prometheus_target_scrapes_sample_out_of_bounds_total",
    ):
        values = engine_samples(own.encode(), name)
        assert values and all(v == 0 for v in values.values()), f"{name} = {values}"


def test_unified_gauge_has_engine_value(stack: Stack) -> None:
    expected = engine_samples(stack.payload, "vllm:num_requests_running")
    assert expected, "payload has no vllm:num_requests_running samples"
    promql = f"{PREFIX}num_requests_running"
    stack.wait_for(f"{promql} == engine values {dict(expected)}", lambda: probe_for(expected, promql, stack))

    # Change the engine's value: Prometheus must follow (no stale cache between engine and Prometheus).
    stack.engine.set_payload(replace_values(stack.payload, "vllm:num_requests_running", lambda v: v + 7))
    moved = {labels: value + 7 for labels, value in expected.items()}
    try:
        stack.wait_for(f"{promql} to follow the engine to {moved}", lambda: probe_for(moved, promql, stack))
    finally:
        stack.engine.set_payload(stack.payload)


def test_unified_counter_exists_and_rates(stack: Stack) -> None:
    expected = engine_samples(stack.payload, "vllm:prompt_tokens_total")
    assert expected, "payload has no vllm:prompt_tokens_total samples"
    promql = f"{PREFIX}prompt_tokens_total"
    stack.wait_for(f"{promql} == engine values {dict(expected)}", lambda: probe_for(expected, promql, stack))

    # Make the counter grow: rate() over the unified name must see it.
    stack.engine.set_payload(replace_values(stack.payload, "vllm:prompt_tokens_total", lambda v: v + 600))
    try:
        rate = f"rate({promql}[1m]) > 0"
        result = stack.wait_for(rate, lambda: stack.prometheus.query(rate) or None)
        assert len(result) == len(expected), result
    finally:
        stack.engine.set_payload(stack.payload)


def test_raw_engine_family_kept(stack: Stack) -> None:
    expected = engine_samples(stack.payload, "vllm:num_requests_running")
    promql = "vllm:num_requests_running"
    stack.wait_for(f"raw {promql} == engine values", lambda: probe_for(expected, promql, stack))


def test_sidecar_exposition_passes_promtool(stack: Stack) -> None:
    # The Accept header Prometheus 2.42 sends; the sidecar must still answer with a text format it can parse.
    accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
        "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    request = urllib.request.Request(f"{stack.sidecar_url}/metrics", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        content_type = response.headers.get("Content-Type", "")
        body = response.read()
    assert content_type.startswith(("text/plain", "application/openmetrics-text")), content_type
    if content_type.startswith("text/plain"):
        assert_valid_exposition(body)
    assert b"\n" + PREFIX.encode() + b"num_requests_running" in b"\n" + body
