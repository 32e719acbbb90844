"""Writing the index's ownership to Redis exactly as Kthena's router reads it, and rewriting it when needed.

Keys (byte-compatible with Kthena's sidecar):
- `matrix:kv:block:{model}@{content hash}`: a hash with field `{pod}` and the Unix seconds of the write as value;
- `{vllm|sglang}:kv:block:{pod}@{engine hash}`: a string holding the content hash, expiring after 86,400 s.
Changes go out as pipelines of up to PIPELINE_COMMANDS commands (no MULTI/EXEC: the index is the truth, and any
failure leads to a full sync). A full sync runs at start, after every Redis failure and every REFRESH_SECONDS (so
timestamps stay younger than the router's 24-hour garbage collection): it deletes this pod's fields and mapping
keys that the index does not hold (a previous run's leftovers included), then writes everything the index holds.
While Redis is down, nothing queues up: the index alone keeps changing, and the next full sync writes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator

from runtime.kv_events.index import Pending, PodIndex
from runtime.kv_events.metrics import RelayMetrics
from runtime.kv_events.once import OnceLog
from runtime.kv_events.resp import RedisError, RespConnection, bulk, glob_escape
from runtime.kv_events.settings import KvEventsSettings

log = logging.getLogger("airuntime.kv_events")

MATRIX_PREFIX = "matrix:kv:block"
MAPPING_TTL_SECONDS = 86_400  # Kthena's MAPPING_KEY_TTL_SECONDS, kept equal to the router's 24-hour freshness
PIPELINE_COMMANDS = 4096
REFRESH_SECONDS = 6 * 3600.0
PING_SECONDS = 2.0
TIMEOUT_SECONDS = 5.0
BACKOFF_SECONDS = (0.2, 10.0)


class RedisWriter:
    def __init__(self, settings: KvEventsSettings, index: PodIndex, metrics: RelayMetrics, once: OnceLog) -> None:
        self.settings = settings
        self.index = index
        self.metrics = metrics
        self.once = once
        self.wake = asyncio.Event()
        self.connected = False
        self.synced = asyncio.Event()  # set after each full sync; tests and the relay's start wait on it
        self.oldest_unwritten: float | None = None  # engine timestamp of the oldest batch not yet in Redis
        self.sync_requested = True
        self.healthy = False  # the current connection completed a full sync
        self.failures = 0  # since Redis last answered
        self._pod = settings.pod.encode()
        self._pod_bulk = bulk(self._pod)
        self._matrix_prefixes: dict[str, bytes] = {}
        self._mapping_prefix = f"{settings.mapping_prefix}:{settings.pod}@".encode()

    def changed(self, batch_ts: float) -> None:
        """The index changed (a batch was applied): write it soon."""
        if not self.connected:
            self.index.take_pending()  # the next full sync writes the index as it is then
            return
        if self.oldest_unwritten is None:
            self.oldest_unwritten = batch_ts
        self.wake.set()

    async def run(self) -> None:
        """Connect, sync, write changes as they come; on any failure back off (0.2 s doubling to 10 s, reset once a
        full sync went through) and start again."""
        delay = BACKOFF_SECONDS[0]
        while True:
            try:
                connection = await RespConnection.open(self.settings.redis, TIMEOUT_SECONDS)
            except RedisError as exc:
                self._failed(exc)
            else:
                try:
                    await self._serve(connection)
                except RedisError as exc:
                    self._failed(exc)
                finally:
                    self.connected = False
                    self.metrics.redis_up.set(0)
                    connection.close()
                if self.healthy:
                    delay = BACKOFF_SECONDS[0]
            self.healthy = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_SECONDS[1])

    async def _serve(self, connection: RespConnection) -> None:
        self.connected = True
        self.sync_requested = True
        next_refresh = time.monotonic() + REFRESH_SECONDS
        while True:
            if self.sync_requested or time.monotonic() >= next_refresh:
                self.sync_requested = False
                await self.full_sync(connection)
                next_refresh = time.monotonic() + REFRESH_SECONDS
                self._recovered()
            if not self.index.pending:
                self.wake.clear()
                try:
                    async with asyncio.timeout(min(PING_SECONDS, max(0.0, next_refresh - time.monotonic()))):
                        await self.wake.wait()
                except TimeoutError:
                    await connection.command(b"PING")  # a restarted Redis is noticed (and rewritten) while idle
                    continue
            oldest, self.oldest_unwritten = self.oldest_unwritten, None
            await self._write(connection, self._changes(self.index.take_pending()))
            if oldest is not None:
                self.metrics.lag.observe(max(0.0, time.time() - oldest))

    def _recovered(self) -> None:
        self.metrics.redis_up.set(1)
        self.healthy = True
        if self.failures:
            log.info("KV-event relay: Redis answers again after %d failed attempts", self.failures)
            self.failures = 0
            self.once.forget("redis:")

    async def full_sync(self, connection: RespConnection) -> None:
        """Make Redis hold exactly what the index holds for this pod."""
        self.index.take_pending()
        self.oldest_unwritten = None
        started = time.monotonic()
        stale = 0
        for model in sorted(self.index.models()):
            pattern = f"{MATRIX_PREFIX}:".encode() + glob_escape(model) + b"@*"
            async for keys in connection.scan(pattern):
                stale += await self._write(connection, self._stale_fields(model, keys))
        async for keys in connection.scan(glob_escape(f"{self.settings.mapping_prefix}:{self.settings.pod}@") + b"*"):
            stale += await self._write(connection, self._stale_mappings(keys))
        now = self._timestamp()
        owned = (self._hset(model, content, now) for model, content in self.index.owned())
        written = await self._write(connection, owned)
        written += await self._write(connection, (self._set(h, c) for h, c in self.index.mappings()))
        self.metrics.full_syncs.inc()
        log.info(
            "KV-event relay: Redis holds this pod's %d claims (%d keys written, %d stale removed) in %.2fs",
            sum(len(refs) for refs in self.index.refs.values()),
            written,
            stale,
            time.monotonic() - started,
        )
        self.synced.set()

    # ------------------------------------------------------------------------------------------ commands

    def _changes(self, pending: Pending) -> Iterator[bytes]:
        now = self._timestamp()
        for model, changes in pending.owned.items():
            for content, claimed in changes.items():
                yield self._hset(model, content, now) if claimed else self._hdel(model, content)
        for engine_hash, mapped in pending.mappings.items():
            yield self._set(engine_hash, mapped) if mapped is not None else self._del(engine_hash)

    def _stale_fields(self, model: str, keys: list[bytes]) -> Iterator[bytes]:
        for key in keys:
            digest = key.rpartition(b"@")[2]
            if not digest.isdigit() or not self.index.claims(model, int(digest)):
                yield b"*3\r\n$4\r\nHDEL\r\n%s%s" % (bulk(key), bulk(self._pod))

    def _stale_mappings(self, keys: list[bytes]) -> Iterator[bytes]:
        for key in keys:
            digest = key.rpartition(b"@")[2]
            try:
                held = int(digest) in self.index.mapping_refs
            except ValueError:
                held = False
            if not held:
                yield b"*2\r\n$3\r\nDEL\r\n%s" % bulk(key)

    def _matrix_key(self, model: str, content: int) -> bytes:
        prefix = self._matrix_prefixes.get(model)
        if prefix is None:
            prefix = self._matrix_prefixes[model] = f"{MATRIX_PREFIX}:{model}@".encode()
        return b"%s%d" % (prefix, content)

    def _hset(self, model: str, content: int, now: bytes) -> bytes:
        key = self._matrix_key(model, content)
        return b"*4\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n%s%s" % (len(key), key, self._pod_bulk, now)

    def _hdel(self, model: str, content: int) -> bytes:
        key = self._matrix_key(model, content)
        return b"*3\r\n$4\r\nHDEL\r\n$%d\r\n%s\r\n%s" % (len(key), key, self._pod_bulk)

    def _set(self, engine_hash: int, content: int) -> bytes:
        key, value = b"%s%d" % (self._mapping_prefix, engine_hash), b"%d" % content
        return b"*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\nEX\r\n$5\r\n86400\r\n" % (
            len(key),
            key,
            len(value),
            value,
        )

    def _del(self, engine_hash: int) -> bytes:
        return b"*2\r\n$3\r\nDEL\r\n%s" % bulk(b"%s%d" % (self._mapping_prefix, engine_hash))

    @staticmethod
    def _timestamp() -> bytes:
        return bulk(b"%d" % int(time.time()))

    async def _write(self, connection: RespConnection, commands: Iterable[bytes]) -> int:
        """Send the commands in pipelines; an error reply other than a wrong key type fails the connection."""
        written = 0
        batch: list[bytes] = []
        for command in commands:
            batch.append(command)
            if len(batch) >= PIPELINE_COMMANDS:
                written += await self._send(connection, batch)
                batch = []
        if batch:
            written += await self._send(connection, batch)
        return written

    async def _send(self, connection: RespConnection, batch: list[bytes]) -> int:
        errors = await connection.pipeline(b"".join(batch), len(batch))
        for error in errors:
            code = error.split(" ", 1)[0]
            if code != "WRONGTYPE":  # e.g. OOM, READONLY, NOAUTH: nothing else will get through either
                raise RedisError("server", f"Redis answered {code}")
            self.metrics.redis_errors.labels("server").inc()  # someone else's key of another type: skipped
            self.once.warning("redis:WRONGTYPE", "KV-event relay: a key it writes has another type in Redis: %s", error)
        return len(batch) - len(errors)

    def _failed(self, exc: RedisError) -> None:
        self.failures += 1
        self.metrics.redis_errors.labels(exc.kind).inc()
        self.index.take_pending()
        self.once.warning(
            f"redis:{exc.kind}",
            "KV-event relay: Redis %s:%d unusable (%s): %s; events keep updating the index, which is written "
            "in full once Redis answers",
            self.settings.redis.host,
            self.settings.redis.port,
            exc.kind,
            exc,
        )
