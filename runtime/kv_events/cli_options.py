"""The serve command's KV-event relay flags, added as one decorator and handed over as one `KvEventsFlags`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from runtime.kv_events.settings import DEFAULT_MAX_BLOCKS, KvEventsFlags

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = [
    click.option(
        "--kv-events/--no-kv-events",
        "kv_events_enabled",
        default=None,
        envvar="AIRUNTIME_KV_EVENTS",
        help="Relay the engine's KV-cache events to Redis [default: whenever a Redis is configured].",
    ),
    click.option(
        "--redis-url",
        default=None,
        envvar="AIRUNTIME_REDIS_URL",
        help="redis://[user[:password]@]host[:port][/db] (rediss:// for TLS) for KV events; else Kthena's REDIS_HOST, "
        "REDIS_PORT, REDIS_DB, REDIS_PASSWORD. Prefer the variable for a password.",
    ),
    click.option(
        "--redis-ca-file",
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        envvar="AIRUNTIME_REDIS_CA_FILE",
        help="CA bundle that signed the Redis server's TLS certificate (rediss://).",
    ),
    click.option(
        "--kv-events-endpoint",
        default=None,
        envvar="AIRUNTIME_KV_EVENTS_ENDPOINT",
        help="The engine's KV-event socket [default: VLLM_ZMQ_ENDPOINT / SGLANG_ZMQ_ENDPOINT, tcp://localhost:5557].",
    ),
    click.option(
        "--kv-events-replay-endpoint",
        default=None,
        envvar="AIRUNTIME_KV_EVENTS_REPLAY_ENDPOINT",
        help="The engine's replay socket [default: VLLM_ZMQ_REPLAY_ENDPOINT / SGLANG_ZMQ_REPLAY_ENDPOINT; none].",
    ),
    click.option(
        "--kv-events-topic",
        default=None,
        envvar="AIRUNTIME_KV_EVENTS_TOPIC",
        help="Topic to accept [default: VLLM_ZMQ_TOPIC_FILTER (kv-events) / SGLANG_ZMQ_TOPIC_FILTER (empty: all)].",
    ),
    click.option(
        "--kv-events-bind/--kv-events-connect",
        "kv_events_bind",
        default=None,
        envvar="AIRUNTIME_KV_EVENTS_BIND",
        help="Bind the endpoint (for an engine whose endpoint is a concrete address: it connects) or connect to it "
        "[default: bind only tcp://*:PORT].",
    ),
    click.option(
        "--kv-events-dp-size",
        type=click.IntRange(1, 1024),
        default=1,
        show_default=True,
        envvar="AIRUNTIME_KV_EVENTS_DP_SIZE",
        help="Data-parallel ranks to follow: one subscription each, on the endpoint's port + rank.",
    ),
    click.option(
        "--kv-events-dp-rank",
        type=click.IntRange(0, 65535),
        default=0,
        show_default=True,
        envvar="AIRUNTIME_KV_EVENTS_DP_RANK",
        help="The first data-parallel rank this pod serves (an engine started with --data-parallel-rank).",
    ),
    click.option(
        "--kv-events-router-block-size",
        type=click.IntRange(1, 1 << 16),
        default=None,
        envvar="AIRUNTIME_KV_EVENTS_ROUTER_BLOCK_SIZE",
        help="The router's blockSizeToHash when smaller than the engine's block size (a divisor of it) "
        "[default: the engine's block size].",
    ),
    click.option(
        "--kv-events-max-blocks",
        type=click.IntRange(1000, 100_000_000),
        default=DEFAULT_MAX_BLOCKS,
        show_default=True,
        envvar="AIRUNTIME_KV_EVENTS_MAX_BLOCKS",
        help="Blocks the relay's index holds at most (oldest dropped, claims withdrawn, beyond).",
    ),
]


def kv_events_options(func: F) -> F:
    """Add the flags to a click command; the command receives them as `kv_events_flags: KvEventsFlags`."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        flags = KvEventsFlags(
            enabled=kwargs.pop("kv_events_enabled"),
            redis_url=kwargs.pop("redis_url") or None,
            redis_ca_file=kwargs.pop("redis_ca_file"),
            endpoint=kwargs.pop("kv_events_endpoint") or None,
            replay_endpoint=kwargs.pop("kv_events_replay_endpoint") or None,
            topic=kwargs.pop("kv_events_topic"),
            bind=kwargs.pop("kv_events_bind"),
            dp_size=kwargs.pop("kv_events_dp_size"),
            dp_rank_start=kwargs.pop("kv_events_dp_rank"),
            router_block_size=kwargs.pop("kv_events_router_block_size"),
            max_blocks=kwargs.pop("kv_events_max_blocks"),
        )
        return func(*args, kv_events_flags=flags, **kwargs)

    decorated: Any = command
    for option in reversed(_OPTIONS):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]
