"""The one hook the server needs: an aiohttp cleanup context that runs the relay when it is configured.

pyzmq and msgspec are imported here only when the relay runs, so a sidecar without Redis never loads them, and a
host where they cannot load (pyzmq's libzmq needs libstdc++.so.6, which a few minimal hosts lack) still serves
everything else, with one error line saying why the relay is off.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from runtime.kv_events.settings import KvEventsSettings
from runtime.metrics.registry import Registry

log = logging.getLogger("airuntime.kv_events")


def relay_context(
    settings: KvEventsSettings | None, registry: Registry, prefix: str
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def kv_events_relay(app: web.Application) -> AsyncIterator[None]:
        if settings is None:
            yield
            return
        try:
            from runtime.kv_events.relay import Relay
        except ImportError as exc:
            log.error("the KV-event relay cannot load ZeroMQ or msgpack (%s); the KV-event relay does not run", exc)
            yield
            return
        relay = Relay(settings, registry, prefix)
        try:
            relay.start()
        except RuntimeError as exc:  # e.g. the endpoint to bind is taken: the rest of the sidecar still serves
            log.error("%s; the KV-event relay does not run", exc)
            yield
            return
        try:
            yield
        finally:
            await relay.stop()

    return kv_events_relay
