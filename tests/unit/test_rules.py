"""Rule data parsed strictly: an unknown key anywhere (a typo such as `divde_by`) is an error naming the file and
the key; the shipped tables and profiles all parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.errors import RulesError
from runtime.metrics.rule_tables import (
    available_engines,
    available_profiles,
    load_engine_table,
    load_profile,
    load_rules_file,
)
from runtime.metrics.rules import build_ruleset
from tests.support.rewrite import rewrite_bytes

MS_HISTOGRAM = (
    b"# TYPE x_latency_ms histogram\n"
    b'x_latency_ms_bucket{le="100"} 1\nx_latency_ms_bucket{le="+Inf"} 2\nx_latency_ms_sum 250\nx_latency_ms_count 2\n'
)


def write(tmp_path: Path, document: object, name: str = "rules.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def test_every_shipped_table_and_profile_parses_strictly() -> None:
    for engine in available_engines():
        assert load_engine_table(engine).families
    for profile in available_profiles():
        if profile != "default":
            assert load_profile(profile).names


def test_a_typo_in_a_source_is_an_error_naming_file_and_key(tmp_path: Path) -> None:
    """Before: `divde_by` was ignored and values came out in milliseconds."""
    path = write(
        tmp_path,
        {
            "families": [
                {
                    "name": "latency_seconds",
                    "type": "histogram",
                    "sources": [{"name": "x_latency_ms", "divde_by": 1000}],
                }
            ]
        },
    )
    with pytest.raises(RulesError) as caught:
        load_rules_file(path)
    message = str(caught.value)
    assert str(path) in message and "'divde_by'" in message and "families[0]" in message


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"famillies": []}, "'famillies'"),
        ({"families": [{"name": "a", "type": "gauge", "sources": ["x"], "kind": "gauge"}]}, "'kind'"),
        (
            {"families": [{"name": "a", "type": "gauge", "sources": [{"name": "x", "matches": {"a": "b"}}]}]},
            "'matches'",
        ),
    ],
)
def test_unknown_keys_at_every_level(tmp_path: Path, document: object, key: str) -> None:
    with pytest.raises(RulesError, match=key):
        load_rules_file(write(tmp_path, document))


def test_the_corrected_file_converts_units(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "families": [
                {
                    "name": "latency_seconds",
                    "type": "histogram",
                    "sources": [{"name": "x_latency_ms", "divide_by": 1000}],
                }
            ]
        },
    )
    out, _ = rewrite_bytes(MS_HISTOGRAM, build_ruleset("vllm", overrides=load_rules_file(path)))
    assert b'airuntime:latency_seconds_bucket{le="0.1"} 1\n' in out
    assert b"airuntime:latency_seconds_sum 0.25\n" in out


def test_yaml_rules_and_comments_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "comment: mine\nfamilies:\n  - {name: a, type: gauge, sources: [x], comment: why}\ndrop: [lora_requests_info]\n"
    )
    rules = load_rules_file(path)
    assert [family.name for family in rules.families] == ["a"] and rules.drop == ("lora_requests_info",)
