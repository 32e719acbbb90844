"""The download HTTP API (Kthena's and AIBrix's shapes, and our job endpoints) against the Hub emulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.peers.hub_emulator import HubEmulator
from tests.support.exposition import sample_values
from tests.unit.test_download import MODEL
from tests.unit.test_server import make_config, sidecar_client


@pytest.fixture
def hub() -> Iterator[HubEmulator]:
    with HubEmulator() as emulator:
        emulator.add_repo("org/tiny", MODEL)
        yield emulator


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = await sidecar_client(make_config("http://127.0.0.1:9", models_dir=str(tmp_path / "models")))
    yield client
    await client.close()


async def post(client: TestClient[web.Request, web.Application], path: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(path, data=data, headers={"Content-Type": "application/json"})
    return response.status, await response.json()


@pytest.mark.parametrize("as_string", [False, True], ids=["config-object", "config-json-string"])
async def test_kthena_download_sync(
    client: TestClient[web.Request, web.Application], hub: HubEmulator, tmp_path: Path, as_string: bool
) -> None:
    cfg: Any = {"hf_endpoint": hub.endpoint}
    status, body = await post(
        client,
        "/v1/download_model",
        {"source": "org/tiny", "output_dir": str(tmp_path / "m"), "config": json.dumps(cfg) if as_string else cfg},
    )
    assert status == 200, body
    assert body["status"] == "completed" and body["job"]["files_total"] == 5
    assert (tmp_path / "m" / "config.json").read_bytes() == MODEL["config.json"]


async def test_async_download_reports_progress_and_metrics(
    client: TestClient[web.Request, web.Application], hub: HubEmulator
) -> None:
    status, body = await post(
        client,
        "/v1/download_model",
        {"source": "org/tiny", "output_dir": "tiny", "config": {"hf_endpoint": hub.endpoint}, "async_download": True},
    )
    assert status == 202 and body["status"] == "started"
    job_id = body["job_id"]
    for _ in range(200):
        job = await (await client.get(f"/v1/downloads/{job_id}")).json()
        if job["state"] != "running":
            break
        await asyncio.sleep(0.05)
    assert job["state"] == "completed" and job["bytes_done"] == job["bytes_total"] > 0
    listing = await (await client.get("/v1/downloads")).json()
    assert [entry["id"] for entry in listing["data"]] == [job_id]
    values = sample_values(await (await client.get("/metrics")).read())
    assert values[("airuntime:download_bytes_total", (("source", "hf"),))] == job["bytes_total"]
    assert values[("airuntime:download_files_total", (("source", "hf"),))] == 5
    assert values[("airuntime:downloads_active", ())] == 0


async def test_aibrix_download_and_model_list(
    client: TestClient[web.Request, web.Application], hub: HubEmulator, tmp_path: Path
) -> None:
    status, card = await post(
        client,
        "/v1/model/download",
        {
            "model_uri": "org/tiny",
            "download_extra_config": {"hf_endpoint": hub.endpoint, "allow_file_suffix": ["json"]},
        },
    )
    assert status == 200, card
    assert card["model_name"] == "org/tiny" and card["model_status"] == "downloading"
    assert card["model_root_path"] == str(tmp_path / "models" / "org" / "tiny")
    for _ in range(200):
        listing = await (await client.get("/v1/model/list")).json()
        if listing["data"] and listing["data"][0]["model_status"] == "downloaded":
            break
        await asyncio.sleep(0.05)
    assert listing["object"] == "list"
    assert listing["data"][0]["model_name"] == "org/tiny"
    assert listing["data"][0]["model_status"] == "downloaded"
    assert sorted(p.name for p in Path(card["model_root_path"]).iterdir()) == [".airuntime", "config.json", "tokenizer"]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/download_model", b"", 400, "body is empty"),
        ("/v1/download_model", b"{not json", 400, "not valid JSON"),
        ("/v1/download_model", b"[1]", 400, "must be a JSON object"),
        ("/v1/download_model", {"output_dir": "/tmp/x"}, 400, "missing required field 'source'"),
        ("/v1/download_model", {"source": "org/tiny"}, 400, "missing required field 'output_dir'"),
        ("/v1/download_model", {"source": "org/tiny", "output_dir": "x", "config": "{bad"}, 400, "not JSON"),
        ("/v1/download_model", {"source": "org/tiny", "output_dir": "x", "config": 5}, 400, "must be an object"),
        ("/v1/download_model", {"source": "org/tiny", "output_dir": "x", "config": {"tok": 1}}, 400, "unknown config"),
        ("/v1/download_model", {"source": "org/tiny", "output_dir": "x", "max_workers": 0}, 400, "max_workers"),
        ("/v1/download_model", {"source": "ftp://x/y", "output_dir": "x"}, 400, "unknown scheme"),
        ("/v1/download_model", {"source": 7, "output_dir": "x"}, 400, "must be a string"),
        ("/v1/model/download", {}, 422, "model_uri"),
        ("/v1/model/download", {"model_uri": "org/tiny", "download_extra_config": {"x": 1}}, 422, "unknown"),
        ("/v1/model/download", {"model_uri": "org/tiny", "model_name": "../../etc"}, 422, "relative"),
    ],
)
async def test_bad_bodies_get_4xx_with_a_message(
    client: TestClient[web.Request, web.Application], path: str, body: Any, status: int, message: str
) -> None:
    got_status, got = await post(client, path, body)
    assert got_status == status, got
    assert message in got["error"]


async def test_failed_sync_download_answers_with_the_reason_and_no_secret(
    client: TestClient[web.Request, web.Application], hub: HubEmulator, tmp_path: Path
) -> None:
    status, body = await post(
        client,
        "/v1/download_model",
        {
            "source": "org/missing",
            "output_dir": str(tmp_path / "x"),
            "config": {"hf_endpoint": hub.endpoint, "hf_token": "hf_very_secret"},
        },
    )
    assert status == 404
    assert body["status"] == "failed" and "repository not found" in body["error"]
    assert "hf_very_secret" not in json.dumps(body)
    missing = await client.get("/v1/downloads/nope")
    assert missing.status == 404


async def test_a_second_request_for_the_same_directory_joins_the_running_job(
    client: TestClient[web.Request, web.Application], hub: HubEmulator, tmp_path: Path
) -> None:
    hub.stall_next("/blobs/*", seconds=0.5, method="GET")
    request = {"source": "org/tiny", "output_dir": str(tmp_path / "j"), "config": {"hf_endpoint": hub.endpoint}}
    first, second = await asyncio.gather(
        post(client, "/v1/download_model", request), post(client, "/v1/download_model", request)
    )
    assert first[0] == second[0] == 200
    assert first[1]["job_id"] == second[1]["job_id"] and second[1]["joined"] != first[1]["joined"]
    other = {**request, "source": "org/other"}
    hub.stall_next("/blobs/*", seconds=0.5, method="GET")
    task = asyncio.ensure_future(post(client, "/v1/download_model", {**request, "output_dir": str(tmp_path / "k")}))
    await asyncio.sleep(0.1)
    conflict = await post(client, "/v1/download_model", {**other, "output_dir": str(tmp_path / "k")})
    assert conflict[0] == 409 and "being filled from" in conflict[1]["error"]
    assert (await task)[0] == 200
