"""The relay end to end in one process: a publisher speaking vLLM 0.32's protocol (tests/support/kv_publisher.py),
a real Redis (Debian's redis-server, started here with a password), and the state Redis ends up in compared with
the reference model of the batches (tests/support/kv_events.py). The real vLLM is in tests/e2e/test_kv_events_e2e.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import msgspec
import pytest

from runtime.kv_events.relay import Relay
from runtime.kv_events.resp import RedisError, RespConnection
from runtime.kv_events.settings import KvEventsFlags, KvEventsSettings, RedisTarget, build_settings
from runtime.metrics.registry import Registry
from tests.peers.processes import pick_port_base
from tests.peers.redis_server import HangingServer, RedisPeer
from tests.support.exposition import sample_values
from tests.support.kv_events import (
    FIXTURES,
    Frame,
    load_frames,
    mapping_keys,
    pod_fields,
    reference_from_frames,
    standardized_hash,
)
from tests.support.kv_publisher import CLEARED, KvPublisher, removed, stored

POD, MODEL = "tiny-0.prod", "tiny"
FRAMES = load_frames(FIXTURES / "vllm-0.32.0.kv-events.jsonl")


@pytest.fixture
def ports() -> tuple[str, str]:
    base = pick_port_base(2)
    return f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"


def relay_settings(redis: RedisPeer, endpoint: str, replay: str | None, **flags: Any) -> KvEventsSettings:
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port), "REDIS_PASSWORD": redis.password or ""}
    env |= {"VLLM_ZMQ_ENDPOINT": endpoint} | ({"VLLM_ZMQ_REPLAY_ENDPOINT": replay} if replay else {})
    settings, _ = build_settings(KvEventsFlags(**flags), engine="vllm", pod=POD, model=MODEL, environ=env)
    assert settings is not None
    return settings


@asynccontextmanager
async def running(settings: KvEventsSettings) -> AsyncIterator[Relay]:
    relay = Relay(settings, Registry(), "airuntime")
    relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


async def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def metric(relay: Relay, name: str, **labels: str) -> float:
    key = (f"airuntime:kv_events_{name}", tuple(sorted(labels.items())))
    return sample_values(relay.registry.render()).get(key, 0.0)


def claims(redis: RedisPeer) -> set[tuple[str, int]]:
    return set(pod_fields(redis.client(), POD))


def expected(frames: list[Frame]) -> set[tuple[str, int]]:
    return reference_from_frames(MODEL, frames).owned()


def batch(events: list[Any]) -> bytes:
    return msgspec.msgpack.encode([time.time(), events, 0])


# ------------------------------------------------------------------------------------------------- RESP client


async def test_resp_client_authenticates_and_reports_refusals_without_the_password(redis: RedisPeer) -> None:
    target = RedisTarget("127.0.0.1", redis.port, 0, None, redis.password, False, None)
    connection = await RespConnection.open(target, 2.0)
    assert await connection.command(b"PING") == b"PONG"
    connection.close()
    with pytest.raises(RedisError) as refused:
        await RespConnection.open(replace(target, password="wrong-password-123"), 2.0)
    assert refused.value.kind == "auth" and "wrong-password" not in str(refused.value)
    with pytest.raises(RedisError) as anonymous:
        await RespConnection.open(replace(target, password=None), 2.0)
    assert anonymous.value.kind == "auth"


async def test_a_hanging_redis_times_out() -> None:
    with HangingServer() as server:
        target = RedisTarget("127.0.0.1", server.port, 0, None, "x" * 12, False, None)
        started = time.monotonic()
        with pytest.raises(RedisError) as caught:
            await RespConnection.open(target, 0.5)
        assert caught.value.kind == "timeout" and time.monotonic() - started < 3


# ------------------------------------------------------------------------------------------------- what is written


async def test_recorded_vllm_history_lands_in_redis_as_kthena_writes_it(
    redis: RedisPeer, ports: tuple[str, str]
) -> None:
    endpoint, replay = ports
    with KvPublisher(endpoint, replay) as publisher:
        for frame in FRAMES[:5]:  # published before the relay started: only the replay socket has them
            publisher.skip(frame.payload)
        async with running(relay_settings(redis, endpoint, replay)) as relay:
            await asyncio.wait_for(relay.writer.synced.wait(), 15)
            for frame in FRAMES[5:]:
                publisher.publish(frame.payload)
            await eventually(lambda: claims(redis) == expected(FRAMES), "the recorded history in Redis")
            fields = pod_fields(redis.client(), POD)
            assert all(abs(int(value) - time.time()) < 60 for value in fields.values())  # Unix seconds
            mappings = dict(mapping_keys(redis.client(), "vllm:kv:block", POD))
            assert set(mappings) == {str(h) for h in reference_from_frames(MODEL, FRAMES).engine_hashes()}
            assert all(86_000 < ttl <= 86_400 for ttl in mappings.values())
            assert metric(relay, "events_total", type="all_blocks_cleared") == 1
            assert metric(relay, "blocks_total", outcome="removed") > 0
            assert metric(relay, "lag_seconds_count") > 0


async def test_start_clears_this_pods_stale_fields_only(redis: RedisPeer, ports: tuple[str, str]) -> None:
    endpoint, replay = ports
    client = redis.client()
    held = reference_from_frames(MODEL, FRAMES[:1]).owned().pop()[1]
    client.hset(f"matrix:kv:block:{MODEL}@{held}", POD, "1")  # the engine still holds it: kept, rewritten
    client.hset(f"matrix:kv:block:{MODEL}@123", mapping={POD: "1", "other-pod.prod": "1"})  # ours is stale
    client.hset("matrix:kv:block:other-model@123", POD, "1")  # another model: not this relay's business
    client.set(f"vllm:kv:block:{POD}@999", "123")
    with KvPublisher(endpoint, replay) as publisher:
        publisher.skip(FRAMES[0].payload)
        async with running(relay_settings(redis, endpoint, replay)):
            await eventually(lambda: claims(redis) == expected(FRAMES[:1]) | {("other-model", 123)}, "the sweep")
    assert client.hgetall(f"matrix:kv:block:{MODEL}@123") == {b"other-pod.prod": b"1"}
    assert int(client.hget(f"matrix:kv:block:{MODEL}@{held}", POD)) > 1  # a fresh timestamp
    assert not client.exists(f"vllm:kv:block:{POD}@999")


async def test_model_names_with_glob_characters_are_matched_literally(redis: RedisPeer, ports: tuple[str, str]) -> None:
    endpoint, replay = ports
    client = redis.client()
    client.hset("matrix:kv:block:org/m*x@5", POD, "1")  # stale, our model
    client.hset("matrix:kv:block:org/mAx@5", POD, "1")  # another model that `org/m*x@*` would match as a glob
    settings = replace(relay_settings(redis, endpoint, replay), model="org/m*x")
    with KvPublisher(endpoint, replay):
        async with running(settings) as relay:
            await asyncio.wait_for(relay.writer.synced.wait(), 15)
    assert not client.hexists("matrix:kv:block:org/m*x@5", POD) and client.hexists("matrix:kv:block:org/mAx@5", POD)


# ------------------------------------------------------------------------------------------------- gaps and restarts


async def test_a_missed_batch_is_fetched_from_the_replay_socket(redis: RedisPeer, ports: tuple[str, str]) -> None:
    endpoint, replay = ports
    with KvPublisher(endpoint, replay) as publisher:
        async with running(relay_settings(redis, endpoint, replay)) as relay:
            await asyncio.wait_for(relay.writer.synced.wait(), 15)
            publisher.publish(FRAMES[0].payload)
            await eventually(lambda: claims(redis) == expected(FRAMES[:1]), "the first batch")
            publisher.skip(FRAMES[1].payload)  # lost on the way
            publisher.publish(FRAMES[2].payload)
            await eventually(lambda: claims(redis) == expected(FRAMES[:3]), "the missed batch, replayed")
            assert metric(relay, "gaps_total", outcome="replayed") == 1
            assert metric(relay, "gaps_total", outcome="reset") == 0


async def test_without_a_replay_socket_a_gap_forgets_the_rank(redis: RedisPeer, ports: tuple[str, str]) -> None:
    endpoint, _ = ports
    first = [stored([1], list(range(32)))]
    later = [stored([3], list(range(64, 96)))]
    with KvPublisher(endpoint, None) as publisher:
        async with running(relay_settings(redis, endpoint, None)) as relay:
            await asyncio.wait_for(relay.writer.synced.wait(), 15)
            await eventually(lambda: _publish_until_seen(publisher, relay, first), "the relay to connect")
            publisher.skip(batch([stored([2], list(range(32, 64)))]))
            publisher.publish(batch(later))
            only_later = {(MODEL, standardized_hash(list(range(64, 96))))}
            await eventually(lambda: claims(redis) == only_later, "claims from after the gap only")
            assert metric(relay, "gaps_total", outcome="reset") == 1


def _publish_until_seen(publisher: KvPublisher, relay: Relay, events: list[Any]) -> bool:
    """ZeroMQ drops what a PUB socket sends before the subscription arrives: send again until one lands."""
    if relay.ranks[0].last is not None:
        return True
    publisher.publish(batch(events))
    time.sleep(0.2)
    return relay.ranks[0].last is not None


async def test_an_engine_restart_withdraws_its_claims(redis: RedisPeer, ports: tuple[str, str]) -> None:
    endpoint, replay = ports
    with KvPublisher(endpoint, replay) as publisher:
        async with running(relay_settings(redis, endpoint, replay)) as relay:
            await asyncio.wait_for(relay.writer.synced.wait(), 15)
            for frame in FRAMES[:4]:
                publisher.publish(frame.payload)
            await eventually(lambda: claims(redis) == expected(FRAMES[:4]), "the first engine's claims")
            publisher.restart()  # a new engine: empty cache, sequence numbers from 0
            await eventually(lambda: claims(redis) == set(), "the old engine's claims withdrawn")
            publisher.publish(FRAMES[5].payload)
            await eventually(lambda: claims(redis) == expected(FRAMES[5:6]), "the new engine's claims")
            assert metric(relay, "gaps_total", outcome="reset") >= 1


async def test_a_truncated_replay_buffer_at_start_is_reported(redis: RedisPeer, ports: tuple[str, str]) -> None:
    endpoint, replay = ports
    with KvPublisher(endpoint, replay) as publisher:
        for frame in FRAMES[:8]:
            publisher.skip(frame.payload)
        publisher.forget_before(4)
        async with running(relay_settings(redis, endpoint, replay)) as relay:
            await eventually(lambda: claims(redis) == expected(FRAMES[4:8]), "what the buffer still holds")
            assert metric(relay, "replays_total", result="truncated") == 1


async def test_bind_mode_for_an_engine_that_connects(redis: RedisPeer, ports: tuple[str, str]) -> None:
    endpoint, replay = ports
    settings = relay_settings(redis, endpoint, replay, bind=True)
    async with running(settings) as relay:
        with KvPublisher(endpoint, replay, bind=False) as publisher:  # vLLM with endpoint tcp://127.0.0.1:PORT
            publisher.publish(FRAMES[0].payload)  # may be lost (slow joiner): the handshake's replay brings it
            publisher.publish(FRAMES[1].payload)
            await eventually(lambda: claims(redis) == expected(FRAMES[:2]), "claims through a bound socket")
            assert metric(relay, "replays_total", result="complete") >= 1


async def test_one_subscription_per_dp_rank(redis: RedisPeer) -> None:
    base = pick_port_base(4)
    endpoint, replay = f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 2}"
    tokens = list(range(500, 532))
    with (
        KvPublisher(endpoint, replay) as rank0,
        KvPublisher(f"tcp://127.0.0.1:{base + 1}", f"tcp://127.0.0.1:{base + 3}") as rank1,
    ):
        rank0.skip(batch([stored([10], tokens)]))
        rank1.skip(batch([stored([20], tokens), stored([21], list(range(600, 632)))]))
        async with running(relay_settings(redis, endpoint, replay, dp_size=2)) as relay:
            both = {(MODEL, standardized_hash(tokens)), (MODEL, standardized_hash(list(range(600, 632))))}
            await eventually(lambda: claims(redis) == both, "both ranks' blocks")
            rank0.publish(batch([removed([10])]))  # rank 1 still holds the same tokens
            rank1.publish(batch([removed([21])]))
            await eventually(lambda: claims(redis) == {(MODEL, standardized_hash(tokens))}, "rank 1's claim kept")
            assert metric(relay, "batches_total", rank="1") == 2


# ------------------------------------------------------------------------------------------------- bad input


async def test_bad_frames_are_counted_logged_once_and_never_stop_the_relay(
    redis: RedisPeer, ports: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, replay = ports
    caplog.set_level(logging.WARNING, logger="airuntime.kv_events")
    with KvPublisher(endpoint, replay) as publisher:
        async with running(relay_settings(redis, endpoint, replay)) as relay:
            await asyncio.wait_for(relay.writer.synced.wait(), 15)
            publisher.publish(FRAMES[0].payload)
            await eventually(lambda: relay.ranks[0].last == 0, "the first batch")
            seq8 = (99).to_bytes(8, "big")
            for _ in range(2):
                publisher.send_raw([b"kv-events"])
                publisher.send_raw([b"kv-events", seq8, b"x", b"extra"])
                publisher.send_raw([b"kv-eventsX", seq8, b"x"])
                publisher.send_raw([b"kv-events", b"\x01", b"x"])
            publisher.publish(b"\xc1\xc1 not msgpack")
            publisher.publish(msgspec.msgpack.encode({"no": "batch"}))
            publisher.publish(msgspec.msgpack.encode([1.0, [0] * 10, 0]))  # ten malformed events
            publisher.publish(b"\x00" * (17 << 20))  # a batch too large to apply
            publisher.publish(FRAMES[1].payload)
            await eventually(lambda: claims(redis) == expected(FRAMES[1:2]), "the relay to go on")
            for kind, count in (("frames", 4), ("topic", 2), ("sequence", 2), ("garbage", 1), ("envelope", 1)):
                assert metric(relay, "input_errors_total", kind=kind) == count, kind
            assert metric(relay, "input_errors_total", kind="bad_event") == 10
            assert metric(relay, "input_errors_total", kind="too_large") == 1
    logged = [r.getMessage() for r in caplog.records if "rejected input" in r.getMessage()]
    assert len(logged) == 7, logged  # once per kind
    assert all(len(message) < 400 for message in logged)


# ------------------------------------------------------------------------------------------------- Redis trouble


async def test_redis_down_then_back_gets_everything_rewritten(redis: RedisPeer, ports: tuple[str, str]) -> None:
    endpoint, replay = ports
    with KvPublisher(endpoint, replay) as publisher:
        async with running(relay_settings(redis, endpoint, replay)) as relay:
            await asyncio.wait_for(relay.writer.synced.wait(), 15)
            for frame in FRAMES[:6]:
                publisher.publish(frame.payload)
            await eventually(lambda: claims(redis) == expected(FRAMES[:6]), "the first claims")
            redis.kill()
            for frame in FRAMES[6:]:
                publisher.publish(frame.payload)
            await eventually(lambda: relay.ranks[0].last == FRAMES[-1].seq, "the index to go on")
            await eventually(lambda: metric(relay, "redis_up") == 0, "the writer to notice")
            redis.start()  # empty, as after a crash
            await eventually(lambda: metric(relay, "full_syncs_total") >= 2, "a second full sync")
            assert claims(redis) == expected(FRAMES)
            assert metric(relay, "redis_errors_total", kind="connect") >= 1


async def test_redis_refusing_auth_is_counted_and_the_index_still_runs(
    redis: RedisPeer, ports: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, replay = ports
    caplog.set_level(logging.WARNING, logger="airuntime.kv_events")
    settings = relay_settings(redis, endpoint, replay)
    settings = replace(settings, redis=replace(settings.redis, password="not-the-password"))
    with KvPublisher(endpoint, replay) as publisher:
        publisher.skip(FRAMES[0].payload)
        async with running(settings) as relay:
            await eventually(lambda: metric(relay, "redis_errors_total", kind="auth") >= 2, "refusals")
            assert relay.index.size > 0 and metric(relay, "redis_up") == 0
    refusals = [r for r in caplog.records if "refused the credentials" in r.getMessage()]
    assert len(refusals) == 1 and "not-the-password" not in refusals[0].getMessage()


async def test_wrongtype_keys_are_skipped_the_rest_written(redis: RedisPeer, ports: tuple[str, str]) -> None:
    endpoint, replay = ports
    tokens_a, tokens_b = list(range(32)), list(range(32, 64))
    redis.client().set(f"matrix:kv:block:{MODEL}@{standardized_hash(tokens_a)}", "a string, not a hash")
    with KvPublisher(endpoint, replay) as publisher:
        publisher.skip(batch([stored([1, 2], tokens_a + tokens_b)]))
        async with running(relay_settings(redis, endpoint, replay)) as relay:
            await eventually(lambda: claims(redis) == {(MODEL, standardized_hash(tokens_b))}, "the other key")
            assert metric(relay, "redis_errors_total", kind="server") >= 1
            publisher.publish(batch([CLEARED]))
            await eventually(lambda: claims(redis) == set(), "the clear")


async def test_a_hanging_redis_is_counted_and_never_blocks_the_relay(
    redis: RedisPeer, ports: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.kv_events import redis_writer

    monkeypatch.setattr(redis_writer, "TIMEOUT_SECONDS", 0.3)
    endpoint, replay = ports
    with HangingServer() as hanging, KvPublisher(endpoint, replay) as publisher:
        settings = relay_settings(redis, endpoint, replay)
        settings = replace(settings, redis=replace(settings.redis, port=hanging.port))
        publisher.skip(FRAMES[0].payload)
        async with running(settings) as relay:
            await eventually(lambda: metric(relay, "redis_errors_total", kind="timeout") >= 2, "timeouts")
            publisher.publish(FRAMES[1].payload)
            await eventually(lambda: relay.ranks[0].last == 1, "events applied meanwhile")
            assert relay.index.size > 0 and metric(relay, "redis_up") == 0
