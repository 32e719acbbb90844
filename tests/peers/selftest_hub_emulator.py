"""Self-test of the HuggingFace Hub emulator against the real `huggingface_hub` client (2.4.0 when written).

Run manually (e2e, not collected by the default `testpaths` glob since the file name does not start with test_)::

    .venv/bin/pytest -m e2e tests/peers/selftest_hub_emulator.py -v -s

`huggingface_hub` runs in this process and is pointed at the emulator with ``endpoint=`` (accepted by `HfApi`,
`snapshot_download` and `hf_hub_download`); the import-time constants that matter are patched on
`huggingface_hub.constants`, which the library reads at call time (``HF_HUB_DISABLE_XET``,
``HF_HUB_DISABLE_TELEMETRY``, ``HF_TOKEN_PATH``, ``HF_HUB_DOWNLOAD_TIMEOUT``). One test runs a subprocess with
``HF_ENDPOINT`` set instead, as a separate process would. Xet is not emulated (``HF_HUB_DISABLE_XET=1``).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.peers.hub_emulator import HubEmulator, RequestRecord  # noqa: E402 - needs REPO_ROOT on sys.path

hf = pytest.importorskip("huggingface_hub")
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

pytestmark = pytest.mark.e2e

REPO = "org/tiny"
LFS_SIZE = 3 * 1024 * 1024 + 123


def _files(seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        "config.json": json.dumps({"model_type": "llama", "seed": seed}).encode(),
        "tokenizer.json": b'{"version": "1.0"}' * 50,
        "sub/dir/notes.txt": b"nested file\n",
        "model.safetensors": rng.randbytes(LFS_SIZE),
        "ignored/big.bin": rng.randbytes(2048),
        "README.md": b"# tiny\n",
    }


def _summary(records: list[RequestRecord]) -> list[str]:
    """`METHOD path [Range] -> status`, shas shortened, for printing and readable assertions."""
    lines = []
    for r in records:
        path = re.sub(r"[0-9a-f]{40,64}", lambda m: m.group(0)[:7], r.path)
        query = f"?{r.query}" if r.query and not r.path.startswith("/blobs/") else ""
        extra = f" [{r.range}]" if r.range else ""
        lines.append(f"{r.method} {path}{query}{extra} -> {r.status}")
    return lines


def _show(title: str, hub: HubEmulator) -> list[str]:
    lines = _summary(hub.requests)
    print(f"\n== {title}")
    for line in lines:
        print("  ", line)
    return lines


def _same_tree(local_dir: Path, files: dict[str, bytes], names: list[str]) -> None:
    for name in names:
        assert (local_dir / name).read_bytes() == files[name], name


@pytest.fixture
def hub() -> Iterator[HubEmulator]:
    with HubEmulator(tree_page_size=2) as emulator:
        yield emulator


@pytest.fixture
def kw(hub: HubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Common keyword arguments; patches the import-time constants so no env var is needed."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    return {"endpoint": hub.endpoint, "cache_dir": str(tmp_path / "cache")}


def test_snapshot_by_branch_allow_patterns_and_paging(hub: HubEmulator, kw: dict[str, Any], tmp_path: Path) -> None:
    files = _files()
    sha = hub.add_repo(REPO, files)
    out = tmp_path / "out"
    path = snapshot_download(
        REPO, revision="main", local_dir=out, allow_patterns=["*.json", "*.safetensors", "sub/*"], **kw
    )
    assert Path(path) == out.resolve()
    wanted = ["config.json", "tokenizer.json", "sub/dir/notes.txt", "model.safetensors"]
    _same_tree(out, files, wanted)
    assert not (out / "README.md").exists() and not (out / "ignored").exists()
    lines = _show("snapshot_download(revision='main', allow_patterns=...)", hub)

    assert lines[0] == "GET /api/models/org/tiny/revision/main -> 200"
    tree = hub.requests_to(f"/api/models/{REPO}/tree/{sha}")
    assert len(tree) >= 3 and all(r.status == 200 for r in tree)  # 8 entries (files + dirs), 2 per page
    assert "recursive=True" in tree[0].query or "recursive=true" in tree[0].query
    assert all("cursor=" in r.query for r in tree[1:])
    for name in wanted:
        head = hub.requests_to(f"/{REPO}/resolve/{sha}/{name}", "HEAD")
        assert [r.status for r in head] == [302 if name.endswith(".safetensors") else 200], name
    lfs = hub.file_entry(REPO, "model.safetensors")
    assert [r.status for r in hub.requests_to(f"/blobs/{lfs.sha256}", "HEAD")] == [200]  # followed same-origin
    assert [r.status for r in hub.requests_to(f"/blobs/{lfs.sha256}", "GET")] == [200]
    assert [r.status for r in hub.requests_to(f"/{REPO}/resolve/{sha}/config.json", "GET")] == [200]
    assert not hub.requests_to(f"/{REPO}/resolve/*/README.md")

    # A second run: the tree listing is cached on disk per commit (local_dir/.cache/huggingface/trees/<sha>.json)
    # and each file's local metadata matches the commit, so only the branch -> sha lookup goes out.
    hub.clear_requests()
    snapshot_download(REPO, revision="main", local_dir=out, allow_patterns=["*.json", "*.safetensors", "sub/*"], **kw)
    assert _show("same snapshot_download again (local_dir already complete)", hub) == [
        "GET /api/models/org/tiny/revision/main -> 200"
    ]


def test_snapshot_by_sha_and_second_branch(hub: HubEmulator, kw: dict[str, Any], tmp_path: Path) -> None:
    v1, v2 = _files(1), _files(2)
    sha1 = hub.add_repo(REPO, v1)
    sha2 = hub.add_repo(REPO, v2, revision="v2")
    assert sha1 != sha2 and re.fullmatch(r"[0-9a-f]{40}", sha1)

    snapshot_download(REPO, revision=sha1, local_dir=tmp_path / "a", **kw)
    _same_tree(tmp_path / "a", v1, list(v1))
    lines = _show("snapshot_download(revision=<sha>)", hub)
    assert not any("/revision/" in line for line in lines)  # a 40-hex sha skips the model_info call

    hub.clear_requests()
    path = snapshot_download(REPO, revision="v2", **kw)  # cache_dir layout this time
    assert Path(path).name == sha2
    _same_tree(Path(path), v2, list(v2))
    assert (Path(kw["cache_dir"]) / "models--org--tiny" / "refs" / "v2").read_text() == sha2
    _show("snapshot_download(revision='v2') into cache_dir", hub)


def test_hfapi_calls(hub: HubEmulator, kw: dict[str, Any]) -> None:
    files = _files()
    sha = hub.add_repo(REPO, files)
    hub.add_repo(REPO, files, revision="v1.0", tag=True)
    api = HfApi(endpoint=kw["endpoint"])

    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == sha and info.id == REPO
    by_name = {s.rfilename: s for s in info.siblings or []}
    assert set(by_name) == set(files)
    lfs = by_name["model.safetensors"]
    assert lfs.size == LFS_SIZE and lfs.lfs is not None and lfs.lfs.size == LFS_SIZE
    assert lfs.lfs.sha256 == hub.file_entry(REPO, "model.safetensors").sha256
    assert (
        by_name["config.json"].lfs is None and by_name["config.json"].blob_id == hub.file_entry(REPO, "config.json").oid
    )

    assert sorted(api.list_repo_files(REPO)) == sorted(files)
    entries = list(api.list_repo_tree(REPO, path_in_repo="sub", recursive=True, expand=True))
    assert [(type(e).__name__, e.path) for e in entries] == [
        ("RepoFolder", "sub/dir"),
        ("RepoFile", "sub/dir/notes.txt"),
    ]
    top = [e.path for e in api.list_repo_tree(REPO)]
    assert top == ["README.md", "config.json", "ignored", "model.safetensors", "sub", "tokenizer.json"]

    infos = api.get_paths_info(REPO, ["config.json", "sub", "missing.txt", "model.safetensors"], revision=sha)
    assert [(type(i).__name__, i.path) for i in infos] == [
        ("RepoFile", "config.json"),
        ("RepoFolder", "sub"),
        ("RepoFile", "model.safetensors"),
    ]
    refs = api.list_repo_refs(REPO)
    assert [b.name for b in refs.branches] == ["main"] and [t.name for t in refs.tags] == ["v1.0"]
    assert api.file_exists(REPO, "config.json") and not api.file_exists(REPO, "nope.json")
    assert api.revision_exists(REPO, "v1.0") and not api.revision_exists(REPO, "nope")
    assert not api.repo_exists("org/missing")
    meta = api.get_hf_file_metadata(url=f"{kw['endpoint']}/{REPO}/resolve/main/model.safetensors")
    assert meta.commit_hash == sha and meta.size == LFS_SIZE and meta.etag == lfs.lfs.sha256
    _show("HfApi calls", hub)


def test_hf_hub_download_and_errors(hub: HubEmulator, kw: dict[str, Any], tmp_path: Path) -> None:
    files = _files()
    hub.add_repo(REPO, files)
    path = hf_hub_download(REPO, "sub/dir/notes.txt", **kw)
    assert Path(path).read_bytes() == files["sub/dir/notes.txt"]
    path = hf_hub_download(REPO, "model.safetensors", local_dir=tmp_path / "one", **kw)
    assert Path(path).read_bytes() == files["model.safetensors"]

    with pytest.raises(RepositoryNotFoundError) as repo_err:
        snapshot_download("org/missing", local_dir=tmp_path / "x", **kw)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "config.json", **kw)
    with pytest.raises(RevisionNotFoundError) as rev_err:
        snapshot_download(REPO, revision="nope", local_dir=tmp_path / "y", **kw)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="nope", **kw)
    with pytest.raises(EntryNotFoundError) as entry_err:
        hf_hub_download(REPO, "missing.txt", **kw)
    assert isinstance(entry_err.value, RemoteEntryNotFoundError)
    print("\nerrors:", type(repo_err.value).__name__, type(rev_err.value).__name__, type(entry_err.value).__mro__[:3])
    _show("hf_hub_download + error cases", hub)


def test_private_and_gated(hub: HubEmulator, kw: dict[str, Any], tmp_path: Path) -> None:
    files = _files()
    hub.add_repo("org/private", files, token="hf_right")
    hub.add_repo("org/gated", files, token="hf_gate", gated=True)

    with pytest.raises(RepositoryNotFoundError) as no_token:
        snapshot_download("org/private", local_dir=tmp_path / "p0", **kw)
    assert no_token.value.response.status_code == 401 and not isinstance(no_token.value, GatedRepoError)
    with pytest.raises(HfHubHTTPError) as wrong_token:
        snapshot_download("org/private", local_dir=tmp_path / "p1", token="hf_wrong", **kw)
    assert wrong_token.value.response.status_code == 401
    assert not isinstance(wrong_token.value, RepositoryNotFoundError)
    out = tmp_path / "p2"
    snapshot_download("org/private", local_dir=out, token="hf_right", **kw)
    _same_tree(out, files, list(files))
    assert all(r.authorization == "Bearer hf_right" for r in hub.requests_to("/org/private/*"))
    # The same-origin blob GET keeps the Authorization header.
    blob_gets = [r for r in hub.requests_to("/blobs/*", "GET")]
    assert blob_gets and all(r.authorization == "Bearer hf_right" for r in blob_gets)

    with pytest.raises(GatedRepoError) as gated:
        snapshot_download("org/gated", local_dir=tmp_path / "g0", **kw)
    assert gated.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as gated_wrong:
        hf_hub_download("org/gated", "config.json", token="hf_wrong", **kw)
    assert gated_wrong.value.response.status_code == 403
    assert HfApi(endpoint=kw["endpoint"]).model_info("org/gated").gated == "manual"  # metadata is public
    snapshot_download("org/gated", local_dir=tmp_path / "g1", token="hf_gate", **kw)
    _same_tree(tmp_path / "g1", files, list(files))
    print(
        f"\nprivate no token: {type(no_token.value).__name__}; wrong token: {type(wrong_token.value).__name__}"
        f" ({wrong_token.value.response.status_code}); gated: {type(gated.value).__name__}"
    )
    _show("private/gated", hub)


def test_cut_with_default_chunk_size_restarts_from_zero(hub: HubEmulator, kw: dict[str, Any], tmp_path: Path) -> None:
    """http_get reads the body in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces: bytes before the cut that did not fill a
    piece are never written, so a cut file below 10 MiB is fetched again from byte 0, without a Range header."""
    files = _files()
    hub.add_repo(REPO, files)
    sha256 = hub.file_entry(REPO, "model.safetensors").sha256
    hub.cut_next("/blobs/*", after_bytes=1024 * 1024, method="GET")
    snapshot_download(REPO, local_dir=tmp_path / "out", allow_patterns=["*.safetensors"], **kw)
    _same_tree(tmp_path / "out", files, ["model.safetensors"])
    gets = hub.requests_to(f"/blobs/{sha256}", "GET")
    assert [(r.range, r.status) for r in gets] == [(None, None), (None, 200)]
    _show("cut mid-body, default 10 MiB chunks -> full re-GET", hub)


def test_resume_after_cut_uses_range(
    hub: HubEmulator, kw: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files()
    hub.add_repo(REPO, files)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)  # read at call time by http_get
    sha256 = hub.file_entry(REPO, "model.safetensors").sha256
    hub.cut_next("/blobs/*", after_bytes=1024 * 1024, method="GET")
    hub.cut_next(f"/{REPO}/resolve/*/tokenizer.json", after_bytes=10, method="GET")
    started = time.monotonic()
    snapshot_download(REPO, local_dir=tmp_path / "out", allow_patterns=["*.safetensors", "tokenizer.json"], **kw)
    _same_tree(tmp_path / "out", files, ["model.safetensors", "tokenizer.json"])
    print(f"\nresumed downloads took {time.monotonic() - started:.1f}s")  # http_get sleeps 1 s before resuming
    gets = hub.requests_to(f"/blobs/{sha256}", "GET")
    assert [(r.range, r.status) for r in gets] == [(None, None), ("bytes=1048576-", 206)]
    small = hub.requests_to(f"/{REPO}/resolve/*/tokenizer.json", "GET")
    assert [(r.range, r.status) for r in small] == [(None, None), (None, 200)]  # 10 B < one 64 KiB piece
    _show("cut mid-body (64 KiB chunks) -> resumed with Range", hub)


def test_failed_download_is_not_resumed_by_next_call(
    hub: HubEmulator, kw: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Partial data lives in a per-call temp file that is deleted on failure: a new call starts from byte 0."""
    files = _files()
    hub.add_repo(REPO, files)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    hub.cut_next("/blobs/*", after_bytes=1024 * 1024, method="GET")
    hub.fail_next("/blobs/*", status=503, method="GET")  # the in-call resume gets a 503 (not retried) -> fails
    out = tmp_path / "out"
    with pytest.raises(HfHubHTTPError):
        hf_hub_download(REPO, "model.safetensors", local_dir=out, **kw)
    assert not list(out.rglob("*.incomplete"))
    hf_hub_download(REPO, "model.safetensors", local_dir=out, **kw)
    _same_tree(out, files, ["model.safetensors"])
    gets = hub.requests_to("/blobs/*", "GET")
    assert [(r.range, r.status) for r in gets] == [(None, None), ("bytes=1048576-", 503), (None, 200)]
    _show("failed download, then a new call", hub)


def test_stall_mid_body_times_out_and_resumes(
    hub: HubEmulator, kw: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files()
    hub.add_repo(REPO, files)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    hub.stall_next("/blobs/*", seconds=3, after_bytes=512 * 1024, method="GET")
    snapshot_download(REPO, local_dir=tmp_path / "out", allow_patterns=["*.safetensors"], **kw)
    _same_tree(tmp_path / "out", files, ["model.safetensors"])
    gets = hub.requests_to("/blobs/*", "GET")
    # The stalled first GET is logged only when its handler wakes up (after the client left): status None.
    assert ("bytes=524288-", 206) in [(r.range, r.status) for r in gets]
    _show("stall mid-body (read timeout 1 s) -> resumed with Range", hub)


@pytest.mark.parametrize(
    ("target", "method"),
    [
        ("/api/models/org/tiny/revision/main", "GET"),
        ("/api/models/org/tiny/tree/*", "GET"),
        ("/org/tiny/resolve/*/config.json", "HEAD"),
        ("/org/tiny/resolve/*/config.json", "GET"),
        ("/blobs/*", "GET"),
    ],
)
def test_503_once(hub: HubEmulator, kw: dict[str, Any], tmp_path: Path, target: str, method: str) -> None:
    """Which calls huggingface_hub retries after one 503 (it is recorded, not prescribed, here)."""
    files = _files()
    hub.add_repo(REPO, files)
    hub.fail_next(target, times=1, status=503, method=method)
    outcome = "retried, succeeded"
    try:
        snapshot_download(REPO, local_dir=tmp_path / "out", allow_patterns=["config.json", "*.safetensors"], **kw)
        _same_tree(tmp_path / "out", files, ["config.json", "model.safetensors"])
    except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
        outcome = f"not retried: {type(exc).__name__}"
    hits = [r.status for r in hub.requests_to(target, method)]
    print(f"\n503 once on {method} {target}: {outcome}; statuses {hits}")
    if outcome.startswith("retried"):
        assert hits[:2] == [503, hits[1]] and hits[1] in (200, 302)
    expected_retry = {
        "/api/models/org/tiny/revision/main": False,  # model_info: plain session.get, no backoff
        "/api/models/org/tiny/tree/*": True,  # paginate: http_backoff (5xx retried, 1 s sleep)
        "/org/tiny/resolve/*/config.json": method == "HEAD",  # HEAD re-tried with retry_on_errors=True
        "/blobs/*": False,  # http_get retries only 408/429
    }[target]
    assert outcome.startswith("retried") == expected_retry, outcome


def test_cross_origin_blobs_drop_authorization(
    kw: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files()
    with HubEmulator(blob_host="localhost") as other:
        other.add_repo("org/private", files, token="hf_right")
        kw = {**kw, "endpoint": other.endpoint}
        snapshot_download("org/private", local_dir=tmp_path / "out", token="hf_right", **kw)
        _same_tree(tmp_path / "out", files, list(files))
        assert not other.requests_to("/blobs/*", "HEAD")  # metadata taken from the 302 itself
        gets = other.requests_to("/blobs/*", "GET")
        assert gets and all(r.authorization is None for r in gets)
        _show("blob_host='localhost' (cross-origin redirect)", other)


def test_hf_endpoint_env_in_subprocess(hub: HubEmulator, tmp_path: Path) -> None:
    files = _files()
    sha = hub.add_repo(REPO, files)
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    env.pop("HF_HUB_DISABLE_TELEMETRY", None)
    env.pop("HF_TOKEN", None)
    code = (
        "import sys; from huggingface_hub import snapshot_download as s; "
        "print(s(sys.argv[1], revision='main', allow_patterns=['*.json']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, REPO], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    snapshot = Path(result.stdout.strip().splitlines()[-1])
    assert snapshot.name == sha
    _same_tree(snapshot, files, ["config.json", "tokenizer.json"])
    lines = _show("subprocess with HF_ENDPOINT (telemetry on)", hub)
    assert lines[0].startswith("GET /api/agent-harnesses")  # user-agent agent detection, first request
