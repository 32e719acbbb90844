"""The streaming rewriter on exact inputs: naming, drift, edge cases of the text format, chunking."""

from __future__ import annotations

import random

import pytest

from runtime.metrics.rewriter import MetricsRewriter, RewriteCache
from runtime.metrics.rule_tables import parse_rules
from runtime.metrics.rules import build_ruleset
from tests.support.exposition import families_of, sample_lines
from tests.support.promtool import assert_valid_exposition
from tests.support.rewrite import rewrite_bytes

VLLM = build_ruleset("vllm")


def rewrite(payload: bytes, keep_raw: bool = True, rules: object = VLLM) -> bytes:
    out, _ = rewrite_bytes(payload, rules, keep_raw=keep_raw)  # type: ignore[arg-type]
    return out


COUNTER = b"""# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 42.0
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{engine="0",model_name="tiny"} 1.7e+09
"""


def test_counter_keeps_total_and_created_stays_raw_only() -> None:
    out = rewrite(COUNTER)
    assert b'airuntime:prompt_tokens_total{engine="0",model_name="tiny"} 42.0\n' in out
    assert b"# TYPE airuntime:prompt_tokens_total counter\n" in out
    assert b"airuntime:prompt_tokens_created" not in out
    assert b"vllm:prompt_tokens_created{" in out
    assert out.startswith(COUNTER.split(b"# HELP vllm:prompt_tokens_created")[0])


HISTOGRAM = b"""# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny"} 0.5
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="tiny"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 2.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} 2.0
"""


def test_histogram_copy_follows_raw_family_with_all_suffixes() -> None:
    out = rewrite(HISTOGRAM)
    raw, unified = out[: len(HISTOGRAM)], out[len(HISTOGRAM) :]
    assert raw == HISTOGRAM
    assert unified == HISTOGRAM.replace(b"vllm:", b"airuntime:")


def test_labels_pass_through_untouched_and_in_order() -> None:
    line = b'vllm:num_requests_running{z="1",a="x\\"y\\\\z\\nw",engine="0"} 3\n'
    out = rewrite(b"# TYPE vllm:num_requests_running gauge\n" + line)
    assert b'airuntime:num_requests_running{z="1",a="x\\"y\\\\z\\nw",engine="0"} 3\n' in out


def test_unlabelled_samples_and_timestamps_are_kept() -> None:
    out = rewrite(b"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 7 1700000000000\n")
    assert b"airuntime:num_requests_waiting 7 1700000000000\n" in out


@pytest.mark.parametrize("value", [b"NaN", b"+Inf", b"-Inf", b"1e-05", b"-0.5", b".5", b"3"])
def test_special_values(value: bytes) -> None:
    out = rewrite(b'# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{engine="0"} ' + value + b"\n")
    assert b'airuntime:kv_cache_usage_perc{engine="0"} ' + value + b"\n" in out


OLD_KV = b"""# HELP vllm:gpu_cache_usage_perc old
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0"} 0.5
"""
NEW_KV = b"""# HELP vllm:kv_cache_usage_perc new
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0"} 0.25
"""


@pytest.mark.parametrize("payload", [OLD_KV + NEW_KV, NEW_KV + OLD_KV], ids=["old-first", "new-first"])
def test_drift_newer_source_wins_and_family_appears_once(payload: bytes) -> None:
    out = rewrite(payload)
    assert out.count(b"# TYPE airuntime:kv_cache_usage_perc gauge") == 1
    assert b'airuntime:kv_cache_usage_perc{engine="0"} 0.25\n' in out
    assert b"0.5\n" in out  # the raw old family is still there
    assert b'airuntime:kv_cache_usage_perc{engine="0"} 0.5' not in out
    assert_valid_exposition(out)


def test_drift_old_name_alone_still_feeds_the_unified_family() -> None:
    out = rewrite(OLD_KV)
    assert b'airuntime:kv_cache_usage_perc{engine="0"} 0.5\n' in out
    assert b"# HELP airuntime:kv_cache_usage_perc old\n" in out


def test_no_raw_metrics_keeps_only_unified_families() -> None:
    out = rewrite(COUNTER + HISTOGRAM, keep_raw=False)
    assert b"vllm:" not in out
    assert set(families_of(out)) == {"airuntime:prompt_tokens_total", "airuntime:time_to_first_token_seconds"}


def test_multiprocess_shape_sum_before_buckets_and_no_help() -> None:
    payload = (
        b"# TYPE vllm:e2e_request_latency_seconds histogram\n"
        b'vllm:e2e_request_latency_seconds_sum{engine="0"} 3.0\n'
        b'vllm:e2e_request_latency_seconds_bucket{engine="0",le="1.0"} 1.0\n'
        b'vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf"} 2.0\n'
        b'vllm:e2e_request_latency_seconds_count{engine="0"} 2.0\n'
    )
    out = rewrite(payload)
    unified = [line for line in sample_lines(out) if line.startswith(b"airuntime:")]
    assert unified == [line.replace(b"vllm:", b"airuntime:") for line in sample_lines(payload)]


def test_untyped_samples_without_headers_are_matched_by_name() -> None:
    payload = (
        b'vllm:generation_tokens_total{engine="0"} 9\n'
        b'vllm:request_queue_time_seconds_bucket{le="+Inf"} 1\n'
        b"vllm:request_queue_time_seconds_count 1\n"
        b"vllm:request_queue_time_seconds_sum 0.1\n"
    )
    out = rewrite(payload)
    assert b"# TYPE airuntime:generation_tokens_total counter\n" in out
    assert b'airuntime:generation_tokens_total{engine="0"} 9\n' in out
    assert b"# TYPE airuntime:request_queue_time_seconds histogram\n" in out
    assert b"airuntime:request_queue_time_seconds_sum 0.1\n" in out


def test_openmetrics_input_becomes_valid_text_format() -> None:
    payload = (
        b"# HELP vllm:generation_tokens Number of generation tokens processed.\n"
        b"# TYPE vllm:generation_tokens counter\n"
        b'vllm:generation_tokens_total{engine="0"} 5.0 # {trace_id="abc"} 1.0 1700000000.1\n'
        b'vllm:generation_tokens_created{engine="0"} 1.7e+09\n'
        b"# TYPE vllm:num_requests_running gauge\n"
        b"# UNIT vllm:num_requests_running requests\n"
        b'vllm:num_requests_running{engine="0"} 1.0\n'
        b"# EOF\n"
    )
    out = rewrite(payload)
    assert b"# TYPE vllm:generation_tokens_total counter\n" in out
    assert b'vllm:generation_tokens_total{engine="0"} 5.0\n' in out
    assert b'airuntime:generation_tokens_total{engine="0"} 5.0\n' in out
    assert b"_created" not in out
    assert b"# EOF" not in out and b"# UNIT" not in out and b"trace_id" not in out
    assert_valid_exposition(out)


def test_counter_without_total_gets_it_in_the_unified_copy() -> None:
    rules = build_ruleset(
        "vllm",
        overrides=parse_rules(
            {"families": [{"name": "request_count", "type": "counter", "sources": ["tgi_request_count"]}]}
        ),
    )
    out = rewrite(b"# TYPE tgi_request_count counter\ntgi_request_count 12\n", rules=rules)
    assert b"# TYPE tgi_request_count counter\ntgi_request_count 12\n" in out
    assert b"# TYPE airuntime:request_count_total counter\nairuntime:request_count_total 12\n" in out
    assert_valid_exposition(out)


def test_crlf_and_blank_lines() -> None:
    out = rewrite(COUNTER.replace(b"\n", b"\r\n") + b"\r\n\r\n")
    assert b"\r" not in out
    assert b'airuntime:prompt_tokens_total{engine="0",model_name="tiny"} 42.0\n' in out


def test_empty_body_gives_empty_output() -> None:
    out, rewriter = rewrite_bytes(b"", VLLM)
    assert out == b""
    assert rewriter.invalid_lines == 0 and rewriter.sample_lines == 0


def test_missing_final_newline() -> None:
    out = rewrite(b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 2")
    assert out.endswith(b"airuntime:num_requests_running 2\n")


@pytest.mark.parametrize(
    "bad",
    [
        b"vllm:num_requests_running{engine} 1",
        b'vllm:num_requests_running{engine="0" 1',
        b"vllm:num_requests_running 1 2 3",
        b"vllm:num_requests_running one",
        b"vllm:num_requests_running",
        b"1abc 2",
        b"# TYPE vllm:num_requests_running sometype",
        b"\xff\xfe garbage",
        b'vllm:num_requests_running{engine="0"}1_000',
    ],
)
def test_invalid_lines_are_dropped_and_counted(bad: bytes) -> None:
    good = b"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 1\n"
    out, rewriter = rewrite_bytes(good + bad + b"\n" + good.replace(b"waiting", b"running"), VLLM)
    assert rewriter.invalid_lines == 1
    assert b"\n" + bad + b"\n" not in out
    assert b"airuntime:num_requests_waiting 1\n" in out
    assert b"airuntime:num_requests_running 1\n" in out
    assert_valid_exposition(out)


def test_label_match_rule_selects_series_and_drops_the_label() -> None:
    rules = build_ruleset(
        "vllm",
        overrides=parse_rules(
            {
                "families": [
                    {
                        "name": "num_requests_waiting",
                        "type": "gauge",
                        "sources": [{"name": "nv_trt_llm_request_metrics", "match": {"request_type": "waiting"}}],
                    }
                ]
            }
        ),
    )
    payload = (
        b"# TYPE nv_trt_llm_request_metrics gauge\n"
        b'nv_trt_llm_request_metrics{model="m",request_type="active",version="1"} 3\n'
        b'nv_trt_llm_request_metrics{model="m",request_type="waiting",version="1"} 4\n'
        b'nv_trt_llm_request_metrics{request_type="waiting"} 5\n'
    )
    out = rewrite(payload, rules=rules)
    assert b'airuntime:num_requests_waiting{model="m",version="1"} 4\n' in out
    assert b"airuntime:num_requests_waiting 5\n" in out
    assert_valid_exposition(out)
    assert b'airuntime:num_requests_waiting{model="m",version="1"} 3' not in out


def test_prefix_changes_every_unified_name() -> None:
    out = rewrite(COUNTER, rules=build_ruleset("vllm", prefix="kthena"))
    assert b"kthena:prompt_tokens_total{" in out and b"airuntime:" not in out


def test_family_repeated_in_input_is_emitted_once_in_unified_set() -> None:
    out = rewrite(COUNTER + COUNTER)
    assert out.count(b"# TYPE airuntime:prompt_tokens_total counter") == 1


def test_chunked_feeding_equals_whole_feeding() -> None:
    payload = (COUNTER + HISTOGRAM + OLD_KV + NEW_KV) * 3
    whole = rewrite(payload)
    generator = random.Random(7)
    cache = RewriteCache()  # shared across the runs, as the scraper shares it across scrapes
    for _ in range(50):
        rewriter = MetricsRewriter(VLLM, cache=cache)
        pieces: list[bytes] = []
        position = 0
        while position < len(payload):
            step = generator.randint(1, 40)
            rewriter.feed(payload[position : position + step])
            pieces.append(rewriter.take_bytes())
            position += step
        rewriter.finish()
        pieces.append(rewriter.take_bytes())
        assert b"".join(pieces) == whole


def test_five_megabyte_payload() -> None:
    lines = [b"# HELP vllm:num_requests_running running\n", b"# TYPE vllm:num_requests_running gauge\n"]
    lines += [b'vllm:num_requests_running{engine="%d",model_name="m"} %d\n' % (i, i) for i in range(120_000)]
    payload = b"".join(lines)
    assert len(payload) > 5_000_000
    out, rewriter = rewrite_bytes(payload, VLLM)
    assert rewriter.sample_lines == 120_000 and rewriter.invalid_lines == 0
    assert out.count(b"\nairuntime:num_requests_running{") == 120_000
    assert out.startswith(payload)


TRITON_TTFT = b"""# HELP nv_inference_first_response_histogram_ms Duration from request to first response in milliseconds
# TYPE nv_inference_first_response_histogram_ms histogram
nv_inference_first_response_histogram_ms_count{model="ensemble",version="1"} 3
nv_inference_first_response_histogram_ms_sum{model="ensemble",version="1"} 1234.5
nv_inference_first_response_histogram_ms_bucket{model="ensemble",version="1",le="100"} 1
nv_inference_first_response_histogram_ms_bucket{model="ensemble",version="1",le="500"} 2
nv_inference_first_response_histogram_ms_bucket{model="ensemble",version="1",le="2000"} 3
nv_inference_first_response_histogram_ms_bucket{model="ensemble",version="1",le="+Inf"} 3
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="ensemble",version="1"} 2500001
"""


def test_unit_conversion_rescales_le_and_sum_never_rebuckets() -> None:
    out = rewrite(TRITON_TTFT, rules=build_ruleset("trtllm"))
    assert out.startswith(TRITON_TTFT.split(b"# HELP nv_inference_request_duration_us")[0])
    assert (
        b"# HELP airuntime:first_response_seconds Duration from request to first response in milliseconds "
        b"[unit converted by airuntime: engine values divided by 1000]\n"
        b"# TYPE airuntime:first_response_seconds histogram\n"
        b'airuntime:first_response_seconds_count{model="ensemble",version="1"} 3\n'
        b'airuntime:first_response_seconds_sum{model="ensemble",version="1"} 1.2345\n'
        b'airuntime:first_response_seconds_bucket{model="ensemble",version="1",le="0.1"} 1\n'
        b'airuntime:first_response_seconds_bucket{model="ensemble",version="1",le="0.5"} 2\n'
        b'airuntime:first_response_seconds_bucket{model="ensemble",version="1",le="2.0"} 3\n'
        b'airuntime:first_response_seconds_bucket{model="ensemble",version="1",le="+Inf"} 3\n'
    ) in out
    assert b'airuntime:request_duration_seconds_total{model="ensemble",version="1"} 2.500001\n' in out
    assert_valid_exposition(out)
    assert b"# TYPE airuntime:request_duration_seconds_total counter\n" in out


def test_unit_converted_copies_are_replayed_with_new_values() -> None:
    """The second scrape has only new values: the cache replays the last shape (runtime/metrics/replay.py), dividing
    converted values again (sums and counters, not bucket counts or `_count`), and writes what a cold rewrite does."""
    rules = build_ruleset("trtllm")
    cache = RewriteCache()
    first = MetricsRewriter(rules, cache=cache)
    first.feed(TRITON_TTFT)
    first.finish()
    shape = cache.shape
    assert shape is not None
    later = (
        TRITON_TTFT.replace(b"} 1234.5", b"} 2000").replace(b"} 2500001", b"} 3e6").replace(b'"+Inf"} 3', b'"+Inf"} 4')
    )
    warm = MetricsRewriter(rules, cache=cache)
    warm.feed(later)
    warm.finish()
    assert cache.shape is shape
    out = warm.take_bytes()
    assert out == rewrite(later, rules=rules)
    assert b'airuntime:first_response_seconds_sum{model="ensemble",version="1"} 2.0\n' in out
    assert b'airuntime:first_response_seconds_bucket{model="ensemble",version="1",le="+Inf"} 4\n' in out
    assert b'airuntime:request_duration_seconds_total{model="ensemble",version="1"} 3.0\n' in out


def test_an_engine_whose_answers_never_fit_the_last_shape_stops_paying_for_shapes() -> None:
    """A sample stamped with the time changes every answer: each scrape runs the state machine, and shapes are made
    ever more rarely (not on every scrape); once the answers settle, replaying resumes."""
    cache = RewriteCache()
    made = 0
    for scrape in range(100):
        payload = COUNTER + b"vllm:num_requests_running 1 %d\n" % (1_700_000_000_000 + scrape)
        warm = MetricsRewriter(VLLM, cache=cache)
        warm.feed(payload)
        warm.finish()
        assert warm.take_bytes() == rewrite(payload)
        made += cache.shape is not None
    assert 3 <= made <= 8, made
    replayed = 0
    for _ in range(70):
        shape = cache.shape
        warm = MetricsRewriter(VLLM, cache=cache)
        warm.feed(COUNTER)
        warm.finish()
        assert warm.take_bytes() == rewrite(COUNTER)
        replayed += shape is not None and cache.shape is shape
    assert replayed >= 2, replayed


def test_auto_rules_recognise_the_engine_from_its_families() -> None:
    auto = build_ruleset("auto")
    for payload, engine in ((COUNTER, "vllm"), (TRITON_TTFT, "trtllm")):
        out, rewriter = rewrite_bytes(payload, auto)
        assert rewriter.families_by_engine.most_common(1)[0][0] == engine
        assert b"airuntime:" in out


def test_shared_cache_gives_the_same_output_as_a_cold_rewrite() -> None:
    cache = RewriteCache()
    first = COUNTER + HISTOGRAM
    second = first.replace(b"42.0", b"43.0").replace(b"} 2.0", b"} NaN")
    third = first.replace(b"42.0", b"not-a-number")
    for payload in (first, second, first, third):
        warm = MetricsRewriter(VLLM, cache=cache)
        warm.feed(payload)
        warm.finish()
        cold_out, cold = rewrite_bytes(payload, VLLM)
        assert warm.take_bytes() == cold_out
        assert (warm.invalid_lines, warm.sample_lines) == (cold.invalid_lines, cold.sample_lines)
    assert cache.samples  # the cache was used


def test_real_openmetrics_output_of_prometheus_client_becomes_valid_text_format() -> None:
    """prometheus_client's own OpenMetrics renderer (what an engine sends to an OpenMetrics Accept header): it writes
    `vllm:` names on HELP/TYPE but `vllm_` on sample lines (client_python #1177); both spellings are recognised."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

    registry = CollectorRegistry()
    Counter("vllm:prompt_tokens", "Prompt tokens.", ["model_name"], registry=registry).labels("m").inc(7)
    Gauge("vllm:num_requests_waiting", "Waiting.", ["model_name"], registry=registry).labels("m").set(2)
    ttft = Histogram("vllm:time_to_first_token_seconds", "TTFT.", ["model_name"], buckets=(0.1, 1.0), registry=registry)
    ttft.labels("m").observe(0.5)
    payload = openmetrics(registry)
    assert payload.endswith(b"# EOF\n")
    out, rewriter = rewrite_bytes(payload, VLLM)
    assert rewriter.invalid_lines == 0
    assert b"# EOF" not in out and b"_created" not in out
    families = families_of(out)
    assert families.get("airuntime:num_requests_waiting") == "gauge"
    assert families.get("airuntime:time_to_first_token_seconds") == "histogram"
    assert b'airuntime:time_to_first_token_seconds_bucket{le="1.0",model_name="m"} 1.0\n' in out
    assert b'airuntime:prompt_tokens_total{model_name="m"} 7.0\n' in out
    assert_valid_exposition(out)
