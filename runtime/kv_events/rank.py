"""One data-parallel rank's stream: sequence numbers, gaps, engine restarts, replay, and applying batches.

The rules (`last` is the sequence number of the last batch applied, `None` before the first):
- the next number: apply it; one already applied: skip it (a replay covered it);
- a gap, the first batch, or the first batch after a new connection (a handshake: the engine may have restarted
  and counts from 0 again): with a replay socket, ask it from `last`. When its first answer is batch `last` with
  the very payload applied before, the engine is the same one: apply what follows. Otherwise ask from 0: forget
  this rank's blocks and apply everything the engine still buffers (its whole history if it holds batch 0);
- without a replay socket (or when it does not answer): a new connection continuing at `last + 1` is taken as the
  same engine; anything else forgets this rank's blocks and starts again from the batch at hand. Redis then
  claims only what the relay knows for sure.
A new connection triggers the replay at once, so a restarted engine's claims are withdrawn before it serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing

from runtime.kv_events.decode import Cleared, DecodeError, Removed, Stored, decode_batch
from runtime.kv_events.hashing import TokenError
from runtime.kv_events.index import ChangeCounts, PodIndex
from runtime.kv_events.metrics import BLOCK_OUTCOMES, RelayMetrics
from runtime.kv_events.once import OnceLog
from runtime.kv_events.redis_writer import RedisWriter
from runtime.kv_events.subscriber import FrameError, Message, RankSockets, ReplayError, parse_live

log = logging.getLogger("airuntime.kv_events")

MAX_BATCH_BYTES = 16 << 20  # bigger batches are rejected (decoding one blocks the event loop for tens of ms)
SLICE_SECONDS = 0.005  # work between two yields to the event loop
BLOCKS_PER_SLICE = 2048  # a huge BlockStored is hashed in slices of this many blocks


class RankRelay:
    def __init__(
        self,
        sockets: RankSockets,
        index: PodIndex,
        writer: RedisWriter,
        metrics: RelayMetrics,
        once: OnceLog,
    ) -> None:
        self.sockets = sockets
        self.rank = sockets.rank.rank
        self.has_replay = sockets.rank.replay_endpoint is not None
        self.index = index
        self.writer = writer
        self.metrics = metrics
        self.once = once
        self.last: int | None = None
        self.last_digest: int | None = None
        self.new_connection = False
        self.caught_up = asyncio.Event()  # the first replay (or its failure) is done
        self._slice_started = time.monotonic()
        self._event_counters = {
            Stored: metrics.events.labels("block_stored"),
            Removed: metrics.events.labels("block_removed"),
            Cleared: metrics.events.labels("all_blocks_cleared"),
        }
        self._block_counters = {outcome: metrics.blocks.labels(outcome) for outcome in BLOCK_OUTCOMES}
        self._batch_counter = metrics.batches.labels(str(self.rank))
        if not self.has_replay:
            self.caught_up.set()

    async def run(self) -> None:
        while True:
            await self.sockets.wait(None if self.caught_up.is_set() else 1.0)
            await self._connection_events()
            while (frames := self.sockets.receive()) is not None:
                await self._connection_events()
                try:
                    message = parse_live(frames, self.sockets.topic)
                except FrameError as exc:
                    self._bad_input(exc.kind, str(exc))
                    continue
                await self.on_message(message)
                await self._pace()

    async def _connection_events(self) -> None:
        handshakes, _ = self.sockets.new_connections()
        if not handshakes:
            return
        self.new_connection = True
        if self.has_replay:
            await self.resync(None)

    async def on_message(self, message: Message) -> None:
        last = self.last
        if last is not None and not self.new_connection and message.seq <= last:
            return
        if last is None or self.new_connection or message.seq != last + 1:
            await self.resync(message.seq)
            if self.last is not None and message.seq <= self.last:
                return
        await self.apply(message)

    async def resync(self, live_seq: int | None) -> None:
        """Bring this rank's blocks up to date before `live_seq` (None: a new connection, no batch yet)."""
        new_connection, self.new_connection = self.new_connection, False
        had_state = self.last is not None
        if self.has_replay:
            try:
                if self.last is not None and await self._continue_from(self.last):
                    return
                await self._replay_from_oldest(had_state)
                return
            except ReplayError as exc:
                self.metrics.replays.labels("failed").inc()
                self.once.warning(f"replay:{self.rank}", "KV-event relay, rank %d: %s", self.rank, exc)
                if live_seq is None:  # try again with the next batch
                    self.new_connection = True
                    return
            finally:
                self.caught_up.set()
        if live_seq is None or (self.last is not None and new_connection and live_seq == self.last + 1):
            return
        if self.last is not None:
            self._forget(f"batches {self.last + 1}..{live_seq - 1} were not received and cannot be replayed")
        self.last = None

    async def _continue_from(self, last: int) -> bool:
        """Replay from `last`: True when the engine still holds that very batch (then the rest is applied)."""
        first = True
        async with aclosing(self.sockets.replay(last)) as replayed:
            async for message in replayed:
                if first:
                    first = False
                    if message.seq != last or hash(message.payload) != self.last_digest:
                        self.metrics.replays.labels("mismatch").inc()
                        return False
                    continue
                await self.apply(message, live=False)
        if first:
            self.metrics.replays.labels("mismatch").inc()
            return False
        self.metrics.replays.labels("complete").inc()
        if self.last != last:
            self.metrics.gaps.labels("replayed").inc()
        return True

    async def _replay_from_oldest(self, had_state: bool) -> None:
        """Forget this rank's blocks and apply every batch the engine still buffers."""
        dropped = self.index.clear_rank(self.rank)
        self.last = None
        oldest = None
        async with aclosing(self.sockets.replay(0)) as replayed:
            async for message in replayed:
                oldest = message.seq if oldest is None else oldest
                await self.apply(message, live=False)
        complete = oldest is None or oldest == 0
        self.metrics.replays.labels("complete" if complete else "truncated").inc()
        if had_state:
            self.metrics.gaps.labels("reset").inc()
        if not complete:
            self.once.warning(
                f"truncated:{self.rank}",
                "KV-event relay, rank %d: the engine's replay buffer starts at batch %d, not 0: blocks cached before "
                "it are not claimed (raise the engine's kv-events buffer_steps to keep more history)",
                self.rank,
                oldest,
            )
        log.info(
            "KV-event relay, rank %d: replayed the engine's buffer from batch %s (%d blocks indexed, %d dropped)",
            self.rank,
            oldest,
            self.index.size,
            dropped,
        )
        self.writer.changed(time.time())

    def _forget(self, why: str) -> None:
        dropped = self.index.clear_rank(self.rank)
        self.metrics.gaps.labels("reset").inc()
        self.once.warning(
            f"reset:{self.rank}", "KV-event relay, rank %d: %s; its %d blocks are forgotten", self.rank, why, dropped
        )
        self.writer.changed(time.time())

    async def apply(self, message: Message, live: bool = True) -> None:
        """Decode one batch and apply its events to the index, yielding to the event loop on the way. Replayed
        batches are old: their engine timestamps do not go into the lag histogram."""
        self.last, self.last_digest = message.seq, hash(message.payload)
        if len(message.payload) > MAX_BATCH_BYTES:
            self._bad_input("too_large", f"batch {message.seq} has {len(message.payload)} bytes")
            self._forget(f"batch {message.seq} was too large to apply")
            return
        try:
            batch = decode_batch(message.payload)
        except DecodeError as exc:
            self._bad_input(exc.kind, f"batch {message.seq}: {exc}")
            self._forget(f"batch {message.seq} could not be decoded")
            return
        for what in batch.unknown:
            self.metrics.unknown.labels(what.split(":", 1)[0]).inc()
            self.once.warning(f"unknown:{what}", "KV-event relay: ignoring unknown %s", what.replace(":", " "))
        for problem in batch.bad_events:
            self._bad_input("bad_event", problem)
        counts = ChangeCounts()
        kinds = dict.fromkeys(self._event_counters, 0)
        for event in batch.events:
            kinds[type(event)] += 1
            if type(event) is Stored:
                await self._store(event, counts)
            elif type(event) is Removed:
                self.index.remove(self.rank, event, counts)
            else:
                counts.removed += self.index.clear_rank(self.rank)
        self._count(kinds, counts)
        self.writer.changed(batch.ts if live else time.time())

    async def _store(self, event: Stored, counts: ChangeCounts) -> None:
        for part in _slices(event):
            try:
                self.index.store(self.rank, part, counts)
            except TokenError as exc:
                self._bad_input("tokens", str(exc))
            await self._pace()

    def _count(self, kinds: dict[type, int], counts: ChangeCounts) -> None:
        for kind, value in kinds.items():
            if value:
                self._event_counters[kind].inc(value)
        for outcome, counter in self._block_counters.items():
            value = getattr(counts, outcome)
            if value:
                counter.inc(value)
        self._batch_counter.inc()
        self.metrics.indexed_blocks.set(self.index.size)

    def _bad_input(self, kind: str, detail: str) -> None:
        self.metrics.input_errors.labels(kind).inc()
        self.once.warning(f"input:{kind}", "KV-event relay, rank %d: rejected input (%s): %s", self.rank, kind, detail)

    async def _pace(self) -> None:
        if time.monotonic() - self._slice_started > SLICE_SECONDS:
            await asyncio.sleep(0)
            self._slice_started = time.monotonic()


def _slices(event: Stored) -> list[Stored]:
    blocks = len(event.block_hashes)
    if blocks <= BLOCKS_PER_SLICE or not blocks or len(event.token_ids) % blocks:
        return [event]
    size = len(event.token_ids) // blocks
    parts = []
    for start in range(0, blocks, BLOCKS_PER_SLICE):
        end = min(start + BLOCKS_PER_SLICE, blocks)
        flags = event.uncacheable[start:end] if event.uncacheable else None
        tokens = event.token_ids[start * size : end * size]
        parts.append(Stored(event.block_hashes[start:end], tokens, event.medium, event.group, event.lora_name, flags))
    return parts
