"""The OpenAPI description (runtime/server/openapi.json): valid, in step with the routes, served at /openapi.json, and
matching what the handlers answer; plus regression tests for what fuzzing it (tests/e2e/test_api_fuzz_e2e.py) found."""

from __future__ import annotations

import json
import tomllib
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient
from schemathesis.core.result import Err, Ok

from runtime.metrics.rules import build_ruleset
from runtime.server.app import create_app
from tests.support.lora_engines import VllmLoraEngine, make_adapter
from tests.support.rewrite import load_spec
from tests.unit.test_server import make_config, sidecar_client

Client = TestClient[web.Request, web.Application]
SPEC = load_spec()
REPO_ROOT = Path(__file__).resolve().parents[2]


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every route; aiohttp's automatic HEAD for each GET is not part of the API description."""
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def spec_routes() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in SPEC["paths"].items() for method in item}


def validator(schema: dict[str, Any]) -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator({"allOf": [schema], "components": SPEC["components"]})


def response_schema(method: str, path: str, status: int) -> tuple[str, dict[str, Any]]:
    """(media type, schema) the spec documents for this answer; fails when the status is not documented."""
    responses = SPEC["paths"][path][method.lower()]["responses"]
    answer = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX")
    assert answer is not None, f"{method} {path}: status {status} is not documented ({sorted(responses)})"
    if "$ref" in answer:
        answer = SPEC["components"]["responses"][answer["$ref"].rsplit("/", 1)[-1]]
    [(media_type, content)] = answer["content"].items()
    return media_type, content["schema"]


async def assert_conforms(response: Any, method: str, path: str) -> Any:
    """The answer's status, content type and body are the ones the spec documents; returns the body."""
    media_type, schema = response_schema(method, path, response.status)
    assert response.headers["Content-Type"].split(";")[0] == media_type.split(";")[0]
    body = await response.json() if media_type == "application/json" else await response.text()
    validator(schema).validate(body)
    return body


@pytest.fixture
async def client(vllm: VllmLoraEngine, tmp_path: Path) -> AsyncIterator[Client]:
    config = make_config(
        vllm.url,
        engine="vllm",
        models_dir=str(tmp_path / "models"),
        adapters_dir=str(tmp_path / "adapters"),
        allowed_roots=(str(tmp_path),),
    )
    client = await sidecar_client(config)
    yield client
    await client.close()


async def post(client: Client, path: str, body: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(path, data=data, headers={"Content-Type": "application/json"})


# -- the document ---------------------------------------------------------------------------------------------------


def test_spec_is_valid_openapi_and_every_operation_loads() -> None:
    schema = schemathesis.openapi.from_dict(SPEC)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    operations = list(schema.get_all_operations())
    errors = [str(result.err()) for result in operations if isinstance(result, Err)]
    assert not errors
    loaded = {(result.ok().method.upper(), result.ok().path) for result in operations if isinstance(result, Ok)}
    assert loaded == spec_routes()


def test_spec_rejects_a_broken_document() -> None:
    """The validity check above can fail: the same loader refuses a document with a wrongly typed field."""
    broken = json.loads(json.dumps(SPEC))
    broken["paths"]["/health"]["get"]["responses"] = "everything is fine"
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(broken).validate()


def test_every_route_is_described_and_every_described_path_is_a_route() -> None:
    app = create_app(make_config("http://127.0.0.1:9"), build_ruleset("vllm"))
    registered = routes_of(app)
    described = spec_routes()
    assert registered - described == set(), "routes missing from runtime/server/openapi.json"
    assert described - registered == set(), "runtime/server/openapi.json describes paths the app does not serve"


def test_request_examples_in_the_spec_match_their_schemas() -> None:
    checked = 0
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if content is None:
                continue
            for name, example in content.get("examples", {}).items():
                assert validator(content["schema"]).is_valid(example["value"]), f"{method} {path} example {name}"
                checked += 1
    assert checked >= 8


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/download_model", {"output_dir": "x"}),  # no source
        ("/v1/download_model", {"source": "pvc:///nonexistent/x", "output_dir": "x", "max_workers": 0}),
        ("/v1/download_model", {"source": "pvc:///nonexistent/x", "output_dir": "x", "config": {"verify_md5": "yes"}}),
        ("/v1/model/download", {"model_uri": "pvc:///nonexistent/x", "download_extra_config": {"bogus": 1}}),
        ("/v1/load_lora_adapter", {"lora_name": "a/b", "lora_path": "/x"}),
        ("/v1/lora_adapter/load", {"lora_name": "a"}),  # no lora_path
    ],
)
def test_request_schemas_reject_what_the_handlers_reject(path: str, body: dict[str, Any]) -> None:
    schema = SPEC["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert not validator(schema).is_valid(body)


def test_spec_ships_in_the_package() -> None:
    assert resources.files("runtime.server").joinpath("openapi.json").is_file()
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "openapi.json" in package_data.get("runtime.server", [])


# -- answers match the document ---------------------------------------------------------------------------------------


async def test_openapi_json_is_served(client: Client) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200 and response.content_type == "application/json"
    assert await response.json() == SPEC


async def test_probes_lists_and_errors_conform(client: Client) -> None:
    for path in ("/health", "/healthz", "/ready", "/readyz", "/v1/downloads", "/v1/lora_adapters", "/v1/model/list"):
        await assert_conforms(await client.get(path), "GET", path)
    metrics = await client.get("/metrics")
    assert "vllm:num_requests_running" in await assert_conforms(metrics, "GET", "/metrics")
    missing = await client.get("/v1/downloads/dl-nope")
    assert missing.status == 404
    await assert_conforms(missing, "GET", "/v1/downloads/{job_id}")
    bad = await post(client, "/v1/download_model", b"[1, 2]")
    assert bad.status == 400
    assert (await assert_conforms(bad, "POST", "/v1/download_model"))["status"] == 400


async def test_lora_load_list_unload_conform(client: Client, vllm: VllmLoraEngine, tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapters" / "chat")
    loaded = await post(client, "/v1/lora_adapter/load", {"lora_name": "chat", "lora_path": str(adapter)})
    assert loaded.status == 200
    assert (await assert_conforms(loaded, "POST", "/v1/lora_adapter/load"))["adapter"]["state"] == "loaded"
    listing = await assert_conforms(await client.get("/v1/lora_adapters"), "GET", "/v1/lora_adapters")
    assert [entry["name"] for entry in listing["data"]] == ["chat"]
    unloaded = await post(client, "/v1/unload_lora_adapter", {"lora_name": "chat"})
    assert unloaded.status == 200
    await assert_conforms(unloaded, "POST", "/v1/unload_lora_adapter")
    again = await post(client, "/v1/unload_lora_adapter", {"lora_name": "chat"})
    assert again.status == 404  # the engine's 404 passes through
    await assert_conforms(again, "POST", "/v1/unload_lora_adapter")
    aibrix = await post(client, "/v1/lora_adapter/unload", {"lora_name": "chat"})
    assert aibrix.status == 200  # AIBrix's unload: already gone is success
    await assert_conforms(aibrix, "POST", "/v1/lora_adapter/unload")


async def test_kthena_download_from_a_volume_conforms(client: Client, tmp_path: Path) -> None:
    source = tmp_path / "volume" / "tiny"
    source.mkdir(parents=True)
    (source / "config.json").write_text("{}")
    done = await post(client, "/v1/download_model", {"source": f"pvc://{source}", "output_dir": "tiny"})
    assert done.status == 200
    body = await assert_conforms(done, "POST", "/v1/download_model")
    assert body["status"] == "completed" and body["job"]["files_total"] == 1
    failed = await post(client, "/v1/download_model", {"source": f"pvc://{tmp_path}/nothing", "output_dir": "n"})
    assert failed.status == 404
    assert (await assert_conforms(failed, "POST", "/v1/download_model"))["status"] == "failed"


async def test_token_refusal_conforms(vllm: VllmLoraEngine, tmp_path: Path) -> None:
    client = await sidecar_client(make_config(vllm.url, api_token="s3cret-token", models_dir=str(tmp_path)))
    try:
        refused = await client.get("/v1/downloads")
        assert refused.status == 401
        await assert_conforms(refused, "GET", "/v1/downloads")
        assert (await client.get("/openapi.json")).status == 200  # the description itself needs no token
    finally:
        await client.close()


# -- regressions found by the fuzzer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/lora_adapter/load", {"lora_name": "a", "lora_path": "/tmp/a\u0000b"}),  # was 500: realpath ValueError
        ("/v1/load_lora_adapter", {"lora_name": "a", "source": "pvc:///tmp/x", "output_dir": "o\u0000"}),
        ("/v1/download_model", {"source": "/tmp/\u0000", "output_dir": "x"}),
        ("/v1/model/download", {"model_uri": "pvc:///nonexistent/x", "local_dir": "a\u0000"}),
        ("/v1/download_model", {"source": "pvc:///nonexistent/x", "output_dir": "x", "nested": [{"k\u0000": 1}]}),
    ],
)
async def test_nul_characters_in_a_body_get_400_not_500(client: Client, path: str, body: dict[str, Any]) -> None:
    response = await post(client, path, body)
    assert response.status == 400
    assert "NUL" in (await assert_conforms(response, "POST", path))["error"]


async def test_escaped_backslash_u0000_is_not_a_nul(client: Client, tmp_path: Path) -> None:
    response = await post(
        client, "/v1/download_model", {"source": "pvc:///nonexistent/x", "output_dir": "x", "config": 5, "n": "\\u0000"}
    )
    assert response.status == 400
    assert "config" in (await response.json())["error"]  # rejected for the config, not for a NUL


async def test_model_list_rejects_nul_in_local_dir(client: Client) -> None:
    response = await client.get("/v1/model/list", params={"local_dir": "/tmp/a\u0000b"})
    assert response.status == 400  # was 500 once allowed roots are set
    await assert_conforms(response, "GET", "/v1/model/list")


async def test_model_list_resolves_a_relative_local_dir_under_models_dir(client: Client, tmp_path: Path) -> None:
    manifest = tmp_path / "models" / "team" / "org" / "m" / ".airuntime" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"source": "hf://org/m"}')
    response = await client.get("/v1/model/list", params={"local_dir": "team"})
    assert response.status == 200  # was 403: resolved against the process's working directory
    body = await assert_conforms(response, "GET", "/v1/model/list")
    assert [card["model_name"] for card in body["data"]] == ["org/m"]


@pytest.mark.parametrize("extra", [False, 0, "", []])
async def test_aibrix_download_extra_config_must_be_an_object(client: Client, extra: Any) -> None:
    response = await post(
        client, "/v1/model/download", {"model_uri": "pvc:///nonexistent/x", "download_extra_config": extra}
    )
    assert response.status == 422  # was 200: a falsy non-object counted as "no extra config"
    await assert_conforms(response, "POST", "/v1/model/download")


async def test_kthena_lora_load_from_a_path_still_validates_config(client: Client, tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapters" / "chat")
    body = {"lora_name": "chat", "lora_path": str(adapter), "config": {"skip_signature": {}}}
    response = await post(client, "/v1/load_lora_adapter", body)
    assert response.status == 400  # was 200: config was only checked when a source was given
    assert "skip_signature" in (await assert_conforms(response, "POST", "/v1/load_lora_adapter"))["error"]
