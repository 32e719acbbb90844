"""Downloads from a real S3 server (SeaweedFS `weed mini`, started here on 127.0.0.1) through s3://, tos:// and
obs:// with their provider settings pointed at it, and through a fault-injecting proxy."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.download.service import DownloadRequest, execute, prepare
from runtime.download.transfer import DownloadResult, TransferSettings
from runtime.errors import DownloadError
from tests.peers.fault_proxy import FaultProxy
from tests.peers.seaweedfs import S3Peer, SeaweedNotInstalledError, running_seaweedfs
from tests.unit.test_cli import run_cli

pytestmark = pytest.mark.e2e
MIB = 1024 * 1024


def blob(size: int, seed: int) -> bytes:
    return hashlib.shake_256(b"s3-%d" % seed).digest(size)


MODEL = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
    "model.safetensors": blob(12 * MIB + 5, 1),  # uploaded multipart: ETag md5-N
    "tokenizer.json": blob(300_000, 2),
    "nested/generation_config.json": b"{}",
}


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Peer]:
    try:
        with running_seaweedfs(buckets=("models", "empty-bucket")) as peer:
            peer.put_tree("models", "llama/tiny", MODEL, multipart_over=8 * MIB)
            peer.put_object("models", "single/model.gguf", blob(3 * MIB, 3))
            yield peer
    except SeaweedNotInstalledError as exc:
        pytest.fail(f"{exc} (make peers installs it)")


def config(peer: S3Peer, endpoint: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "access_key": peer.access_key,
        "secret_key": peer.secret_key,
        "endpoint": endpoint or peer.endpoint,
        "region": peer.region,
        "addressing_style": "path",
        **extra,
    }


def download(source: str, target: Path, cfg: dict[str, Any], **settings: Any) -> DownloadResult:
    request = DownloadRequest(source=source, local_dir=target, config=cfg, transfer=TransferSettings(**settings))
    return asyncio.run(execute(prepare(request, env={})))


def assert_model(target: Path) -> None:
    for name, data in MODEL.items():
        assert (target / name).read_bytes() == data, name


@pytest.mark.parametrize("scheme", ["s3", "tos", "obs"])
def test_provider_schemes_download_a_prefix(s3: S3Peer, tmp_path: Path, scheme: str) -> None:
    result = download(f"{scheme}://models/llama/tiny", tmp_path, config(s3), max_workers=4, part_size=4 * MIB)
    assert_model(tmp_path)
    assert result.downloaded == 4 and result.bytes_fetched == sum(map(len, MODEL.values()))


@pytest.mark.parametrize("scheme", ["s3", "tos", "obs"])
def test_a_custom_endpoint_is_addressed_path_style_as_boto3_does(s3: S3Peer, tmp_path: Path, scheme: str) -> None:
    """Kthena's OBS example sends "endpoint": "https://obs.test.com": on-premises and private S3-compatible stores
    (here SeaweedFS on 127.0.0.1) get path-style requests unless the user asks otherwise."""
    cfg = config(s3)
    del cfg["addressing_style"]
    download(f"{scheme}://models/llama/tiny", tmp_path / "ok", cfg, max_workers=4, part_size=4 * MIB)
    assert_model(tmp_path / "ok")
    with pytest.raises(DownloadError) as failure:  # virtual-hosted asked for: BUCKET.127.0.0.1 cannot work
        download(f"{scheme}://models/llama/tiny", tmp_path / "virtual", config(s3, addressing_style="virtual"))
    message = str(failure.value)
    assert f"endpoint {s3.endpoint}, virtual-hosted-style requests" in message, message
    with pytest.raises(DownloadError, match="not found") as failure:
        download(f"{scheme}://models/no/such/prefix", tmp_path / "empty", cfg)
    assert f"endpoint {s3.endpoint}, path-style requests" in str(failure.value)
    with pytest.raises(DownloadError, match="the bucket lists no object") as failure:  # was "0 file(s) but none matches"
        download(f"{scheme}://empty-bucket", tmp_path / "bucket", cfg)
    assert f"endpoint {s3.endpoint}, path-style requests" in str(failure.value) and failure.value.status == 404


def test_single_part_etag_is_checked_as_md5_and_a_rerun_fetches_nothing(s3: S3Peer, tmp_path: Path) -> None:
    download("s3://models/single/model.gguf", tmp_path, config(s3))
    assert (tmp_path / "model.gguf").read_bytes() == blob(3 * MIB, 3)
    manifest = (tmp_path / ".airuntime" / "manifest.json").read_text()
    assert hashlib.md5(blob(3 * MIB, 3)).hexdigest() in manifest
    again = download("s3://models/single/model.gguf", tmp_path, config(s3))
    assert again.downloaded == 0 and again.bytes_fetched == 0


def test_connection_drops_and_5xx_are_retried_to_identical_bytes(s3: S3Peer, tmp_path: Path) -> None:
    with FaultProxy(s3.endpoint) as proxy:
        proxy.add_fault(method="GET", path="/models/llama/tiny/model.safetensors", drop_after_bytes=MIB, times=3)
        proxy.add_fault(method="GET", path="/models/llama/tiny/tokenizer.json", status=503, times=2)
        download(
            "s3://models/llama/tiny", tmp_path, config(s3, endpoint=proxy.url), part_size=4 * MIB, backoff_base=0.01
        )
        dropped = [r for r in proxy.records if r.fault and "safetensors" in r.path]
        assert dropped
    assert_model(tmp_path)


def test_empty_prefix_missing_bucket_wrong_key_and_unreachable_endpoint_fail_clearly(
    s3: S3Peer, tmp_path: Path
) -> None:
    with pytest.raises(DownloadError, match="not found") as failure:
        download("s3://models/no/such/prefix", tmp_path / "a", config(s3))
    assert failure.value.status == 404
    with pytest.raises(DownloadError) as failure:
        download("s3://no-such-bucket/x", tmp_path / "b", config(s3))
    assert failure.value.status in (404, 502)
    with pytest.raises(DownloadError, match="access denied") as failure:
        download("s3://models/llama/tiny", tmp_path / "c", config(s3, secret_key="wrong-secret-value"))
    assert failure.value.status == 403 and "wrong-secret-value" not in str(failure.value)
    from tests.support.sidecar import free_port

    with pytest.raises(DownloadError) as failure:
        download("s3://models/llama/tiny", tmp_path / "d", config(s3, endpoint=f"http://127.0.0.1:{free_port()}"))
    assert failure.value.status == 502
    for name in ("a", "b", "c", "d"):
        assert not [p for p in (tmp_path / name).rglob("*") if p.is_file() and ".airuntime" not in p.parts]


def test_cli_with_kthena_environment_variables(s3: S3Peer, tmp_path: Path) -> None:
    env = {"ACCESS_KEY": s3.access_key, "SECRET_KEY": s3.secret_key, "ENDPOINT": s3.endpoint}
    result = run_cli(
        ["download", "s3://models/llama/tiny", "--local-dir", str(tmp_path), "--config", '{"addressing_style":"path"}'],
        env,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert_model(tmp_path)
    assert s3.secret_key.encode() not in result.stderr
