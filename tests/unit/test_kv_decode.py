"""KV-event decoding and the router's hash: recorded batches from real vLLM 0.32 and SGLang 0.5.23's own classes, the
legacy array form, and constructed payloads for what the recordings do not have (vLLM 0.33's new field, bytes
hashes, garbage)."""

from __future__ import annotations

import msgspec
import pytest

from runtime.kv_events.decode import Cleared, DecodeError, Removed, Stored, decode_batch
from runtime.kv_events.hashing import TokenError, content_hashes, standardized_hash
from tests.support.kv_events import FIXTURES, load_frames
from tests.support.kv_events import standardized_hash as reference_hash
from tests.support.kv_publisher import CLEARED, removed, stored

VLLM = FIXTURES / "vllm-0.32.0.kv-events.jsonl"
LEGACY = FIXTURES / "vllm-legacy-array.kv-events.jsonl"
SGLANG = FIXTURES / "sglang-0.5.23.kv-events.jsonl"


# ------------------------------------------------------------------------------------------------- hash


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([123], 3207548891546131000),
        (list(range(16)), 6473494984593326032),
        (
            [151644, 872, 198, 9064, 374, 279, 6722, 315, 5616, 30, 151645, 198, 151644, 77091, 198, 151667],
            605868978897262179,
        ),
        ([], 0),
    ],
)
def test_standardized_hash_matches_kthena_vectors(tokens: list[int], expected: int) -> None:
    assert standardized_hash(tokens) == expected


def test_content_hashes_per_block_and_per_router_chunk() -> None:
    tokens = list(range(1000, 1064))
    assert content_hashes(tokens, 2) == [reference_hash(tokens[:32]), reference_hash(tokens[32:])]
    halves = [reference_hash(tokens[i : i + 16]) for i in range(0, 64, 16)]
    assert content_hashes(tokens, 2, chunk=16) == halves
    # a chunk that does not divide the block: the last piece of each block is shorter, as the router's tail
    assert content_hashes(tokens[:20], 1, chunk=16) == [reference_hash(tokens[:16]), reference_hash(tokens[16:20])]


@pytest.mark.parametrize(
    ("tokens", "blocks"),
    [([1, 2, 3], 2), ([-1, 2], 1), ([1 << 32], 1), ([(1, 2), (3, 4)], 1), (["a"], 1), ([1], 0)],
)
def test_content_hashes_refuses_tokens_the_router_cannot_hash(tokens: list[object], blocks: int) -> None:
    with pytest.raises(TokenError):
        content_hashes(tokens, blocks)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------- recorded vLLM


def _events(path: object) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for frame in load_frames(path):  # type: ignore[arg-type]
        batch = decode_batch(frame.payload)
        assert not batch.bad_events
        for event in batch.events:
            if isinstance(event, Stored):
                out.append(("stored", (event.block_hashes, event.token_ids, event.medium, event.lora_name)))
            elif isinstance(event, Removed):
                out.append(("removed", (event.block_hashes, event.medium)))
            else:
                out.append(("cleared", None))
    return out


def test_recorded_vllm_0_32_batches_decode_completely() -> None:
    frames = load_frames(VLLM)
    assert [f.seq for f in frames] == list(range(len(frames)))
    kinds: dict[str, int] = {}
    for frame in frames:
        batch = decode_batch(frame.payload)
        assert batch.rank == 0 and batch.ts > 1.7e9
        assert not batch.unknown and not batch.bad_events, (frame.seq, batch.unknown, batch.bad_events)
        for event in batch.events:
            kinds[type(event).__name__] = kinds.get(type(event).__name__, 0) + 1
            if isinstance(event, Stored):
                assert len(event.token_ids) == 32 * len(event.block_hashes)
                assert all(0 <= h < 1 << 64 for h in event.block_hashes)
    assert kinds.keys() == {"Stored", "Removed", "Cleared"}, kinds
    lora = decode_batch(frames[3].payload).events[0]
    assert isinstance(lora, Stored) and lora.lora_name == "lora-a"
    assert lora.uncacheable is None  # extra_keys [["lora-a"], ...]: only the LoRA name, claimable under its name


def test_legacy_array_encoding_decodes_to_the_same_events() -> None:
    assert _events(LEGACY) == _events(VLLM)


def test_sglang_0_5_23_batches_from_its_own_classes() -> None:
    frames = load_frames(SGLANG)
    assert {f.topic for f in frames} == {b""}  # SGLang's default topic
    events = [e for f in frames for e in decode_batch(f.payload).events]
    assert isinstance(events[0], Cleared)  # the radix cache's constructor resets it
    stored_events = [e for e in events if isinstance(e, Stored)]
    assert any(h < 0 for e in stored_events for h in e.block_hashes)  # SGLang's hashes are signed int64
    assert all(len(e.token_ids) == 16 * len(e.block_hashes) for e in stored_events)
    assert [len(e.block_hashes) for e in events if isinstance(e, Removed)] == [2]


# ------------------------------------------------------------------------------------------------- constructed


def _payload(events: list[object], envelope: str = "array") -> bytes:
    if envelope == "map":
        return msgspec.msgpack.encode({"ts": 5.0, "events": events, "attn_dp_rank": 1})
    return msgspec.msgpack.encode([5.0, events, 0])


def test_vllm_0_33_lookahead_field_and_unknown_types_are_tolerated() -> None:
    tokens = list(range(64))
    event = stored([11, 12], tokens, lookahead_token_ids=[[64, 65], None])
    batch = decode_batch(_payload([event, {"type": "BlockPinned", "block_hashes": [1]}, removed([11])]))
    assert [type(e) for e in batch.events] == [Stored, Removed]
    assert batch.unknown == ["field:lookahead_token_ids", "event:BlockPinned"]


def test_trailing_array_fields_are_counted_not_fatal() -> None:
    legacy = ["BlockStored", [7], None, list(range(16)), 16, None, "GPU", None, None, 3, "full", None, "future"]
    batch = decode_batch(_payload([legacy, ["BlockRemoved", [7], "GPU", 3, "future"], ["AllBlocksCleared"]]))
    first, second, third = batch.events
    assert isinstance(first, Stored) and first.group == 3 and first.medium == "GPU"
    assert isinstance(second, Removed) and second.group == 3 and isinstance(third, Cleared)
    assert batch.unknown == ["trailing:BlockStored", "trailing:BlockRemoved"]


def test_map_envelope_bytes_hashes_and_kthena_array_form() -> None:
    digest = bytes(range(32))
    batch = decode_batch(_payload([stored([digest], list(range(16)))], envelope="map"))
    assert batch.rank == 1
    event = batch.events[0]
    assert isinstance(event, Stored) and event.block_hashes == [int.from_bytes(digest, "big") & ((1 << 64) - 1)]
    kthena = decode_batch(_payload([["BlockStored", [1, 2], 0, list(range(32)), 16, None]]))
    assert isinstance(kthena.events[0], Stored) and kthena.events[0].medium is None


def test_blocks_hashed_with_more_than_their_tokens_are_flagged() -> None:
    mm = stored([1, 2, 3], list(range(48)), extra_keys=[[["img-1", 0]], None, ["salt"]])
    flags = decode_batch(_payload([mm])).events[0]
    assert isinstance(flags, Stored) and flags.uncacheable == [True, False, True]
    lora = stored([1], list(range(16)), lora_name="sql", extra_keys=[["sql", ["img", 0]]])
    event = decode_batch(_payload([lora])).events[0]
    assert isinstance(event, Stored) and event.uncacheable == [True]


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"\xc1garbage", "garbage"),
        (b"", "garbage"),
        (msgspec.msgpack.encode("text"), "envelope"),
        (msgspec.msgpack.encode([1.0]), "envelope"),
        (msgspec.msgpack.encode(["ts", []]), "envelope"),
        (msgspec.msgpack.encode([1.0, {"not": "a list"}]), "envelope"),
        (msgspec.msgpack.encode([1.0, [], -3]), "envelope"),
        (msgspec.msgpack.encode({"ts": 1.0}), "envelope"),
    ],
)
def test_payloads_that_are_not_batches(payload: bytes, kind: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_batch(payload)
    assert caught.value.kind == kind


def test_malformed_events_are_skipped_one_by_one() -> None:
    good = stored([1], list(range(16)))
    bad = [
        {"type": "BlockStored", "block_hashes": "x", "token_ids": []},
        {"type": "BlockStored", "block_hashes": [1]},
        {"type": "BlockRemoved", "block_hashes": [1.5]},
        {"type": "BlockRemoved", "block_hashes": [1], "group_idx": "a"},
        {"type": "BlockStored", "block_hashes": [1], "token_ids": [1], "medium": 3},
        ["BlockStored"],
        42,
        [],
    ]
    batch = decode_batch(_payload([*bad, good, CLEARED]))
    assert len(batch.bad_events) == len(bad)
    assert [type(e) for e in batch.events] == [Stored, Cleared]


# ------------------------------------------------------------------------------------------------- frames


def test_replay_answers_of_every_vllm_generation() -> None:
    from runtime.kv_events.subscriber import END_SEQ, Message, parse_replayed

    seq = (7).to_bytes(8, "big")
    assert parse_replayed([b"", b"kv-events", seq, b"p"], b"kv-events") == Message(7, b"p")  # 0.26+ (0.32 here)
    assert parse_replayed([b"", b"", END_SEQ, b""], b"kv-events") is None
    assert parse_replayed([b"", seq, b"p"], b"kv-events") == Message(7, b"p")  # before the topic was added
    assert parse_replayed([b"", END_SEQ, b""], b"kv-events") is None
    assert parse_replayed([b""], b"kv-events") is None  # the very first end marker


@pytest.mark.parametrize(
    ("frames", "kind"),
    [
        ([b"", b"other", (1).to_bytes(8, "big"), b"p"], "topic"),
        ([b"", b"kv-events", b"\x01", b"p"], "sequence"),
        ([b"", b"a", b"b", b"c", b"d"], "frames"),
    ],
)
def test_malformed_replay_answers(frames: list[bytes], kind: str) -> None:
    from runtime.kv_events.subscriber import FrameError, parse_replayed

    with pytest.raises(FrameError) as caught:
        parse_replayed(frames, b"kv-events")
    assert caught.value.kind == kind
