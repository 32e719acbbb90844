"""This pod's cached blocks as the relay knows them, the ownership it claims, and what Redis still has to learn.

Blocks live in pools, one per (DP rank, KV-cache group, medium) as the engine reports them, each mapping the
engine's block hash to the router's content hash (or a tuple of them when the router's block size is smaller than
the engine's). Ownership is counted per (model, content hash): a block removed from one pool while the same content
is still cached elsewhere (another group, another rank, the CPU tier, another prefix with the same tokens) keeps the
pod's claim. Blocks of a LoRA request are claimed under the adapter's name, the `model` the router sees for them.

Every change of ownership lands in `pending`, coalesced by key (the last state wins), until the Redis writer takes
it. The index is bounded (`max_blocks`): past it the oldest blocks of the largest pool are dropped and their claims
withdrawn (an under-claim is safe, a stale claim is not).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from runtime.kv_events.decode import Removed, Stored
from runtime.kv_events.hashing import content_hashes

Content = int | tuple[int, ...]
PoolKey = tuple[int, int, str | None]  # (rank, group, medium)


@dataclass
class Pending:
    """Ownership changes not yet in Redis: per model, content hash -> claimed; engine hash -> content or None."""

    owned: dict[str, dict[int, bool]] = field(default_factory=dict)
    mappings: dict[int, int | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.mappings) or any(self.owned.values())

    def count(self) -> int:
        return len(self.mappings) + sum(len(changes) for changes in self.owned.values())


@dataclass
class ChangeCounts:
    stored: int = 0  # blocks added to the index
    removed: int = 0  # blocks taken out of it
    unknown_removed: int = 0  # removals of blocks the index did not hold
    skipped: int = 0  # blocks whose hash depends on more than their tokens
    evicted: int = 0  # blocks dropped to stay under max_blocks


class PodIndex:
    def __init__(self, model: str, chunk: int | None = None, max_blocks: int = 1_000_000) -> None:
        self.model = model
        self.chunk = chunk
        self.max_blocks = max_blocks
        self.pools: dict[PoolKey, dict[str, dict[int, Content]]] = {}
        self.refs: dict[str, dict[int, int]] = {}
        self.mapping_refs: dict[int, int] = {}
        self.size = 0
        self.pending = Pending()

    # ------------------------------------------------------------------------------------------ events

    def store(self, rank: int, event: Stored, counts: ChangeCounts) -> None:
        hashes = content_hashes(event.token_ids, len(event.block_hashes), self.chunk)
        model = event.lora_name or self.model
        pool = self.pools.setdefault((rank, event.group, event.medium), {})
        blocks = pool.setdefault(model, {})
        per_block = len(hashes) // len(event.block_hashes)
        skip = event.uncacheable
        for i, engine_hash in enumerate(event.block_hashes):
            if skip is not None and skip[i]:
                counts.skipped += 1
                continue
            content: Content = hashes[i] if per_block == 1 else tuple(hashes[i * per_block : (i + 1) * per_block])
            old = blocks.get(engine_hash)
            if old == content:
                continue  # the same block again (a replayed batch overlapping live ones)
            if old is not None:
                self._release(model, old)
                self._release_mapping(engine_hash)
                self.size -= 1
            blocks[engine_hash] = content
            self._claim(model, content)
            self._claim_mapping(engine_hash, content)
            self.size += 1
            counts.stored += 1
        if self.size > self.max_blocks:
            counts.evicted += self._evict(self.size - self.max_blocks)

    def remove(self, rank: int, event: Removed, counts: ChangeCounts) -> None:
        pool = self.pools.get((rank, event.group, event.medium))
        if pool is None:
            counts.unknown_removed += len(event.block_hashes)
            return
        for engine_hash in event.block_hashes:
            for model, blocks in pool.items():
                content = blocks.pop(engine_hash, None)
                if content is not None:
                    self._release(model, content)
                    self._release_mapping(engine_hash)
                    self.size -= 1
                    counts.removed += 1
                    break
            else:
                counts.unknown_removed += 1

    def clear_rank(self, rank: int) -> int:
        """Forget every block of one DP rank (AllBlocksCleared, or state that can no longer be trusted)."""
        dropped = 0
        for key in [key for key in self.pools if key[0] == rank]:
            for model, blocks in self.pools.pop(key).items():
                for engine_hash, content in blocks.items():
                    self._release(model, content)
                    self._release_mapping(engine_hash)
                dropped += len(blocks)
        self.size -= dropped
        return dropped

    # ------------------------------------------------------------------------------------------ reading

    def owned(self) -> Iterator[tuple[str, int]]:
        """Every (model, content hash) this pod claims."""
        for model, refs in self.refs.items():
            for content in refs:
                yield model, content

    def mappings(self) -> Iterator[tuple[int, int]]:
        """Every engine hash with the (first) content hash its mapping key holds."""
        seen: set[int] = set()
        for pool in self.pools.values():
            for blocks in pool.values():
                for engine_hash, content in blocks.items():
                    if engine_hash not in seen:
                        seen.add(engine_hash)
                        yield engine_hash, content if isinstance(content, int) else content[0]

    def claims(self, model: str, content: int) -> bool:
        refs = self.refs.get(model)
        return refs is not None and content in refs

    def models(self) -> set[str]:
        return {self.model, *self.refs}

    def take_pending(self) -> Pending:
        pending, self.pending = self.pending, Pending()
        return pending

    # ------------------------------------------------------------------------------------------ bookkeeping

    def _claim(self, model: str, content: Content) -> None:
        refs = self.refs.get(model)
        if refs is None:
            refs = self.refs[model] = {}
        changes = self.pending.owned.get(model)
        if changes is None:
            changes = self.pending.owned[model] = {}
        for value in (content,) if isinstance(content, int) else content:
            count = refs.get(value, 0)
            refs[value] = count + 1
            if count == 0:
                changes[value] = True

    def _release(self, model: str, content: Content) -> None:
        refs = self.refs[model]
        changes = self.pending.owned.setdefault(model, {})
        for value in (content,) if isinstance(content, int) else content:
            count = refs[value] - 1
            if count:
                refs[value] = count
            else:
                del refs[value]
                changes[value] = False
        if not refs and model != self.model:
            del self.refs[model]

    def _claim_mapping(self, engine_hash: int, content: Content) -> None:
        count = self.mapping_refs.get(engine_hash, 0)
        self.mapping_refs[engine_hash] = count + 1
        if count == 0:
            self.pending.mappings[engine_hash] = content if isinstance(content, int) else content[0]

    def _release_mapping(self, engine_hash: int) -> None:
        count = self.mapping_refs[engine_hash] - 1
        if count:
            self.mapping_refs[engine_hash] = count
        else:
            del self.mapping_refs[engine_hash]
            self.pending.mappings[engine_hash] = None

    def _evict(self, excess: int) -> int:
        evicted = 0
        while evicted < excess:
            model, blocks = max(
                ((model, blocks) for pool in self.pools.values() for model, blocks in pool.items()),
                key=lambda item: len(item[1]),
            )
            for engine_hash in list(blocks)[: excess - evicted]:
                self._release(model, blocks.pop(engine_hash))
                self._release_mapping(engine_hash)
                evicted += 1
        self.size -= evicted
        return evicted
