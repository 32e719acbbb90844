"""ModelScope downloads through the real processes (the source, or the binary under `make test-binary`): the CLI with
Kthena's downloader environment, and a running sidecar's Kthena and AIBrix download endpoints, all against the
ModelScope emulator (API plus its OSS-like store on another port)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.modelscope_emulator import ModelScopeEmulator
from tests.support import secrets
from tests.support.sidecar import sidecar_process
from tests.unit.test_cli import run_cli

pytestmark = pytest.mark.e2e
MIB = 1024 * 1024
TOKEN = secrets.register("ms-airtE2eToken7Yu9Io1Pa")


def blob(size: int, seed: int) -> bytes:
    import hashlib

    return hashlib.shake_256(b"ms-e2e-%d" % seed).digest(size)


MODEL = {
    "configuration.json": b'{"framework": "pytorch"}',
    "config.json": b'{"model_type": "qwen2"}',
    "tokenizer.json": blob(400_000, 1),
    "model.safetensors": blob(6 * MIB + 3, 2),
}


@pytest.fixture(scope="module")
def ms() -> Iterator[ModelScopeEmulator]:
    with ModelScopeEmulator(storage_host="localhost") as emulator:
        emulator.add_repo("Qwen/tiny", MODEL, token=TOKEN)
        emulator.add_repo("Qwen/tiny", {"config.json": b"{}"}, revision="v2", token=TOKEN)
        yield emulator


def assert_model(target: Path, files: dict[str, bytes] = MODEL) -> None:
    for name, data in files.items():
        assert (target / name).read_bytes() == data, name
    assert not list(target.rglob("*airuntime-partial*"))


def call(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_cli_downloads_with_kthenas_environment(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    env = {"MODELSCOPE_ENDPOINT": ms.endpoint, "MS_TOKEN": TOKEN, "MS_REVISION": "master"}
    args = ["download", "ms://Qwen/tiny", "--local-dir", str(tmp_path / "m"), "--part-size-mib", "2", "-q"]
    result = run_cli(args, env)
    assert result.returncode == 0, result.stderr.decode()
    assert_model(tmp_path / "m")
    again = run_cli(args, env)
    assert again.returncode == 0 and b"0 downloaded" in again.stderr
    kserve = run_cli(
        ["download", "modelscope://Qwen/tiny:v2", "--local-dir", str(tmp_path / "v2"), "-q"],
        {"MODELSCOPE_ENDPOINT": ms.endpoint, "MODELSCOPE_API_TOKEN": TOKEN},
    )
    assert kserve.returncode == 0, kserve.stderr.decode()
    assert (tmp_path / "v2" / "config.json").read_bytes() == b"{}"
    denied = run_cli(
        ["download", "ms://Qwen/tiny", "--local-dir", str(tmp_path / "no")],
        {"MODELSCOPE_ENDPOINT": ms.endpoint, "MS_TOKEN": "ms-airtE2eWrong2Xc4Vb6"},
    )
    assert denied.returncode == 1
    assert denied.stderr.decode().strip().splitlines() == [
        "airuntime: error: ms://Qwen/tiny:master: access denied (HTTP 403); check the token "
        "(The authentication token is invalid, please check it or log in again)"
    ]


def test_sidecar_download_endpoints(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    env = {"MODELSCOPE_API_TOKEN": TOKEN}  # the AIBrix request carries no token: the SDK's variable supplies it
    with sidecar_process(["--models-dir", str(tmp_path / "models")], env) as sidecar:
        config = json.dumps({"ms_endpoint": ms.endpoint, "ms_token": TOKEN})
        status, body = call(
            f"{sidecar.url}/v1/download_model",
            {"source": "ms://Qwen/tiny", "output_dir": "kthena", "config": config, "max_workers": 4},
        )
        assert status == 200, body
        assert_model(tmp_path / "models" / "kthena")
        status, card = call(
            f"{sidecar.url}/v1/model/download",
            {"model_uri": "modelscope://Qwen/tiny", "download_extra_config": {"endpoint": ms.endpoint}},
        )
        assert status == 200 and card["model_name"] == "Qwen/tiny", card
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, listing = call(f"{sidecar.url}/v1/model/list")
            if any(c["model_status"] == "downloaded" and c["model_name"] == "Qwen/tiny" for c in listing["data"]):
                break
            time.sleep(0.2)
        assert_model(tmp_path / "models" / "Qwen" / "tiny")
        status, body = call(
            f"{sidecar.url}/v1/download_model",
            {"source": "ms://Qwen/missing", "output_dir": "x", "config": {"ms_endpoint": ms.endpoint}},
        )
        assert status == 404 and body["error"] == "ms://Qwen/missing:master: repository not found", body
        assert TOKEN not in sidecar.output()  # (the suite-wide leak check reads it too)
