"""The sidecar's JSON API fuzzed with schemathesis from its own OpenAPI description (runtime/server/openapi.json).

A live sidecar (in-process, on its own event loop in a thread, bound to 127.0.0.1) runs in front of the vLLM LoRA
stand-in (tests/support/lora_engines.py: LoRA API, /v1/models, /health, /metrics). Every generated request must get:
no 5xx, a status code the spec documents, the documented content type and a body matching the documented schema,
and no Python traceback in the body.

Nothing touches the network or the filesystem outside a temp dir: before each call the test confines the fields that
name paths or sources (`output_dir`, `local_dir`, `lora_path`, `source`, `model_uri`, `artifact_url`, `?local_dir=`) to the temp dir
(a remote source becomes a local one there), points endpoint settings at a closed local port, and the sidecar runs
with that temp dir as its only allowed root. Bounded: a fixed seed, a few dozen examples per operation, per-request
timeouts; well under a minute on 2 shared cores.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from runtime.download.uri import SourceError, parse_source
from runtime.metrics.rules import build_ruleset
from runtime.server.app import create_app
from runtime.server.download_routes import DOWNLOADS
from tests.support.lora_engines import VllmLoraEngine, make_adapter
from tests.support.rewrite import load_spec
from tests.unit.test_server import make_config

pytestmark = pytest.mark.e2e

SEED = 20240607
MAX_EXAMPLES = 150  # per operation; the whole run takes well under a minute on 2 shared cores
REQUEST_TIMEOUT = 30.0
CLOSED_PORT_URL = "http://127.0.0.1:9"  # discard port: nothing listens, connections are refused at once
ENDPOINT_KEYS = ("hf_endpoint", "endpoint")
TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages/")

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "generation": {"max-examples": MAX_EXAMPLES},
        "phases": {"stateful": {"enabled": False}},
        "request-timeout": REQUEST_TIMEOUT,
    }
)
schema = schemathesis.openapi.from_dict(load_spec(), config=CONFIG)


class LiveSidecar:
    """The vLLM stand-in and the sidecar on one event loop in a daemon thread; `url` for blocking clients."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fuzz-sidecar", daemon=True)
        self._engine = VllmLoraEngine()
        self._runner: web.AppRunner | None = None
        self.app: web.Application | None = None

    def _run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        await self._engine.start()
        config = make_config(
            self._engine.url,
            engine="vllm",
            models_dir=str(self.root / "models"),
            adapters_dir=str(self.root / "adapters"),
            allowed_roots=(str(self.root),),
            lora_reconcile_interval=3600.0,
        )
        rules = build_ruleset(config.engine, prefix=config.metrics_prefix, profile=config.metrics_profile)
        self.app = create_app(config, rules)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._engine.close()

    def __enter__(self) -> LiveSidecar:
        self._thread.start()
        self._run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSidecar]:
    root = tmp_path_factory.mktemp("fuzz")
    model = root / "fs" / "models" / "tiny"  # the spec's `pvc://models/tiny` example, confined below
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "tiny"}')
    (model / "model.safetensors").write_bytes(b"\0" * 1024)
    make_adapter(root / "fs" / "adapters" / "chat")  # the spec's `/adapters/chat` example
    with pytest.MonkeyPatch.context() as patch:
        for name in ("HF_ENDPOINT", "AWS_ENDPOINT_URL", "GOOGLE_BASE_URL", "AZURE_STORAGE_ENDPOINT", "ENDPOINT"):
            patch.setenv(name, CLOSED_PORT_URL)
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        with LiveSidecar(root) as live:
            yield live


def confine_path(root: Path, value: str) -> str:
    """A path inside ROOT with the same oddities (unicode, NUL, length); relative paths stay relative."""
    cleaned = value.replace("..", "__")
    if cleaned.startswith("/"):
        return str(root / "fs" / cleaned.lstrip("/"))
    return cleaned


def confine_source(root: Path, value: str) -> str:
    """Malformed sources stay as they are (they must get a 4xx); any valid one becomes a local source in ROOT."""
    try:
        spec = parse_source(value)
    except SourceError:
        return value
    if spec.scheme == "local":
        return "file://" + str(root / "fs" / spec.location.replace("..", "__").lstrip("/"))
    return "file://" + str(root / "fs" / "remote" / spec.describe().replace("..", "__").replace("://", "/"))


def confine_config(value: Any) -> Any:
    if isinstance(value, str):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        return orjson.dumps(confine_config(parsed)).decode() if isinstance(parsed, dict) else value
    if isinstance(value, dict):
        return {
            key: CLOSED_PORT_URL if key in ENDPOINT_KEYS and isinstance(item, str) and item else item
            for key, item in value.items()
        }
    return value


def confine(case: schemathesis.Case[Any], root: Path) -> None:
    """Keep the generated request's shape but make it safe to run: see the module docstring."""
    body = case.body
    if isinstance(body, dict):
        for key in ("output_dir", "local_dir"):
            if isinstance(path := body.get(key), str):
                body[key] = confine_path(root, path)
        if isinstance(path := body.get("lora_path"), str):  # AIBrix's lora_path may also be a source (a repo id)
            body["lora_path"] = confine_path(root, path) if path.startswith("/") else confine_source(root, path)
        for key in ("source", "model_uri", "artifact_url"):
            if isinstance(source := body.get(key), str):
                body[key] = confine_source(root, source)
        for key in ("config", "download_extra_config", "credentials", "additional_config"):
            if key in body:
                body[key] = confine_config(body[key])
    query = case.query
    if isinstance(query, dict) and isinstance(query.get("local_dir"), str):
        query["local_dir"] = confine_path(root, query["local_dir"])


def no_traceback(ctx: Any, response: Any, case: schemathesis.Case[Any]) -> bool:
    """No Python traceback or source location ever leaks into a response body."""
    text = response.content.decode("utf-8", errors="replace") if response.content else ""
    for marker in TRACEBACK_MARKERS:
        if marker in text:
            raise AssertionError(f"the response body contains {marker!r}: {text[:500]}")
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,  # what the spec calls invalid must get a 4xx: the spec says what the server checks
]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_openapi_description(case: schemathesis.Case[Any], sidecar: LiveSidecar) -> None:
    confine(case, sidecar.root)
    case.call_and_validate(
        base_url=sidecar.url, checks=CHECKS, additional_checks=[no_traceback], timeout=REQUEST_TIMEOUT
    )


def test_no_background_work_failed_unexpectedly(sidecar: LiveSidecar) -> None:
    """Downloads and adapter loads the fuzzing started in the background never ended in an unexpected exception."""
    assert sidecar.app is not None
    jobs = sidecar.app[DOWNLOADS].all()
    unexpected = [(job.id, job.error) for job in jobs if job.reason == "other" or job.status == 500]
    assert not unexpected
