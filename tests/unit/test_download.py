"""Downloads against real servers started by the tests: the HuggingFace Hub emulator (aiohttp, speaking the Hub's
HTTP API as huggingface_hub uses it) and local volumes. Each correctness promise of the downloader is a test here;
S3-protocol stores are in tests/e2e/test_download_s3_e2e.py (SeaweedFS)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.download.layout import safe_relative_path
from runtime.download.service import DownloadRequest, execute, prepare
from runtime.download.transfer import FileFilter, TransferSettings
from runtime.errors import DownloadError
from tests.peers.hub_emulator import HubEmulator
from tests.unit.test_cli import run_cli

MIB = 1024 * 1024


def blob(size: int, seed: int) -> bytes:
    return hashlib.shake_256(b"%d" % seed).digest(size)


MODEL = {
    "config.json": b'{"model_type": "llama"}',
    "tokenizer/tokenizer.json": b'{"version": "1.0"}',
    "model-00001-of-00002.safetensors": blob(3 * MIB + 17, 1),
    "model-00002-of-00002.safetensors": blob(2 * MIB, 2),
    "README.md": b"# tiny\n",
}


@pytest.fixture
def hub() -> Iterator[HubEmulator]:
    with HubEmulator(tree_page_size=2) as emulator:
        emulator.add_repo("org/tiny", MODEL)
        yield emulator


def download(source: str, target: Path, **kwargs: object) -> object:
    request = DownloadRequest(source=source, local_dir=target, **kwargs)  # type: ignore[arg-type]
    return asyncio.run(execute(prepare(request)))


def hf_config(hub: HubEmulator, **extra: str) -> dict[str, str]:
    return {"hf_endpoint": hub.endpoint, **extra}


def assert_model(target: Path, files: dict[str, bytes] = MODEL) -> None:
    for name, data in files.items():
        assert (target / name).read_bytes() == data, name
    leftovers = [p.name for p in target.rglob("*airuntime-partial*")]
    assert not leftovers


def test_huggingface_repo_lands_byte_identical_with_small_parts(hub: HubEmulator, tmp_path: Path) -> None:
    result = download(
        "org/tiny", tmp_path / "m", config=hf_config(hub), transfer=TransferSettings(max_workers=4, part_size=MIB)
    )
    assert_model(tmp_path / "m")
    assert result.downloaded == 5  # type: ignore[attr-defined]
    ranged = [r for r in hub.requests_to("/blobs/*", "GET") if r.range]
    assert len(ranged) >= 6  # the 3 MiB file in 1 MiB parts, and the 2 MiB one


def test_rerun_skips_complete_files_and_force_fetches_again(hub: HubEmulator, tmp_path: Path) -> None:
    download("hf://org/tiny@main", tmp_path, config=hf_config(hub))
    hub.clear_requests()
    result = download("hf://org/tiny@main", tmp_path, config=hf_config(hub))
    assert result.downloaded == 0 and result.skipped == 5  # type: ignore[attr-defined]
    assert not hub.requests_to("/blobs/*", "GET") and not hub.requests_to("/org/tiny/resolve/*", "GET")
    result = download("hf://org/tiny", tmp_path, config=hf_config(hub), transfer=TransferSettings(force=True))
    assert result.downloaded == 5  # type: ignore[attr-defined]


def test_corrupted_same_size_file_is_detected_on_rerun(hub: HubEmulator, tmp_path: Path) -> None:
    download("org/tiny", tmp_path, config=hf_config(hub))
    victim = tmp_path / "model-00002-of-00002.safetensors"
    with open(victim, "r+b") as handle:
        handle.seek(MIB)
        handle.write(b"\x00" * 16)
    small = tmp_path / "config.json"
    small.write_bytes(b'{"model_type": "llamX"}')  # same size, git blob id no longer matches
    result = download("org/tiny", tmp_path, config=hf_config(hub))
    assert result.downloaded == 2  # type: ignore[attr-defined]
    assert_model(tmp_path)


def test_revision_by_branch_and_by_commit(hub: HubEmulator, tmp_path: Path) -> None:
    sha = hub.add_repo("org/tiny", {"config.json": b"{}"}, revision="v2")
    download("org/tiny", tmp_path / "v2", revision="v2", config=hf_config(hub))
    assert sorted(p.name for p in (tmp_path / "v2").iterdir() if p.name != ".airuntime") == ["config.json"]
    download(f"hf://org/tiny@{sha}", tmp_path / "sha", config=hf_config(hub))
    assert (tmp_path / "sha" / "config.json").read_bytes() == b"{}"


def test_allow_and_ignore_filters(hub: HubEmulator, tmp_path: Path) -> None:
    download("org/tiny", tmp_path, config=hf_config(hub), file_filter=FileFilter(allow_suffixes=(".json",)))
    names = sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and ".airuntime" not in p.parts
    )
    assert names == ["config.json", "tokenizer/tokenizer.json"]
    with pytest.raises(DownloadError, match=r"none matches suffixes \.bin") as failure:
        download("org/tiny", tmp_path / "x", config=hf_config(hub), file_filter=FileFilter(allow_suffixes=(".bin",)))
    assert failure.value.reason == "empty"


def test_private_repo_needs_the_token_and_never_shows_it(hub: HubEmulator, tmp_path: Path) -> None:
    hub.add_repo("org/secret", {"weights.safetensors": blob(MIB, 3)}, token="hf_sekrit_token")
    with pytest.raises(DownloadError, match="not found") as failure:
        download("org/secret", tmp_path / "a", config=hf_config(hub))
    assert failure.value.status == 404
    with pytest.raises(DownloadError) as failure:
        download("org/secret", tmp_path / "b", config=hf_config(hub, hf_token="hf_wrong_token"))
    assert "hf_wrong_token" not in str(failure.value)
    download("org/secret", tmp_path / "c", config=hf_config(hub, hf_token="hf_sekrit_token"))
    assert (tmp_path / "c" / "weights.safetensors").read_bytes() == blob(MIB, 3)


@pytest.mark.parametrize(
    ("source", "revision", "message", "status"),
    [
        ("org/missing", None, "repository not found", 404),
        ("org/tiny", "no-such-branch", "revision 'no-such-branch' not found", 404),
    ],
)
def test_missing_repo_or_revision(
    hub: HubEmulator, tmp_path: Path, source: str, revision: str | None, message: str, status: int
) -> None:
    with pytest.raises(DownloadError, match=message) as failure:
        download(source, tmp_path, revision=revision, config=hf_config(hub))
    assert failure.value.status == status
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and ".airuntime" not in p.parts]


def test_unreachable_endpoint_is_an_error_not_an_empty_success(tmp_path: Path) -> None:
    from tests.support.sidecar import free_port

    with pytest.raises(DownloadError, match="cannot reach") as failure:
        download("org/tiny", tmp_path, config={"hf_endpoint": f"http://127.0.0.1:{free_port()}"})
    assert failure.value.reason == "unreachable"


def test_transient_failures_are_retried_and_the_file_ends_identical(hub: HubEmulator, tmp_path: Path) -> None:
    hub.fail_next("/blobs/*", times=2, status=503, method="GET")
    hub.cut_next("/blobs/*", after_bytes=300_000, times=2, method="GET")
    hub.fail_next("/org/tiny/resolve/*/config.json", times=1, status=500, method="GET")
    settings = TransferSettings(max_workers=2, part_size=MIB, backoff_base=0.01)
    download("org/tiny", tmp_path, config=hf_config(hub), transfer=settings)
    assert_model(tmp_path)
    resumed = [r.range for r in hub.requests_to("/blobs/*", "GET") if r.range and not r.range.endswith(("0-", "=0-"))]
    assert resumed  # a cut part went on from where it stopped


def test_a_killed_download_never_leaves_an_incomplete_file_under_its_final_name_and_resumes(
    hub: HubEmulator, tmp_path: Path
) -> None:
    big = blob(24 * MIB, 9)
    hub.add_repo("org/big", {"model.safetensors": big, "config.json": b"{}"})
    hub.stall_next("/blobs/*", seconds=30, after_bytes=512 * 1024, times=2, method="GET")
    target = tmp_path / "big"
    args = ["download", "org/big", "--local-dir", str(target), "--max-workers", "3", "--part-size-mib", "8", "-q"]
    env = {"HF_ENDPOINT": hub.endpoint}
    proc = subprocess.Popen(
        [*__import__("tests.support.sidecar", fromlist=["sidecar_command"]).sidecar_command(), *args],
        env={**os.environ, **env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list(target.glob(".model.safetensors.airuntime-partial-*.json")):
        time.sleep(0.05)
    assert list(target.glob(".model.safetensors.airuntime-partial-*[!n]")), "the download should be under way"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert not (target / "model.safetensors").exists()  # never an incomplete file under the final name
    hub.clear_faults()
    hub.clear_requests()
    result = run_cli(args, env)
    assert result.returncode == 0, result.stderr.decode()
    assert (target / "model.safetensors").read_bytes() == big
    fetched = sum(_range_length(r.range) for r in hub.requests_to("/blobs/*", "GET") if r.range)
    assert fetched < len(big)  # finished parts were not fetched again


def _range_length(header: str | None) -> int:
    assert header is not None
    start, _, end = header.removeprefix("bytes=").partition("-")
    return int(end) - int(start) + 1


def test_two_downloaders_into_one_directory_fetch_the_bytes_once(hub: HubEmulator, tmp_path: Path) -> None:
    hub.stall_next("/blobs/*", seconds=0.5, method="GET")
    args = ["download", "org/tiny", "--local-dir", str(tmp_path), "-q"]
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = __import__("tests.support.sidecar", fromlist=["sidecar_command"]).sidecar_command()
    procs = [subprocess.Popen([*command, *args], env=env, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [proc.communicate(timeout=60)[1].decode() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert_model(tmp_path)
    gets = hub.requests_to("/blobs/*", "GET") + hub.requests_to("/org/tiny/resolve/*", "GET")
    assert len({r.path for r in gets}) == len(gets)  # each file (and each LFS redirect) fetched exactly once
    assert sum("already there" in out and "0 downloaded" in out for out in outputs) == 1


def test_local_volume_copy_with_filter_and_corruption_detection(tmp_path: Path) -> None:
    source = tmp_path / "pvc"
    (source / "sub").mkdir(parents=True)
    (source / "model.safetensors").write_bytes(blob(5 * MIB, 4))
    (source / "config.json").write_bytes(b"{}")
    (source / "sub" / "notes.txt").write_bytes(b"hello")
    download(f"pvc://{source}", tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == blob(5 * MIB, 4)
    assert (tmp_path / "out" / "sub" / "notes.txt").read_bytes() == b"hello"
    copied = tmp_path / "out" / "model.safetensors"
    data = bytearray(copied.read_bytes())
    data[100] ^= 0xFF
    copied.write_bytes(bytes(data))
    result = download(f"file://{source}", tmp_path / "out")
    assert result.downloaded == 1  # type: ignore[attr-defined]
    assert copied.read_bytes() == blob(5 * MIB, 4)
    download(str(source), tmp_path / "json", file_filter=FileFilter(allow_suffixes=(".json",)))
    assert [p.name for p in (tmp_path / "json").iterdir() if p.is_file()] == ["config.json"]


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../b", "a//b", "", ".airuntime/manifest.json"])
def test_object_names_that_would_escape_the_target_are_refused(key: str) -> None:
    with pytest.raises(DownloadError) as failure:
        safe_relative_path(key)
    assert failure.value.status == 400


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("s3://", "expected s3://BUCKET"),
        ("ftp://host/x", "unknown scheme 'ftp'"),
        ("not a repo", "expected a HuggingFace repo id"),
        ("https:///nohost", "expected https://HOST/PATH"),
    ],
)
def test_bad_sources_are_refused_before_any_network(source: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=message) as failure:
        prepare(DownloadRequest(source=source, local_dir=tmp_path))
    assert failure.value.status == 400


def test_cli_exit_codes_and_one_line_errors(hub: HubEmulator, tmp_path: Path) -> None:
    ok = run_cli(["download", "org/tiny", "--local-dir", str(tmp_path / "ok"), "-q"], {"HF_ENDPOINT": hub.endpoint})
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.decode().strip().endswith("s") and "5 file(s) complete" in ok.stderr.decode()
    bad = run_cli(["download", "org/missing", "--local-dir", str(tmp_path / "bad")], {"HF_ENDPOINT": hub.endpoint})
    assert bad.returncode == 1
    assert bad.stderr.decode().strip().splitlines() == [
        "airuntime: error: hf://org/missing@main: repository not found (or private: set a token)"
    ]
    aibrix = run_cli(
        ["download", "--model-uri", "org/tiny", "--local-dir", str(tmp_path / "aibrix"), "--model-name", "tiny"],
        {"HF_ENDPOINT": hub.endpoint, "DOWNLOADER_ALLOW_FILE_SUFFIX": "json"},
    )
    assert aibrix.returncode == 0, aibrix.stderr
    assert (tmp_path / "aibrix" / "tiny" / "config.json").exists()
    assert not (tmp_path / "aibrix" / "tiny" / "README.md").exists()


def test_cli_takes_aibrix_extra_config_as_the_api_does(hub: HubEmulator, tmp_path: Path) -> None:
    """One mapping for the CLI and the API: `num_threads` used to be an unknown config key on the command line."""
    extra = json.dumps({"num_threads": 4, "hf_endpoint": hub.endpoint, "allow_file_suffix": ["json"]})
    result = run_cli(
        ["download", "org/tiny", "--local-dir", str(tmp_path / "m"), "-q", "--download-extra-config", extra]
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "config.json").exists() and not (tmp_path / "m" / "README.md").exists()
    bad = run_cli(
        ["download", "org/tiny", "--local-dir", str(tmp_path / "n"), "--download-extra-config", '{"num_thread": 4}']
    )
    assert bad.returncode == 2
    assert bad.stderr.decode().strip().splitlines() == [
        "airuntime: error: --download-extra-config: unknown download_extra_config key(s): num_thread; known: ak, sk, "
        "endpoint, region, hf_endpoint, hf_token, hf_revision, num_threads, part_chunksize, allow_file_suffix, "
        "force_download, max_io_queue, io_chunksize, part_threshold"
    ]
    too_many = run_cli(["download", "org/tiny", "--local-dir", str(tmp_path / "o")], {"DOWNLOADER_NUM_THREADS": "500"})
    assert too_many.returncode == 2
    assert "DOWNLOADER_NUM_THREADS='500': must be a whole number from 1 to 256" in too_many.stderr.decode()


def test_one_file_over_http_with_ranges_and_a_retry(tmp_path: Path) -> None:
    """A real aiohttp file server (Range support from aiohttp's FileResponse) for the https:// backend."""
    from aiohttp import web

    from tests.support.threaded_server import ThreadedServer

    served = tmp_path / "served"
    served.mkdir()
    (served / "model.gguf").write_bytes(blob(3 * MIB + 1, 11))
    failures = {"left": 1}

    class FileServer:
        port = 0

        async def start(self) -> None:
            async def handler(request: web.Request) -> web.StreamResponse:
                if request.method == "GET" and failures["left"]:
                    failures["left"] -= 1
                    return web.Response(status=503)
                path = served / request.match_info["name"]
                if not path.is_file():
                    return web.Response(status=404)
                return web.FileResponse(path)

            app = web.Application()
            app.router.add_get("/files/{name}", handler)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = self.runner.addresses[0][1]

        async def stop(self) -> None:
            await self.runner.cleanup()

    with ThreadedServer(FileServer(), "file-server") as server:
        url = f"http://127.0.0.1:{server.port}/files/model.gguf"
        settings = TransferSettings(part_size=MIB, backoff_base=0.01)
        result = download(url, tmp_path / "out", transfer=settings)
        assert (tmp_path / "out" / "model.gguf").read_bytes() == blob(3 * MIB + 1, 11)
        assert result.downloaded == 1  # type: ignore[attr-defined]
        with pytest.raises(DownloadError, match="not found") as failure:
            download(f"http://127.0.0.1:{server.port}/files/missing.bin", tmp_path / "none")
        assert failure.value.status == 404


def test_a_file_size_limit_is_a_clean_disk_error(tmp_path: Path) -> None:
    """ftruncate failing (EFBIG under RLIMIT_FSIZE) used to surface as UnboundLocalError: now one disk-error line."""
    import resource

    source = tmp_path / "src"
    source.mkdir()
    (source / "weights.bin").write_bytes(blob(4 * MIB, 5))

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the call
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 * MIB, 1 * MIB))

    command = __import__("tests.support.sidecar", fromlist=["sidecar_command"]).sidecar_command()
    result = subprocess.run(
        [*command, "download", str(source), "--local-dir", str(tmp_path / "dst"), "-q"],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        preexec_fn=limit_file_size,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "weights.bin" in lines[0] and "file too large" in lines[0], lines[0]
    assert "Traceback" not in result.stderr.decode() and "UnboundLocalError" not in result.stderr.decode()
    assert not (tmp_path / "dst" / "weights.bin").exists()


UNLOCKED_DOWNLOAD = """
import sys
from runtime.download import transfer


class NoLock:  # what flock does on a network filesystem where it silently succeeds
    waited = 0.0

    def __init__(self, *args, **kwargs): ...
    async def __aenter__(self): return self
    async def __aexit__(self, *exc): return None


transfer.DirectoryLock = NoLock
from runtime.cli import main

main(sys.argv[1:])
"""


def test_two_writers_on_a_shared_volume_without_a_working_lock_never_corrupt_a_file(
    hub: HubEmulator, tmp_path: Path
) -> None:
    """Two processes download one model into one directory at once, their flock disabled (as on an NFS mount where
    it silently succeeds): each writes its own partial files, waits for the other instead of racing it, and both
    end with every file complete and verified."""
    big = {f"shard-{index}.safetensors": blob(6 * MIB + index, 20 + index) for index in range(3)}
    hub.add_repo("org/shared", {**big, "config.json": b"{}"})
    hub.stall_next("/blobs/*", seconds=0.3, method="GET", times=6)
    args = ["download", "org/shared", "--local-dir", str(tmp_path), "--part-size-mib", "2", "-w", "4", "-q"]
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen([sys.executable, "-c", UNLOCKED_DOWNLOAD, *args], env=env, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=120)[1].decode() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert_model(tmp_path, {**big, "config.json": b"{}"})
    assert not list((tmp_path / ".airuntime" / "runs").iterdir()), "leases left behind"


def test_a_partial_of_a_run_that_is_over_is_taken_over(hub: HubEmulator, tmp_path: Path) -> None:
    """A partial file and its record left by a run that ended (its lease gone) are renamed to the new run's name
    and resumed: only the missing parts are fetched."""
    big = blob(8 * MIB, 31)
    hub.add_repo("org/left", {"model.safetensors": big})
    listing = asyncio.run(_listing(hub, "org/left"))
    (remote,) = listing
    partial = tmp_path / ".model.safetensors.airuntime-partial-0123456789ab"
    with open(partial, "wb") as handle:
        handle.write(big[: 4 * MIB] + bytes(4 * MIB))
    record = {"size": remote.size, "etag": remote.etag, "part_size": 2 * MIB, "done": [0, 1]}
    partial.with_name(partial.name + ".json").write_text(__import__("json").dumps(record))
    hub.clear_requests()
    download("org/left", tmp_path, config=hf_config(hub), transfer=TransferSettings(part_size=2 * MIB))
    assert (tmp_path / "model.safetensors").read_bytes() == big
    fetched = sum(_range_length(r.range) for r in hub.requests_to("/blobs/*", "GET") if r.range)
    assert fetched == 4 * MIB
    assert not list(tmp_path.glob(".model.safetensors.airuntime-partial*"))


async def _listing(hub: HubEmulator, repo: str) -> list[object]:
    from runtime.download.service import open_backend

    backend = open_backend(prepare(DownloadRequest(source=repo, local_dir=Path("/unused"), config=hf_config(hub))))
    try:
        return list(await backend.list_files())
    finally:
        await backend.close()


@pytest.mark.parametrize(
    ("endpoint", "given", "style"),
    [
        (None, None, "virtual"),  # AWS itself
        ("https://s3.us-west-2.amazonaws.com", None, "virtual"),
        ("https://obs.cn-north-4.myhuaweicloud.com", None, "virtual"),
        ("https://tos-s3-cn-beijing.volces.com", None, "virtual"),
        ("https://tos-s3-cn-beijing.ivolces.com", None, "virtual"),
        ("https://obs.test.com", None, "path"),  # Kthena's own OBS example
        ("http://10.0.0.5:9000", None, "path"),
        ("http://minio.storage.svc:9000", None, "path"),
        ("https://obs.test.com", "virtual", "virtual"),  # config addressing_style wins
        ("https://obs.cn-north-4.myhuaweicloud.com", "path", "path"),
        ("https://s3.us-west-2.amazonaws.com#my.dotted.bucket", None, "path"),  # dots break the TLS wildcard
        ("#my.dotted.bucket", None, "path"),
    ],
)
def test_addressing_style_is_virtual_only_for_the_providers_own_domains(
    endpoint: str | None, given: str | None, style: str
) -> None:
    from runtime.download.backends.objects import addressing_style
    from runtime.download.credentials import SourceSettings

    endpoint, _, bucket = (endpoint or "").partition("#")
    assert addressing_style(SourceSettings(addressing_style=given), endpoint or None, bucket) == style
