"""Fixtures shared by the fast suites: the fake metrics engine, the vLLM LoRA API stand-in, a real Redis."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.peers.redis_server import RedisPeer, redis_binary, running_redis
from tests.support import secrets
from tests.support.fake_engine import MINIMAL_VLLM_PAYLOAD, FakeEngine
from tests.support.lora_engines import VllmLoraEngine


@pytest.fixture
async def vllm() -> AsyncIterator[VllmLoraEngine]:
    engine = VllmLoraEngine()
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture
def engine() -> Iterator[FakeEngine]:
    with FakeEngine(MINIMAL_VLLM_PAYLOAD) as fake:
        yield fake


@pytest.fixture(scope="session")
def redis_peer() -> Iterator[RedisPeer]:
    if redis_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and redis-server is missing (make peers installs it)", pytrace=False)
        pytest.skip("redis-server is not installed: python tests/peers/redis_server.py install")
    with running_redis(password=secrets.REDIS_PASSWORD) as peer:
        yield peer


@pytest.fixture
def redis(redis_peer: RedisPeer) -> Iterator[RedisPeer]:
    if not redis_peer.ping():  # a test stopped it
        redis_peer.start()
    redis_peer.client().flushall()
    yield redis_peer
