"""The LoRA lifecycle through the sidecar's API against engine stand-ins (see tests/support/lora_engines.py; the
real vLLM is in tests/e2e/test_lora_vllm_e2e.py) and the Hub emulator for adapter downloads."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from runtime.lora.desired_file import DesiredFileWatcher
from runtime.server.lora_routes import LORA
from tests.peers.hub_emulator import HubEmulator
from tests.support.exposition import sample_values
from tests.support.lora_engines import SglangLoraEngine, VllmLoraEngine, make_adapter
from tests.unit.test_server import make_config, sidecar_client

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(vllm: VllmLoraEngine, tmp_path: Path) -> AsyncIterator[Client]:
    client = await sidecar_client(make_config(vllm.url, engine="vllm", adapters_dir=str(tmp_path / "adapters")))
    yield client
    await client.close()


async def post(client: Client, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(path, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    return response.status, await response.json()


async def adapters(client: Client) -> dict[str, dict[str, Any]]:
    listing = await (await client.get("/v1/lora_adapters")).json()
    return {entry["name"]: entry for entry in listing["data"]}


async def test_aibrix_load_is_idempotent_conflicts_on_another_path_and_unload_is_idempotent(
    client: Client, vllm: VllmLoraEngine, tmp_path: Path
) -> None:
    a = make_adapter(tmp_path / "a")
    status, body = await post(client, "/v1/lora_adapter/load", {"lora_name": "lora-a", "lora_path": str(a)})
    assert status == 200, body
    assert vllm.adapters == {"lora-a": str(a)}
    listed = await adapters(client)
    assert listed["lora-a"]["state"] == "loaded" and listed["lora-a"]["engine_loaded"] is True
    status, body = await post(client, "/v1/lora_adapter/load", {"lora_name": "lora-a", "lora_path": str(a)})
    assert status == 200 and "already loaded" in body["message"]
    assert vllm.loads("lora-a") == 1
    other = make_adapter(tmp_path / "other", seed=1)
    status, body = await post(client, "/v1/lora_adapter/load", {"lora_name": "lora-a", "lora_path": str(other)})
    assert status == 409 and "unload it first or set load_inplace" in body["error"]
    status, body = await post(
        client, "/v1/lora_adapter/load", {"lora_name": "lora-a", "lora_path": str(other), "load_inplace": True}
    )
    assert status == 200 and vllm.adapters == {"lora-a": str(other)}
    status, body = await post(client, "/v1/lora_adapter/unload", {"lora_name": "lora-a"})
    assert status == 200 and vllm.adapters == {}
    status, body = await post(client, "/v1/lora_adapter/unload", {"lora_name": "lora-a"})
    assert status == 200 and body["message"] == "adapter 'lora-a' was not loaded"  # AIBrix's controller needs 200
    status, body = await post(client, "/v1/lora_adapter/unload", {"lora_name": "lora-a", "lora_int_id": 1})
    assert status == 404 and "cannot be found" in body["error"]  # AIBrix's direct form: the engine's 404
    status, body = await post(client, "/v1/unload_lora_adapter", {"lora_name": "lora-a"})
    assert status == 404 and "cannot be found" in body["error"]  # Kthena's: the engine's 404 passes through


async def test_kthena_load_downloads_from_the_hub_once(client: Client, vllm: VllmLoraEngine, tmp_path: Path) -> None:
    files = {p.name: p.read_bytes() for p in make_adapter(tmp_path / "src").iterdir()}
    with HubEmulator() as hub:
        hub.add_repo("org/lora-b", files)
        request = {"lora_name": "lora-b", "source": "org/lora-b", "config": {"hf_endpoint": hub.endpoint}}
        status, body = await post(client, "/v1/load_lora_adapter", request)
        assert status == 200, body
        path = tmp_path / "adapters" / "lora-b"
        assert vllm.adapters == {"lora-b": str(path)}
        assert (path / "adapter_config.json").read_bytes() == files["adapter_config.json"]
        vllm.restart()  # the engine forgets it; the sidecar loads it again from the files it already has
        hub.clear_requests()
        await client.app[LORA].reconcile_once()
        assert vllm.adapters == {"lora-b": str(path)}
        assert not hub.requests_to("/org/lora-b/resolve/*", "GET") and not hub.requests_to("/blobs/*", "GET")


async def test_async_kthena_load_answers_202_then_loads(client: Client, vllm: VllmLoraEngine, tmp_path: Path) -> None:
    a = make_adapter(tmp_path / "a")
    vllm.load_delay = 0.2
    status, body = await post(
        client, "/v1/load_lora_adapter", {"lora_name": "lora-a", "lora_path": str(a), "async_download": True}
    )
    assert status == 202 and body["status"] == "started"
    for _ in range(100):
        if (await adapters(client)).get("lora-a", {}).get("state") == "loaded":
            break
        await asyncio.sleep(0.02)
    assert vllm.adapters == {"lora-a": str(a)}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "missing required field 'lora_name'"),
        ({"lora_name": "../etc", "lora_path": "/tmp"}, 400, "no path characters"),
        ({"lora_name": "a/b", "lora_path": "/tmp"}, 400, "no path characters"),
        ({"lora_name": "x"}, 400, "give 'source'"),
        ({"lora_name": "x", "lora_path": "/does/not/exist"}, 400, "not a directory"),
        ({"lora_name": "x", "source": "ftp://nope/x"}, 400, "unknown scheme"),
        ({"lora_name": "x", "lora_path": "/tmp", "max_workers": "many"}, 400, "max_workers"),
    ],
)
async def test_bad_load_bodies(client: Client, body: dict[str, Any], status: int, message: str) -> None:
    got_status, got = await post(client, "/v1/load_lora_adapter", body)
    assert got_status == status, got
    assert message in got["error"]


async def test_adapter_without_adapter_config_is_refused(client: Client, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    status, body = await post(client, "/v1/lora_adapter/load", {"lora_name": "x", "lora_path": str(tmp_path / "empty")})
    assert status == 400 and "no adapter_config.json" in body["error"]


async def test_unreachable_and_static_engines(tmp_path: Path) -> None:
    a = make_adapter(tmp_path / "a")
    client = await sidecar_client(make_config("http://127.0.0.1:9", engine="vllm"))
    try:
        status, body = await post(client, "/v1/lora_adapter/load", {"lora_name": "a", "lora_path": str(a)})
        assert status == 502 and "engine unreachable" in body["error"]
    finally:
        await client.close()
    for engine, note in (("tgi", "only at launch"), ("llamacpp", "only rescales")):
        client = await sidecar_client(make_config("http://127.0.0.1:9", engine=engine))
        try:
            status, body = await post(client, "/v1/lora_adapter/load", {"lora_name": "a", "lora_path": str(a)})
            assert status == 501 and note in body["error"]
        finally:
            await client.close()


async def test_engine_restart_is_followed_by_a_reload_with_metrics(
    client: Client, vllm: VllmLoraEngine, tmp_path: Path
) -> None:
    for name in ("lora-a", "lora-b"):
        status, _ = await post(
            client, "/v1/lora_adapter/load", {"lora_name": name, "lora_path": str(make_adapter(tmp_path / name))}
        )
        assert status == 200
    vllm.restart()
    assert (await adapters(client))["lora-a"]["engine_loaded"] is False
    await client.app[LORA].reconcile_once()
    assert set(vllm.adapters) == {"lora-a", "lora-b"}
    values = sample_values(await (await client.get("/metrics")).read())
    assert values[("airuntime:lora_operations_total", (("operation", "reload"), ("result", "ok")))] == 2
    assert values[("airuntime:lora_adapters", (("state", "loaded"),))] == 2


async def test_failed_reload_backs_off(client: Client, vllm: VllmLoraEngine, tmp_path: Path) -> None:
    path = make_adapter(tmp_path / "a")
    await post(client, "/v1/lora_adapter/load", {"lora_name": "a", "lora_path": str(path)})
    vllm.restart()
    (path / "adapter_config.json").unlink()
    manager = client.app[LORA]
    await manager.reconcile_once()
    record = manager.record("a")
    assert record is not None and record.state == "failed" and "adapter_config.json" in (record.last_error or "")
    loads = vllm.loads()
    await manager.reconcile_once()  # inside the backoff: no new attempt
    assert vllm.loads() == loads and record.retry_at > time.monotonic()


async def test_same_name_is_serialised_and_different_names_run_in_parallel(
    client: Client, vllm: VllmLoraEngine, tmp_path: Path
) -> None:
    vllm.load_delay = 0.3
    a, b = make_adapter(tmp_path / "a"), make_adapter(tmp_path / "b")
    started = time.perf_counter()
    results = await asyncio.gather(
        post(client, "/v1/lora_adapter/load", {"lora_name": "a", "lora_path": str(a)}),
        post(client, "/v1/lora_adapter/load", {"lora_name": "a", "lora_path": str(a)}),
        post(client, "/v1/lora_adapter/load", {"lora_name": "b", "lora_path": str(b)}),
    )
    elapsed = time.perf_counter() - started
    assert [status for status, _ in results] == [200, 200, 200]
    assert vllm.loads("a") == 1 and vllm.loads("b") == 1
    assert elapsed < 0.55  # b did not wait for a


async def test_authorization_is_forwarded(vllm: VllmLoraEngine, tmp_path: Path) -> None:
    a = make_adapter(tmp_path / "a")
    client = await sidecar_client(make_config(vllm.url, engine="vllm", engine_api_key="sk-engine"))
    try:
        await post(
            client, "/v1/lora_adapter/load", {"lora_name": "a", "lora_path": str(a)}, {"Authorization": "Bearer caller"}
        )
        await post(client, "/v1/lora_adapter/unload", {"lora_name": "a"})
    finally:
        await client.close()
    assert [auth for _, _, auth in vllm.requests] == ["Bearer caller", "Bearer sk-engine"]


async def test_sglang_paths_and_error_messages(tmp_path: Path) -> None:
    engine = SglangLoraEngine()
    await engine.start()
    client = await sidecar_client(make_config(engine.url, engine="sglang"))
    try:
        a = make_adapter(tmp_path / "a")
        status, _ = await post(client, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": str(a)})
        assert status == 200 and engine.adapters == {"a": str(a)}
        assert engine.requests[0][0] == "/load_lora_adapter"  # no /v1, unlike Kthena's call
        engine.adapters["b"] = "/elsewhere"
        status, body = await post(
            client, "/v1/load_lora_adapter", {"lora_name": "b", "lora_path": str(make_adapter(tmp_path / "b"))}
        )
        assert status == 400 and "already loaded" in body["error"]
        status, _ = await post(client, "/v1/unload_lora_adapter", {"lora_name": "a"})
        assert status == 200 and "a" not in engine.adapters
        status, body = await post(client, "/v1/unload_lora_adapter", {"lora_name": "a"})
        assert status == 400 and "is not loaded" in body["error"]
    finally:
        await client.close()
        await engine.close()


@pytest.fixture
def adapters_file(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "adapters.yaml"


async def test_desired_file_loads_unloads_and_survives_a_broken_edit(
    client: Client, vllm: VllmLoraEngine, tmp_path: Path, adapters_file: Path
) -> None:
    a, b = make_adapter(tmp_path / "a"), make_adapter(tmp_path / "b")
    adapters_file.write_text(f"- name: lora-a\n  lora_path: {a}\n- name: lora-b\n  lora_path: {b}\n")
    manager = client.app[LORA]
    watcher = DesiredFileWatcher(str(adapters_file), manager)

    async def settle() -> None:
        await watcher.check()
        for _ in range(100):
            if not any(manager.busy(name) for name in ("lora-a", "lora-b")):
                return
            await asyncio.sleep(0.01)

    await settle()
    assert set(vllm.adapters) == {"lora-a", "lora-b"}
    adapters_file.write_text(f"adapters:\n  - name: lora-a\n    lora_path: {a}\n")
    await settle()
    assert set(vllm.adapters) == {"lora-a"}
    adapters_file.write_text("adapters: [ {name: lora-a, lora_path: ")
    await settle()
    assert watcher.last_error is not None and set(vllm.adapters) == {"lora-a"}
    listed = await adapters(client)
    assert listed["lora-a"]["from_file"] is True


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/v1/lora_adapter/load", {"lora_name": "a", "lora_path": "/x", "lora_pth": "/x"}, "lora_pth"),
        ("/v1/lora_adapter/load", {"lora_name": "a", "artifact_url": ""}, "artifact_url"),
        ("/v1/lora_adapter/load", {"lora_name": "a", "artifact_url": "ftp://x/y"}, "artifact_url"),
        ("/v1/lora_adapter/load", {"lora_name": "a", "artifact_url": "s3://b/p", "credentials": {"k": 1}}, "credentials"),
        ("/v1/lora_adapter/load", {"lora_name": "a", "artifact_url": "s3://b/p", "credentials_secret": "../etc"}, "credentials_secret"),
        ("/v1/lora_adapter/unload", {"lora_name": "a", "lora_int_id": {}}, "lora_int_id"),
        ("/v1/lora_adapter/unload", {"lora_name": "a", "cleanup_local": "yes"}, "cleanup_local"),
        ("/v1/lora_adapter/load", {"lora_name": "a", "lora_path": "/x", "artifact_url": "s3://b/p"}, "not both"),
    ],
)
async def test_aibrix_forms_refuse_bad_fields_naming_them(client: Client, path: str, body: dict[str, Any], named: str) -> None:
    status, answer = await post(client, path, body)
    assert status == 422, answer  # as AIBrix's own models answer
    assert named in answer["error"]


async def test_aibrix_delegated_load_reads_a_mounted_credentials_secret(tmp_path: Path) -> None:
    from runtime.lora.aibrix import artifact_config, artifact_source

    secret = tmp_path / "secrets" / "s3-creds"
    secret.mkdir(parents=True)
    (secret / "aws_access_key_id").write_text("AKIAMOUNTED\n")
    (secret / "aws_secret_access_key").write_text("mounted-secret")
    (secret / "unrelated").write_text("ignored")
    (secret / "..data").mkdir()
    config = artifact_config({"credentials_secret": "s3-creds", "additional_config": {"endpoint": "http://s3:9000"}}, tmp_path / "secrets")
    assert config == {"access_key": "AKIAMOUNTED", "secret_key": "mounted-secret", "endpoint": "http://s3:9000"}
    assert artifact_source("gcs://bucket/lora") == "gs://bucket/lora"
    assert artifact_source("huggingface://org/lora") == "org/lora"


async def test_a_path_the_filesystem_refuses_is_a_400_and_never_stops_the_reconciler(
    client: Client, vllm: VllmLoraEngine, tmp_path: Path
) -> None:
    """A segment over 255 bytes (ENAMETOOLONG) used to be a 500 that left a record stuck in 'loading', on which every
    reconcile round then stopped: the other adapters were never loaded again after an engine restart."""
    good = make_adapter(tmp_path / "good")
    assert (await post(client, "/v1/load_lora_adapter", {"lora_name": "good", "lora_path": str(good)}))[0] == 200
    for path, body in [
        ("/v1/load_lora_adapter", {"lora_name": "bad", "lora_path": "/" + "b" * 300}),
        ("/v1/lora_adapter/load", {"lora_name": "bad2", "lora_path": "c" * 300}),
    ]:
        status, answer = await post(client, path, body)
        assert status == 400, answer
    assert set(await adapters(client)) == {"good"}  # nothing kept for a request that could never succeed
    listing = await client.get("/v1/model/list", params={"local_dir": "/" + "d" * 300})
    assert listing.status == 200 and (await listing.json())["data"] == []
    vllm.restart()  # the engine forgets its adapters
    await client.app[LORA].reconcile_once()
    assert vllm.adapters == {"good": str(good)}
