"""The relay task: one subscription per data-parallel rank feeding one index, one Redis writer draining it.

Start order: the sockets open at once; the writer waits until every rank with a replay socket has replayed the
engine's buffer (or INITIAL_WAIT_SECONDS passed), so the first full sync clears a previous run's stale fields
without withdrawing blocks the engine still holds. Nothing here ever blocks the sidecar: probes and /metrics keep
answering whatever Redis and the engine do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import zmq

from runtime.kv_events.index import PodIndex
from runtime.kv_events.metrics import RelayMetrics
from runtime.kv_events.once import OnceLog
from runtime.kv_events.rank import RankRelay
from runtime.kv_events.redis_writer import RedisWriter
from runtime.kv_events.settings import KvEventsSettings
from runtime.kv_events.subscriber import RankSockets
from runtime.metrics.registry import Registry

log = logging.getLogger("airuntime.kv_events")

INITIAL_WAIT_SECONDS = 10.0


class Relay:
    def __init__(self, settings: KvEventsSettings, registry: Registry, prefix: str) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = RelayMetrics(registry, prefix)
        self.once = OnceLog(log)
        self.index = PodIndex(settings.model, settings.router_block_size, settings.max_blocks)
        self.writer = RedisWriter(settings, self.index, self.metrics, self.once)
        self.context: zmq.Context[zmq.Socket[bytes]] | None = None
        self.ranks: list[RankRelay] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.context = zmq.Context()
        try:
            for endpoint in self.settings.ranks():
                sockets = RankSockets(self.context, endpoint, self.settings.topic, self.settings.bind)
                self.ranks.append(RankRelay(sockets, self.index, self.writer, self.metrics, self.once))
        except zmq.ZMQError as exc:
            self.stop_sockets()
            raise RuntimeError(f"KV-event relay: cannot open {self.settings.endpoint}: {exc}") from None
        self.tasks = [asyncio.ensure_future(self._supervised(rank.run, f"rank {rank.rank}")) for rank in self.ranks]
        self.tasks.append(asyncio.ensure_future(self._supervised(self._write, "Redis writer")))
        log.info(
            "KV-event relay: %s %s (ranks %s, topic %r) -> Redis %s as pod %s, model %s",
            "bound" if self.settings.bind else "connected to",
            self.settings.endpoint,
            ", ".join(str(r.rank) for r in self.settings.ranks()),
            self.settings.topic,
            self.settings.redis.describe()["url"],
            self.settings.pod,
            self.settings.model,
        )

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.stop_sockets()

    def stop_sockets(self) -> None:
        for rank in self.ranks:
            rank.sockets.close()
        if self.context is not None:
            self.context.term()
            self.context = None

    async def _write(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(INITIAL_WAIT_SECONDS):
                await asyncio.gather(*(rank.caught_up.wait() for rank in self.ranks))
        await self.writer.run()

    async def _supervised(self, loop: Callable[[], Awaitable[None]], name: str) -> None:
        """Run a relay loop; a bug in it is logged and the loop started again, never taking the sidecar down."""
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("KV-event relay: the %s loop failed; starting it again in 1 s", name)
                await asyncio.sleep(1.0)
