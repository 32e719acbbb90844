"""The relay's own metrics, registered on the sidecar's registry under its prefix (`PREFIX:kv_events_*`)."""

from __future__ import annotations

from runtime.metrics.registry import Counter, Gauge, Histogram, Registry

EVENT_TYPES = ("block_stored", "block_removed", "all_blocks_cleared")
BLOCK_OUTCOMES = ("stored", "removed", "unknown_removed", "skipped", "evicted")
INPUT_ERRORS = ("garbage", "envelope", "frames", "topic", "sequence", "too_large", "bad_event", "tokens")
REDIS_ERRORS = ("connect", "auth", "timeout", "protocol", "server")
GAP_OUTCOMES = ("replayed", "reset")
REPLAY_RESULTS = ("complete", "truncated", "failed", "mismatch")


class RelayMetrics:
    def __init__(self, registry: Registry, prefix: str) -> None:
        name = prefix + ":kv_events_"
        self.events = Counter(name + "events", "KV-cache events applied, by type.", ["type"], registry=registry)
        self.blocks = Counter(
            name + "blocks",
            "Blocks by outcome: stored, removed, unknown_removed (not held), skipped (hash depends on more than "
            "tokens), evicted (index bound).",
            ["outcome"],
            registry=registry,
        )
        self.batches = Counter(name + "batches", "Event batches applied, by DP rank.", ["rank"], registry=registry)
        self.input_errors = Counter(
            name + "input_errors", "Frames or batches rejected, by kind.", ["kind"], registry=registry
        )
        self.unknown = Counter(
            name + "unknown",
            "Unknown fields, trailing fields and event types seen (tolerated, not applied).",
            ["what"],
            registry=registry,
        )
        self.redis_errors = Counter(
            name + "redis_errors", "Failed Redis operations, by kind.", ["kind"], registry=registry
        )
        self.gaps = Counter(
            name + "gaps",
            "Sequence gaps and engine restarts, by how they were resolved.",
            ["outcome"],
            registry=registry,
        )
        self.replays = Counter(
            name + "replays", "Replay requests to the engine, by result.", ["result"], registry=registry
        )
        self.lag = Histogram(
            name + "lag_seconds",
            "From an event batch's engine timestamp to its ownership being written to Redis.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=registry,
        )
        self.redis_up = Gauge(name + "redis_up", "1 while the relay's Redis connection works.", registry=registry)
        self.indexed_blocks = Gauge(name + "indexed_blocks", "Blocks held in the relay's index.", registry=registry)
        self.full_syncs = Counter(
            name + "full_syncs",
            "Rewrites of this pod's keys from the index (start, Redis back, refresh).",
            registry=registry,
        )
        for labels, counter in (
            (EVENT_TYPES, self.events),
            (BLOCK_OUTCOMES, self.blocks),
            (INPUT_ERRORS, self.input_errors),
            (REDIS_ERRORS, self.redis_errors),
            (GAP_OUTCOMES, self.gaps),
            (REPLAY_RESULTS, self.replays),
        ):
            for label in labels:
                counter.labels(label)
