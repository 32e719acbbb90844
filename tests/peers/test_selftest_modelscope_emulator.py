"""Self-test of the ModelScope emulator against the official light client, `modelscope-hub` (0.5.1 when written;
pinned in requirements-dev.lock): if the emulator drifts from what the real client expects, this fails.

It carries the `e2e` marker, so `make test-e2e` (and CI) runs it; alone::

    .venv/bin/pytest -m e2e tests/peers/test_selftest_modelscope_emulator.py -v -s

`modelscope_hub` runs in this process, pointed at the emulator with ``HubApi(endpoint=...)``; its import-time tunables
(parallel range download is off by default: ``MODELSCOPE_DOWNLOAD_PARALLEL_WORKERS=1``) are patched on
`modelscope_hub._download`. One test runs KServe's call, `modelscope_hub.compat.snapshot_download`, in a subprocess
with ``MODELSCOPE_ENDPOINT`` and ``MODELSCOPE_API_TOKEN`` set, as a separate process would.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.peers.modelscope_emulator import ModelScopeEmulator, RequestRecord  # noqa: E402

pytest.importorskip("modelscope_hub")
import modelscope_hub._download as hub_download  # noqa: E402
from modelscope_hub import HubApi  # noqa: E402
from modelscope_hub.errors import (  # noqa: E402
    FileDownloadError,
    FileIntegrityError,
    NotExistError,
    PermissionDeniedError,
)

pytestmark = pytest.mark.e2e

REPO = "org/tiny"
MIB = 1024 * 1024
TOKEN = "ms-selftest-token-1234"


def blob(size: int, seed: int) -> bytes:
    return hashlib.shake_256(b"selftest-%d" % seed).digest(size)


FILES = {
    "configuration.json": b'{"framework": "pytorch"}',
    "config.json": b'{"model_type": "qwen2"}',
    "sub/dir/notes.txt": b"nested\n",
    "model.safetensors": blob(3 * MIB + 123, 1),
    "tokenizer.json": blob(2 * MIB + 7, 2),  # above 1 MiB: LFS
}


@pytest.fixture
def ms() -> Iterator[ModelScopeEmulator]:
    with ModelScopeEmulator() as emulator:
        emulator.add_repo(REPO, FILES)
        yield emulator


@pytest.fixture(autouse=True)
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_download, "DOWNLOAD_INTEGRITY_RETRY_BACKOFF", 0.01, raising=False)


def _show(title: str, records: list[RequestRecord]) -> list[str]:
    lines = [
        f"{r.server} {r.method} {r.path[:60]}{' ' + r.file if r.server == 'api' and r.file else ''}"
        f"{' [' + r.range + ']' if r.range else ''} -> {r.status}"
        for r in records
    ]
    print(f"\n== {title}")
    for line in lines:
        print("  ", line)
    return lines


def _same(target: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (target / name).read_bytes() == data, name


def test_download_repo_inline_and_redirected(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    HubApi(endpoint=ms.endpoint).download_repo(REPO, "model", local_dir=tmp_path)
    _same(tmp_path, FILES)
    lines = _show("download_repo", ms.requests)
    assert lines[0] == "api GET /api/v1/models/org/tiny/repo/files -> 200"
    for name in FILES:
        statuses = [r.status for r in ms.requests_to("/api/v1/models/org/tiny/repo", "GET", file=name)]
        assert statuses == ([302] if ms.file(REPO, name).is_lfs else [200]), name
    store = [r for r in ms.requests if r.server == "storage"]
    assert sorted(r.file or "" for r in store) == ["model.safetensors", "tokenizer.json"]
    assert all(r.status == 200 and r.authorization is None for r in store)  # requests drops it on a new port


def test_listing_cap_is_walked_by_the_official_client(ms: ModelScopeEmulator) -> None:
    files = {f"a/{i:04d}.txt": b"a" for i in range(1800)} | {f"b/c/{i:04d}.txt": b"b" for i in range(1800)}
    ms.add_repo("org/many", files)
    listed = HubApi(endpoint=ms.endpoint).list_repo_files("org/many", "model")
    blobs = sorted(f.path for f in listed if f.type == "blob")
    assert blobs == sorted(files)
    roots = [(r.query.get("Root"), r.query["Recursive"]) for r in ms.requests_to("/api/v1/models/org/many/repo/files")]
    print("\nlisting requests:", roots)
    assert roots[0] == (None, "True") and (None, "False") in roots and ("b", "True") in roots


def test_revisions_and_missing_things(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    ms.add_repo(REPO, {"v.txt": b"1"}, revision="v1.0", tag=True)
    ms.add_repo(REPO, {"v.txt": b"dev"}, revision="dev")
    api = HubApi(endpoint=ms.endpoint)
    revisions = api.list_repo_revisions(REPO, "model")
    assert sorted(r["Revision"] for r in revisions) == ["dev", "master", "v1.0"]
    api.download_repo(REPO, "model", revision="v1.0", local_dir=tmp_path / "tag")
    assert (tmp_path / "tag" / "v.txt").read_bytes() == b"1"
    with pytest.raises(NotExistError):
        api.download_repo(REPO, "model", revision="nope", local_dir=tmp_path / "x")
    with pytest.raises(NotExistError):
        api.download_repo("org/missing", "model", local_dir=tmp_path / "y")
    with pytest.raises(NotExistError):
        api.download_file(REPO, "model", "missing.txt", local_dir=tmp_path / "z")


def test_private_repo_cookie_and_bearer(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    ms.add_repo("org/secret", FILES, token=TOKEN)
    with pytest.raises(NotExistError):
        HubApi(endpoint=ms.endpoint).download_repo("org/secret", "model", local_dir=tmp_path / "a")
    with pytest.raises(PermissionDeniedError):
        HubApi(endpoint=ms.endpoint, token="ms-unknown").download_repo("org/secret", "model", local_dir=tmp_path / "b")
    HubApi(endpoint=ms.endpoint, token=TOKEN).download_repo("org/secret", "model", local_dir=tmp_path / "c")
    _same(tmp_path / "c", FILES)
    api = [r for r in ms.requests_to("/api/v1/models/org/secret/*") if r.status in (200, 302)]
    assert api and all(r.cookie == TOKEN and r.authorization == f"Bearer {TOKEN}" for r in api)


def test_parallel_ranges_on_the_store_and_single_stream_fallback_for_inline_files(
    ms: ModelScopeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_download, "DOWNLOAD_PARALLELS", 4)
    monkeypatch.setattr(hub_download, "DOWNLOAD_PARALLEL_THRESHOLD", MIB)
    monkeypatch.setattr(hub_download, "DOWNLOAD_PART_SIZE", MIB)
    inline = {"vocab.txt": blob(3 * MIB + 1, 3)}
    ms.add_repo("org/inline", inline, lfs_threshold=10 * MIB)
    api = HubApi(endpoint=ms.endpoint)
    api.download_repo(REPO, "model", local_dir=tmp_path / "lfs", allow_patterns=["model.safetensors"])
    _same(tmp_path / "lfs", {"model.safetensors": FILES["model.safetensors"]})
    parts = ms.requests_to("/modelhub/*", "GET")
    assert len(parts) == 4 and all(r.status == 206 for r in parts)
    api.download_repo("org/inline", "model", local_dir=tmp_path / "inline")
    _same(tmp_path / "inline", inline)
    records = ms.requests_to("/api/v1/models/org/inline/repo", "GET")
    gets = _show("inline file, parallel on", records)
    # Range ignored: the emulator answers 200 (the client may hang up on the other parts before their headers go out)
    ranged = [r for r in records if r.range]
    assert ranged and all(r.chosen == 200 for r in ranged)
    assert gets[-1].endswith("vocab.txt -> 200") and "[bytes=" not in gets[-1]  # then one plain stream


def test_faults_cut_resumes_503_retried_corruption_detected(
    ms: ModelScopeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_download, "DOWNLOAD_RETRY_MAX_DELAY_SECONDS", 0)
    ms.cut_next("/modelhub/*", after_bytes=MIB, file="model.safetensors")
    ms.fail_next("/api/v1/models/org/tiny/repo", file="config.json", status=503)
    api = HubApi(endpoint=ms.endpoint)
    api.download_repo(REPO, "model", local_dir=tmp_path / "a")
    _same(tmp_path / "a", FILES)
    resumed = [(r.range, r.status) for r in ms.requests_to("/modelhub/*", "GET", file="model.safetensors")]
    assert resumed == [(None, None), (f"bytes={MIB}-", 206)]
    assert [r.status for r in ms.requests_to("/api/v1/models/org/tiny/repo", file="config.json")] == [503, 200]
    ms.corrupt_next("/modelhub/*", file="tokenizer.json", times=10)
    with pytest.raises((FileIntegrityError, FileDownloadError)):
        api.download_repo(REPO, "model", local_dir=tmp_path / "b", allow_patterns=["tokenizer.json"])
    assert not (tmp_path / "b" / "tokenizer.json").exists()


def test_kserve_call_in_a_subprocess_with_the_sdk_variables(ms: ModelScopeEmulator, tmp_path: Path) -> None:
    ms.add_repo("org/secret", FILES, token=TOKEN)
    env = {
        **os.environ,
        "MODELSCOPE_ENDPOINT": ms.endpoint,
        "MODELSCOPE_API_TOKEN": TOKEN,
        "MODELSCOPE_CACHE": str(tmp_path / "cache"),
        "MODELSCOPE_HOME": str(tmp_path / "home"),
    }
    code = (
        "import sys; from modelscope_hub.compat import snapshot_download; "
        "print(snapshot_download(sys.argv[1], revision='master', local_dir=sys.argv[2]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, "org/secret", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    _same(tmp_path / "out", FILES)
