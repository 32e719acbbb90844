"""ModelScope downloads (`ms://`, `modelscope://`) against the ModelScope emulator (tests/peers/modelscope_emulator.py,
kept honest by its self-test with the official modelscope-hub client): listing past the 3,000-entry cap, revisions,
inline vs redirected files, parallel ranged parts, sha256, resume, auth, errors and where settings come from."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.download.backends.modelscope import ModelScopeBackend, normalize_endpoint
from runtime.download.service import DownloadRequest, execute, prepare
from runtime.download.transfer import DownloadResult, FileFilter, TransferSettings
from runtime.download.uri import parse_source
from runtime.errors import DownloadError
from tests.peers.modelscope_emulator import ModelScopeEmulator
from tests.support import secrets
from tests.support.sidecar import free_port, sidecar_command
from tests.unit.test_cli import run_cli

MIB = 1024 * 1024
TOKEN = secrets.register("ms-airtToken4Fg6Hj8Kl0Zx")
OTHER_TOKEN = secrets.register("ms-airtOtherUser2Wq4Er6")
API_DOWNLOAD = "/api/v1/models/*/repo"


def blob(size: int, seed: int) -> bytes:
    return hashlib.shake_256(b"ms-%d" % seed).digest(size)


MODEL = {
    "configuration.json": b'{"framework": "pytorch", "task": "text-generation"}',
    "config.json": b'{"model_type": "qwen2"}',
    "tokenizer/tokenizer.json": blob(300_000, 1),  # inline (not LFS)
    "model-00001-of-00002.safetensors": blob(3 * MIB + 17, 2),  # LFS: redirected to the store
    "model-00002-of-00002.safetensors": blob(2 * MIB, 3),
    "README.md": b"# tiny\n",
}


@pytest.fixture
def ms() -> Iterator[ModelScopeEmulator]:
    with ModelScopeEmulator() as emulator:
        emulator.add_repo("org/tiny", MODEL)
        yield emulator


def download(source: str, target: Path, env: dict[str, str] | None = None, **kwargs: Any) -> DownloadResult:
    request = DownloadRequest(source=source, local_dir=target, **kwargs)
    return asyncio.run(execute(prepare(request, env=env or {})))


def cfg(ms: ModelScopeEmulator, **extra: str) -> dict[str, str]:
    return {"ms_endpoint": ms.endpoint, **extra}


def assert_files(target: Path, files: dict[str, bytes] = MODEL) -> None:
    for name, data in files.items():
        assert (target / name).read_bytes() == data, name
    on_disk = {
        p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file() and ".airuntime" not in p.parts
    }
    assert on_disk == set(files)  # nothing else: no partial files, no directories' entries as files


def test_model_lands_identical_lfs_in_parallel_parts_inline_files_in_one_stream(
    ms: ModelScopeEmulator, tmp_path: Path
) -> None:
    result = download("ms://org/tiny", tmp_path, config=cfg(ms), transfer=TransferSettings(part_size=MIB))
    assert_files(tmp_path)
    assert result.downloaded == len(MODEL)
    big = ms.file("org/tiny", "model-00001-of-00002.safetensors")
    parts = ms.requests_to("/modelhub/*", "GET", server="storage", file=big.path)
    assert sorted(r.range for r in parts if r.range) == sorted(
        f"bytes={start}-{min(start + MIB, big.size) - 1}" for start in range(0, big.size, MIB)
    )
    assert all(r.status == 206 for r in parts)
    assert [r.status for r in ms.requests_to(API_DOWNLOAD, file=big.path)] == [302]  # resolved once per file
    inline = ms.requests_to(API_DOWNLOAD, file="tokenizer/tokenizer.json")
    assert [(r.status, r.range) for r in inline] == [(200, "bytes=0-299999")]  # one stream, never split
    listing = ms.requests_to("/api/v1/models/org/tiny/repo/files")
    assert [(r.query["Revision"], r.query["Recursive"]) for r in listing] == [("master", "True")]


def test_rerun_fetches_nothing_and_a_corrupted_file_is_fetched_again(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    download("modelscope://org/tiny", tmp_path, config=cfg(ms))
    ms.clear_requests()
    again = download("ms://org/tiny", tmp_path, config=cfg(ms))
    assert again.downloaded == 0 and again.skipped == len(MODEL)
    assert not ms.requests_to(API_DOWNLOAD) and not ms.requests_to("/modelhub/*")
    victim = tmp_path / "model-00002-of-00002.safetensors"
    with open(victim, "r+b") as handle:
        handle.seek(MIB)
        handle.write(b"\x00" * 8)
    fixed = download("ms://org/tiny", tmp_path, config=cfg(ms))
    assert fixed.downloaded == 1
    assert_files(tmp_path)


def test_listing_past_the_3000_entry_cap_walks_subtrees(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    files = {"top.json": b"{}"}
    files.update({f"a/{i:04d}.txt": b"a%d" % i for i in range(1200)})
    files.update({f"big/s1/{i:04d}.txt": b"b%d" % i for i in range(1600)})
    files.update({f"big/s2/deep/{i:04d}.txt": b"c%d" % i for i in range(1500)})
    ms.add_repo("org/many", files)
    spec = parse_source("ms://org/many")
    backend = ModelScopeBackend(spec, prepare(DownloadRequest("ms://org/many", tmp_path, config=cfg(ms))).settings)
    try:
        listed = asyncio.run(_list(backend))
    finally:
        asyncio.run(backend.close())
    assert sorted(f.path for f in listed) == sorted(files)
    roots = [(r.query.get("Root"), r.query["Recursive"]) for r in ms.requests_to("/api/v1/models/org/many/repo/files")]
    assert roots[:2] == [(None, "True"), (None, "False")]  # the cut listing, then the top level one level deep
    assert sorted(roots[2:]) == sorted(
        [("a", "True"), ("big", "True"), ("big", "False"), ("big/s1", "True"), ("big/s2", "True")]
    )
    picked = FileFilter(allow_patterns=("top.json", "big/s2/deep/149*"))
    result = download("ms://org/many", tmp_path / "out", config=cfg(ms), file_filter=picked)
    assert result.downloaded == 11
    assert (tmp_path / "out" / "big/s2/deep/1499.txt").read_bytes() == b"c1499"


async def _list(backend: ModelScopeBackend) -> list[Any]:
    return await backend.list_files()


def test_a_directory_with_3000_direct_entries_is_an_error_not_a_partial_download(
    ms: ModelScopeEmulator, tmp_path: Path
) -> None:
    ms.add_repo("org/flat", {f"flat/{i:04d}.txt": b"x" for i in range(3000)})
    with pytest.raises(DownloadError, match=r"directory 'flat' holds 3000 or more entries") as failure:
        download("ms://org/flat", tmp_path, config=cfg(ms))
    assert failure.value.reason == "listing_cap"
    assert not list(tmp_path.rglob("*.txt"))


def test_revisions_branch_tag_commit_and_where_the_revision_comes_from(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    commits = {name: ms.add_repo("org/tiny", {"rev.txt": name.encode()}, revision=name) for name in ("v1", "v2", "v3")}
    ms.add_repo("org/tiny", {"rev.txt": b"tag"}, revision="release", tag=True)

    def fetched(name: str, source: str, env: dict[str, str] | None = None, **kwargs: Any) -> bytes:
        download(source, tmp_path / name, env=env, **kwargs)
        return (tmp_path / name / "rev.txt").read_bytes()

    assert fetched("inline", "modelscope://org/tiny:v1", config=cfg(ms)) == b"v1"
    assert fetched("tag", "ms://org/tiny:release", config=cfg(ms)) == b"tag"
    assert fetched("commit", f"ms://org/tiny:{commits['v2']}", config=cfg(ms)) == b"v2"
    # request revision > the URI's > config ms_revision > MS_REVISION > master
    env = {"MS_REVISION": "v3"}
    assert fetched("env", "ms://org/tiny", env, config=cfg(ms)) == b"v3"
    assert fetched("config", "ms://org/tiny", env, config=cfg(ms, ms_revision="v2")) == b"v2"
    assert fetched("uri", "ms://org/tiny:v1", env, config=cfg(ms, ms_revision="v2")) == b"v1"
    assert fetched("request", "ms://org/tiny:v1", env, config=cfg(ms), revision="v2") == b"v2"
    with pytest.raises(DownloadError, match=r"^ms://org/tiny:nope: revision 'nope' not found$") as failure:
        download("ms://org/tiny:nope", tmp_path / "missing", config=cfg(ms))
    assert failure.value.status == 404


def test_sha256_mismatch_is_fetched_again_then_reported(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    ms.corrupt_next("/modelhub/*", file="model-00002-of-00002.safetensors")
    ms.corrupt_next(API_DOWNLOAD, file="config.json")
    download("ms://org/tiny", tmp_path / "once", config=cfg(ms))
    assert_files(tmp_path / "once")
    ms.corrupt_next(API_DOWNLOAD, file="config.json", times=2)
    with pytest.raises(DownloadError, match=r"config\.json: sha256 [0-9a-f]{64} on disk, [0-9a-f]{64} at the source"):
        download("ms://org/tiny", tmp_path / "twice", config=cfg(ms), file_filter=FileFilter(allow_patterns=("c*",)))
    assert not (tmp_path / "twice" / "config.json").exists()


def test_cuts_5xx_and_an_expired_presigned_url_are_retried_to_identical_bytes(
    ms: ModelScopeEmulator, tmp_path: Path
) -> None:
    ms.fail_next("/api/v1/models/org/tiny/repo/files", times=2, status=503)
    ms.fail_next(API_DOWNLOAD, file="config.json", status=500)
    ms.fail_next("/modelhub/*", status=503, retry_after=0, server="storage")
    ms.cut_next("/modelhub/*", after_bytes=300_000, times=2, file="model-00001-of-00002.safetensors")
    ms.cut_next(API_DOWNLOAD, after_bytes=1000, file="tokenizer/tokenizer.json")
    ms.expire_next(API_DOWNLOAD, file="model-00002-of-00002.safetensors")
    settings = TransferSettings(max_workers=4, part_size=MIB, backoff_base=0.01)
    download("ms://org/tiny", tmp_path, config=cfg(ms), transfer=settings)
    assert_files(tmp_path)
    starts = [int(start) for start, _ in _ranges(ms, "model-00001-of-00002.safetensors")]
    assert any(start % MIB for start in starts), starts  # a cut part went on from the byte where it stopped
    second = "model-00002-of-00002.safetensors"
    assert [r.status for r in ms.requests_to(API_DOWNLOAD, file=second)] == [302, 302]  # asked again once expired
    assert 403 in [r.status for r in ms.requests_to("/modelhub/*", file=second)]
    assert [r.status for r in ms.requests_to(API_DOWNLOAD, file="tokenizer/tokenizer.json")] == [None, 200]


def test_tokens_go_to_modelscope_as_cookie_and_bearer_never_to_the_store(tmp_path: Path) -> None:
    with ModelScopeEmulator(accept_bearer=False, storage_host="localhost") as ms:  # the legacy API: cookie only
        ms.add_repo("org/secret", MODEL, token=TOKEN)
        download("ms://org/secret", tmp_path, config=cfg(ms, ms_token=TOKEN))
        assert_files(tmp_path)
        api = [r for r in ms.requests if r.server == "api"]
        assert api and all(r.cookie == TOKEN and r.authorization == f"Bearer {TOKEN}" for r in api)
        store = [r for r in ms.requests if r.server == "storage"]
        assert store and all(r.cookie is None and r.authorization is None for r in store)


def test_private_repo_errors_are_one_line_and_never_show_the_token(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    ms.add_repo("org/secret", MODEL, token=TOKEN)
    ms.add_repo("org/other", {"a.txt": b"a"}, token=OTHER_TOKEN)
    cases = [
        ({}, 404, "ms://org/secret:master: repository not found (or private: set a token)"),
        ({"ms_token": OTHER_TOKEN}, 404, "ms://org/secret:master: repository not found"),
        (
            {"ms_token": "ms-airtNobodysToken"},
            403,
            "ms://org/secret:master: access denied (HTTP 403); check the token "
            "(The authentication token is invalid, please check it or log in again)",
        ),
    ]
    secrets.register("ms-airtNobodysToken")
    for extra, status, message in cases:
        with pytest.raises(DownloadError) as failure:
            download("ms://org/secret", tmp_path / "x", config=cfg(ms, **extra))
        assert (failure.value.status, str(failure.value)) == (status, message)
    with pytest.raises(DownloadError, match=r"^ms://org/missing:master: repository not found \(or private"):
        download("ms://org/missing", tmp_path / "y", config=cfg(ms))
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and ".airuntime" not in p.parts]


def test_where_token_and_endpoint_come_from(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    """config > MS_TOKEN > MODELSCOPE_API_TOKEN; config ms_endpoint > config endpoint > MODELSCOPE_ENDPOINT >
    MODELSCOPE_DOMAIN > https://www.modelscope.cn."""
    ms.add_repo("org/secret", {"a.txt": b"a"}, token=TOKEN)
    dead = f"http://127.0.0.1:{free_port()}"
    wrong = "ms-airtNobodysToken"
    secrets.register(wrong)
    ok = [
        ({"MS_TOKEN": TOKEN, "MODELSCOPE_API_TOKEN": wrong, "MODELSCOPE_ENDPOINT": ms.endpoint}, {}),
        ({"MODELSCOPE_API_TOKEN": TOKEN, "MODELSCOPE_ENDPOINT": ms.endpoint, "MODELSCOPE_DOMAIN": dead}, {}),
        ({"MS_TOKEN": wrong, "MODELSCOPE_DOMAIN": ms.endpoint}, {"ms_token": TOKEN}),
        ({"MS_TOKEN": TOKEN, "MODELSCOPE_ENDPOINT": dead}, {"endpoint": ms.endpoint}),
        ({"MS_TOKEN": TOKEN}, {"endpoint": dead, "ms_endpoint": ms.endpoint}),
    ]
    for index, (env, config) in enumerate(ok):
        download("ms://org/secret", tmp_path / str(index), env, config=config)
        assert (tmp_path / str(index) / "a.txt").read_bytes() == b"a", (env, config)
    with pytest.raises(DownloadError, match="access denied"):
        download("ms://org/secret", tmp_path / "w", {"MS_TOKEN": wrong, "MODELSCOPE_API_TOKEN": TOKEN}, config=cfg(ms))
    with pytest.raises(DownloadError, match="cannot reach") as failure:
        download("ms://org/secret", tmp_path / "d", {"MODELSCOPE_ENDPOINT": ms.endpoint}, config={"endpoint": dead})
    assert failure.value.reason == "unreachable"
    assert normalize_endpoint("www.modelscope.ai") == "https://www.modelscope.ai"  # MODELSCOPE_DOMAIN is a host
    assert normalize_endpoint(" HTTPS://modelscope.cn/ ") == "HTTPS://modelscope.cn"
    settings = prepare(DownloadRequest("ms://a/b", tmp_path), env={}).settings
    assert ModelScopeBackend(parse_source("ms://a/b"), settings).describe() == "ms://a/b:master"


def test_a_server_that_ignores_range_for_lfs_files_still_gives_identical_bytes(tmp_path: Path) -> None:
    with ModelScopeEmulator(inline_lfs=True) as ms:
        ms.add_repo("org/tiny", MODEL)
        download("ms://org/tiny", tmp_path, config=cfg(ms), transfer=TransferSettings(part_size=MIB))
        assert_files(tmp_path)
        parts = ms.requests_to(API_DOWNLOAD, "GET", file="model-00001-of-00002.safetensors")
        assert (
            len(parts) == 4 and {r.chosen for r in parts} == {200}
        )  # each part skipped to its own bytes (`chosen`: the client may hang up before the rest of the body is written, so `status` can still be unset)


def test_missing_file_and_a_server_that_keeps_failing_are_one_line_errors(
    ms: ModelScopeEmulator, tmp_path: Path
) -> None:
    ms.fail_next(API_DOWNLOAD, file="config.json", status=404)
    with pytest.raises(DownloadError) as failure:
        download("ms://org/tiny", tmp_path / "a", config=cfg(ms))
    assert str(failure.value) == "ms://org/tiny:master/config.json: not found at that revision (HTTP 404)"
    assert failure.value.status == 404
    ms.fail_next("/api/v1/models/org/tiny/repo/files", times=10, status=503)
    with pytest.raises(DownloadError) as failure:
        download("ms://org/tiny", tmp_path / "b", config=cfg(ms))
    assert str(failure.value) == "ms://org/tiny:master: ModelScope answered HTTP 503 Service Unavailable"
    listings = [r.status for r in ms.requests_to("/api/v1/models/org/tiny/repo/files")]
    assert listings == [200, 503, 503, 503, 503]  # the first download's, then 4 tries and giving up


def test_inline_file_larger_than_a_part_is_one_get(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    files = {"vocab.txt": blob(3 * MIB + 1, 7), "weights.bin": blob(3 * MIB + 1, 8)}
    ms.add_repo("org/inline", files, lfs_threshold=10 * MIB, lfs_patterns=())
    download("ms://org/inline", tmp_path, config=cfg(ms), transfer=TransferSettings(part_size=MIB))
    assert_files(tmp_path, files)
    assert len(ms.requests_to(API_DOWNLOAD, "GET")) == 2 and not ms.requests_to("/modelhub/*")


def test_sizes_the_listing_does_not_give_are_asked_of_the_source(tmp_path: Path) -> None:
    with ModelScopeEmulator(unknown_sizes=True) as ms:
        ms.add_repo("org/tiny", {**MODEL, "empty.txt": b""})
        download("ms://org/tiny", tmp_path, config=cfg(ms), transfer=TransferSettings(part_size=MIB))
        assert_files(tmp_path, {**MODEL, "empty.txt": b""})
        big = "model-00001-of-00002.safetensors"
        ranges = [r.range for r in ms.requests_to("/modelhub/*", "GET", file=big)]
        assert ranges.count("bytes=0-0") == 1 and len(ranges) == 5  # the size probe, then 4 parts
        assert [r.status for r in ms.requests_to(API_DOWNLOAD, file=big)] == [302]  # the probe's redirect is reused


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("ms://", "expected a ModelScope model id"),
        ("modelscope://onlyname", "expected a ModelScope model id"),
        ("ms://a/b/c", "expected a ModelScope model id"),
    ],
)
def test_bad_modelscope_sources_are_refused_before_any_network(source: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=message) as failure:
        prepare(DownloadRequest(source=source, local_dir=tmp_path))
    assert failure.value.status == 400


def test_cli_with_kthena_variables_and_one_line_errors(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    ms.add_repo("org/secret", MODEL, token=TOKEN)
    env = {"MODELSCOPE_ENDPOINT": ms.endpoint, "MS_TOKEN": TOKEN, "MS_REVISION": "master"}
    ok = run_cli(["download", "ms://org/secret", "--local-dir", str(tmp_path / "ok"), "-q"], env)
    assert ok.returncode == 0, ok.stderr.decode()
    assert f"{len(MODEL)} file(s) complete" in ok.stderr.decode()
    assert_files(tmp_path / "ok")
    bad = run_cli(["download", "ms://org/secret", "--local-dir", str(tmp_path / "bad")], {**env, "MS_TOKEN": ""})
    assert bad.returncode == 1
    assert bad.stderr.decode().strip().splitlines() == [
        "airuntime: error: ms://org/secret:master: repository not found (or private: set a token)"
    ]
    assert TOKEN.encode() not in ok.stderr + ok.stdout + bad.stderr + bad.stdout


def test_a_killed_download_resumes_its_finished_parts(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    big = blob(24 * MIB, 9)
    ms.add_repo("org/big", {"model.safetensors": big, "config.json": b"{}"})
    ms.stall_next("/modelhub/*", seconds=30, after_bytes=512 * 1024, times=2)
    target = tmp_path / "big"
    args = ["download", "ms://org/big", "--local-dir", str(target), "--max-workers", "3", "--part-size-mib", "8", "-q"]
    env = {**os.environ, "MODELSCOPE_ENDPOINT": ms.endpoint, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([*sidecar_command(), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list(target.glob(".model.safetensors.airuntime-partial-*.json")):
        time.sleep(0.05)
    assert list(target.glob(".model.safetensors.airuntime-partial-*.json")), "a part done while two are stalled"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert not (target / "model.safetensors").exists()
    ms.clear_faults()
    ms.clear_requests()
    result = run_cli(args, {"MODELSCOPE_ENDPOINT": ms.endpoint})
    assert result.returncode == 0, result.stderr.decode()
    assert (target / "model.safetensors").read_bytes() == big
    fetched = sum(int(end) - int(start) + 1 for start, end in _ranges(ms))
    assert fetched < len(big)  # the finished part was not fetched again


def _ranges(ms: ModelScopeEmulator, file: str | None = None) -> list[tuple[str, str]]:
    ranges = [r.range for r in ms.requests_to("/modelhub/*", "GET", file=file) if r.range]
    return [(start, end) for start, _, end in (text.removeprefix("bytes=").partition("-") for text in ranges)]
