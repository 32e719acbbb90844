"""ModelScope sources through the sidecar's HTTP API: Kthena's POST /v1/download_model (ms:// with ms_token /
ms_endpoint in a JSON-string config, as Kthena sends it), AIBrix's POST /v1/model/download (modelscope://), and a
LoRA adapter loaded from ms:// into a vLLM stand-in (the real vLLM is in tests/e2e/test_lora_vllm_e2e.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.peers.modelscope_emulator import ModelScopeEmulator
from tests.support.exposition import sample_values
from tests.support.lora_engines import VllmLoraEngine, make_adapter
from tests.unit.test_download_modelscope import MODEL, TOKEN, assert_files
from tests.unit.test_server import make_config, sidecar_client

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def ms() -> Iterator[ModelScopeEmulator]:
    with ModelScopeEmulator() as emulator:
        emulator.add_repo("org/tiny", MODEL)
        emulator.add_repo("org/secret", MODEL, token=TOKEN)
        yield emulator


@pytest.fixture
async def client(vllm: VllmLoraEngine, tmp_path: Path) -> AsyncIterator[Client]:
    config = make_config(
        vllm.url, engine="vllm", models_dir=str(tmp_path / "models"), adapters_dir=str(tmp_path / "adapters")
    )
    client = await sidecar_client(config)
    yield client
    await client.close()


async def post(client: Client, path: str, body: Any) -> tuple[int, Any]:
    response = await client.post(path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return response.status, await response.json()


async def test_kthena_download_with_token_in_a_json_string_config(
    client: Client, ms: ModelScopeEmulator, tmp_path: Path
) -> None:
    config = json.dumps({"ms_endpoint": ms.endpoint, "ms_token": TOKEN, "ms_revision": "master"})
    body = {"source": "ms://org/secret", "output_dir": str(tmp_path / "m"), "config": config}
    status, answer = await post(client, "/v1/download_model", body)
    assert status == 200, answer
    assert answer["source"] == "ms://org/secret" and answer["job"]["files_total"] == len(MODEL)
    assert_files(tmp_path / "m")
    values = sample_values(await (await client.get("/metrics")).read())
    assert values[("airuntime:download_files_total", (("source", "ms"),))] == len(MODEL)
    status, answer = await post(client, "/v1/download_model", {**body, "config": {"ms_endpoint": ms.endpoint}})
    assert status == 404 and "repository not found (or private: set a token)" in answer["error"]
    assert TOKEN not in json.dumps(answer)
    status, answer = await post(client, "/v1/download_model", {**body, "config": {"ms_tokn": "x"}})
    assert status == 400 and "unknown config key(s) ms_tokn" in answer["error"]


async def test_aibrix_download_of_a_kserve_style_uri(client: Client, ms: ModelScopeEmulator, tmp_path: Path) -> None:
    body = {"model_uri": "modelscope://org/tiny:master", "download_extra_config": {"endpoint": ms.endpoint}}
    status, card = await post(client, "/v1/model/download", body)
    assert status == 200, card
    assert card["model_name"] == "org/tiny" and card["source"] == "ms"
    root = tmp_path / "models" / "org" / "tiny"
    for _ in range(200):
        listing = await (await client.get("/v1/model/list")).json()
        if listing["data"] and listing["data"][0]["model_status"] == "downloaded":
            break
        await asyncio.sleep(0.05)
    assert listing["data"][0]["source"] == "ms://org/tiny:master"
    assert_files(root)


async def test_lora_adapter_from_modelscope(
    client: Client, vllm: VllmLoraEngine, ms: ModelScopeEmulator, tmp_path: Path
) -> None:
    files = {p.name: p.read_bytes() for p in make_adapter(tmp_path / "src").iterdir()}
    ms.add_repo("org/lora-ms", files, token=TOKEN)
    request = {
        "lora_name": "ms-lora",
        "source": "ms://org/lora-ms",
        "config": {"ms_endpoint": ms.endpoint, "ms_token": TOKEN},
    }
    status, body = await post(client, "/v1/load_lora_adapter", request)
    assert status == 200, body
    path = tmp_path / "adapters" / "ms-lora"
    assert vllm.adapters == {"ms-lora": str(path)}
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()} == files
    assert TOKEN not in json.dumps(body)
