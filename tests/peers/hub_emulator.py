"""A HuggingFace Hub emulator (aiohttp) for testing model downloads through `huggingface_hub` 2.x.

It serves the read-only part of the Hub API that `huggingface_hub` (2.4.0 when written) uses for
`snapshot_download`, `hf_hub_download`, `HfApi.model_info`/`repo_info`, `list_repo_files`, `list_repo_tree`,
`get_paths_info`, `list_repo_refs`, `file_exists`, `get_hf_file_metadata` and `whoami`::

    with HubEmulator(tree_page_size=2) as hub:            # 127.0.0.1, free port, own loop on a daemon thread
        sha = hub.add_repo("org/tiny", {"config.json": b"{}", "model.safetensors": big})
        hub.add_repo("org/secret", {"a.txt": b"x"}, token="hf_secret")       # private: needs the token
        snapshot_download("org/tiny", revision="main", local_dir=d, endpoint=hub.endpoint, cache_dir=c)
        hub.requests                                       # [RequestRecord(method, path, query, range, ...)]
        hub.fail_next("/org/tiny/resolve/*/config.json", times=1, status=503)
        hub.cut_next("/blobs/*", after_bytes=1000)         # full Content-Length, then the connection is closed
        hub.stall_next("/blobs/*", seconds=5, after_bytes=0)

Pointing `huggingface_hub` at it: pass ``endpoint=hub.endpoint`` to `HfApi`, `snapshot_download` and
`hf_hub_download` (all of them accept it), or set ``HF_ENDPOINT`` before `huggingface_hub` is first imported (it
is read into `huggingface_hub.constants.ENDPOINT` at import). Also set ``HF_HUB_DISABLE_XET=1`` and
``HF_HUB_DISABLE_TELEMETRY=1`` (or patch `huggingface_hub.constants.HF_HUB_DISABLE_XET` /
`HF_HUB_DISABLE_TELEMETRY`, both read at call time): telemetry on makes the first request of a process fetch
``{constants.ENDPOINT}/api/agent-harnesses`` (huggingface.co unless HF_ENDPOINT is set; 3 s timeout). The emulator
answers that path with an empty registry.

Xet is NOT implemented: no ``X-Xet-Hash`` headers, no ``xetHash`` in tree entries, no xet token routes, so
`huggingface_hub` always downloads over plain HTTP here. Tests set ``HF_HUB_DISABLE_XET=1`` anyway.

What is emulated (paths as `huggingface_hub` builds them; ``{type}s`` is ``models``/``datasets``/``spaces``,
resolve URLs carry a ``datasets/`` or ``spaces/`` prefix for those types):

* ``GET /api/{type}s/{repo}`` and ``/api/{type}s/{repo}/revision/{rev}``: ``id``, ``sha``, ``private``,
  ``gated``, ``siblings[].rfilename``; with ``?blobs=true`` also ``size``, ``blobId``, ``lfs{sha256,size,
  pointerSize}``. ``rev`` may be a branch/tag name or a full 40-hex commit sha (URL-quoted, so ``refs%2Fpr%2F1``).
* ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]?recursive=&expand=``: entries ``{type: file|directory, oid,
  size, path[, lfs{oid,size,pointerSize}][, lastCommit]}``, sorted by path, paged by ``tree_page_size`` with
  ``Link: <absolute url with cursor=...>; rel="next"``. A missing path is 404 EntryNotFound.
* ``POST /api/{type}s/{repo}/paths-info/{rev}`` (form or JSON ``paths``, ``expand``): entries for the paths that
  exist (others ignored).
* ``GET /api/{type}s/{repo}/refs``: branches/tags with their target commit.
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: small files 200 with ``X-Repo-Commit``, ``ETag: "<git blob
  sha1>"``, ``Content-Length``, ``Accept-Ranges``; ``Range`` gives 206 + ``Content-Range`` (416 +
  ``Content-Range: bytes */N`` when unsatisfiable). LFS files 302 with ``Location: /blobs/{sha256}?commit=..``
  (same origin unless ``blob_host`` is given), ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size``,
  ``X-Repo-Commit``, ``ETag``; the blob response repeats those headers and supports ``Range`` too. Blob URLs need
  no token (like the Hub's signed CDN URLs).
* Errors carry ``X-Error-Code``/``X-Error-Message`` like the Hub: unknown repo 404 RepoNotFound; private repo
  without a token 401 RepoNotFound (-> `RepositoryNotFoundError`); private repo with a wrong token 401 with
  ``X-Error-Message: Invalid credentials in Authorization header`` and no code (-> plain `HfHubHTTPError`, status
  401); gated repo (``gated=True``): metadata is public but ``resolve`` needs the token, 401 GatedRepo without a
  token and 403 GatedRepo with a wrong one (-> `GatedRepoError`); unknown revision 404 RevisionNotFound; unknown
  file 404 EntryNotFound (with ``X-Repo-Commit``).
* ``GET /api/whoami-v2``: 200 for any token a repo accepts (or in ``valid_tokens``), else 401.

Repos: `add_repo` is additive, so calling it again for the same repo with another ``revision`` adds a branch (or
tag) pointing to a new commit. Commit shas are sha1 over the repo id, revision name and file oids: fake but stable.
Files above ``lfs_threshold`` bytes, or matching ``lfs_patterns`` (``*.safetensors``, ``*.bin``, ``*.gguf``, ...),
are LFS files: their git oid is the blob sha1 of the LFS pointer text, as on the Hub.

Faults (thread-safe; each request uses up at most one fault, the first added one that matches and has uses
left; ``path`` is the URL-decoded request path, an exact string or an `fnmatch` pattern; ``method`` filters when
given): `fail_next` (status 500/503/... with an optional
``Retry-After``), `cut_next` (send ``after_bytes`` of the body, then close the connection), `stall_next` (sleep
``seconds`` before answering, or after ``after_bytes`` of the body). Every request lands in `requests` (method,
decoded path, query, Range and Authorization headers, status).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from tests.support.faulty_body import write_body
from tests.support.threaded_server import ThreadedServer

HOST = "127.0.0.1"
DEFAULT_LFS_THRESHOLD = 1024 * 1024
DEFAULT_LFS_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth", "*.onnx", "*.h5", "*.msgpack")
REPO_TYPES = ("model", "dataset", "space")
FAKE_DATE = "2026-01-01T00:00:00.000Z"
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of `data` as a blob (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclasses.dataclass(frozen=True)
class RepoFileEntry:
    path: str
    data: bytes
    oid: str  # git blob sha1 (of the pointer for LFS files)
    sha256: str | None  # LFS files only
    pointer_size: int | None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None


@dataclasses.dataclass
class _Repo:
    repo_id: str
    repo_type: str
    token: str | None
    gated: bool
    refs: dict[str, str] = dataclasses.field(default_factory=dict)  # branch/tag -> commit sha
    tags: set[str] = dataclasses.field(default_factory=set)
    commits: dict[str, dict[str, RepoFileEntry]] = dataclasses.field(default_factory=dict)

    @property
    def private(self) -> bool:
        return self.token is not None and not self.gated


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str  # URL-decoded (%2F -> /)
    query: str
    range: str | None
    authorization: str | None
    status: int | None  # None when the body was cut or the client went away mid-body


@dataclasses.dataclass
class _Fault:
    kind: str  # "fail" | "cut" | "stall"
    pattern: str
    method: str | None
    remaining: int
    status: int = 503
    retry_after: int | None = None
    after_bytes: int = 0
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return path == self.pattern or fnmatch.fnmatchcase(path, self.pattern)


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class _HubApp:
    """The aiohttp side. Handlers run on the emulator's loop; shared state is guarded by `lock`."""

    def __init__(self, port: int, tree_page_size: int, blob_host: str | None, valid_tokens: Iterable[str]) -> None:
        self.port = port
        self.tree_page_size = tree_page_size
        self.blob_host = blob_host
        self.valid_tokens = set(valid_tokens)
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content
        self.faults: list[_Fault] = []
        self.log: list[RequestRecord] = []
        self.incomplete: set[int] = set()  # ids of requests whose body was cut or not fully sent
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        app = web.Application(middlewares=[self._record])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._app = app

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, HOST, self.port, reuse_address=True, backlog=256)
        await self._site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    # -- request plumbing ------------------------------------------------------------------------------------

    @staticmethod
    def _decoded_path(request: web.Request) -> str:
        return "/".join(unquote(seg) for seg in request.rel_url.raw_path.split("/"))

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        status: int | None = None
        try:
            response = await handler(request)
            status = response.status
            return response  # type: ignore[no-any-return]
        finally:
            if id(request) in self.incomplete:
                self.incomplete.discard(id(request))
                status = None
            record = RequestRecord(
                method=request.method,
                path=self._decoded_path(request),
                query=request.rel_url.raw_query_string,
                range=request.headers.get("Range"),
                authorization=request.headers.get("Authorization"),
                status=status,
            )
            with self.lock:
                self.log.append(record)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        """The first matching fault with uses left, used up by one; at most one fault per request."""
        with self.lock:
            for fault in self.faults:
                if fault.remaining > 0 and fault.matches(method, path):
                    fault.remaining -= 1
                    self.faults = [f for f in self.faults if f.remaining > 0]
                    return fault
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = self._decoded_path(request)
        fault = self._take_fault(request.method, path)
        cut = fault if fault is not None and fault.kind == "cut" else None
        stall = fault if fault is not None and fault.kind == "stall" else None
        if stall is not None and stall.after_bytes <= 0:
            await asyncio.sleep(stall.seconds)
            stall = None
        if fault is not None and fault.kind == "fail":
            headers = {"X-Error-Message": "Emulated server error"}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            return web.Response(status=fault.status, text=f"emulated {fault.status}\n", headers=headers)
        try:
            return await self._route(request, cut, stall)
        except _HubError as exc:
            headers = {"X-Error-Message": exc.message, **exc.headers}
            if exc.code is not None:
                headers["X-Error-Code"] = exc.code
            return web.json_response({"error": exc.message}, status=exc.status, headers=headers)

    async def _route(self, request: web.Request, cut: _Fault | None, stall: _Fault | None) -> web.StreamResponse:
        segments = [unquote(seg) for seg in request.rel_url.raw_path.split("/")[1:]]
        method = request.method
        if segments[:2] == ["api", "agent-harnesses"]:
            return web.json_response({"standardEnvVars": [], "harnesses": {}})
        if segments[:2] == ["api", "whoami-v2"]:
            return self._whoami(request)
        if segments and segments[0] == "blobs" and len(segments) == 2 and method in ("GET", "HEAD"):
            return await self._blob(request, segments[1], cut, stall)
        if len(segments) >= 3 and segments[0] == "api" and segments[1] in ("models", "datasets", "spaces"):
            return await self._api(request, segments[1][:-1], segments[2:])
        repo_type = "model"
        if segments and segments[0] in ("datasets", "spaces"):
            repo_type, segments = segments[0][:-1], segments[1:]
        if "resolve" in segments[1:3] and method in ("GET", "HEAD"):
            index = segments.index("resolve", 1)
            repo_id = "/".join(segments[:index])
            rest = segments[index + 1 :]
            if len(rest) >= 2:
                return await self._resolve(request, repo_type, repo_id, rest[0], "/".join(rest[1:]), cut, stall)
        raise _HubError(404, None, f"Emulator: no route for {method} {request.rel_url.raw_path}")

    # -- auth / lookups ----------------------------------------------------------------------------------------

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        return header[7:].strip() if header.lower().startswith("bearer ") else None

    def _repo(self, repo_type: str, repo_id: str, request: web.Request, files: bool) -> _Repo:
        """The repo, after access checks; `files` marks file content access (where gating applies)."""
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        token = self._bearer(request)
        if repo.private:
            if token is None:
                raise _HubError(401, "RepoNotFound", "Invalid username or password.")
            if token != repo.token:
                raise _HubError(401, None, "Invalid credentials in Authorization header")
        elif repo.gated and files and token != repo.token:
            message = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            raise _HubError(401 if token is None else 403, "GatedRepo", message)
        return repo

    @staticmethod
    def _commit(repo: _Repo, revision: str) -> tuple[str, dict[str, RepoFileEntry]]:
        for name in (revision, revision.removeprefix("refs/heads/"), revision.removeprefix("refs/tags/")):
            if name in repo.refs:
                sha = repo.refs[name]
                return sha, repo.commits[sha]
        if revision in repo.commits:
            return revision, repo.commits[revision]
        raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def _whoami(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        with self.lock:
            known = self.valid_tokens | {r.token for r in self.repos.values() if r.token is not None}
        if token is None or token not in known:
            raise _HubError(401, None, "Invalid credentials in Authorization header")
        return web.json_response(
            {
                "type": "user",
                "id": "emulator",
                "name": "emulator-user",
                "fullname": "Emulator",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "emulator", "role": "read"}},
            }
        )

    # -- /api ------------------------------------------------------------------------------------------------

    async def _api(self, request: web.Request, repo_type: str, rest: list[str]) -> web.StreamResponse:
        keywords = ("revision", "tree", "paths-info", "refs")
        index = next((i for i, seg in enumerate(rest) if i >= 1 and seg in keywords), len(rest))
        repo_id, tail = "/".join(rest[:index]), rest[index:]
        method = request.method
        if not tail and method in ("GET", "HEAD"):
            repo = self._repo(repo_type, repo_id, request, files=False)
            return self._info(request, repo, "main")
        if tail[0] == "revision" and len(tail) >= 2 and method in ("GET", "HEAD"):
            repo = self._repo(repo_type, repo_id, request, files=False)
            return self._info(request, repo, "/".join(tail[1:]))
        if tail[0] == "tree" and len(tail) >= 2 and method in ("GET", "HEAD"):
            repo = self._repo(repo_type, repo_id, request, files=False)
            return self._tree(request, repo, tail[1], "/".join(tail[2:]))
        if tail[0] == "paths-info" and len(tail) >= 2 and method == "POST":
            repo = self._repo(repo_type, repo_id, request, files=False)
            return await self._paths_info(request, repo, "/".join(tail[1:]))
        if tail[0] == "refs" and len(tail) == 1 and method in ("GET", "HEAD"):
            return self._refs(self._repo(repo_type, repo_id, request, files=False))
        raise _HubError(404, None, f"Emulator: no route for {method} {request.rel_url.raw_path}")

    def _info(self, request: web.Request, repo: _Repo, revision: str) -> web.Response:
        sha, files = self._commit(repo, revision)
        blobs = request.query.get("blobs", "").lower() in ("1", "true")
        siblings: list[dict[str, Any]] = []
        for entry in sorted(files.values(), key=lambda e: e.path):
            sibling: dict[str, Any] = {"rfilename": entry.path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.oid)
                if entry.is_lfs:
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        body: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": author,
            "sha": sha,
            "lastModified": FAKE_DATE,
            "createdAt": FAKE_DATE,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if repo.repo_type == "model":
            body["modelId"] = repo.repo_id
        if blobs:
            body["usedStorage"] = sum(e.size for e in files.values())
        return web.json_response(body)

    @staticmethod
    def _entry_json(entry: RepoFileEntry, sha: str, expand: bool) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": entry.path}
        if entry.is_lfs:
            item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        if expand:
            item["lastCommit"] = {"id": sha, "title": "Emulated commit", "date": FAKE_DATE}
        return item

    @staticmethod
    def _dirs(files: Mapping[str, RepoFileEntry]) -> dict[str, str]:
        """Every directory path -> a fake but stable tree oid."""
        dirs: dict[str, list[str]] = {}
        for path, entry in files.items():
            parts = path.split("/")
            for i in range(1, len(parts)):
                dirs.setdefault("/".join(parts[:i]), []).append(f"{path}:{entry.oid}")
        return {d: hashlib.sha1("\n".join(sorted(v)).encode()).hexdigest() for d, v in dirs.items()}

    def _listing(
        self, files: Mapping[str, RepoFileEntry], sha: str, base: str, recursive: bool, expand: bool
    ) -> list[dict[str, Any]]:
        dirs = self._dirs(files)
        prefix = f"{base}/" if base else ""
        items: list[dict[str, Any]] = []
        for path, oid in dirs.items():
            if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :]):
                item: dict[str, Any] = {"type": "directory", "oid": oid, "size": 0, "path": path}
                if expand:
                    item["lastCommit"] = {"id": sha, "title": "Emulated commit", "date": FAKE_DATE}
                items.append(item)
        for path, entry in files.items():
            if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :]):
                items.append(self._entry_json(entry, sha, expand))
        items.sort(key=lambda item: item["path"])
        return items

    def _tree(self, request: web.Request, repo: _Repo, revision: str, base: str) -> web.Response:
        sha, files = self._commit(repo, revision)
        base = base.strip("/")
        if base and base not in self._dirs(files):
            if base in files:
                # The Hub lists a file path as that single entry.
                return web.json_response([self._entry_json(files[base], sha, False)])
            raise _HubError(404, "EntryNotFound", f'{base} does not exist on "{revision}"', {"X-Repo-Commit": sha})
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        expand = request.query.get("expand", "").lower() in ("1", "true")
        items = self._listing(files, sha, base, recursive, expand)
        cursor = request.query.get("cursor")
        try:
            start = int(base64.urlsafe_b64decode(cursor.encode()).decode()) if cursor else 0
        except ValueError as exc:
            raise _HubError(400, None, f"Invalid cursor: {cursor}") from exc
        end = start + self.tree_page_size
        headers: dict[str, str] = {}
        if end < len(items):
            next_cursor = base64.urlsafe_b64encode(str(end).encode()).decode()
            next_url = request.url.update_query(cursor=next_cursor)
            headers["Link"] = f'<{next_url}>; rel="next"'
        return web.json_response(items[start:end], headers=headers)

    async def _paths_info(self, request: web.Request, repo: _Repo, revision: str) -> web.Response:
        sha, files = self._commit(repo, revision)
        paths: list[str]
        expand = False
        if request.content_type == "application/json":
            payload = await request.json()
            raw_paths = payload.get("paths", [])
            paths = [raw_paths] if isinstance(raw_paths, str) else list(raw_paths)
            expand = bool(payload.get("expand", False))
        else:
            form = await request.post()
            paths = [str(p) for p in form.getall("paths", [])]
            expand = str(form.get("expand", "false")).lower() in ("1", "true")
        dirs = self._dirs(files)
        result: list[dict[str, Any]] = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                result.append(self._entry_json(files[path], sha, expand))
            elif path in dirs:
                result.append({"type": "directory", "oid": dirs[path], "size": 0, "path": path})
        return web.json_response(result)

    @staticmethod
    def _refs(repo: _Repo) -> web.Response:
        def ref(name: str, kind: str) -> dict[str, str]:
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": repo.refs[name]}

        branches = [ref(n, "heads") for n in sorted(repo.refs) if n not in repo.tags]
        tags = [ref(n, "tags") for n in sorted(repo.tags)]
        return web.json_response({"branches": branches, "converts": [], "tags": tags})

    # -- file content ---------------------------------------------------------------------------------------

    async def _resolve(
        self,
        request: web.Request,
        repo_type: str,
        repo_id: str,
        revision: str,
        path: str,
        cut: _Fault | None,
        stall: _Fault | None,
    ) -> web.StreamResponse:
        repo = self._repo(repo_type, repo_id, request, files=True)
        sha, files = self._commit(repo, revision)
        entry = files.get(path)
        if entry is None:
            raise _HubError(404, "EntryNotFound", f'{path} does not exist on "{revision}"', {"X-Repo-Commit": sha})
        if entry.is_lfs:
            assert entry.sha256 is not None
            base = f"http://{self.blob_host}:{self.port}" if self.blob_host else ""
            location = f"{base}/blobs/{entry.sha256}?commit={sha}"
            headers = {
                "Location": location,
                "X-Repo-Commit": sha,
                "X-Linked-Etag": f'"{entry.sha256}"',
                "X-Linked-Size": str(entry.size),
                "ETag": f'"{entry.oid}"',
                "Content-Type": "text/plain; charset=utf-8",
            }
            return web.Response(status=302, body=b"", headers=headers)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry.oid}"'}
        return await self._send(request, entry.data, headers, path.rsplit("/", 1)[-1], cut, stall)

    async def _blob(
        self, request: web.Request, sha256: str, cut: _Fault | None, stall: _Fault | None
    ) -> web.StreamResponse:
        with self.lock:
            data = self.blobs.get(sha256)
        if data is None:
            return web.Response(status=404, text="NoSuchKey\n")
        headers = {"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))}
        commit = request.query.get("commit")
        if commit:
            headers["X-Repo-Commit"] = commit
        return await self._send(request, data, headers, sha256, cut, stall)

    async def _send(
        self,
        request: web.Request,
        data: bytes,
        headers: dict[str, str],
        filename: str,
        cut: _Fault | None,
        stall: _Fault | None,
    ) -> web.StreamResponse:
        size = len(data)
        start, end, status = 0, size, 200
        headers = {
            **headers,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'inline; filename="{filename}"',
        }
        range_header = request.headers.get("Range")
        if range_header:
            parsed = _parse_range(range_header, size)
            if parsed is None:
                headers["Content-Range"] = f"bytes */{size}"
                return web.Response(status=416, body=b"", headers=headers)
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start
        await response.prepare(request)
        if request.method == "HEAD":
            await response.write_eof()
            return response
        complete = await write_body(
            request,
            response,
            memoryview(data)[start:end],
            cut_after=cut.after_bytes if cut is not None else None,
            stall_after=stall.after_bytes if stall is not None else None,
            stall_seconds=stall.seconds if stall is not None else 0.0,
        )
        if not complete:
            self.incomplete.add(id(request))
        return response


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> [start, end) within `size`, or None if unsatisfiable."""
    match = _RANGE_RE.match(header.strip())
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        length = int(last)
        if length == 0 or size == 0:
            return None
        return max(size - length, 0), size
    start = int(first)
    if start >= size:
        return None
    end = min(int(last) + 1, size) if last else size
    if end <= start:
        return None
    return start, end


class HubEmulator(ThreadedServer):
    """The Hub emulator on a background thread with its own event loop; usable from sync code and as a context
    manager. ``port=0`` picks a free port; `endpoint` is the base URL for ``endpoint=``/``HF_ENDPOINT``."""

    def __init__(
        self,
        port: int = 0,
        *,
        tree_page_size: int = 1000,
        blob_host: str | None = None,
        valid_tokens: Iterable[str] = (),
    ) -> None:
        self._app = _HubApp(port, tree_page_size, blob_host, valid_tokens)
        super().__init__(self._app, "hub-emulator")

    @property
    def endpoint(self) -> str:
        return self.url

    @property
    def tree_page_size(self) -> int:
        return self._app.tree_page_size

    @tree_page_size.setter
    def tree_page_size(self, value: int) -> None:
        self._app.tree_page_size = max(1, value)

    # -- repos -----------------------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes] | Path,
        revision: str = "main",
        *,
        repo_type: str = "model",
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        lfs_patterns: Iterable[str] = DEFAULT_LFS_PATTERNS,
        token: str | None = None,
        gated: bool = False,
        tag: bool = False,
    ) -> str:
        """Add (or replace) `revision` of a repo with `files` (a dict, or a directory read recursively).

        Returns the commit sha. ``token`` makes the repo private (all endpoints need ``Authorization: Bearer
        <token>``) or, with ``gated=True``, gated (metadata public, file content needs the token). ``tag`` lists
        the revision as a tag instead of a branch in `/refs`. Repo-level settings follow the latest call.
        """
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo_type must be one of {REPO_TYPES}")
        if isinstance(files, Path):
            files = {p.relative_to(files).as_posix(): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
        patterns = tuple(lfs_patterns)
        entries: dict[str, RepoFileEntry] = {}
        blobs: dict[str, bytes] = {}
        for path, data in files.items():
            path = path.strip("/")
            name = path.rsplit("/", 1)[-1]
            if len(data) > lfs_threshold or any(fnmatch.fnmatchcase(name, p) for p in patterns):
                sha256 = hashlib.sha256(data).hexdigest()
                pointer = lfs_pointer(sha256, len(data))
                entries[path] = RepoFileEntry(path, bytes(data), git_blob_sha1(pointer), sha256, len(pointer))
                blobs[sha256] = bytes(data)
            else:
                entries[path] = RepoFileEntry(path, bytes(data), git_blob_sha1(data), None, None)
        digest = hashlib.sha1(f"{repo_type}\0{repo_id}\0{revision}\0".encode())
        for path in sorted(entries):
            digest.update(f"{path}\0{entries[path].oid}\n".encode())
        sha = digest.hexdigest()
        with self._app.lock:
            repo = self._app.repos.get((repo_type, repo_id))
            if repo is None:
                repo = _Repo(repo_id, repo_type, token, gated)
                self._app.repos[(repo_type, repo_id)] = repo
            repo.token, repo.gated = token, gated
            repo.commits[sha] = entries
            repo.refs[revision] = sha
            if tag:
                repo.tags.add(revision)
            else:
                repo.tags.discard(revision)
            self._app.blobs.update(blobs)
        return sha

    def remove_repo(self, repo_id: str, repo_type: str = "model") -> None:
        with self._app.lock:
            self._app.repos.pop((repo_type, repo_id), None)

    def file_entry(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> RepoFileEntry:
        """What the emulator serves for `path` (oid, sha256, size), for assertions."""
        with self._app.lock:
            repo = self._app.repos[(repo_type, repo_id)]
            return repo.commits[repo.refs.get(revision, revision)][path]

    # -- request log -----------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of all requests so far, oldest first."""
        with self._app.lock:
            return list(self._app.log)

    def requests_to(self, pattern: str, method: str | None = None) -> list[RequestRecord]:
        """Logged requests whose decoded path equals or `fnmatch`-matches `pattern`."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (r.path == pattern or fnmatch.fnmatchcase(r.path, pattern))
        ]

    def clear_requests(self) -> None:
        with self._app.lock:
            self._app.log.clear()

    # -- faults ----------------------------------------------------------------------------------------------

    def _add_fault(self, fault: _Fault) -> None:
        with self._app.lock:
            self._app.faults.append(fault)

    def fail_next(
        self, path: str, times: int = 1, status: int = 503, *, method: str | None = None, retry_after: int | None = None
    ) -> None:
        """Answer the next `times` requests matching `path` with `status` (no ``X-Error-Code``)."""
        self._add_fault(_Fault("fail", path, method, times, status=status, retry_after=retry_after))

    def cut_next(self, path: str, after_bytes: int, times: int = 1, *, method: str | None = None) -> None:
        """Send the full ``Content-Length`` but only `after_bytes` of the body, then close the connection."""
        self._add_fault(_Fault("cut", path, method, times, after_bytes=after_bytes))

    def stall_next(
        self, path: str, seconds: float, times: int = 1, *, after_bytes: int = 0, method: str | None = None
    ) -> None:
        """Sleep `seconds` before answering (``after_bytes=0``) or after `after_bytes` of the body."""
        self._add_fault(_Fault("stall", path, method, times, after_bytes=after_bytes, seconds=seconds))

    def clear_faults(self) -> None:
        with self._app.lock:
            self._app.faults.clear()


def _main() -> None:  # pragma: no cover - manual debugging helper
    import argparse

    parser = argparse.ArgumentParser(description="Serve a directory as a single Hub repo (debugging).")
    parser.add_argument("repo_id")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--page-size", type=int, default=1000)
    args = parser.parse_args()
    with HubEmulator(args.port, tree_page_size=args.page_size) as hub:
        sha = hub.add_repo(args.repo_id, args.directory)
        print(json.dumps({"endpoint": hub.endpoint, "repo_id": args.repo_id, "sha": sha}), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    _main()
