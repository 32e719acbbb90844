"""Decoding the engines' `KVEventBatch` msgpack payloads into plain events, whatever the encoding.

Accepted, all in one decoder (the engines encode with msgspec; `omit_defaults` drops trailing defaults):
- the envelope `[ts, [events...], dp_rank]` (vLLM's `data_parallel_rank`, SGLang's `attn_dp_rank`), or a map
  `{"ts", "events", "data_parallel_rank" | "attn_dp_rank"}`;
- events as tagged arrays, as vLLM up to ~0.23 and older SGLang send them:
  `["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name, extra_keys,
  group_idx, ...]`, `["BlockRemoved", block_hashes, medium, group_idx, ...]`, `["AllBlocksCleared"]`;
- events as tagged maps, as vLLM 0.26+ (0.32 here) and SGLang 0.5 send them: `{"type": "BlockStored", ...}`.
Unknown trailing fields, unknown keys (vLLM 0.33's `lookahead_token_ids`, ...) and unknown event types are
reported, never fatal. Block hashes may be ints (signed or up to 2**64-1) or bytes
(`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`), which become the int vLLM would have sent: the low 64 bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

STORED, REMOVED, CLEARED = "BlockStored", "BlockRemoved", "AllBlocksCleared"
# Field order of the legacy positional events, after the tag (later fields were appended over time).
_STORED_ORDER = (
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
    "group_idx",
    "kv_cache_spec_kind",
    "kv_cache_spec_sliding_window",
)
_REMOVED_ORDER = ("block_hashes", "medium", "group_idx")
# Keys of the map form that vLLM 0.32 and SGLang 0.5 send; any other key is counted as unknown.
_KNOWN_KEYS = {
    STORED: frozenset(
        (
            "type",
            *_STORED_ORDER,
            "event_version",
            "locality",
            "ownership",
            "session_id",
            "cache_salt",
        )
    ),
    REMOVED: frozenset(("type", *_REMOVED_ORDER, "locality", "ownership")),
    CLEARED: frozenset(("type",)),
}
_LOW64 = (1 << 64) - 1


class DecodeError(ValueError):
    """A payload that is not a KV-event batch at all; `kind` names what was wrong (for counting)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(slots=True)
class Stored:
    block_hashes: list[int]
    token_ids: list[Any]
    medium: str | None
    group: int
    lora_name: str | None
    uncacheable: list[bool] | None  # per block: its hash depends on more than tokens (image, salt, embeddings)


@dataclass(slots=True)
class Removed:
    block_hashes: list[int]
    medium: str | None
    group: int


@dataclass(slots=True)
class Cleared:
    pass


Event = Stored | Removed | Cleared


@dataclass(slots=True)
class Batch:
    ts: float
    rank: int | None
    events: list[Event]
    unknown: list[str] = field(default_factory=list)  # "field:NAME", "event:NAME", "trailing:BlockStored"
    bad_events: list[str] = field(default_factory=list)  # why each skipped event was malformed


_decoder = msgspec.msgpack.Decoder()


def decode_batch(payload: bytes) -> Batch:
    """One payload off the socket; DecodeError when it is not a batch (single events may still be skipped)."""
    try:
        raw = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise DecodeError("garbage", f"not msgpack: {exc}") from None
    if isinstance(raw, list) and len(raw) >= 2:
        ts, events, rank = raw[0], raw[1], raw[2] if len(raw) > 2 else None
    elif isinstance(raw, dict) and "events" in raw:
        ts, events = raw.get("ts"), raw["events"]
        rank = raw.get("data_parallel_rank", raw.get("attn_dp_rank"))
    else:
        raise DecodeError("envelope", f"not a [ts, events, rank] batch: {type(raw).__name__}")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not isinstance(events, list):
        raise DecodeError("envelope", "the batch has no numeric ts or no event list")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 0):
        raise DecodeError("envelope", f"the batch's rank is not a rank: {rank!r}")
    batch = Batch(float(ts), rank, [])
    for raw_event in events:
        try:
            event = _event(raw_event, batch.unknown)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            batch.bad_events.append(str(exc) or type(exc).__name__)
            continue
        if event is not None:
            batch.events.append(event)
    return batch


def _event(raw: Any, unknown: list[str]) -> Event | None:
    if isinstance(raw, dict):
        kind = raw.get("type")
        fields = raw
        known = _KNOWN_KEYS.get(kind) if isinstance(kind, str) else None
        if known is not None and not known.issuperset(raw):
            unknown.extend(f"field:{key}" for key in raw if key not in known)
    elif isinstance(raw, list) and raw:
        kind = raw[0]
        order = _STORED_ORDER if kind == STORED else _REMOVED_ORDER if kind == REMOVED else ()
        fields = dict(zip(order, raw[1:], strict=False))
        if isinstance(kind, str) and kind in _KNOWN_KEYS and len(raw) > len(order) + 1:
            unknown.append(f"trailing:{kind}")
    else:
        raise TypeError(f"an event is a {type(raw).__name__}, not a tagged array or map")
    if kind == STORED:
        return _stored(fields)
    if kind == REMOVED:
        return Removed(_hashes(fields["block_hashes"]), _medium(fields), _group(fields))
    if kind == CLEARED:
        return Cleared()
    unknown.append(f"event:{str(kind)[:64]}")
    return None


def _stored(fields: dict[str, Any]) -> Stored:
    hashes = _hashes(fields["block_hashes"])
    tokens = fields["token_ids"]
    if not isinstance(tokens, list):
        raise TypeError("token_ids is not a list")
    lora_name = fields.get("lora_name")
    if lora_name is not None and not isinstance(lora_name, str):
        raise TypeError("lora_name is not a string")
    return Stored(hashes, tokens, _medium(fields), _group(fields), lora_name or None, _uncacheable(fields, lora_name))


def _uncacheable(fields: dict[str, Any], lora_name: str | None) -> list[bool] | None:
    """Per block, whether vLLM hashed more than its tokens into it (multimodal items, a cache salt, prompt
    embeddings): the router hashes token ids only, so such a block cannot be claimed by its tokens. vLLM publishes
    `extra_keys` per block: null, or a list that starts with the LoRA name when the request has one."""
    extra = fields.get("extra_keys")
    if not extra or not isinstance(extra, list):
        return None
    flags = [not (keys is None or (lora_name is not None and keys == [lora_name])) for keys in extra]
    return flags if any(flags) else None


def _hashes(raw: Any) -> list[int]:
    if not isinstance(raw, list):
        raise TypeError("block_hashes is not a list")
    for value in raw:
        if not isinstance(value, int) or isinstance(value, bool):
            return [_hash(value) for value in raw]
    return raw


def _hash(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, bytes):
        return int.from_bytes(value, "big") & _LOW64
    raise TypeError(f"a block hash is a {type(value).__name__}")


def _medium(fields: dict[str, Any]) -> str | None:
    medium = fields.get("medium")
    if medium is not None and not isinstance(medium, str):
        raise TypeError("medium is not a string")
    return medium


def _group(fields: dict[str, Any]) -> int:
    group = fields.get("group_idx")
    if group is None:
        return 0
    if not isinstance(group, int) or isinstance(group, bool):
        raise TypeError("group_idx is not an integer")
    return group
