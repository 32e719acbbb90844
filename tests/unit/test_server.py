"""The HTTP server against a real HTTP engine stand-in: /metrics, probes, faults, coalescing, auth, gzip."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from runtime.config import ServeConfig
from runtime.metrics.rules import build_ruleset
from runtime.server.app import create_app
from tests.support.exposition import families_of, sample_values
from tests.support.fake_engine import MINIMAL_VLLM_PAYLOAD, FakeEngine
from tests.support.promtool import assert_valid_exposition


def make_config(engine_url: str, **overrides: Any) -> ServeConfig:
    values: dict[str, Any] = {
        "engine": "vllm",
        "engine_url": engine_url,
        "engine_metrics_path": "/metrics",
        "engine_health_path": None,
        "engine_api_key": None,
        "host": "127.0.0.1",
        "port": 0,
        "metrics_prefix": None,
        "metrics_profile": "default",
        "metrics_rules": None,
        "raw_metrics": True,
        "scrape_timeout": 2.0,
        "log_level": "info",
        "log_format": "text",
        "pod": "",
        "model": "",
        "models_dir": "/tmp/airuntime-test-models",
        "adapters_dir": "/tmp/airuntime-test-adapters",
    }
    values.update(overrides)
    return ServeConfig(**values)


async def sidecar_client(config: ServeConfig) -> TestClient[web.Request, web.Application]:
    rules = build_ruleset(config.engine, prefix=config.metrics_prefix, profile=config.metrics_profile)
    client = TestClient(TestServer(create_app(config, rules), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(engine: FakeEngine) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = await sidecar_client(make_config(engine.url, scrape_timeout=0.5))
    yield client
    await client.close()


async def get_metrics(client: TestClient[web.Request, web.Application]) -> bytes:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return await response.read()


async def test_metrics_has_raw_unified_and_own_families(client: TestClient[web.Request, web.Application]) -> None:
    body = await get_metrics(client)
    families = families_of(body)
    assert families["vllm:prompt_tokens_total"] == "counter"
    assert families["airuntime:prompt_tokens_total"] == "counter"
    assert families["airuntime:e2e_request_latency_seconds"] == "histogram"
    assert families["airuntime:engine_up"] == "gauge"
    assert "airuntime_sidecar_process_resident_memory_bytes" in families
    values = sample_values(body)
    assert values[("airuntime:engine_up", ())] == 1.0
    labels = (("engine", "0"), ("model_name", "tiny"))
    assert values[("airuntime:prompt_tokens_total", labels)] == values[("vllm:prompt_tokens_total", labels)] == 1234
    assert_valid_exposition(body)


async def test_gzip_when_asked(client: TestClient[web.Request, web.Application]) -> None:
    plain = await get_metrics(client)
    response = await client.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert response.headers["Content-Encoding"] == "gzip"
    unzipped = gzip.decompress(await response.read())
    assert unzipped.split(b"# HELP airuntime:engine_up")[0] == plain.split(b"# HELP airuntime:engine_up")[0]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("refuse", "connect"), ("error500", "http_status"), ("garbage", "garbage"), ("truncated", "truncated")],
)
async def test_engine_faults_answer_200_with_engine_down(
    client: TestClient[web.Request, web.Application], engine: FakeEngine, mode: Any, reason: str
) -> None:
    await asyncio.to_thread(engine.set_mode, mode)
    body = await get_metrics(client)
    values = sample_values(body)
    assert values[("airuntime:engine_up", ())] == 0.0
    assert values[("airuntime:scrape_errors_total", (("reason", reason),))] == 1.0
    assert b"vllm:" not in body and b"airuntime:prompt_tokens_total" not in body
    assert_valid_exposition(body)
    ready = await client.get("/ready")
    # /ready follows the engine's own health check, which the fake engine fails only when refusing or 500-ing
    expected_ready = 503 if mode in ("refuse", "error500") else 200
    assert ready.status == expected_ready
    await asyncio.to_thread(engine.set_mode, "ok")
    assert sample_values(await get_metrics(client))[("airuntime:engine_up", ())] == 1.0


async def test_slow_engine_times_out_and_health_stays_fast(engine: FakeEngine) -> None:
    """/health answers while a scrape waits for a slow engine (it never waits for the engine), and the scrape gives
    up at its timeout with engine_up 0. The bounds leave room for a busy 2-core CI machine: /health must come back
    well before the scrape's 2 s timeout, the property itself being that the scrape is still pending then."""
    client = await sidecar_client(make_config(engine.url, scrape_timeout=2.0))
    try:
        await asyncio.to_thread(engine.set_mode, "slow", delay=5.0)
        started = time.perf_counter()
        scrape = asyncio.ensure_future(client.get("/metrics"))
        await asyncio.sleep(0.1)
        health_started = time.perf_counter()
        health = await client.get("/health")
        health_elapsed = time.perf_counter() - health_started
        assert not scrape.done(), "/health came back only after the scrape"
        assert health.status == 200 and await health.json() == {"status": "ok"}
        assert health_elapsed < 1.0
        response = await scrape
        elapsed = time.perf_counter() - started
        assert response.status == 200
        assert 1.9 < elapsed < 3.5
        values = sample_values(await response.read())
        assert values[("airuntime:scrape_errors_total", (("reason", "timeout"),))] == 1.0
        ready = await client.get("/ready")
        assert ready.status == 503 and "timed out" in (await ready.json())["reason"]
    finally:
        await client.close()


async def test_concurrent_scrapes_share_one_engine_request(
    client: TestClient[web.Request, web.Application], engine: FakeEngine
) -> None:
    await asyncio.to_thread(engine.set_mode, "slow", delay=0.2)
    before = engine.requests["/metrics"]
    bodies = await asyncio.gather(*(get_metrics(client) for _ in range(10)))
    assert engine.requests["/metrics"] - before == 1
    assert all(b"airuntime:prompt_tokens_total{" in body for body in bodies)


async def test_concurrent_scrapes_share_the_answer_and_its_gzip(
    client: TestClient[web.Request, web.Application], engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Coalesced requests used to join and gzip the body once each; now once per scrape, however many asked."""
    import runtime.metrics.answer as answer

    compressions = []
    original = answer.zlib.compressobj

    def counting(*args: Any) -> Any:
        compressions.append(args)
        return original(*args)

    monkeypatch.setattr(answer.zlib, "compressobj", counting)
    await asyncio.to_thread(engine.set_mode, "slow", delay=0.2)

    async def gzipped() -> bytes:
        response = await client.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
        assert response.headers["Content-Encoding"] == "gzip"
        return await response.read()

    bodies = await asyncio.gather(*(gzipped() for _ in range(8)))
    assert len(set(bodies)) == 1 and len(compressions) == 1
    plain = await client.get("/metrics", headers={"Accept-Encoding": "gzip;q=0, identity"}, auto_decompress=False)
    assert "Content-Encoding" not in plain.headers  # gzip;q=0 means "not gzip"


async def test_ready_and_health_aliases(client: TestClient[web.Request, web.Application]) -> None:
    for path in ("/ready", "/readyz"):
        response = await client.get(path)
        assert response.status == 200, path
        assert (await response.json())["status"] == "ready"
    for path in ("/health", "/healthz"):
        assert (await client.get(path)).status == 200


async def test_unknown_path_is_json_404(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/nope")
    assert response.status == 404
    assert await response.json() == {"error": "Not Found", "status": 404}
    response = await client.post("/metrics")
    assert response.status == 405
    assert (await response.json())["status"] == 405


async def test_no_raw_metrics_and_prefix() -> None:
    with FakeEngine(MINIMAL_VLLM_PAYLOAD) as fake:
        client = await sidecar_client(make_config(fake.url, raw_metrics=False, metrics_prefix="kthena"))
        try:
            body = await get_metrics(client)
        finally:
            await client.close()
    assert b"vllm:" not in body
    assert b"kthena:num_requests_waiting{" in body and b"kthena:engine_up 1.0" in body


async def test_api_key_sent_as_bearer_token_and_never_shown() -> None:
    seen: list[str | None] = []

    async def metrics(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        seen.append(request.headers.get("Accept"))
        return web.Response(body=MINIMAL_VLLM_PAYLOAD, content_type="text/plain")

    async def health(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response()

    engine_app = web.Application()
    engine_app.router.add_get("/metrics", metrics)
    engine_app.router.add_get("/health", health)
    engine_server = TestServer(engine_app, host="127.0.0.1")
    await engine_server.start_server()
    client = await sidecar_client(make_config(str(engine_server.make_url("")).rstrip("/"), engine_api_key="sk-1"))
    try:
        body = await get_metrics(client)
        assert (await client.get("/ready")).status == 200
    finally:
        await client.close()
        await engine_server.close()
    assert seen[0] == "Bearer sk-1" and seen[2] == "Bearer sk-1"
    assert seen[1] is not None and seen[1].startswith("text/plain;version=0.0.4")
    assert b"sk-1" not in body


TGI_PAYLOAD = b"""# TYPE tgi_queue_size gauge
tgi_queue_size 2
# TYPE tgi_request_success counter
tgi_request_success 9
"""


async def test_auto_recognises_engine_reports_version_and_follows_a_swap() -> None:
    payload = {"metrics": MINIMAL_VLLM_PAYLOAD, "version": b'{"version": "0.32.0"}'}

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=payload["metrics"], content_type="text/plain")

    async def version(request: web.Request) -> web.Response:
        return web.Response(body=payload["version"], content_type="application/json")

    async def info(request: web.Request) -> web.Response:
        return web.Response(body=b'{"version": "3.3.6", "model_id": "m"}', content_type="application/json")

    engine_app = web.Application()
    engine_app.router.add_get("/metrics", metrics)
    engine_app.router.add_get("/version", version)
    engine_app.router.add_get("/info", info)
    engine_app.router.add_get("/health", info)
    engine_server = TestServer(engine_app, host="127.0.0.1")
    await engine_server.start_server()
    client = await sidecar_client(make_config(str(engine_server.make_url("")).rstrip("/"), engine="auto"))
    try:

        async def engine_info() -> dict[str, str]:
            for _ in range(50):  # the version arrives from a request started by the scrape
                values = sample_values(await get_metrics(client))
                found = [dict(labels) for name, labels in values if name == "airuntime:engine_info"]
                if found and found[0]["version"]:
                    return found[0]
                await asyncio.sleep(0.02)
            return found[0]

        assert await engine_info() == {"engine": "vllm", "version": "0.32.0"}
        ready = await (await client.get("/ready")).json()
        assert (ready["engine"], ready["engine_version"]) == ("vllm", "0.32.0")

        payload["metrics"] = TGI_PAYLOAD
        assert await engine_info() == {"engine": "tgi", "version": "3.3.6"}
        body = await get_metrics(client)
        assert b"airuntime:num_requests_waiting 2\n" in body
        assert b"# TYPE airuntime:request_success_total counter\nairuntime:request_success_total 9\n" in body
        assert_valid_exposition(body)
    finally:
        await client.close()
        await engine_server.close()


async def test_gzip_answer_from_the_engine_is_decoded() -> None:
    compressed = gzip.compress(MINIMAL_VLLM_PAYLOAD)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=compressed, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain; version=0.0.4"}
        )

    engine_app = web.Application()
    engine_app.router.add_get("/metrics", metrics)
    engine_server = TestServer(engine_app, host="127.0.0.1")
    await engine_server.start_server()
    client = await sidecar_client(make_config(str(engine_server.make_url("")).rstrip("/")))
    try:
        body = await get_metrics(client)
    finally:
        await client.close()
        await engine_server.close()
    assert b'airuntime:prompt_tokens_total{engine="0",model_name="tiny"} 1234.0\n' in body
    assert sample_values(body)[("airuntime:engine_up", ())] == 1.0


def test_engine_is_asked_for_gzip_only_across_a_network() -> None:
    from runtime.engine.client import EngineClient

    def engine_headers(api_key: str | None, url: str) -> dict[str, str]:
        return EngineClient(url, api_key, 1.0).scrape_headers

    assert engine_headers(None, "http://127.0.0.1:8000")["Accept-Encoding"] == "identity"
    assert engine_headers(None, "http://localhost:8000")["Accept-Encoding"] == "identity"
    assert engine_headers(None, "http://vllm.default.svc:8000")["Accept-Encoding"] == "gzip"
