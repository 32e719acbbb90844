"""The relay's index: reference counts by content hash, pools per rank/group/medium, LoRA models, the bound, and the
coalesced changes handed to the Redis writer."""

from __future__ import annotations

from runtime.kv_events.decode import Removed, Stored
from runtime.kv_events.index import ChangeCounts, PodIndex
from tests.support.kv_events import FIXTURES, load_frames, reference_from_frames, standardized_hash

TOKENS_A = list(range(100, 132))
TOKENS_B = list(range(200, 232))


def _stored(hashes: list[int], tokens: list[int], group: int = 0, medium: str | None = "GPU", lora: str | None = None):
    return Stored(hashes, tokens, medium, group, lora, None)


def test_same_content_in_two_groups_keeps_the_claim_until_both_are_gone() -> None:
    index = PodIndex("m")
    counts = ChangeCounts()
    index.store(0, _stored([1], TOKENS_A, group=0), counts)
    index.store(0, _stored([1], TOKENS_A, group=1), counts)
    index.store(1, _stored([9], TOKENS_A), counts)  # another DP rank, another engine hash, same tokens
    content = standardized_hash(TOKENS_A)
    assert index.take_pending().owned == {"m": {content: True}}
    index.remove(0, Removed([1], "GPU", 0), counts)
    index.remove(1, Removed([9], "GPU", 0), counts)
    assert index.claims("m", content)
    assert not index.take_pending().owned["m"]  # nothing to tell Redis: still claimed
    index.remove(0, Removed([1], "GPU", 1), counts)
    assert not index.claims("m", content)
    assert index.take_pending().owned == {"m": {content: False}}
    assert (counts.stored, counts.removed, counts.unknown_removed) == (3, 3, 0)


def test_the_cpu_tier_keeps_a_block_evicted_from_the_gpu() -> None:
    index = PodIndex("m")
    counts = ChangeCounts()
    index.store(0, _stored([5], TOKENS_B, medium="GPU"), counts)
    index.store(0, _stored([5], TOKENS_B, medium="CPU"), counts)
    index.remove(0, Removed([5], "GPU", 0), counts)
    assert index.claims("m", standardized_hash(TOKENS_B))
    index.remove(0, Removed([5], "GPU", 0), counts)  # twice: the second is unknown
    assert counts.unknown_removed == 1


def test_lora_blocks_are_claimed_under_the_adapter_name() -> None:
    index = PodIndex("base")
    index.store(0, _stored([1], TOKENS_A, lora="sql"), ChangeCounts())
    content = standardized_hash(TOKENS_A)
    assert index.claims("sql", content) and not index.claims("base", content)
    index.remove(0, Removed([1], "GPU", 0), ChangeCounts())  # removals carry no LoRA name
    assert not index.claims("sql", content)
    assert index.models() == {"base"}


def test_router_block_size_smaller_than_the_engine_s() -> None:
    index = PodIndex("m", chunk=16)
    index.store(0, _stored([1, 2], TOKENS_A + TOKENS_B), ChangeCounts())
    halves = [standardized_hash(t) for t in (TOKENS_A[:16], TOKENS_A[16:], TOKENS_B[:16], TOKENS_B[16:])]
    assert sorted(content for _, content in index.owned()) == sorted(halves)
    assert dict(index.mappings()) == {1: halves[0], 2: halves[2]}
    index.remove(0, Removed([2], "GPU", 0), ChangeCounts())
    assert sorted(content for _, content in index.owned()) == sorted(halves[:2])


def test_uncacheable_blocks_are_not_claimed_and_their_removal_is_unknown() -> None:
    index = PodIndex("m")
    counts = ChangeCounts()
    index.store(0, Stored([1, 2], TOKENS_A + TOKENS_B, "GPU", 0, None, [True, False]), counts)
    assert [content for _, content in index.owned()] == [standardized_hash(TOKENS_B)]
    index.remove(0, Removed([1, 2], "GPU", 0), counts)
    assert (counts.skipped, counts.removed, counts.unknown_removed) == (1, 1, 1)


def test_clear_rank_leaves_other_ranks_alone() -> None:
    index = PodIndex("m")
    index.store(0, _stored([1], TOKENS_A), ChangeCounts())
    index.store(1, _stored([2], TOKENS_B), ChangeCounts())
    index.take_pending()
    assert index.clear_rank(0) == 1
    assert list(index.owned()) == [("m", standardized_hash(TOKENS_B))]
    pending = index.take_pending()
    assert pending.owned == {"m": {standardized_hash(TOKENS_A): False}} and pending.mappings == {1: None}


def test_pending_changes_coalesce_to_the_last_state() -> None:
    index = PodIndex("m")
    for _ in range(3):
        index.store(0, _stored([1], TOKENS_A), ChangeCounts())
        index.remove(0, Removed([1], "GPU", 0), ChangeCounts())
    pending = index.take_pending()
    assert pending.owned == {"m": {standardized_hash(TOKENS_A): False}} and pending.count() == 2
    assert not index.take_pending()


def test_the_bound_drops_the_oldest_blocks_and_withdraws_their_claims() -> None:
    index = PodIndex("m", max_blocks=10)
    counts = ChangeCounts()
    for i in range(15):
        index.store(0, _stored([i], [i] * 16), counts)
    assert index.size == 10 and counts.evicted == 5
    assert not index.claims("m", standardized_hash([0] * 16)) and index.claims("m", standardized_hash([14] * 16))


def test_recorded_history_matches_the_reference_model() -> None:
    from runtime.kv_events.decode import Cleared, decode_batch

    frames = load_frames(FIXTURES / "vllm-0.32.0.kv-events.jsonl")
    index = PodIndex("tiny")
    counts = ChangeCounts()
    for frame in frames:
        for event in decode_batch(frame.payload).events:
            if isinstance(event, Stored):
                index.store(0, event, counts)
            elif isinstance(event, Removed):
                index.remove(0, event, counts)
            elif isinstance(event, Cleared):
                index.clear_rank(0)
    reference = reference_from_frames("tiny", frames)
    assert set(index.owned()) == reference.owned()
    assert {h for h, _ in index.mappings()} == reference.engine_hashes()
    assert counts.removed > 0 and counts.unknown_removed == 0
