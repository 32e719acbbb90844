"""ModelScope model repositories (`ms://owner/name`, `modelscope://owner/name[:revision]`) over plain HTTP.

The protocol is the one both ModelScope SDKs speak (`modelscope` and the light `modelscope-hub`):
- listing: `GET {endpoint}/api/v1/models/{owner}/{name}/repo/files?Revision=R&Recursive=True` answers the envelope
  `{"Code": 200, "Success": true, "Data": {"Files": [{"Path", "Type": blob|tree, "Size", "Sha256", "IsLFS", ...}]}}`.
  The server silently cuts a listing at 3,000 entries, so a listing of exactly that many is completed as
  modelscope-hub does: each subtree listed again with `Root=DIR`, and a subtree still at the cap listed one level
  (`Recursive=False`) and walked per child directory. A directory with 3,000 or more direct entries cannot be
  listed whole by anyone: that is an error, never a partial download.
- bytes: `GET {endpoint}/api/v1/models/{owner}/{name}/repo?Revision=R&FilePath=P`. Small (git) files come back inline
  and the server ignores Range for them, so they are fetched as one stream; LFS files answer 302 to a presigned
  storage URL (Aliyun OSS/CDN), which is resolved once per file and then takes parallel ranged GETs. A refused
  presigned URL (expired) is asked for again.
- integrity: every file is checked against the listing's Sha256 and Size; a Content-Range or body that announces
  another size is an error that says so.
- auth: the token goes as `Authorization: Bearer` and as the `m_session_id` cookie (the legacy API's own), only to
  the ModelScope endpoint, never to the storage the redirects point at.

Why not the `modelscope-hub` package: it would bring requests, urllib3, cryptography and cffi into the binary for
four GET requests that aiohttp (already in it) does, and its downloads run in threads outside our transfer engine
(no shared worker budget, resume records or manifest).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote_plus, urljoin

import aiohttp
import orjson

from runtime.download.backends.base import RemoteFile
from runtime.download.backends.http_range import (
    connection_error,
    new_session,
    parse_content_range,
    status_error,
    status_text,
    stream_range,
)
from runtime.download.credentials import SourceSettings
from runtime.download.layout import safe_relative_path
from runtime.download.uri import SourceSpec
from runtime.errors import DownloadError, RetryableError

DEFAULT_ENDPOINT = "https://www.modelscope.cn"
DEFAULT_REVISION = "master"
LISTING_CAP = 3000  # modelscope-hub's REPO_FILES_TRUNCATION_LIMIT: the server returns no more, and says nothing
LIST_MAX_REQUESTS = 5000  # modelscope-hub's MODELSCOPE_REPO_TREE_MAX_REQUESTS
LIST_WORKERS = 8
LIST_ATTEMPTS = 4
LIST_BACKOFF = 0.25
LIST_RETRY_AFTER_CAP = 10.0
REDIRECTS = (301, 302, 303, 307, 308)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def normalize_endpoint(value: str) -> str:
    """A full URL from MODELSCOPE_ENDPOINT, or a bare host as MODELSCOPE_DOMAIN gives it (https:// added)."""
    value = value.strip()
    if not value.lower().startswith(("http://", "https://")):
        value = f"https://{value}"
    return value.rstrip("/")


class _NotFound(Exception):
    """A listing answered 404: the repository or the revision is missing (told apart by `_explain_not_found`)."""


class ModelScopeBackend:
    def __init__(self, spec: SourceSpec, settings: SourceSettings) -> None:
        self._repo = spec.location
        self._revision = spec.revision or settings.ms_revision or DEFAULT_REVISION
        self._endpoint = normalize_endpoint(settings.ms_endpoint or settings.endpoint or DEFAULT_ENDPOINT)
        self._token = settings.ms_token
        self._session: aiohttp.ClientSession | None = None
        self._list_requests = 0
        self._locations: dict[str, str] = {}  # file path -> presigned URL ("" when served inline)
        self._resolving: dict[str, asyncio.Lock] = {}

    def describe(self) -> str:
        return f"ms://{self._repo}:{self._revision}"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = new_session()
        return self._session

    def _auth(self) -> dict[str, str]:
        if not self._token:
            return {}
        return {"Authorization": f"Bearer {self._token}", "Cookie": f"m_session_id={self._token}"}

    def _api(self, tail: str = "") -> str:
        return f"{self._endpoint}/api/v1/models/{self._repo}{tail}"

    # -- listing ---------------------------------------------------------------------------------------------

    async def list_files(self) -> list[RemoteFile]:
        try:
            entries = await self._walk()
        except _NotFound:
            raise await self._explain_not_found() from None
        files = [_remote_file(entry) for entry in entries if (entry.get("Type") or "blob") != "tree"]
        if not files:
            raise DownloadError(f"{self.describe()} has no files", reason="empty", status=404)
        return await self._with_sizes(files)

    async def _with_sizes(self, files: list[RemoteFile]) -> list[RemoteFile]:
        """The listing gives Size 0 for empty files and for unknown sizes alike (modelscope-hub's own note): a
        0-byte entry whose sha256 is not that of nothing gets its size from the source (one 1-byte ranged GET)."""
        unknown = [i for i, f in enumerate(files) if f.size == 0 and f.sha256 and f.sha256 != EMPTY_SHA256]
        slots = asyncio.Semaphore(LIST_WORKERS)

        async def probe(index: int) -> None:
            async with slots:
                files[index] = dataclasses.replace(files[index], size=await self._probe_size(files[index]))

        await asyncio.gather(*(probe(index) for index in unknown))
        return files

    async def _probe_size(self, file: RemoteFile) -> int:
        what = f"{self.describe()}/{file.path}"
        response = await self._open(file, 0, 1, what)
        try:
            content_range = parse_content_range(response.headers.get("Content-Range"))
            length = response.headers.get("Content-Length", "")
            total = content_range[2] if content_range else int(length) if length.isdigit() else None
        finally:
            response.close()  # the body (maybe the whole file, for an inline one) is not wanted
        if total is None:
            raise DownloadError(f"{what}: the listing and the source give no size", reason="bad_source")
        return total

    async def _walk(self) -> list[dict[str, Any]]:
        """The whole tree despite the server's cap (modelscope-hub's `_walk_repo_files`, without its silent gaps)."""
        first = await self._list(None, recursive=True)
        if len(first) < LISTING_CAP:
            return first
        collected: dict[str, dict[str, Any]] = {}
        known: dict[str | None, list[dict[str, Any]]] = {None: first}
        frontier: list[str | None] = [None]
        while frontier:
            known.update(await self._list_each([root for root in frontier if root not in known], recursive=True))
            capped = []
            for root in frontier:
                entries = known.pop(root)
                collected.update((_entry_path(entry), entry) for entry in entries if _entry_path(entry))
                if len(entries) >= LISTING_CAP:
                    capped.append(root)
            shallow = await self._list_each(capped, recursive=False)
            frontier = []
            for root in capped:
                entries = shallow[root]
                if len(entries) >= LISTING_CAP:
                    raise DownloadError(
                        f"{self.describe()}: directory {root or '/'!r} holds {LISTING_CAP} or more entries, more "
                        "than the ModelScope listing API returns; it cannot be listed completely",
                        reason="listing_cap",
                        status=502,
                    )
                collected.update((_entry_path(entry), entry) for entry in entries if _entry_path(entry))
                frontier += [_entry_path(entry) for entry in entries if entry.get("Type") == "tree"]
            frontier = list(dict.fromkeys(frontier))
        return list(collected.values())

    async def _list_each(self, roots: list[str | None], recursive: bool) -> dict[str | None, list[dict[str, Any]]]:
        slots = asyncio.Semaphore(LIST_WORKERS)

        async def one(root: str | None) -> list[dict[str, Any]]:
            async with slots:
                return await self._list(root, recursive)

        listings = await asyncio.gather(*(one(root) for root in roots))
        return dict(zip(roots, listings, strict=True))

    async def _list(self, root: str | None, recursive: bool) -> list[dict[str, Any]]:
        """One listing request, retried on 429, 5xx and dropped connections."""
        self._list_requests += 1
        if self._list_requests > LIST_MAX_REQUESTS:
            raise DownloadError(
                f"{self.describe()}: listing the repository took more than {LIST_MAX_REQUESTS} requests; giving up",
                reason="listing_cap",
                status=502,
            )
        params = {"Revision": self._revision, "Recursive": str(recursive)}
        if root:
            params["Root"] = root
        for attempt in range(1, LIST_ATTEMPTS + 1):
            try:
                return await self._list_once(params)
            except RetryableError as failure:
                if attempt == LIST_ATTEMPTS:
                    raise DownloadError(str(failure), reason=failure.reason, status=failure.status) from None
                delay = LIST_BACKOFF * 2 ** (attempt - 1) * (0.5 + random.random())
                if failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, LIST_RETRY_AFTER_CAP))
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _list_once(self, params: dict[str, str]) -> list[dict[str, Any]]:
        url = self._api("/repo/files")
        try:
            async with self._client().get(url, params=params, headers=self._auth()) as response:
                body = await response.read()
                status, headers = response.status, response.headers
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            failure = connection_error(exc, url, f"{self.describe()}: cannot reach {self._endpoint}")
            failure.reason = "unreachable"
            raise failure from None
        if status == 404:
            raise _NotFound
        if status != 200:
            raise self._api_error(status, headers, body)
        data = _envelope_data(body, self.describe())
        files = data.get("Files") if isinstance(data, dict) else data
        if not isinstance(files, list):
            raise DownloadError(f"{self.describe()}: the listing has no file list", reason="bad_source")
        return [entry for entry in files if isinstance(entry, dict)]

    def _api_error(self, status: int, headers: Any, body: bytes) -> DownloadError:
        name = self.describe()
        if status in (401, 403):
            hint = "check the token" if self._token else "a token (MS_TOKEN or MODELSCOPE_API_TOKEN) is needed"
            detail = _server_message(body)
            return DownloadError(
                f"{name}: access denied (HTTP {status}); {hint}" + (f" ({detail})" if detail else ""),
                reason="unauthorized",
                status=403,
            )
        failure = status_error(status, name, headers)
        if isinstance(failure, RetryableError):
            return RetryableError(
                f"{name}: ModelScope answered HTTP {status_text(status)}",
                throttled=failure.throttled,
                retry_after=failure.retry_after,
            )
        return failure

    async def _explain_not_found(self) -> DownloadError:
        """404 on the listing: the repository is missing (or private), or only the revision is."""
        url = self._api()
        try:
            async with self._client().get(url, headers=self._auth()) as response:
                repo_exists = response.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            repo_exists = False
        if repo_exists:
            return DownloadError(
                f"{self.describe()}: revision {self._revision!r} not found", reason="not_found", status=404
            )
        hint = "" if self._token else " (or private: set a token)"
        return DownloadError(f"{self.describe()}: repository not found{hint}", reason="not_found", status=404)

    # -- bytes -----------------------------------------------------------------------------------------------

    def read_range(self, file: RemoteFile, start: int, end: int) -> AsyncIterator[bytes]:
        return self._read(file, start, end)

    async def _read(self, file: RemoteFile, start: int, end: int) -> AsyncIterator[bytes]:
        what = f"{self.describe()}/{file.path}"
        response = await self._open(file, start, end, what)
        try:
            async for chunk in stream_range(response, start, end, what, total=file.size):
                yield chunk
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
            raise connection_error(exc, str(response.url), what) from None
        finally:
            response.release()

    async def _open(self, file: RemoteFile, start: int, end: int, what: str) -> aiohttp.ClientResponse:
        """A 200/206 answer for bytes [start, end): from the presigned URL once known, else from ModelScope, whose
        first answer for the file tells which (a redirect, or the bytes inline)."""
        ranged = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        location = self._locations.get(file.path)
        if location is None:
            lock = self._resolving.setdefault(file.path, asyncio.Lock())
            async with lock:  # the parts of one file wait for the first one's redirect
                location = self._locations.get(file.path)
                if location is None:
                    response = await self._get(self._download_url(file), {**ranged, **self._auth()}, what)
                    if response.status not in REDIRECTS:
                        self._locations[file.path] = ""
                        return self._checked(response, what)
                    location = urljoin(self._download_url(file), response.headers.get("Location", ""))
                    response.release()
                    self._locations[file.path] = location
        if not location:
            return self._checked(await self._get(self._download_url(file), {**ranged, **self._auth()}, what), what)
        response = await self._get(location, ranged, what, follow=True)  # presigned: no credentials of ours
        if response.status in (401, 403):
            response.release()
            self._locations.pop(file.path, None)  # expired: the next attempt asks ModelScope for a fresh URL
            raise RetryableError(f"{what}: the storage refused the presigned URL (HTTP {response.status})")
        return self._checked(response, what)

    def _download_url(self, file: RemoteFile) -> str:
        revision, path = quote_plus(self._revision), quote_plus(file.path)
        return self._api(f"/repo?Revision={revision}&FilePath={path}")

    async def _get(self, url: str, headers: dict[str, str], what: str, follow: bool = False) -> aiohttp.ClientResponse:
        try:
            return await self._client().get(url, headers=headers, allow_redirects=follow)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise connection_error(exc, url, what) from None

    def _checked(self, response: aiohttp.ClientResponse, what: str) -> aiohttp.ClientResponse:
        if response.status in (200, 206):
            return response
        response.release()
        if response.status == 404:
            raise DownloadError(f"{what}: not found at that revision (HTTP 404)", reason="not_found", status=404)
        raise status_error(response.status, what, response.headers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _entry_path(entry: dict[str, Any]) -> str:
    return str(entry.get("Path") or entry.get("Name") or "")


def _remote_file(entry: dict[str, Any]) -> RemoteFile:
    sha256 = str(entry.get("Sha256") or "")
    sha256 = sha256.lower() if _SHA256.fullmatch(sha256) else ""
    size = entry.get("Size")
    return RemoteFile(
        path=safe_relative_path(_entry_path(entry)),
        size=int(size) if isinstance(size, int | str) and str(size).isdigit() else 0,
        etag=sha256 or str(entry.get("Revision") or "") or None,
        sha256=sha256 or None,
        ranged=bool(entry.get("IsLFS")),
    )


def _envelope_data(body: bytes, name: str) -> Any:
    """`Data` of a `{"Code": 200, "Success": true, "Data": ...}` answer, or DownloadError with the server's message."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise DownloadError(f"{name}: ModelScope's answer is not JSON", reason="bad_source") from None
    if not isinstance(document, dict):
        raise DownloadError(f"{name}: ModelScope's answer is not a JSON object", reason="bad_source")
    if document.get("Success") is False or document.get("Code") not in (None, 200, "200"):
        message = _server_message(body) or "no message"
        raise DownloadError(f"{name}: ModelScope refused the listing: {message}", reason="bad_source")
    return document.get("Data")


def _server_message(body: bytes) -> str:
    """The `Message` of an error envelope, one line, at most 200 characters ("" when there is none)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    message = document.get("Message") if isinstance(document, dict) else None
    return str(message).splitlines()[0][:200] if message else ""
