"""A ModelScope emulator (aiohttp): the model-download API of ModelScope's `/api/v1` as both SDKs speak it, plus an
OSS-like object store on a second port for the presigned URLs that LFS downloads are redirected to.

Written from the sources of `modelscope-hub` 0.5.1 (`_legacy_api.py`, `_download.py`, `errors.py`, `config.py`,
`constants.py`) and the legacy `modelscope` SDK as summarised in shared/research/modelscope.md; kept honest by
tests/peers/test_selftest_modelscope_emulator.py, which downloads from it with the official `modelscope-hub` client::

    with ModelScopeEmulator() as ms:                     # 127.0.0.1, free ports, own loop on a daemon thread
        commit = ms.add_repo("org/tiny", {"config.json": b"{}", "model.safetensors": big})
        ms.add_repo("org/tiny", {...}, revision="v1.0", tag=True)
        ms.add_repo("org/secret", {"a.txt": b"x"}, token="ms-secret")          # private
        HubApi(endpoint=ms.endpoint).download_repo("org/tiny", "model", local_dir=d)
        ms.fail_next("/api/v1/models/org/tiny/repo", file="config.json", status=503)
        ms.cut_next("/modelhub/*", after_bytes=1000, server="storage")       # full Content-Length, then closed
        ms.stall_next("/modelhub/*", seconds=5, after_bytes=0)
        ms.corrupt_next("/api/v1/models/org/tiny/repo", file="config.json")   # one byte flipped, same length

What is emulated (`{id}` is `owner/name`, never URL-encoded, as the SDKs send it):

* Every `/api/v1` answer is the envelope ``{"Code", "Data", "Message", "RequestId", "Success"}``; errors carry
  ``Success: false`` and the HTTP status (404 repo/revision/file missing, 403 invalid token, 5xx from faults).
* ``GET /api/v1/models/{id}``: repo metadata. ``GET /api/v1/models/{id}/revisions``:
  ``Data.RevisionMap.{Branches,Tags}[]`` with ``Revision``, ``CommitId``, ``CreatedAt``.
* ``GET /api/v1/models/{id}/repo/files?Revision=&Recursive=True|False[&Root=DIR]``: ``Data.Files[]`` entries as in
  the SDK's own test fixture (``Path``, ``Name``, ``Type`` blob|tree, ``Size``, ``Sha256``, ``IsLFS``,
  ``Revision`` (commit), ``Mode``, ``CommitMessage``, ``CommittedDate``, ``CommitterName``, ``InCheck``), directory
  (tree) entries included, sorted by path, **silently cut at 3,000 entries** (``listing_cap``) with no total and no
  flag, ignoring any paging parameter, as `modelscope-hub` documents the real server. ``Root`` scopes the listing to
  a directory (paths stay repo-relative); a missing ``Root`` or revision is 404. ``unknown_sizes=True`` lists LFS
  files with ``Size: 0``, which the real listing may do ("0 both for empty files and for unknown sizes").
  ``inline_lfs=True`` serves LFS files inline too (no redirect, Range ignored), as a mirror without a store might.
* ``GET|HEAD /api/v1/models/{id}/repo?Revision=&FilePath=``: a non-LFS file is served inline with 200, **ignoring
  Range** ("files served without a redirect ignore Range entirely"); an LFS file (above ``lfs_threshold`` or
  matching ``lfs_patterns``) answers 302 to a presigned URL on the storage port (OSS V1 style:
  ``/modelhub/{id}/{sha256}/{path}?Expires=&OSSAccessKeyId=&Signature=``, valid ``url_ttl`` seconds).
* ``GET /api/v1/repos/internalAccelerationInfo`` (modelscope-hub's intra-cloud probe): no internal region.
* Auth as the legacy API does it: the ``m_session_id`` cookie, or ``Authorization: Bearer`` (unless
  ``accept_bearer=False``). A private repo answers 404 without a token or with another user's token, 403 "The
  authentication token is invalid" with a token nobody has; public repos ignore tokens.
* Storage (like OSS): the signature covers the method, so a HEAD on a GET URL is 403 SignatureDoesNotMatch; an
  expired URL is 403 AccessDenied "Request has expired."; credentials are not needed (nor checked). Range as OSS's
  default behaviour: a valid single range is 206 with Content-Range, an invalid or out-of-range one is ignored (200,
  whole object) unless ``x-oss-range-behavior: standard`` asks for 416.

Faults (thread-safe; each request uses up at most one: the first added fault that matches and has uses left; match
on ``server`` (api|storage), ``method``, the URL-decoded path (exact or `fnmatch`) and ``file`` (FilePath on the
API, the repo path a storage object was signed for)): `fail_next` (status with optional Retry-After), `cut_next`
(``after_bytes`` of the body, then the connection closes), `stall_next` (sleep ``seconds`` before answering or after
``after_bytes``), `corrupt_next` (one byte of the body flipped), `expire_next` (the redirect of an LFS download
points at an already expired URL). Every request lands in `requests`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import fnmatch
import hashlib
import hmac
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from tests.support.faulty_body import write_body
from tests.support.threaded_server import ThreadedServer

HOST = "127.0.0.1"
LISTING_CAP = 3000
DEFAULT_LFS_THRESHOLD = 1024 * 1024
DEFAULT_LFS_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth", "*.onnx", "*.h5", "*.msgpack")
BUCKET = "modelhub"
ACCESS_KEY_ID = "LTAI5tEmulatorKeyId"
COMMIT_DATE = 1767225600  # 2026-01-01
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclasses.dataclass(frozen=True)
class MsFile:
    path: str
    data: bytes
    sha256: str
    is_lfs: bool
    commit: str

    @property
    def size(self) -> int:
        return len(self.data)


@dataclasses.dataclass
class _Repo:
    repo_id: str
    token: str | None
    refs: dict[str, str] = dataclasses.field(default_factory=dict)  # branch/tag -> commit
    tags: set[str] = dataclasses.field(default_factory=set)
    commits: dict[str, dict[str, MsFile]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    server: str  # "api" or "storage"
    method: str
    path: str  # URL-decoded
    query: Mapping[str, str]
    file: str | None  # FilePath on the API, the signed repo path on the storage
    range: str | None
    authorization: str | None
    cookie: str | None  # the m_session_id cookie, if sent
    status: int | None  # None when the body was cut or the client went away mid-body
    chosen: int | None = None  # the status the emulator chose, even when the client went away before it was sent


@dataclasses.dataclass
class _Fault:
    kind: str  # fail | cut | stall | corrupt | expire
    pattern: str
    server: str | None
    method: str | None
    file: str | None
    remaining: int
    status: int = 503
    retry_after: int | None = None
    after_bytes: int = 0
    seconds: float = 0.0

    def matches(self, server: str, method: str, path: str, file: str | None) -> bool:
        if self.server is not None and self.server != server:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        if self.file is not None and (file is None or not fnmatch.fnmatchcase(file, self.file)):
            return False
        return path == self.pattern or fnmatch.fnmatchcase(path, self.pattern)


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _envelope(data: Any, status: int = 200, message: str = "success") -> web.Response:
    body = {
        "Code": status,
        "Data": data,
        "Message": message,
        "RequestId": str(uuid.uuid4()),
        "Success": status == 200,
    }
    return web.json_response(body, status=status)


def _oss_error(status: int, code: str, message: str) -> web.Response:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
        f"  <Code>{code}</Code>\n  <Message>{message}</Message>\n"
        f"  <RequestId>{uuid.uuid4().hex.upper()[:24]}</RequestId>\n  <HostId>{BUCKET}.oss-emulator</HostId>\n</Error>\n"
    )
    return web.Response(status=status, text=xml, content_type="application/xml")


class _MsApp:
    """Both servers' handlers; they run on the emulator's loop, and shared state is guarded by `lock`."""

    def __init__(self, port: int, storage_port: int, options: dict[str, Any]) -> None:
        self.port = port
        self.storage_port = storage_port
        self.storage_host: str = options["storage_host"]
        self.listing_cap: int = options["listing_cap"]
        self.url_ttl: float = options["url_ttl"]
        self.accept_bearer: bool = options["accept_bearer"]
        self.unknown_sizes: bool = options["unknown_sizes"]
        self.inline_lfs: bool = options["inline_lfs"]
        self.valid_tokens: set[str] = set(options["valid_tokens"])
        self.secret = uuid.uuid4().bytes
        self.lock = threading.Lock()
        self.repos: dict[str, _Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content (LFS objects in the store)
        self.etags: dict[str, str] = {}  # sha256 -> the store's ETag (MD5, upper case, as OSS gives it)
        self.faults: list[_Fault] = []
        self.log: list[RequestRecord] = []
        self.incomplete: set[int] = set()
        self.chosen: dict[int, int] = {}
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        for name in ("api", "storage"):
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handler(name))
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, HOST, self.port if name == "api" else self.storage_port, backlog=256)
            await site.start()
            self._runners.append(runner)
            port = int(runner.addresses[0][1])
            if name == "api":
                self.port = port
            else:
                self.storage_port = port

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    # -- plumbing --------------------------------------------------------------------------------------------

    def _handler(self, server: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            path = "/".join(unquote(seg) for seg in request.rel_url.raw_path.split("/"))
            file = self._file_of(server, path, request)
            status: int | None = None
            try:
                response = await self._dispatch(server, request, path, file)
                status = response.status
                return response
            finally:
                if id(request) in self.incomplete:
                    self.incomplete.discard(id(request))
                    status = None
                chosen = self.chosen.pop(id(request), status)
                self._record(server, request, path, file, status, chosen)

        return handle

    @staticmethod
    def _file_of(server: str, path: str, request: web.Request) -> str | None:
        if server == "api":
            return request.query.get("FilePath")
        parts = path.split("/")  # /modelhub/owner/name/sha256/path...
        return "/".join(parts[5:]) if len(parts) > 5 else None

    def _record(
        self, server: str, request: web.Request, path: str, file: str | None, status: int | None, chosen: int | None
    ) -> None:
        cookie = SimpleCookie()
        with contextlib.suppress(Exception):
            cookie.load(request.headers.get("Cookie", ""))
        session = cookie["m_session_id"].value if "m_session_id" in cookie else None
        record = RequestRecord(
            server=server,
            method=request.method,
            path=path,
            query=dict(request.query),
            file=file,
            range=request.headers.get("Range"),
            authorization=request.headers.get("Authorization"),
            cookie=session,
            status=status,
            chosen=chosen,
        )
        with self.lock:
            self.log.append(record)

    def _take_fault(self, server: str, method: str, path: str, file: str | None) -> _Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.remaining > 0 and fault.matches(server, method, path, file):
                    fault.remaining -= 1
                    self.faults = [f for f in self.faults if f.remaining > 0]
                    return fault
        return None

    async def _dispatch(self, server: str, request: web.Request, path: str, file: str | None) -> web.StreamResponse:
        fault = self._take_fault(server, request.method, path, file)
        if fault is not None and fault.kind == "stall" and fault.after_bytes <= 0:
            await asyncio.sleep(fault.seconds)
            fault = None
        if fault is not None and fault.kind == "fail":
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return web.Response(status=fault.status, text=f"emulated {fault.status}\n", headers=headers)
        if server == "storage":
            return await self._storage(request, path, fault)
        try:
            return await self._api(request, path, fault)
        except _ApiError as exc:
            return _envelope(None, exc.status, exc.message)

    # -- the API ---------------------------------------------------------------------------------------------

    async def _api(self, request: web.Request, path: str, fault: _Fault | None) -> web.StreamResponse:
        segments = path.split("/")[1:]
        if segments[:2] != ["api", "v1"]:
            raise _ApiError(404, f"Emulator: no route for {request.method} {path}")
        rest = segments[2:]
        if rest == ["repos", "internalAccelerationInfo"]:
            return _envelope({"InternalRegionQueryAddress": ""})
        if len(rest) < 3 or rest[0] != "models" or request.method not in ("GET", "HEAD"):
            raise _ApiError(404, f"Emulator: no route for {request.method} {path}")
        repo = self._repo("/".join(rest[1:3]), request)
        tail = rest[3:]
        if not tail:
            return _envelope({"Path": rest[1], "Name": rest[2], "Private": repo.token is not None})
        if tail == ["revisions"]:
            return self._revisions(repo)
        if tail == ["repo", "files"]:
            return self._listing(request, repo)
        if tail == ["repo"]:
            return await self._download(request, repo, fault)
        raise _ApiError(404, f"Emulator: no route for {request.method} {path}")

    def _credential(self, request: web.Request) -> str | None:
        cookie = SimpleCookie()
        with contextlib.suppress(Exception):
            cookie.load(request.headers.get("Cookie", ""))
        if "m_session_id" in cookie and cookie["m_session_id"].value:
            return cookie["m_session_id"].value
        header = request.headers.get("Authorization", "")
        if self.accept_bearer and header.lower().startswith("bearer "):
            return header[7:].strip() or None
        return None

    def _repo(self, repo_id: str, request: web.Request) -> _Repo:
        with self.lock:
            repo = self.repos.get(repo_id)
            known = self.valid_tokens | {r.token for r in self.repos.values() if r.token}
        missing = _ApiError(404, f"The model {repo_id} does not exist or is not accessible")
        if repo is None:
            raise missing
        if repo.token is not None:
            token = self._credential(request)
            if token is not None and token not in known:
                raise _ApiError(403, "The authentication token is invalid, please check it or log in again")
            if token != repo.token:
                raise missing
        return repo

    @staticmethod
    def _commit(repo: _Repo, revision: str) -> tuple[str, dict[str, MsFile]]:
        if revision in repo.refs:
            return repo.refs[revision], repo.commits[repo.refs[revision]]
        if revision in repo.commits:
            return revision, repo.commits[revision]
        raise _ApiError(404, f"Revision {revision} of model {repo.repo_id} does not exist")

    def _revisions(self, repo: _Repo) -> web.Response:
        def item(name: str) -> dict[str, Any]:
            return {"Revision": name, "CommitId": repo.refs[name], "CreatedAt": COMMIT_DATE, "Description": ""}

        branches = [item(n) for n in sorted(repo.refs) if n not in repo.tags]
        tags = [item(n) for n in sorted(repo.tags)]
        return _envelope({"RevisionMap": {"Branches": branches, "Tags": tags}})

    def _listing(self, request: web.Request, repo: _Repo) -> web.Response:
        commit, files = self._commit(repo, request.query.get("Revision") or "master")
        recursive = request.query.get("Recursive", "False").lower() == "true"
        root = (request.query.get("Root") or "").strip("/")
        dirs = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
        if root and root not in dirs:
            raise _ApiError(404, f"Path {root} does not exist in revision {commit}")
        prefix = f"{root}/" if root else ""

        def inside(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

        entries = [_tree_entry(d, commit) for d in dirs if inside(d)]
        entries += [_blob_entry(f, self.unknown_sizes) for p, f in files.items() if inside(p)]
        entries.sort(key=lambda entry: entry["Path"])
        return _envelope({"Files": entries[: self.listing_cap]})

    async def _download(self, request: web.Request, repo: _Repo, fault: _Fault | None) -> web.StreamResponse:
        commit, files = self._commit(repo, request.query.get("Revision") or "master")
        file = files.get(request.query.get("FilePath", ""))
        if file is None:
            raise _ApiError(404, f"File {request.query.get('FilePath')} does not exist in revision {commit}")
        if file.is_lfs and not self.inline_lfs:
            expired = int(time.time()) - 60 if fault is not None and fault.kind == "expire" else None
            return web.Response(status=302, headers={"Location": self.presign(repo.repo_id, file, expires=expired)})
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{quote(file.path.rsplit("/", 1)[-1])}"',
        }
        return await _send(self, request, file.data, 200, headers, 0, file.size, fault)

    # -- the store -------------------------------------------------------------------------------------------

    def presign(self, repo_id: str, file: MsFile, method: str = "GET", expires: int | None = None) -> str:
        resource = f"/{BUCKET}/{repo_id}/{file.sha256}/{file.path}"
        expires = expires if expires is not None else int(time.time() + self.url_ttl)
        query = f"Expires={expires}&OSSAccessKeyId={ACCESS_KEY_ID}&Signature={self._sign(method, expires, resource)}"
        return f"http://{self.storage_host}:{self.storage_port}{quote(resource)}?{query}"

    def _sign(self, method: str, expires: int, resource: str) -> str:
        digest = hmac.new(self.secret, f"{method}\n\n\n{expires}\n{resource}".encode(), hashlib.sha1).digest()
        return quote(base64.b64encode(digest).decode(), safe="")

    async def _storage(self, request: web.Request, path: str, fault: _Fault | None) -> web.StreamResponse:
        expires = request.query.get("Expires", "")
        signature = quote(request.query.get("Signature", ""), safe="")
        if not expires.isdigit() or request.query.get("OSSAccessKeyId") != ACCESS_KEY_ID:
            return _oss_error(403, "AccessDenied", "AccessDenied")
        if not hmac.compare_digest(signature, self._sign(request.method, int(expires), path)):
            return _oss_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match")
        if int(expires) < time.time():
            return _oss_error(403, "AccessDenied", "Request has expired.")
        parts = path.split("/")
        with self.lock:
            data = self.blobs.get(parts[4]) if len(parts) > 5 else None
            etag = self.etags.get(parts[4], "")
        if data is None:
            return _oss_error(404, "NoSuchKey", "The specified key does not exist.")
        headers = {
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT",
            "x-oss-request-id": uuid.uuid4().hex.upper()[:24],
            "x-oss-object-type": "Normal",
        }
        size = len(data)
        span = _oss_range(request.headers.get("Range"), size)
        if span is None:
            if request.headers.get("x-oss-range-behavior") == "standard" and request.headers.get("Range"):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            return await _send(self, request, data, 200, headers, 0, size, fault)
        headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{size}"
        return await _send(self, request, data, 206, headers, span[0], span[1], fault)


def _tree_entry(path: str, commit: str) -> dict[str, Any]:
    return {
        "CommitMessage": "emulated commit",
        "CommittedDate": COMMIT_DATE,
        "CommitterName": "emulator",
        "InCheck": False,
        "IsLFS": False,
        "Mode": "16384",
        "Name": path.rsplit("/", 1)[-1],
        "Path": path,
        "Revision": commit,
        "Sha256": "",
        "Size": 0,
        "Type": "tree",
    }


def _blob_entry(file: MsFile, unknown_sizes: bool = False) -> dict[str, Any]:
    entry = _tree_entry(file.path, file.commit)
    size = 0 if unknown_sizes and file.is_lfs else file.size
    entry.update(IsLFS=file.is_lfs, Mode="33188", Sha256=file.sha256, Size=size, Type="blob")
    return entry


def _oss_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) for a valid single range within the object (OSS's default rules), else None (ignored)."""
    match = _RANGE_RE.match((header or "").strip())
    if match is None or size == 0:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:
        length = int(last)
        return (size - length, size) if 0 < length <= size else None
    start = int(first)
    end = int(last) + 1 if last else size
    return (start, end) if start < end <= size else None


async def _send(
    app: _MsApp,
    request: web.Request,
    data: bytes,
    status: int,
    headers: dict[str, str],
    start: int,
    end: int,
    fault: _Fault | None,
) -> web.StreamResponse:
    """Bytes [start, end) of `data`, with the fault (cut, stall, corrupt) applied to the body."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    app.chosen[id(request)] = status
    await response.prepare(request)
    if request.method == "HEAD":
        await response.write_eof()
        return response
    body: bytes | memoryview = memoryview(data)[start:end]  # no copy: the bench serves GiB files from here
    if fault is not None and fault.kind == "corrupt" and body:
        flipped = bytearray(body)
        flipped[len(flipped) // 2] ^= 0xFF
        body = bytes(flipped)
    kind = fault.kind if fault is not None else None
    complete = await write_body(
        request,
        response,
        body,
        cut_after=fault.after_bytes if fault is not None and kind == "cut" else None,
        stall_after=fault.after_bytes if fault is not None and kind == "stall" else None,
        stall_seconds=fault.seconds if fault is not None else 0.0,
    )
    if not complete:
        app.incomplete.add(id(request))
    return response


class ModelScopeEmulator(ThreadedServer):
    """The emulator on a background thread with its own loop; `endpoint` is what MODELSCOPE_ENDPOINT (or config
    `ms_endpoint`) takes. ``storage_host="localhost"`` puts the presigned URLs on another host name than the API."""

    def __init__(
        self,
        port: int = 0,
        storage_port: int = 0,
        *,
        storage_host: str = HOST,
        listing_cap: int = LISTING_CAP,
        url_ttl: float = 3600.0,
        accept_bearer: bool = True,
        valid_tokens: Iterable[str] = (),
        unknown_sizes: bool = False,
        inline_lfs: bool = False,
    ) -> None:
        options = {
            "storage_host": storage_host,
            "listing_cap": listing_cap,
            "url_ttl": url_ttl,
            "accept_bearer": accept_bearer,
            "valid_tokens": valid_tokens,
            "unknown_sizes": unknown_sizes,
            "inline_lfs": inline_lfs,
        }
        self._app = _MsApp(port, storage_port, options)
        super().__init__(self._app, "modelscope-emulator")

    @property
    def endpoint(self) -> str:
        return self.url

    @property
    def storage_port(self) -> int:
        return self._app.storage_port

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes] | Path,
        revision: str = "master",
        *,
        token: str | None = None,
        tag: bool = False,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        lfs_patterns: Iterable[str] = DEFAULT_LFS_PATTERNS,
    ) -> str:
        """Add (or replace) `revision` of a repo; returns its commit id. ``token`` makes the repo private."""
        if isinstance(files, Path):
            files = {p.relative_to(files).as_posix(): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
        patterns = tuple(lfs_patterns)
        sha256 = {path.strip("/"): hashlib.sha256(data).hexdigest() for path, data in files.items()}
        digest = hashlib.sha1(f"{repo_id}\0{revision}\0".encode())
        for path in sorted(sha256):
            digest.update(f"{path}\0{sha256[path]}\n".encode())
        commit = digest.hexdigest()
        entries: dict[str, MsFile] = {}
        for path, data in files.items():
            path = path.strip("/")
            name = path.rsplit("/", 1)[-1]
            lfs = len(data) > lfs_threshold or any(fnmatch.fnmatchcase(name, p) for p in patterns)
            entries[path] = MsFile(path, bytes(data), sha256[path], lfs, commit)
        with self._app.lock:
            repo = self._app.repos.setdefault(repo_id, _Repo(repo_id, token))
            repo.token = token
            repo.commits[commit] = entries
            repo.refs[revision] = commit
            (repo.tags.add if tag else repo.tags.discard)(revision)
            self._app.blobs.update({f.sha256: f.data for f in entries.values() if f.is_lfs})
            self._app.etags.update({f.sha256: hashlib.md5(f.data).hexdigest().upper() for f in entries.values() if f.is_lfs})
        return commit

    def file(self, repo_id: str, path: str, revision: str = "master") -> MsFile:
        with self._app.lock:
            repo = self._app.repos[repo_id]
            return repo.commits[repo.refs.get(revision, revision)][path]

    def presign(self, repo_id: str, path: str, *, method: str = "GET", expires: int | None = None) -> str:
        """A presigned storage URL for an LFS file, as the API's redirect would give it (for store-level tests)."""
        return self._app.presign(repo_id, self.file(repo_id, path), method, expires)

    # -- request log and faults ------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._app.lock:
            return list(self._app.log)

    def requests_to(
        self, pattern: str, method: str | None = None, *, server: str | None = None, file: str | None = None
    ) -> list[RequestRecord]:
        probe = _Fault("probe", pattern, server, method, file, 1)
        return [r for r in self.requests if probe.matches(r.server, r.method, r.path, r.file)]

    def clear_requests(self) -> None:
        with self._app.lock:
            self._app.log.clear()

    def clear_faults(self) -> None:
        with self._app.lock:
            self._app.faults.clear()

    def _add(self, kind: str, pattern: str, times: int, **fields: Any) -> None:
        fault = _Fault(kind, pattern, fields.pop("server", None), fields.pop("method", None), None, times)
        fault.file = fields.pop("file", None)
        for key, value in fields.items():
            setattr(fault, key, value)
        with self._app.lock:
            self._app.faults.append(fault)

    def fail_next(
        self, pattern: str, times: int = 1, status: int = 503, retry_after: int | None = None, **match: Any
    ) -> None:
        self._add("fail", pattern, times, status=status, retry_after=retry_after, **match)

    def cut_next(self, pattern: str, after_bytes: int, times: int = 1, **match: Any) -> None:
        self._add("cut", pattern, times, after_bytes=after_bytes, **match)

    def stall_next(self, pattern: str, seconds: float, after_bytes: int = 0, times: int = 1, **match: Any) -> None:
        self._add("stall", pattern, times, seconds=seconds, after_bytes=after_bytes, **match)

    def corrupt_next(self, pattern: str, times: int = 1, **match: Any) -> None:
        self._add("corrupt", pattern, times, **match)

    def expire_next(self, pattern: str, times: int = 1, **match: Any) -> None:
        """The next redirects (API download of an LFS file) point at presigned URLs that have already expired."""
        self._add("expire", pattern, times, **match)


def _main() -> None:  # pragma: no cover - used by bench/download_bench.py and for debugging
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Serve a directory as one ModelScope model repo.")
    parser.add_argument("repo_id")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with ModelScopeEmulator(args.port) as ms:
        commit = ms.add_repo(args.repo_id, args.directory)
        print(json.dumps({"endpoint": ms.endpoint, "repo_id": args.repo_id, "commit": commit}), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    _main()
