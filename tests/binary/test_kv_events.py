"""The KV-event relay through the compiled program: pyzmq's extension and its bundled libzmq and libsodium load from
the payload, msgspec decodes, and a batch published on a real ZeroMQ PUB socket reaches a real Redis as the keys
Kthena's router reads. Nothing else in the binary's suites imports pyzmq, which the sidecar loads only when the relay
runs, so a payload missing any of it would otherwise ship unnoticed.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.binary.conftest import peer_missing
from tests.peers.processes import pick_port_base
from tests.peers.redis_server import RedisPeer, redis_binary, running_redis
from tests.support.exposition import sample_values
from tests.support.fake_engine import FakeEngine
from tests.support.kv_events import pod_fields
from tests.support.kv_publisher import KvPublisher, stored
from tests.support.sidecar import sidecar_process

POD, MODEL = "tiny-0.prod", "tiny"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisPeer]:
    if redis_binary() is None:
        peer_missing("redis-server is not installed")
    with running_redis() as peer:
        yield peer


def relay_value(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        body = response.read()
    return sample_values(body).get((f"airuntime:kv_events_{name}", ()), 0.0)


def wait_for(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("form", ["standalone", "onefile"])
def test_relay_in_the_program(form: str, binary: Path, standalone: Path, redis: RedisPeer, tmp_path: Path) -> None:
    program = standalone / "airuntime" if form == "standalone" else binary
    base = pick_port_base(2)
    endpoint, replay = f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env |= {"VLLM_ZMQ_ENDPOINT": endpoint, "VLLM_ZMQ_REPLAY_ENDPOINT": replay}
    hashes, tokens = [11, 12], list(range(64))
    with FakeEngine() as engine, KvPublisher(endpoint, replay) as publisher:
        args = ["--engine", "vllm", "--engine-url", engine.url, "--pod", POD, "--model", MODEL]
        with sidecar_process(args, env, command=[str(program), "serve"]) as sidecar:
            wait_for(lambda: relay_value(sidecar.url, "full_syncs_total") >= 1, "the first sync")
            publisher.publish_events([stored(hashes, tokens)])
            wait_for(lambda: len(pod_fields(redis.client(), POD)) == len(hashes), "the blocks in Redis")
    assert {model for model, _ in pod_fields(redis.client(), POD)} == {MODEL}
    redis.client().flushall()
