"""Hostile and careless callers against the in-process server: the API token, allowed roots, body and scrape limits,
the access log, and secrets kept out of answers."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.exposition import sample_values
from tests.support.fake_engine import FakeEngine
from tests.support.lora_engines import VllmLoraEngine, make_adapter
from tests.unit.test_server import make_config, sidecar_client

TOKEN = "tok-3f9c1e7a-SECRET"
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def guarded(engine: FakeEngine, tmp_path: Path) -> AsyncIterator[Client]:
    client = await sidecar_client(make_config(engine.url, api_token=TOKEN, models_dir=str(tmp_path)))
    yield client
    await client.close()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def json_of(response: Any) -> dict[str, Any]:
    assert response.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = orjson.loads(await response.read())
    return body


# --- the API token ---


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/download_model"),
        ("POST", "/v1/model/download"),
        ("GET", "/v1/model/list"),
        ("GET", "/v1/downloads"),
        ("GET", "/v1/downloads/dl-1"),
        ("POST", "/v1/load_lora_adapter"),
        ("POST", "/v1/unload_lora_adapter"),
        ("POST", "/v1/lora_adapter/load"),
        ("POST", "/v1/lora_adapter/unload"),
        ("GET", "/v1/lora_adapters"),
        ("GET", "/no/such/path"),
    ],
)
async def test_management_api_needs_the_token(guarded: Client, method: str, path: str) -> None:
    for headers in ({}, bearer("wrong-token-123"), {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        response = await guarded.request(method, path, headers=headers, data=b"{}")
        assert response.status == 401, (path, headers)
        body = await json_of(response)
        assert "API token" in body["error"] and TOKEN not in body["error"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = await guarded.request(method, path, headers=bearer(), data=b"{}")
    assert response.status != 401


async def test_token_scheme_is_case_insensitive_and_value_exact(guarded: Client) -> None:
    assert (await guarded.get("/v1/downloads", headers={"Authorization": f"bearer {TOKEN}"})).status == 200
    assert (await guarded.get("/v1/downloads", headers=bearer(TOKEN + "x"))).status == 401
    assert (await guarded.get("/v1/downloads", headers=bearer(TOKEN[:-1]))).status == 401


async def test_metrics_and_probes_stay_open_without_protect_metrics(guarded: Client) -> None:
    for path in ("/metrics", "/health", "/healthz", "/ready", "/readyz"):
        assert (await guarded.get(path)).status == 200, path


async def test_protect_metrics_guards_metrics_but_not_probes(engine: FakeEngine) -> None:
    client = await sidecar_client(make_config(engine.url, api_token=TOKEN, protect_metrics=True))
    try:
        assert (await client.get("/metrics")).status == 401
        assert (await client.get("/metrics", headers=bearer())).status == 200
        for path in ("/health", "/ready"):
            assert (await client.get(path)).status == 200
    finally:
        await client.close()


async def test_the_api_token_is_never_forwarded_to_the_engine(tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapters" / "sql")
    lora_engine = VllmLoraEngine()
    await lora_engine.start()
    client = await sidecar_client(
        make_config(lora_engine.url, api_token=TOKEN, engine_api_key="engine-key-0042", engine="vllm")
    )
    try:
        response = await client.post(
            "/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": str(adapter)}, headers=bearer()
        )
        assert response.status == 200, await response.text()
        assert (await client.get("/v1/lora_adapters", headers=bearer())).status == 200
    finally:
        await client.close()
        await lora_engine.close()
    auths = {auth for _, _, auth in lora_engine.requests}
    assert auths == {"Bearer engine-key-0042"}


# --- allowed roots ---


@pytest.fixture
async def rooted(engine: FakeEngine, tmp_path: Path) -> AsyncIterator[tuple[Client, Path]]:
    root = tmp_path / "allowed"
    (root / "models").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.bin").write_bytes(b"x" * 10)
    os.symlink(outside, root / "escape")
    client = await sidecar_client(make_config(engine.url, allowed_roots=(str(root),), models_dir=str(root / "models")))
    yield client, root
    await client.close()


async def test_download_targets_outside_the_roots_are_403(rooted: tuple[Client, Path], tmp_path: Path) -> None:
    client, root = rooted
    source = f"pvc://{root / 'models'}"
    for output_dir in (
        str(tmp_path / "outside"),
        "/etc",
        str(root / ".." / "outside"),
        str(root / "escape"),  # a symlink inside the root that points out of it
        str(root / "escape" / "deeper"),
        "../../../../etc",  # relative: resolved against --models-dir first
    ):
        response = await client.post("/v1/download_model", json={"source": source, "output_dir": output_dir})
        assert response.status == 403, output_dir
        assert "outside the allowed roots" in (await json_of(response))["error"]
    assert sorted(path.name for path in (tmp_path / "outside").iterdir()) == ["model.bin"]


async def test_local_sources_outside_the_roots_are_403(rooted: tuple[Client, Path], tmp_path: Path) -> None:
    client, root = rooted
    for source in (f"pvc://{tmp_path / 'outside'}", f"file://{tmp_path / 'outside'}", str(root / "escape")):
        response = await client.post("/v1/download_model", json={"source": source, "output_dir": str(root / "m")})
        assert response.status == 403, source
        assert (await json_of(response))["error"].startswith("source ")
    response = await client.post(
        "/v1/model/download", json={"model_uri": f"pvc://{tmp_path / 'outside'}", "local_dir": str(root)}
    )
    assert response.status == 403


async def test_paths_inside_the_roots_work(rooted: tuple[Client, Path]) -> None:
    client, root = rooted
    src = root / "models" / "src"
    src.mkdir()
    (src / "config.json").write_text('{"a": 1}')
    response = await client.post(
        "/v1/download_model", json={"source": f"pvc://{src}", "output_dir": str(root / "models" / "copy")}
    )
    assert response.status == 200, await response.text()
    assert (root / "models" / "copy" / "config.json").read_text() == '{"a": 1}'
    assert (await client.get("/v1/model/list")).status == 200


async def test_lora_paths_and_model_list_outside_the_roots_are_403(rooted: tuple[Client, Path], tmp_path: Path) -> None:
    client, root = rooted
    response = await client.post("/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": str(tmp_path)})
    assert response.status == 403
    response = await client.post("/v1/lora_adapter/load", json={"lora_name": "a", "lora_path": str(root / "escape")})
    assert response.status == 403
    response = await client.post(
        "/v1/load_lora_adapter",
        json={"lora_name": "a", "source": "s3://bucket/adapter", "output_dir": str(tmp_path / "outside")},
    )
    assert response.status == 403
    response = await client.get("/v1/model/list", params={"local_dir": str(tmp_path)})
    assert response.status == 403


# --- size limits ---


async def test_request_bodies_over_the_limit_are_413(engine: FakeEngine) -> None:
    client = await sidecar_client(make_config(engine.url, max_request_bytes=4096))
    try:
        big = orjson.dumps({"source": "org/repo", "output_dir": "x", "pad": "y" * 10_000})
        response = await client.post("/v1/download_model", data=big, headers={"Content-Type": "application/json"})
        assert response.status == 413
        assert "--max-request-bytes" in (await json_of(response))["error"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
            for _ in range(10):
                yield b" " * 1000

        response = await client.post("/v1/download_model", data=chunks())
        assert response.status == 413
    finally:
        await client.close()


@pytest.mark.parametrize("declare_length", [False, True])
async def test_an_oversized_engine_answer_fails_the_scrape_cleanly(engine: FakeEngine, declare_length: bool) -> None:
    client = await sidecar_client(make_config(engine.url, max_scrape_bytes=2 * 1024 * 1024, scrape_timeout=10.0))
    try:
        engine.set_mode("huge", declare_length=declare_length)
        response = await client.get("/metrics")
        assert response.status == 200
        body = await response.read()
        assert len(body) < 1024 * 1024
        values = sample_values(body)
        assert values[("airuntime:engine_up", ())] == 0
        assert values[("airuntime:scrape_errors_total", (("reason", "too_large"),))] == 1
        engine.set_mode("ok")
        values = sample_values(await (await client.get("/metrics")).read())
        assert values[("airuntime:engine_up", ())] == 1
    finally:
        await client.close()


# --- logs ---


async def test_access_log_has_management_calls_only(guarded: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="airuntime.access")
    for path in ("/metrics", "/health", "/healthz", "/ready", "/readyz"):
        await guarded.get(path)
    assert not [record for record in caplog.records if record.name == "airuntime.access"]
    await guarded.get("/v1/downloads", headers=bearer())
    await guarded.get("/v1/downloads?token=abc", headers=bearer("bad-token-zzz"))
    lines = [record for record in caplog.records if record.name == "airuntime.access"]
    assert [(r.fields["method"], r.fields["path"], r.fields["status"]) for r in lines] == [  # type: ignore[attr-defined]
        ("GET", "/v1/downloads", 200),
        ("GET", "/v1/downloads", 401),
    ]
    assert all("token=abc" not in record.getMessage() for record in lines)


def test_text_log_lines_cannot_be_forged() -> None:
    from runtime.logs import TextFormatter

    record = logging.LogRecord("airuntime.access", logging.INFO, __file__, 1, "%s", ("/v1/x\nFAKE line",), None)
    record.fields = {"path": "/a\r\nb"}
    text = TextFormatter().format(record)
    assert "\n" not in text and "\r" not in text and "\\n" in text


# --- configuration ---


def test_token_settings_are_validated_and_masked(tmp_path: Path) -> None:
    from tests.unit.test_cli import effective_config, run_cli

    config = effective_config(["--api-token", TOKEN, "--allowed-root", str(tmp_path)])
    assert config["api_token"] == "****" and config["allowed_roots"] == [str(tmp_path.resolve())]
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    result = run_cli(["serve", "--api-token-file", str(token_file), "--print-config"])
    assert result.returncode == 0 and TOKEN.encode() not in result.stdout + result.stderr
    assert orjson.loads(result.stdout)["api_token"] == "****"
    env_roots = effective_config([], {"AIRUNTIME_ALLOWED_ROOTS": f"{tmp_path}/a:{tmp_path}/b"})["allowed_roots"]
    assert env_roots == [f"{tmp_path.resolve()}/a", f"{tmp_path.resolve()}/b"]
    for args, message in (
        (["--api-token", "short"], "at least 8 printable characters"),
        (["--api-token", TOKEN, "--api-token-file", str(token_file)], "not both"),
        (["--api-token-file", str(tmp_path / "missing")], "cannot read --api-token-file"),
        (["--protect-metrics"], "--protect-metrics needs --api-token"),
        (["--allowed-root", "relative/dir"], "must be an absolute path"),
        (["--max-request-bytes", "10"], "--max-request-bytes"),
    ):
        result = run_cli(["serve", *args, "--print-config"])
        lines = result.stderr.decode().strip().splitlines()
        assert result.returncode != 0 and len(lines) <= 2 and message in lines[-1], (args, lines)
        assert b"Traceback" not in result.stderr and TOKEN.encode() not in result.stderr


def test_probe_command_for_loopback_only_listeners() -> None:
    from tests.support.sidecar import free_port, sidecar_process
    from tests.unit.test_cli import run_cli

    with sidecar_process(["--engine-url", f"http://127.0.0.1:{free_port()}"]) as sidecar:
        port = sidecar.url.rsplit(":", 1)[1]
        assert run_cli(["probe", "--port", port]).returncode == 0
        not_ready = run_cli(["probe", "/ready", "--port", port])
        assert not_ready.returncode == 1
        assert not_ready.stderr.decode().strip() == f"airuntime: error: http://127.0.0.1:{port}/ready answered HTTP 503"
    refused = run_cli(["probe", "--port", port])
    assert refused.returncode == 1 and len(refused.stderr.decode().strip().splitlines()) == 1
    assert run_cli(["probe", "health", "--port", port]).returncode == 2
