"""Real engine expositions (recorded from a real vLLM, produced by SGLang's own collectors) through the rewriter.

Every unified sample must equal its engine sample (same labels, same value), counters must keep `_total`, the
output must pass `promtool check metrics`, and `--engine auto` must recognise the engine. See
tests/fixtures/README.md for how each payload was made.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.metrics.rules import build_ruleset
from tests.support.exposition import families_of, sample_values
from tests.support.promtool import assert_valid_exposition
from tests.support.rewrite import rewrite_bytes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# fixture file, engine, {unified family: engine family it must mirror}
CASES = [
    (
        "vllm-0.32.0-metrics.txt",
        "vllm",
        {
            "num_requests_running": "vllm:num_requests_running",
            "num_requests_waiting": "vllm:num_requests_waiting",
            "kv_cache_usage_perc": "vllm:kv_cache_usage_perc",
            "prompt_tokens_total": "vllm:prompt_tokens_total",
            "generation_tokens_total": "vllm:generation_tokens_total",
            "request_success_total": "vllm:request_success_total",
            "num_preemptions_total": "vllm:num_preemptions_total",
            "prefix_cache_hits_total": "vllm:prefix_cache_hits_total",
            "prefix_cache_queries_total": "vllm:prefix_cache_queries_total",
            "time_to_first_token_seconds": "vllm:time_to_first_token_seconds",
            "time_per_output_token_seconds": "vllm:inter_token_latency_seconds",
            "request_time_per_output_token_seconds": "vllm:request_time_per_output_token_seconds",
            "e2e_request_latency_seconds": "vllm:e2e_request_latency_seconds",
            "request_queue_time_seconds": "vllm:request_queue_time_seconds",
        },
    ),
    (
        "sglang-0.5.23-metrics.txt",
        "sglang",
        {
            "num_requests_running": "sglang:num_running_reqs",
            "num_requests_waiting": "sglang:num_queue_reqs",
            "kv_cache_usage_perc": "sglang:token_usage",
            "prompt_tokens_total": "sglang:prompt_tokens_total",
            "generation_tokens_total": "sglang:generation_tokens_total",
            "num_preemptions_total": "sglang:num_retracted_requests_total",
            "time_to_first_token_seconds": "sglang:time_to_first_token_seconds",
            "time_per_output_token_seconds": "sglang:inter_token_latency_seconds",
            "request_time_per_output_token_seconds": "sglang:request_time_per_output_token_seconds",
            "e2e_request_latency_seconds": "sglang:e2e_request_latency_seconds",
            "request_queue_time_seconds": "sglang:queue_time_seconds",
        },
    ),
]
CASES.append(("sglang-0.5.23-metrics-singleprocess.txt", "sglang", CASES[1][2]))
CASES += [
    (
        "tgi-metrics.txt",
        "tgi",
        {
            "num_requests_running": "tgi_batch_current_size",
            "num_requests_waiting": "tgi_queue_size",
            "e2e_request_latency_seconds": "tgi_request_duration",
            "request_queue_time_seconds": "tgi_request_queue_duration",
            "request_inference_time_seconds": "tgi_request_inference_duration",
            "request_prompt_tokens": "tgi_request_input_length",
            "request_generation_tokens": "tgi_request_generated_tokens",
            "request_success_total": "tgi_request_success",
            "request_failure_total": "tgi_request_failure",
        },
    ),
    (
        "llamacpp-metrics.txt",
        "llamacpp",
        {
            "num_requests_running": "llamacpp:requests_processing",
            "num_requests_waiting": "llamacpp:requests_deferred",
            "prompt_tokens_total": "llamacpp:prompt_tokens_total",
            "generation_tokens_total": "llamacpp:tokens_predicted_total",
            "prefix_cache_hits_total": "llamacpp:prompt_tokens_cached_total",
            "prompt_seconds_total": "llamacpp:prompt_seconds_total",
            "generation_seconds_total": "llamacpp:tokens_predicted_seconds_total",
        },
    ),
    (
        "trtllm-serve-metrics.txt",
        "trtllm",
        {
            "num_requests_running": "trtllm_num_requests_running",
            "num_requests_waiting": "trtllm_num_requests_waiting",
            "kv_cache_usage_perc": "trtllm_kv_cache_utilization",
            "prompt_tokens_total": "trtllm_prompt_tokens_total",
            "generation_tokens_total": "trtllm_generation_tokens_total",
            "time_to_first_token_seconds": "trtllm_time_to_first_token_seconds",
            "request_time_per_output_token_seconds": "trtllm_time_per_output_token_seconds",
            "e2e_request_latency_seconds": "trtllm_e2e_request_latency_seconds",
            "request_queue_time_seconds": "trtllm_request_queue_time_seconds",
            "request_success_total": "trtllm_request_success_total",
        },
    ),
    (
        "lmdeploy-metrics.txt",
        "lmdeploy",
        {
            "num_requests_running": "lmdeploy:num_requests_running",
            "num_requests_waiting": "lmdeploy:num_requests_waiting",
            "kv_cache_usage_perc": "lmdeploy:gpu_cache_usage_perc",
            "prompt_tokens_total": "lmdeploy:prompt_tokens_total",
            "generation_tokens_total": "lmdeploy:generation_tokens_total",
            "time_to_first_token_seconds": "lmdeploy:time_to_first_token_seconds",
            "time_per_output_token_seconds": "lmdeploy:iter_token_latency",
            "e2e_request_latency_seconds": "lmdeploy:e2e_request_latency_seconds",
            "request_queue_time_seconds": "lmdeploy:request_queue_time_seconds",
            "request_success_total": "lmdeploy:request_success_total",
        },
    ),
]


def _mirror(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], unified: str, source: str) -> int:
    """Assert every sample of `source` has an equal `airuntime:` twin; returns how many were compared."""
    compared = 0
    source_base = source.removesuffix("_total")
    target_base = "airuntime:" + unified.removesuffix("_total")
    for (name, labels), value in values.items():
        if not name.startswith(source_base) or name.endswith("_created"):
            continue
        suffix = name[len(source_base) :]
        if suffix not in ("", "_total", "_bucket", "_sum", "_count"):
            continue
        if suffix == "" and unified.endswith("_total"):
            suffix = "_total"  # a counter without `_total` on the wire (TGI) gets it in the unified copy
        twin = values.get((target_base + suffix, labels))
        assert twin is not None, f"{name}{dict(labels)} has no unified twin {target_base + suffix}"
        assert twin == value or (twin != twin and value != value), f"{name}: {twin} != {value}"
        compared += 1
    return compared


@pytest.mark.parametrize(("fixture", "engine", "mapping"), CASES, ids=[case[0] for case in CASES])
@pytest.mark.parametrize("configured", ["explicit", "auto"])
def test_unified_families_mirror_the_engine(
    fixture: str, engine: str, mapping: dict[str, str], configured: str
) -> None:
    payload = (FIXTURES / fixture).read_bytes()
    rules = build_ruleset(engine if configured == "explicit" else "auto")
    out, rewriter = rewrite_bytes(payload, rules)
    assert rewriter.invalid_lines == 0
    assert rewriter.families_by_engine.most_common(1)[0][0] == engine
    families = families_of(out)
    for unified, source in mapping.items():
        assert families.get("airuntime:" + unified) == families[source if source in families else source + "_total"]
    values = sample_values(out)
    for unified, source in mapping.items():
        assert _mirror(values, unified, source) > 0, f"no samples for {source}"
    assert not [name for name in families if name.startswith("airuntime:") and name.endswith("_created")]
    assert_valid_exposition(out)


@pytest.mark.parametrize(("fixture", "engine", "mapping"), CASES, ids=[case[0] for case in CASES])
def test_raw_families_are_byte_identical(fixture: str, engine: str, mapping: dict[str, str]) -> None:
    payload = (FIXTURES / fixture).read_bytes()
    out, _ = rewrite_bytes(payload, build_ruleset(engine))
    raw_lines = [line for line in out.split(b"\n") if line and b"airuntime:" not in line]
    assert raw_lines == [line for line in payload.split(b"\n") if line]


def test_counters_survive_where_competitors_lose_them() -> None:
    """AIBrix and Kthena drop every renamed counter (their parser strips `_total`); here they arrive intact."""
    payload = (FIXTURES / "vllm-0.32.0-metrics.txt").read_bytes()
    for prefix, profile, counter in (
        ("kthena", "default", "kthena:generation_tokens_total"),
        (None, "aibrix", "aibrix:prompt_tokens_total"),
        (None, "aibrix", "aibrix:generation_tokens_total"),
        (None, "aibrix", "aibrix:request_success_total"),
    ):
        out, _ = rewrite_bytes(payload, build_ruleset("vllm", prefix=prefix, profile=profile))
        assert families_of(out)[counter] == "counter"
        assert any(name == counter for name, _ in sample_values(out))


def test_aibrix_profile_names() -> None:
    payload = (FIXTURES / "vllm-0.32.0-metrics.txt").read_bytes()
    out, _ = rewrite_bytes(payload, build_ruleset("vllm", profile="aibrix"), keep_raw=False)
    assert set(families_of(out)) == {
        "aibrix:queue_size",
        "aibrix:kv_cache_usage_perc",
        "aibrix:gpu_cache_usage_perc",
        "aibrix:prompt_tokens_total",
        "aibrix:generation_tokens_total",
        "aibrix:request_success_total",
        "aibrix:time_to_first_token_seconds",
        "aibrix:time_per_output_token_seconds",
        "aibrix:e2e_request_latency_seconds",
    }
    assert_valid_exposition(out)


def test_kthena_prefix_reproduces_kthena_names() -> None:
    payload = (FIXTURES / "vllm-0.32.0-metrics.txt").read_bytes()
    out, _ = rewrite_bytes(payload, build_ruleset("vllm", profile="kthena"), keep_raw=False)
    assert set(families_of(out)) == {
        "kthena:generation_tokens_total",
        "kthena:num_requests_waiting",
        "kthena:time_to_first_token_seconds",
        "kthena:time_per_output_token_seconds",
        "kthena:e2e_request_latency_seconds",
    }


def test_triton_per_type_gauges_and_unit_conversions() -> None:
    payload = (FIXTURES / "triton-trtllm-metrics.txt").read_bytes()
    out, rewriter = rewrite_bytes(payload, build_ruleset("auto"))
    assert rewriter.families_by_engine.most_common(1)[0][0] == "trtllm"
    assert_valid_exposition(out)
    values = sample_values(out)
    for unified, label in (("num_requests_running", "active"), ("num_requests_waiting", "waiting")):
        engine = {
            labels: value
            for (name, labels), value in values.items()
            if name == "nv_trt_llm_request_metrics" and ("request_type", label) in labels
        }
        assert engine
        for labels, value in engine.items():
            kept = tuple(pair for pair in labels if pair[0] != "request_type")
            assert values[(f"airuntime:{unified}", kept)] == value
    fraction = [
        v
        for (n, labels), v in values.items()
        if n == "nv_trt_llm_kv_cache_block_metrics" and ("kv_cache_block_type", "fraction") in labels
    ]
    assert [v for (n, _), v in values.items() if n == "airuntime:kv_cache_usage_perc"] == fraction
    for (name, labels), value in values.items():
        if name == "nv_inference_request_duration_us":
            assert values[("airuntime:request_duration_seconds_total", labels)] == pytest.approx(value / 1e6)
        if name == "nv_inference_first_response_histogram_ms_sum":
            assert values[("airuntime:first_response_seconds_sum", labels)] == pytest.approx(value / 1e3)
        if name == "nv_inference_first_response_histogram_ms_bucket":
            le = dict(labels)["le"]
            scaled = "+Inf" if le == "+Inf" else repr(float(le) / 1000)
            converted = tuple(("le", scaled) if key == "le" else (key, v) for key, v in labels)
            assert values[("airuntime:first_response_seconds_bucket", converted)] == value
    assert b"unit converted by airuntime" in out
