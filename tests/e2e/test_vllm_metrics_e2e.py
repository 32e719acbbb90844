"""End to end: a real vLLM (CPU, tiny model) behind the real sidecar; unified metrics mirror the engine's.

No mocks: the engine is `vllm serve` (tests/peers/vllm_cpu.py), the sidecar is `python -m runtime serve`
(or $AIRUNTIME_BIN) started by tests/support/sidecar.py.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.peers import vllm_cpu
from tests.support.promtool import COLON_LINT, assert_valid_exposition, promtool_path
from tests.support.sidecar import running_sidecar

pytestmark = pytest.mark.e2e

# unified family -> (engine family, kind). Counters keep their _total suffix on both sides.
UNIFIED_FROM_VLLM: dict[str, tuple[str, str]] = {
    "airuntime:num_requests_running": ("vllm:num_requests_running", "gauge"),
    "airuntime:num_requests_waiting": ("vllm:num_requests_waiting", "gauge"),
    "airuntime:kv_cache_usage_perc": ("vllm:kv_cache_usage_perc", "gauge"),
    "airuntime:prompt_tokens_total": ("vllm:prompt_tokens_total", "counter"),
    "airuntime:generation_tokens_total": ("vllm:generation_tokens_total", "counter"),
    "airuntime:num_preemptions_total": ("vllm:num_preemptions_total", "counter"),
    "airuntime:prefix_cache_hits_total": ("vllm:prefix_cache_hits_total", "counter"),
    "airuntime:prefix_cache_queries_total": ("vllm:prefix_cache_queries_total", "counter"),
    "airuntime:time_to_first_token_seconds": ("vllm:time_to_first_token_seconds", "histogram"),
    "airuntime:time_per_output_token_seconds": ("vllm:inter_token_latency_seconds", "histogram"),
    "airuntime:e2e_request_latency_seconds": ("vllm:e2e_request_latency_seconds", "histogram"),
    "airuntime:request_queue_time_seconds": ("vllm:request_queue_time_seconds", "histogram"),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Labels  # in the order they appear on the line
    value: float
    line: str


def _parse_labels(text: str, pos: int, line: str) -> tuple[Labels, int]:
    """Parse `{a="x",b="y"}` at text[pos] == '{'; returns the labels in order and the index after '}'."""
    assert text[pos] == "{"
    pos += 1
    labels: list[tuple[str, str]] = []
    while True:
        while pos < len(text) and text[pos] in " ,":
            pos += 1
        if pos >= len(text):
            raise ValueError(f"unterminated label set: {line!r}")
        if text[pos] == "}":
            return tuple(labels), pos + 1
        if text[pos] == '"':  # a quoted (UTF-8) label name
            name, pos = _parse_quoted(text, pos, line)
        else:
            eq = text.index("=", pos)
            name = text[pos:eq].strip()
            pos = eq
        while text[pos] in " =":
            pos += 1
        value, pos = _parse_quoted(text, pos, line)
        labels.append((name, value))


def _parse_quoted(text: str, pos: int, line: str) -> tuple[str, int]:
    if text[pos] != '"':
        raise ValueError(f"expected a quote at {pos}: {line!r}")
    pos += 1
    out: list[str] = []
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            nxt = text[pos + 1]
            out.append({"n": "\n", "\\": "\\", '"': '"'}.get(nxt, "\\" + nxt))
            pos += 2
            continue
        if char == '"':
            return "".join(out), pos + 1
        out.append(char)
        pos += 1
    raise ValueError(f"unterminated quoted string: {line!r}")


def parse_samples(text: str) -> list[Sample]:
    """A minimal parser for Prometheus text exposition sample lines that keeps label order."""
    samples: list[Sample] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):  # a UTF-8 quoted name inside the braces: not expected from these peers
            raise ValueError(f"quoted metric names are not handled: {line!r}")
        end = 0
        while end < len(line) and line[end] not in "{ ":
            end += 1
        name = line[:end]
        labels: Labels = ()
        pos = end
        if pos < len(line) and line[pos] == "{":
            labels, pos = _parse_labels(line, pos, line)
        rest = line[pos:].split()
        if not rest:
            raise ValueError(f"sample without a value: {line!r}")
        samples.append(Sample(name=name, labels=labels, value=float(rest[0]), line=line))
    return samples


def by_series(samples: list[Sample], names: set[str]) -> dict[tuple[str, Labels], float]:
    series: dict[tuple[str, Labels], float] = {}
    for sample in samples:
        if sample.name in names:
            key = (sample.name, sample.labels)
            assert key not in series, f"duplicate series {sample.line!r}"
            series[key] = sample.value
    return series


def sample_names(family: str, kind: str) -> list[str]:
    if kind == "histogram":
        return [family + suffix for suffix in HISTOGRAM_SUFFIXES]
    return [family]


def same_value(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def http_get(url: str, timeout: float = 30.0, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode(errors="replace")


def wait_status(url: str, want: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    status = -1
    while time.monotonic() < deadline:
        try:
            status, _, _ = http_get(url, timeout=5)
        except OSError:
            status = -1
        if status == want:
            return status
        time.sleep(0.5)
    return status


def engine_values(base_url: str) -> dict[tuple[str, Labels], float]:
    _, _, text = http_get(f"{base_url}/metrics")
    names = {n for family, kind in UNIFIED_FROM_VLLM.values() for n in sample_names(family, kind)}
    return by_series(parse_samples(text), names)


def wait_engine_stable(base_url: str, timeout: float = 20.0) -> dict[tuple[str, Labels], float]:
    """Completions have returned, but stats may land a moment later: wait for two equal scrapes."""
    deadline = time.monotonic() + timeout
    previous = engine_values(base_url)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        current = engine_values(base_url)
        if current == previous:
            return current
        previous = current
    raise AssertionError(f"engine metrics kept changing for {timeout}s")


def unified_problems(engine_text: str, sidecar_text: str) -> list[str]:
    """Everything wrong with the sidecar's exposition compared with the engine's (both scraped at rest)."""
    engine = parse_samples(engine_text)
    unified = parse_samples(sidecar_text)
    # The whole payload parses as Prometheus text (the library parser is the reference here).
    sidecar_families = {f.name: f for f in text_string_to_metric_families(sidecar_text)}

    problems: list[str] = []
    for family, (source, kind) in UNIFIED_FROM_VLLM.items():
        names = sample_names(source, kind)
        src = by_series(engine, set(names))
        if not src:
            problems.append(f"engine has no {source} series (engine changed? fixture needs updating)")
            continue
        dst = by_series(unified, {family + n[len(source) :] for n in names})
        expected = {(family + name[len(source) :], labels): value for (name, labels), value in src.items()}
        for key, value in expected.items():
            if key not in dst:
                same_name = [s.line for s in unified if s.name == key[0]][:3]
                problems.append(
                    f"missing {key[0]}{dict(key[1])} (label order {[k for k, _ in key[1]]}); "
                    f"sidecar has: {same_name or 'no such sample'}"
                )
            elif not same_value(dst[key], value):
                problems.append(f"{key[0]}{dict(key[1])}: sidecar {dst[key]!r} != engine {value!r}")
        for key in dst.keys() - expected.keys():
            problems.append(f"extra unified series not in the engine: {key[0]}{dict(key[1])}")
        # Type: counters are exposed as counters (prometheus_client strips _total from the family name).
        lib_name = family.removesuffix("_total") if kind == "counter" else family
        lib_family = sidecar_families.get(lib_name)
        if lib_family is None:
            problems.append(f"no family {lib_name} in the sidecar output per prometheus_client")
        elif lib_family.type != kind:
            problems.append(f"{family} typed {lib_family.type}, want {kind}")
        # Counters keep _total (the point of the unified names; other products' renames lose it).
        if kind == "counter" and not any(s.name == family for s in unified):
            problems.append(f"{family} (with _total) not in sidecar output")

    # No _created series or families in the unified namespace.
    problems += [
        f"_created sample in unified families: {s.line}"
        for s in unified
        if s.name.startswith("airuntime:") and s.name.endswith("_created")
    ]
    problems += [
        f"_created HELP/TYPE in unified families: {line}"
        for line in sidecar_text.splitlines()
        if line.startswith(("# HELP airuntime:", "# TYPE airuntime:")) and line.split()[2].endswith("_created")
    ]

    # Raw vllm: series are still there, unchanged (_created aside; it is dropped by some exposers).
    raw_engine = {
        (s.name, s.labels): s.value for s in engine if s.name.startswith("vllm:") and not s.name.endswith("_created")
    }
    raw_sidecar = {(s.name, s.labels): s.value for s in unified if s.name.startswith("vllm:")}
    missing_raw = sorted(f"{n}{dict(labels)}" for n, labels in raw_engine.keys() - raw_sidecar.keys())
    if missing_raw:
        problems.append(f"{len(missing_raw)} raw vllm: series missing from the sidecar: {missing_raw[:10]}")
    if not any(s.name == "vllm:lora_requests_info" for s in unified):
        problems.append("vllm:lora_requests_info not passed through")
    compared = {n for f, kd in UNIFIED_FROM_VLLM.values() for n in sample_names(f, kd)}
    for key in (k for k in raw_engine if k[0] in compared and k in raw_sidecar):
        if not same_value(raw_sidecar[key], raw_engine[key]):
            problems.append(f"raw {key[0]}{dict(key[1])}: sidecar {raw_sidecar[key]} != engine {raw_engine[key]}")

    # The engine is up, as far as the sidecar can tell.
    engine_up = [s for s in unified if s.name == "airuntime:engine_up"]
    if not engine_up:
        problems.append("airuntime:engine_up missing")
    problems += [f"engine_up is not 1: {s.line}" for s in engine_up if s.value != 1.0]
    return problems


def test_unified_metrics_mirror_vllm(vllm_peer: vllm_cpu.VllmPeer) -> None:
    base = vllm_peer.base_url
    # Real traffic: the base model, a repeated long prompt (a prefix-cache hit), one request via a LoRA adapter.
    for prompt in ("Hello world", vllm_cpu.LONG_PROMPT, vllm_cpu.LONG_PROMPT):
        result = vllm_cpu.complete(base, vllm_peer.served_model_name, prompt, max_tokens=4)
        assert result["choices"], result
    vllm_cpu.load_adapter(base, "lora-a", vllm_peer.adapter_dirs["lora-a"])
    vllm_cpu.complete(base, "lora-a", "airuntime rewrites engine metrics", max_tokens=4)
    # All completions returned; wait until the engine's counters are at rest before the sidecar scrapes.
    before = wait_engine_stable(base)

    with running_sidecar(["--engine", "vllm", "--engine-url", base]) as sidecar:
        health_status, _, health_body = http_get(f"{sidecar}/health")
        assert health_status == 200, f"/health answered {health_status}: {health_body[:300]}"
        ready_status = wait_status(f"{sidecar}/ready", 200, timeout=60)
        assert ready_status == 200, f"/ready answered {ready_status} (wanted 200 with a live engine)"

        _, engine_ct, engine_text = http_get(f"{base}/metrics")
        status, sidecar_ct, sidecar_text = http_get(f"{sidecar}/metrics")
        after = engine_values(base)
        assert status == 200, f"sidecar /metrics answered {status}: {sidecar_text[:500]}"
        assert sidecar_ct.startswith("text/plain"), sidecar_ct
        assert engine_ct.startswith("text/plain"), engine_ct

    assert before == after, "engine metrics moved during the comparison; cannot compare"
    problems = unified_problems(engine_text, sidecar_text)
    assert not problems, "sidecar /metrics vs engine /metrics:\n" + "\n".join(problems)

    # promtool, when available: the sidecar's output must parse, and lint may not flag unified families
    # (the colon warning aside, which every `airuntime:`/`vllm:` name triggers).
    if promtool_path() is not None:
        checked = assert_valid_exposition(sidecar_text.encode())
        flagged = [line for line in checked.lint if line.startswith("airuntime:") and COLON_LINT not in line]
        assert not flagged, "promtool lint flags unified families:\n" + "\n".join(flagged)
