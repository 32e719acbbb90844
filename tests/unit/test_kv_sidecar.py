"""The relay inside `airuntime serve` (a subprocess, as deployed): Kthena's variables turn it on, /health stays fast
under a flood of events, /ready never depends on Redis, and the relay's metrics are on /metrics."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import msgspec

from tests.peers.processes import pick_port_base
from tests.peers.redis_server import RedisPeer
from tests.support.exposition import sample_values
from tests.support.fake_engine import FakeEngine
from tests.support.health_prober import HealthProber
from tests.support.kv_events import pod_fields
from tests.support.kv_publisher import KvPublisher, stored
from tests.support.sidecar import REPO_ROOT, sidecar_process

POD, MODEL = "tiny-0.prod", "tiny"
FLOOD_BATCHES = 4000
BLOCKS_PER_BATCH = 8


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def relay_metrics(url: str) -> dict[str, float]:
    _, body = get(f"{url}/metrics")
    return {
        name + "".join(f"{{{v}}}" for _, v in labels): value
        for (name, labels), value in sample_values(body).items()
        if name.startswith("airuntime:kv_events_")
    }


def wait_for(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def flood_payloads() -> list[bytes]:
    payloads = []
    for n in range(FLOOD_BATCHES):
        first = n * BLOCKS_PER_BATCH
        hashes = list(range(first, first + BLOCKS_PER_BATCH))
        tokens = list(range(first * 32, (first + BLOCKS_PER_BATCH) * 32))  # unique content per block
        payloads.append(msgspec.msgpack.encode([time.time(), [stored(hashes, tokens)], 0]))
    return payloads


def test_relay_in_the_sidecar_health_ready_and_metrics(redis: RedisPeer, engine: FakeEngine) -> None:
    base = pick_port_base(2)
    endpoint, replay = f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port), "REDIS_PASSWORD": redis.password or ""}
    env |= {"VLLM_ZMQ_ENDPOINT": endpoint, "VLLM_ZMQ_REPLAY_ENDPOINT": replay}
    args = ["--engine", "vllm", "--engine-url", engine.url, "--pod", POD, "--model", MODEL]
    payloads = flood_payloads()
    with KvPublisher(endpoint, replay) as publisher, sidecar_process(args, env) as sidecar:
        wait_for(lambda: relay_metrics(sidecar.url).get("airuntime:kv_events_full_syncs_total", 0) >= 1, "a sync")
        prober = HealthProber(sidecar.url)
        try:
            for payload in payloads:
                publisher.publish(payload)
            wait_for(
                lambda: relay_metrics(sidecar.url).get("airuntime:kv_events_indexed_blocks", 0)
                == FLOOD_BATCHES * BLOCKS_PER_BATCH,
                "every block indexed",
            )
        finally:
            prober.stop()
        assert not prober.failures, prober.failures[:5]
        p99 = prober.p99()
        print(f"/health p99 {p99 * 1000:.1f} ms over {len(prober.latencies)} probes during the flood")
        assert p99 < 0.25, f"/health p99 {p99 * 1000:.1f} ms during a flood of events"
        wait_for(lambda: len(pod_fields(redis.client(), POD)) == FLOOD_BATCHES * BLOCKS_PER_BATCH, "Redis written")

        redis.kill()
        started = time.monotonic()
        status, body = get(f"{sidecar.url}/ready")
        assert status == 200 and time.monotonic() - started < 2, body
        wait_for(lambda: relay_metrics(sidecar.url).get("airuntime:kv_events_redis_up") == 0, "redis_up 0")
        redis.start()
        wait_for(lambda: relay_metrics(sidecar.url).get("airuntime:kv_events_redis_up") == 1, "redis_up 1")
        wait_for(lambda: len(pod_fields(redis.client(), POD)) == FLOOD_BATCHES * BLOCKS_PER_BATCH, "rewritten")
        metrics = relay_metrics(sidecar.url)
        assert metrics["airuntime:kv_events_events_total{block_stored}"] == FLOOD_BATCHES
        assert metrics["airuntime:kv_events_blocks_total{stored}"] == FLOOD_BATCHES * BLOCKS_PER_BATCH
        assert metrics["airuntime:kv_events_redis_errors_total{connect}"] >= 1
        output = sidecar.output()
    assert "KV-event relay: connected to" in output and "Redis holds this pod's" in output


def test_a_host_where_zeromq_cannot_load_serves_without_the_relay(engine: FakeEngine, tmp_path: Path) -> None:
    """pyzmq's libzmq needs libstdc++.so.6: on a host without it the relay is off with one line, the rest serves."""
    shadow = tmp_path / "shadow" / "zmq"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        'raise ImportError("libstdc++.so.6: cannot open shared object file: No such file or directory")\n'
    )
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": "1", "PYTHONPATH": f"{shadow.parent}:{REPO_ROOT}"}
    args = ["--engine", "vllm", "--engine-url", engine.url, "--pod", POD, "--model", MODEL]
    with sidecar_process(args, env) as sidecar:
        assert get(f"{sidecar.url}/ready")[0] == 200
        status, body = get(f"{sidecar.url}/metrics")
        assert status == 200 and b"vllm:num_requests_running" in body
        output = sidecar.output()
    lines = [line for line in output.splitlines() if "KV-event relay" in line]
    assert any("cannot load ZeroMQ or msgpack (libstdc++.so.6: cannot open" in line for line in lines), output
    assert "Traceback" not in output, output
