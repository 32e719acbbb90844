"""The sidecar's own metric types and renderer (runtime/metrics/registry.py, process_metrics.py): the same text
prometheus_client writes for the same families, values its parser reads back exactly, promtool-clean output, and
updates from many threads that lose nothing."""

from __future__ import annotations

import os
import threading
import time

import prometheus_client
import pytest
from prometheus_client.exposition import generate_latest

import runtime.metrics.registry as our_types
from runtime.metrics.process_metrics import ProcessMetrics
from runtime.metrics.registry import Counter, Gauge, Histogram, Registry, format_value
from runtime.metrics.self_metrics import SidecarMetrics
from tests.support.exposition import families_of, sample_values
from tests.support.promtool import assert_valid_exposition

AWKWARD = 'a "quoted" back\\slash\nnewline ü'


def _fill(module: object, registry: object) -> None:
    """The same families and updates through either library (`module` is prometheus_client or ours)."""
    counter = module.Counter(
        "app:requests", "Requests by path.\nTwo lines, a \\ too.", ["path", "code"], registry=registry
    )  # type: ignore[attr-defined]
    counter.labels("/a", "200").inc()
    counter.labels(AWKWARD, "500").inc(2.5)
    total = module.Counter("app:bytes_total", "Bytes.", registry=registry)  # type: ignore[attr-defined]
    total.inc(1e21)
    gauge = module.Gauge("app:level", "Level.", ["zone"], registry=registry)  # type: ignore[attr-defined]
    gauge.labels("z").set(-0.125)
    gauge.labels("inf").set(float("inf"))
    gauge.labels("ninf").set(float("-inf"))
    plain = module.Gauge("app:plain", "Plain.", registry=registry)  # type: ignore[attr-defined]
    plain.inc(3)
    plain.dec()
    module.Gauge("app:never", "No series yet.", ["x"], registry=registry)  # type: ignore[attr-defined]
    hist = module.Histogram(  # type: ignore[attr-defined]
        "app:latency_seconds", "Latency.", ["op"], buckets=(0.001, 0.01, 1.0, 10.0), registry=registry
    )
    for value in (0.0005, 0.001, 0.002, 0.5, 3.0, 99.0):
        hist.labels("read").observe(value)
    hist.labels("write")
    bare = module.Histogram("app:wait_seconds", "Wait.", buckets=(0.5,), registry=registry)  # type: ignore[attr-defined]
    bare.observe(0.75)


def test_the_text_is_what_prometheus_client_writes_for_the_same_families() -> None:
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    theirs = prometheus_client.CollectorRegistry()
    _fill(prometheus_client, theirs)
    ours = Registry()
    _fill(our_types, ours)
    expected = generate_latest(theirs).decode()
    got = ours.render().decode()
    # Names, labels, order, HELP and TYPE lines exactly; values as numbers (prometheus_client spells floats the Go
    # way, 2.5e+07 where Python writes 25000000.0).
    assert [line.rsplit(" ", 1)[0] for line in got.splitlines()] == [
        line.rsplit(" ", 1)[0] for line in expected.splitlines()
    ]
    assert sample_values(got.encode()) == sample_values(expected.encode())


def test_values_read_back_exactly_and_promtool_accepts_the_text() -> None:
    registry = Registry()
    _fill(our_types, registry)
    text = registry.render()
    values = sample_values(text)
    assert values[("app:requests_total", (("code", "500"), ("path", AWKWARD)))] == 2.5
    assert values[("app:bytes_total", ())] == 1e21
    assert values[("app:plain", ())] == 2.0
    read = (("op", "read"),)
    buckets = {
        le: values[("app:latency_seconds_bucket", (("le", le), *read))]
        for le in ("0.001", "0.01", "1.0", "10.0", "+Inf")
    }
    assert buckets == {"0.001": 2, "0.01": 3, "1.0": 4, "10.0": 5, "+Inf": 6}  # cumulative, `le` inclusive
    assert values[("app:latency_seconds_count", read)] == 6
    assert values[("app:latency_seconds_sum", read)] == pytest.approx(102.5035)
    assert families_of(text)["app:never"] == "gauge"
    assert_valid_exposition(text, lint_clean=True)


def test_misuse_is_refused_with_the_family_named() -> None:
    registry = Registry()
    counter = Counter("x:c", "C.", ["a"], registry=registry)
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels("1").inc(-1)
    with pytest.raises(ValueError, match=r"x:c takes labels \['a'\]"):
        counter.labels("1", "2")
    with pytest.raises(ValueError, match="call labels"):
        counter.inc()
    with pytest.raises(ValueError, match="registered twice"):
        Gauge("x:c_total", "Same sample name.", registry=registry)
    with pytest.raises(ValueError, match="distinct and ascending"):
        Histogram("x:h", "H.", buckets=(1.0, 0.5), registry=registry)


def test_updates_from_many_threads_are_all_counted() -> None:
    registry = Registry()
    counter = Counter("x:n", "N.", ["t"], registry=registry)
    hist = Histogram("x:h", "H.", buckets=(1.0,), registry=registry)

    def work() -> None:
        for _ in range(20_000):
            counter.labels("same").inc()
            hist.observe(0.5)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    values = sample_values(registry.render())
    assert values[("x:n_total", (("t", "same"),))] == 120_000
    assert values[("x:h_count", ())] == 120_000


def test_clear_and_set_function() -> None:
    registry = Registry()
    gauge = Gauge("x:g", "G.", ["v"], registry=registry)
    gauge.labels("old").set(1)
    gauge.clear()
    gauge.labels("new").set(1)
    live = Gauge("x:live", "L.", registry=registry)
    level = [4]
    live.set_function(lambda: level[0])
    level[0] = 7
    values = sample_values(registry.render())
    assert ("x:g", (("v", "old"),)) not in values
    assert values[("x:g", (("v", "new"),))] == 1
    assert values[("x:live", ())] == 7


@pytest.mark.parametrize(
    ("value", "text"), [(1.0, "1.0"), (0.1, "0.1"), (1e21, "1e+21"), (float("nan"), "NaN"), (-float("inf"), "-Inf")]
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


def test_process_metrics_tell_this_process_s_resource_use() -> None:
    registry = Registry()
    process = ProcessMetrics("airuntime_sidecar")
    registry.register(process, process.names)
    before = os.times()
    values = {name: value for (name, _labels), value in sample_values(registry.render()).items()}
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())  # noqa: SIM115
    rss_kib = int(status["VmRSS"].split()[0])
    assert abs(values["airuntime_sidecar_process_resident_memory_bytes"] - rss_kib * 1024) < 0.2 * rss_kib * 1024
    assert (
        values["airuntime_sidecar_process_virtual_memory_bytes"]
        >= values["airuntime_sidecar_process_resident_memory_bytes"]
    )
    assert abs(values["airuntime_sidecar_process_cpu_seconds_total"] - (before.user + before.system)) < 0.1
    assert 3 <= values["airuntime_sidecar_process_open_fds"] < 10_000
    assert values["airuntime_sidecar_process_max_fds"] > 0
    assert time.time() - 3600 < values["airuntime_sidecar_process_start_time_seconds"] <= time.time()


def test_the_sidecar_renders_without_prometheus_client() -> None:
    """The serve path does not import prometheus_client (10 MB of RSS measured at idle): only the tests use it."""
    import subprocess
    import sys

    code = (
        "import sys; import runtime.server.app, runtime.metrics.self_metrics as m;"
        "m.SidecarMetrics('airuntime', 'vllm').render();"
        "print('prometheus_client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
    assert SidecarMetrics  # the module under test imports fine in this process too


def test_each_render_shows_the_values_as_they_are_now() -> None:
    """Lines are kept between renders and made again only for series that changed."""
    registry = Registry()
    gauge = Gauge("x:g", "G.", registry=registry)
    hist = Histogram("x:h", "H.", buckets=(1.0,), registry=registry)
    nan_gauge = Gauge("x:n", "N.", registry=registry)
    nan_gauge.set(float("nan"))
    first = registry.render()
    gauge.set(2)
    hist.observe(0.5)
    hist.observe(3)
    second = sample_values(registry.render())
    assert sample_values(first)[("x:g", ())] == 0
    assert second[("x:g", ())] == 2
    assert (second[("x:h_bucket", (("le", "1.0"),))], second[("x:h_count", ())], second[("x:h_sum", ())]) == (1, 2, 3.5)
    assert registry.render() == registry.render()
