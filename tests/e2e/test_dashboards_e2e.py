"""The dashboard and the rules against real data: a real Prometheus (Debian package) scrapes the sidecar in front of
the session's real vLLM (CPU) and evaluates the generated rules. After traffic (completions, a prefix-cache hit,
a LoRA load, a download and a failed one), every dashboard query, with its variables resolved as Grafana would,
and every recording rule returns at least one series; then vLLM is stopped and AiruntimeEngineDown must fire within
its `for`, and vLLM is started again for the tests that follow.

The rules Prometheus loads are the shipped ones, generated with a 10 s `for` and no start grace for the engine-down
alert (asserted to be the only difference); promtool unit tests prove the shipped timings.
`AIRUNTIME_DASHBOARD_PNG=PATH` keeps the rendered picture (with `AIRUNTIME_DASHBOARD_TRAFFIC_SECONDS`, default 20).
"""

from __future__ import annotations

import os
import random
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy.observability import render_png
from deploy.observability.rules import RuleSettings, rule_groups
from tests.peers import vllm_cpu
from tests.support.observability import (
    committed_dashboard,
    committed_rules,
    dashboard_queries,
    rules,
    substitute,
    variable_queries,
    write_rules,
)
from tests.support.prometheus import Prometheus, running_prometheus
from tests.support.sidecar import running_sidecar

http_json = vllm_cpu.http_json

pytestmark = pytest.mark.e2e

JOB = "airuntime-e2e"
STATIC_LABELS = {"namespace": "e2e", "pod": "vllm-0"}
ENGINE_DOWN_FOR_SECONDS = 10
SCRAPE_SECONDS = 1  # Prometheus's scrape interval, scrape timeout and evaluation interval here
RATE_INTERVAL = "15s"  # Grafana: max(4 x scrape interval, interval + scrape interval); generous for a busy host
TEST_RULES = RuleSettings().with_thresholds(engine_down_for=f"{ENGINE_DOWN_FOR_SECONDS}s", engine_start_grace_seconds=0)


@dataclass
class Stack:
    vllm: vllm_cpu.VllmPeer
    sidecar: str
    prometheus: Prometheus
    started: float
    workdir: Path

    def wait_for(self, what: str, probe: Any, timeout: float = 60.0, interval: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                result = probe()
                if result:
                    return result
                last = result
            except (OSError, AssertionError, KeyError) as exc:
                last = exc
            time.sleep(interval)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}\n{self.prometheus.log_tail()}")


def scrape_config(sidecar: str, rule_file: Path) -> str:
    labels = ", ".join(f"{key}: {value}" for key, value in STATIC_LABELS.items())
    return (
        f"global:\n  scrape_interval: {SCRAPE_SECONDS}s\n  scrape_timeout: {SCRAPE_SECONDS}s\n"
        f"  evaluation_interval: {SCRAPE_SECONDS}s\n"
        f"rule_files: ['{rule_file}']\n"
        f"scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n"
        f"      - targets: ['{sidecar.removeprefix('http://')}']\n        labels: {{{labels}}}\n"
    )


@pytest.fixture(scope="module")
def stack(vllm_peer: vllm_cpu.VllmPeer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("dashboards")
    rule_file = write_rules(workdir / "rules.yaml", TEST_RULES)
    args = ["--engine-url", vllm_peer.base_url, "--models-dir", str(workdir / "models")]
    args += ["--adapters-dir", str(workdir / "adapters"), "--lora-reconcile-interval", "1"]
    with running_sidecar(args) as sidecar, running_prometheus(workdir, scrape_config(sidecar, rule_file)) as prom:
        stack = Stack(vllm_peer, sidecar, prom, time.time(), workdir)
        try:
            yield stack
        finally:  # leave vLLM as the other suites expect it: running, no adapter loaded
            if not vllm_peer.is_running():
                vllm_peer.start()
            http_json("POST", f"{sidecar}/v1/unload_lora_adapter", {"lora_name": "lora-a"})


def test_only_the_engine_down_timing_differs_from_the_shipped_rules() -> None:
    shipped, used = rules(committed_rules()), rules(rule_groups(TEST_RULES))
    assert len(shipped) == len(used)
    for before, after in zip(shipped, used, strict=True):
        if before.get("alert") == "AiruntimeEngineDown":
            assert after["for"] == f"{ENGINE_DOWN_FOR_SECONDS}s"
            assert after["expr"] == before["expr"].replace("> 900", "> 0")
            after = {**after, "for": before["for"], "expr": before["expr"]}
        assert after == before


def traffic(stack: Stack, seconds: float) -> int:
    """Completions from 2 threads for `seconds` (a third of them the long prompt: prefix-cache hits)."""
    done = [0, 0]
    deadline = time.monotonic() + seconds

    def worker(index: int) -> None:
        rng = random.Random(index)
        while time.monotonic() < deadline:
            prompt = vllm_cpu.LONG_PROMPT if rng.random() < 0.33 else f"Hello world {rng.randint(0, 999)}"
            vllm_cpu.complete(stack.vllm.base_url, "tiny", prompt, max_tokens=rng.choice((4, 16, 32)))
            done[index] += 1

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done)


def sidecar_work(stack: Stack) -> None:
    """A LoRA load, a local download and a failing one, through the sidecar's API."""
    source = stack.workdir / "model-src"
    source.mkdir()
    (source / "model.safetensors").write_bytes(os.urandom(8 << 20))
    (source / "config.json").write_text("{}")
    # Twice: the sidecar creates a source's counters at its first download, so rate() only sees the second one.
    for target in ("m", "m-again"):
        status, body = http_json("POST", f"{stack.sidecar}/v1/download_model",
                                 {"source": str(source), "output_dir": str(stack.workdir / "models" / target)})  # fmt: skip
        assert status == 200, body
        time.sleep(3)
    status, body = http_json("POST", f"{stack.sidecar}/v1/download_model",
                             {"source": "https://127.0.0.1:1/none/model.gguf", "output_dir": "m2"})  # fmt: skip
    assert status >= 400, body
    lora = {"lora_name": "lora-a", "lora_path": str(stack.vllm.adapter_dirs["lora-a"])}
    status, body = http_json("POST", f"{stack.sidecar}/v1/load_lora_adapter", lora)
    assert status == 200, body
    vllm_cpu.complete(stack.vllm.base_url, "lora-a", "airuntime loads adapters")


def label_values(prometheus: Prometheus, selector: str, label: str) -> list[str]:
    """What Grafana's `label_values(selector, label)` lists."""
    series = prometheus.api("/api/v1/series", **{"match[]": selector})
    return sorted({item[label] for item in series if item.get(label)})


def grafana_values(stack: Stack, dashboard: dict[str, Any]) -> dict[str, str]:
    """Each variable resolved in order, as Grafana does: the first value it lists, or All when it lists none."""
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    chosen = {"$__rate_interval": RATE_INTERVAL}
    for name, selector in variable_queries(dashboard):
        listed = label_values(stack.prometheus, substitute(selector, chosen), name if name != "ttft_slo" else "le")
        variable = variables[name]
        if name == "ttft_slo":
            listed = [value for value in listed if value != "+Inf"]
            assert variable["current"]["value"] in listed, listed  # the default bound exists for vLLM
            chosen["$" + name] = variable["current"]["value"]
        elif listed:
            chosen["$" + name] = listed[0]
        else:
            chosen["$" + name] = variable["allValue"] or ".*"
    return chosen


def engine_completions(stack: Stack) -> float:
    """Requests vLLM counts as finished, read from vLLM itself."""
    with urllib.request.urlopen(f"{stack.vllm.base_url}/metrics", timeout=30) as response:
        text = response.read().decode()
    lines = (line for line in text.splitlines() if line.startswith("vllm:request_success_total{"))
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def scraped_completions(stack: Stack) -> float:
    """The same count as Prometheus last scraped it through the sidecar (-1 before its first sample)."""
    result = stack.prometheus.query(f'sum(airuntime:request_success_total{{job="{JOB}"}})')
    return float(result[0]["value"][1]) if result else -1.0


def scrape_health(stack: Stack) -> str:
    """Prometheus's own view of its scrapes of the sidecar over the test, for a failure message."""
    shown = []
    for function, name in (("avg", "up"), ("max", "scrape_duration_seconds"), ("avg", "airuntime:engine_up")):
        query = f'{function}_over_time({name}{{job="{JOB}"}}[10m])'
        shown.append(f"{query} = {[item['value'][1] for item in stack.prometheus.query(query)]}")
    return "\n".join(shown)


def empty_dashboard_queries(stack: Stack, dashboard: dict[str, Any]) -> list[str]:
    """Each dashboard query, with the variables as Grafana picks them and then with All, that returns no series."""
    chosen = grafana_values(stack, dashboard)
    assert chosen["$job"] == JOB and chosen["$namespace"] == "e2e" and chosen["$pod"] == "vllm-0"
    assert chosen["$model_name"] == "tiny" and chosen["$engine"] == "vllm", chosen
    all_selected = {**chosen, "$job": JOB, "$namespace": ".*", "$pod": ".*", "$model_name": ".*"}
    empty = []
    for values in (chosen, all_selected):
        for title, expr in dashboard_queries(dashboard):
            query = substitute(expr, values)
            if not stack.prometheus.query(query):
                empty.append(f"{title}: {query}")
    return empty


def test_every_dashboard_query_and_recording_rule_returns_series(stack: Stack) -> None:
    # Rates need a sample from before the traffic and one from after it. On a busy 2-core host vLLM can take longer
    # than the scrape timeout to answer /metrics while it generates, so every scrape during a burst may fail: wait
    # for a scraped sample on each side instead of assuming one.
    engine_up = f'airuntime:engine_up{{job="{JOB}"}} == 1'
    stack.wait_for("a first scrape with the engine up", lambda: stack.prometheus.query(engine_up))
    seconds = float(os.environ.get("AIRUNTIME_DASHBOARD_TRAFFIC_SECONDS", "20"))
    completions = traffic(stack, seconds / 2)
    sidecar_work(stack)
    completions += traffic(stack, seconds / 2)
    assert completions > 10
    finished = engine_completions(stack)
    stack.wait_for("Prometheus to scrape the traffic", lambda: scraped_completions(stack) >= finished, 60)
    dashboard = committed_dashboard()
    recorded = [rule["record"] for rule in rules(committed_rules()) if "record" in rule]
    stack.wait_for("the recording rules", lambda: all(stack.prometheus.query(name) for name in recorded), 60)

    # The rules are evaluated every second, after the scrape above: a few evaluations for them to see it.
    deadline = time.monotonic() + 10 * SCRAPE_SECONDS
    while (empty := empty_dashboard_queries(stack, dashboard)) and time.monotonic() < deadline:
        time.sleep(SCRAPE_SECONDS)
    assert empty == [], "queries without a series:\n" + "\n".join(empty) + "\n" + scrape_health(stack)

    health = stack.prometheus.api("/api/v1/rules")
    bad = [(r["name"], r.get("lastError")) for g in health["groups"] for r in g["rules"] if r["health"] != "ok"]
    assert bad == []
    ttft = stack.prometheus.query(
        "histogram_quantile(0.95, sum by (le, engine) (airuntime:time_to_first_token_seconds_bucket:rate5m_shared_le))"
    )
    assert len(ttft) == 1 and ttft[0]["metric"]["engine"] == "vllm" and 0 < float(ttft[0]["value"][1]) < 10, ttft
    active = stack.prometheus.query("ALERTS")
    assert active == [], f"alerts on a healthy stack: {active}"


def test_engine_down_fires_within_its_for_once_vllm_stops(stack: Stack) -> None:
    alert = 'ALERTS{alertname="AiruntimeEngineDown",alertstate="firing"}'
    assert stack.prometheus.query(alert) == []
    stopped = time.monotonic()
    stack.vllm.stop()
    try:
        # `for`, plus one scrape (1 s) and one evaluation (1 s) to see the engine down, plus a busy host's slack
        limit = ENGINE_DOWN_FOR_SECONDS + 2 + 20
        fired = stack.wait_for("AiruntimeEngineDown to fire", lambda: stack.prometheus.query(alert), limit, 0.25)
        took = time.monotonic() - stopped
        # A sample's timestamp is its scrape's start: a scrape in flight when vLLM stopped (up to the scrape timeout)
        # reports the engine down at a time before the stop.
        assert took >= ENGINE_DOWN_FOR_SECONDS - SCRAPE_SECONDS, f"fired after {took:.1f}s, before its `for`"
        labels = fired[0]["metric"]
        assert {k: labels[k] for k in ("job", "namespace", "pod", "severity")} == {
            "job": JOB, **STATIC_LABELS, "severity": "critical"
        }  # fmt: skip
        connect = stack.prometheus.query(f'airuntime:scrape_errors_total{{job="{JOB}",reason="connect"}} > 0')
        assert connect, "engine down shows as connect errors"
    finally:
        stack.vllm.start()
    resolved = f'airuntime:engine_up{{job="{JOB}"}} == 1'
    stack.wait_for("engine_up back to 1", lambda: stack.prometheus.query(resolved), 60)


def test_the_picture_renders_from_this_prometheus(stack: Stack, tmp_path: Path) -> None:
    keep = os.environ.get("AIRUNTIME_DASHBOARD_PNG")
    if keep:  # the README picture: show the engine back and serving after its restart
        traffic(stack, 30)
    out = Path(keep or tmp_path / "dashboard.png")
    minutes = (time.time() - stack.started) / 60 + 0.5
    args = render_png.parse_args(
        ["--prometheus", stack.prometheus.url, "--minutes", f"{minutes:.2f}", "--out", str(out),
         "--rate-interval", RATE_INTERVAL]
    )  # fmt: skip
    counts = render_png.render(args)
    assert all(counts.values()), counts
    assert out.stat().st_size > 50_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
