"""Test-side tools for KV-cache events: recorded frame files, a replay client and a reference model of ownership.

The reference model (`ReferenceOwnership`) is written independently of runtime/kv_events from the facts in
shared/research/kthena-kv-events.md: it is the oracle the relay's Redis state is compared with.
Recorded frames live in tests/fixtures/*.kv-events.jsonl, one JSON object per line: {"topic", "seq", "payload"}
with the payload in base64, exactly as the frames came off the engine's socket.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
END_SEQ = b"\xff" * 8


@dataclass(frozen=True)
class Frame:
    topic: bytes
    seq: int
    payload: bytes

    def frames(self) -> list[bytes]:
        return [self.topic, self.seq.to_bytes(8, "big"), self.payload]


def save_frames(path: Path, frames: Iterable[Frame]) -> int:
    lines = [
        json.dumps({"topic": f.topic.decode(), "seq": f.seq, "payload": base64.b64encode(f.payload).decode()})
        for f in frames
    ]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def load_frames(path: Path) -> list[Frame]:
    frames = []
    for line in path.read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            frames.append(Frame(item["topic"].encode(), int(item["seq"]), base64.b64decode(item["payload"])))
    return frames


def replay_frames(endpoint: str, start: int = 0, timeout: float = 10.0) -> list[Frame]:
    """Ask the engine's ROUTER replay socket for every buffered batch from `start` (a DEALER, as vLLM 0.32 expects:
    [b"", start_seq]; answers [b"", topic, seq, payload] ... [b"", b"", END_SEQ, b""])."""
    import zmq

    context = zmq.Context.instance()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    frames: list[Frame] = []
    try:
        dealer.send_multipart([b"", start.to_bytes(8, "big")])
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not dealer.poll(int(remaining * 1000)):
                raise TimeoutError(f"replay from {endpoint} did not end within {timeout}s ({len(frames)} frames)")
            parts = dealer.recv_multipart()
            if parts[1:] == [b"", END_SEQ, b""]:
                return frames
            _, topic, seq, payload = parts
            frames.append(Frame(topic, int.from_bytes(seq, "big"), payload))
    finally:
        dealer.close(0)


# --------------------------------------------------------------------------------------------- the router's hash


def standardized_hash(tokens: list[int]) -> int:
    """Kthena's block hash: uint32 big-endian per token, SHA-256, first 8 bytes big-endian, top bit cleared."""
    if not tokens:
        return 0
    data = b"".join(t.to_bytes(4, "big") for t in tokens)
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def router_block_hashes(tokens: list[int], block_size: int) -> list[int]:
    """The hashes Kthena's router looks up for a prompt: full blocks only (a trailing partial one never matches)."""
    full = len(tokens) // block_size
    return [standardized_hash(tokens[i * block_size : (i + 1) * block_size]) for i in range(full)]


# --------------------------------------------------------------------------------------------- reference model


@dataclass
class ReferenceOwnership:
    """What a correct relay must claim for one pod, replayed from the engine's batches (an independent, slow
    implementation: plain msgspec decode, tagged maps or arrays, reference counts per content hash)."""

    model: str
    blocks: dict[tuple[Any, ...], tuple[str, int]] = field(default_factory=dict)  # (rank, group, medium, h) -> key
    kinds: dict[str, int] = field(default_factory=dict)

    def apply_payload(self, payload: bytes) -> None:
        import msgspec

        batch = msgspec.msgpack.decode(payload)
        events, rank = (batch[1], batch[2] if len(batch) > 2 else 0) if isinstance(batch, list) else (None, 0)
        assert events is not None, "map envelopes are not used by the engines here"
        for event in events:
            self.apply_event(event, rank or 0)

    def apply_event(self, event: Any, rank: int) -> None:
        if isinstance(event, dict):
            kind, fields = event["type"], event
        else:
            names = {
                "BlockStored": ["block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium"],
                "BlockRemoved": ["block_hashes", "medium"],
                "AllBlocksCleared": [],
            }[event[0]]
            kind, fields = event[0], dict(zip(names, event[1:], strict=False))
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        pool = (rank, fields.get("group_idx") or 0, fields.get("medium"))
        if kind == "AllBlocksCleared":
            self.blocks = {k: v for k, v in self.blocks.items() if k[0] != rank}
        elif kind == "BlockRemoved":
            for h in fields["block_hashes"]:
                self.blocks.pop((*pool, h), None)
        elif kind == "BlockStored":
            tokens, hashes = fields["token_ids"], fields["block_hashes"]
            size = len(tokens) // len(hashes)
            model = fields.get("lora_name") or self.model
            for i, h in enumerate(hashes):
                self.blocks[(*pool, h)] = (model, standardized_hash(tokens[i * size : (i + 1) * size]))

    def owned(self) -> set[tuple[str, int]]:
        return set(self.blocks.values())

    def engine_hashes(self) -> set[Any]:
        return {key[3] for key in self.blocks}


def reference_from_frames(model: str, frames: Iterable[Frame]) -> ReferenceOwnership:
    reference = ReferenceOwnership(model)
    for frame in frames:
        reference.apply_payload(frame.payload)
    return reference


# --------------------------------------------------------------------------------------------- Redis as the router reads it


def pod_fields(redis_client: Any, pod: str, pattern: str = "matrix:kv:block:*") -> dict[tuple[str, int], str]:
    """{(model, hash): value} of every `matrix:kv:block:{model}@{hash}` hash that has the field `pod`."""
    found: dict[tuple[str, int], str] = {}
    keys = list(redis_client.scan_iter(match=pattern, count=1000))
    pipe = redis_client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, pod)
    for key, value in zip(keys, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(value, (bytes, str)):
            name = key.decode() if isinstance(key, bytes) else key
            model, _, digest = name[len("matrix:kv:block:") :].rpartition("@")
            found[(model, int(digest))] = value.decode() if isinstance(value, bytes) else value
    return found


def mapping_keys(redis_client: Any, prefix: str, pod: str) -> Iterator[tuple[str, int]]:
    """(engine hash text, TTL) of every `{prefix}:{pod}@{hash}` key."""
    for key in redis_client.scan_iter(match=f"{prefix}:{pod}@*", count=1000):
        name = key.decode() if isinstance(key, bytes) else key
        yield name.rpartition("@")[2], int(redis_client.ttl(key))
