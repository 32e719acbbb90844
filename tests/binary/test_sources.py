"""Every download source type through the compiled program, against real servers of each protocol.

The binary imports its download backends lazily (huggingface_hub, obstore, aiohttp's client), and Nuitka only
ships what its import tracing sees: a module reached only by name at run time is missing from the payload and
fails the first download of that kind, never at start. So each source type downloads real bytes here, through the
standalone program (dist/airuntime.dist/airuntime, the same compiled payload the onefile unpacks): HF through the
Hub emulator, s3/tos/obs through SeaweedFS, gs through fake-gcs-server, az through Azurite, https through an
aiohttp file server, pvc:// and file:// from a folder, ms:// through the ModelScope emulator. The peers come from `make peers`; missing ones fail in CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.binary.conftest import peer_missing

MIB = 1024 * 1024
MODEL = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": hashlib.shake_256(b"binary-sources").digest(3 * MIB + 5),
    "nested/tokenizer.json": b'{"version": "1.0"}',
}


def download(program: Path, source: str, target: Path, config: dict[str, Any] | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRUNTIME_", "NUITKA_", "AWS_", "HF_"))}
    env.pop("PYTHONPATH", None)
    env.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(target.parent / "hf-home"), HF_HUB_DISABLE_XET="1")
    cmd = [str(program), "download", source, "--local-dir", str(target), "-q"]
    if config is not None:
        cmd += ["--config", json.dumps(config)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{source}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def assert_model(target: Path, files: dict[str, bytes] = MODEL) -> None:
    for name, data in files.items():
        assert (target / name).read_bytes() == data, name


@pytest.fixture(scope="module")
def program(standalone: Path) -> Path:
    return standalone / "airuntime"


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    from tests.peers.seaweedfs import SeaweedNotInstalledError, running_seaweedfs

    try:
        with running_seaweedfs(buckets=("models",)) as peer:
            peer.put_tree("models", "llama/tiny", MODEL)
            yield peer
    except SeaweedNotInstalledError as exc:
        peer_missing(str(exc))


@pytest.mark.parametrize("scheme", ["s3", "tos", "obs"])
def test_object_store_schemes(program: Path, s3: Any, tmp_path: Path, scheme: str) -> None:
    config = {
        "access_key": s3.access_key,
        "secret_key": s3.secret_key,
        "endpoint": s3.endpoint,
        "region": s3.region,
        "addressing_style": "path",
    }
    download(program, f"{scheme}://models/llama/tiny", tmp_path / "out", config)
    assert_model(tmp_path / "out")


def test_gs(program: Path, tmp_path: Path) -> None:
    from tests.peers.fake_gcs import FakeGcsNotInstalledError, running_fake_gcs

    try:
        with running_fake_gcs(buckets=("models",)) as peer:
            peer.put_tree("models", "llama/tiny", MODEL)
            download(
                program, "gs://models/llama/tiny", tmp_path / "out", {"endpoint": peer.endpoint, "skip_signature": True}
            )
    except FakeGcsNotInstalledError as exc:
        peer_missing(str(exc))
    assert_model(tmp_path / "out")


def test_az(program: Path, tmp_path: Path) -> None:
    from tests.peers.azurite import AzuriteNotInstalledError, running_azurite

    try:
        with running_azurite(containers=("models",)) as peer:
            peer.put_tree("models", "llama/tiny", MODEL)
            config = {"endpoint": peer.endpoint, "account_name": peer.account_name, "access_key": peer.account_key}
            download(program, "az://models/llama/tiny", tmp_path / "out", config)
    except AzuriteNotInstalledError as exc:
        peer_missing(str(exc))
    assert_model(tmp_path / "out")


@pytest.mark.parametrize("scheme", ["hf", "ms"])
def test_model_hubs(program: Path, tmp_path: Path, scheme: str) -> None:
    """HF through the Hub emulator (a bare repo id), ModelScope (ms://) through the ModelScope emulator."""
    from tests.peers.hub_emulator import HubEmulator
    from tests.peers.modelscope_emulator import ModelScopeEmulator

    emulator = HubEmulator() if scheme == "hf" else ModelScopeEmulator()
    with emulator:
        emulator.add_repo("org/tiny", MODEL)
        source = "org/tiny" if scheme == "hf" else "ms://org/tiny"
        download(program, source, tmp_path / "out", {f"{scheme}_endpoint": emulator.endpoint})
    assert_model(tmp_path / "out")


def test_https_file_server(program: Path, tmp_path: Path) -> None:
    from aiohttp import web

    from tests.support.threaded_server import ThreadedServer

    served = tmp_path / "served"
    served.mkdir()
    data = MODEL["model.safetensors"]
    (served / "model.gguf").write_bytes(data)

    class FileServer:
        port = 0

        async def start(self) -> None:
            app = web.Application()
            app.router.add_static("/files", served)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", 0).start()
            self.port = self.runner.addresses[0][1]

        async def stop(self) -> None:
            await self.runner.cleanup()

    with ThreadedServer(FileServer(), "file-server") as server:
        download(program, f"http://127.0.0.1:{server.port}/files/model.gguf", tmp_path / "out")
    assert (tmp_path / "out" / "model.gguf").read_bytes() == data


@pytest.mark.parametrize("scheme", ["pvc", "file"])
def test_local_volume(program: Path, tmp_path: Path, scheme: str) -> None:
    source = tmp_path / "volume"
    for name, data in MODEL.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    download(program, f"{scheme}://{source}", tmp_path / "out")
    assert_model(tmp_path / "out")
