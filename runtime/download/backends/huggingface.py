"""HuggingFace repositories (`org/repo`, `hf://org/repo@revision`): huggingface_hub resolves the revision to a
commit and lists the files with their sizes, LFS sha256 and git blob ids; the bytes come from the Hub's `resolve`
URLs of that commit as parallel ranged GETs, and every file is checked against its sha256 or git blob id.

`HF_ENDPOINT` (or config `hf_endpoint`) selects the Hub or a mirror; a token is sent as a Bearer header.
The listing is retried a few times on 429, 5xx and dropped connections (Retry-After honoured up to a cap); a host
that does not resolve fails at once with a message naming it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from runtime.download.backends.base import RemoteFile
from runtime.download.backends.blocking_http import is_direct, read_range_blocking
from runtime.download.backends.http_range import new_session, parse_retry_after, read_range, status_text
from runtime.download.credentials import SourceSettings
from runtime.download.layout import safe_relative_path
from runtime.download.uri import SourceSpec
from runtime.errors import DownloadError, RetryableError

DEFAULT_ENDPOINT = "https://huggingface.co"
LIST_ATTEMPTS = 4
LIST_BACKOFF = 0.25
LIST_RETRY_AFTER_CAP = 10.0
_DNS_MARKERS = (
    "Name or service not known",
    "nodename nor servname",
    "Temporary failure in name resolution",
    "No address associated with hostname",
    "getaddrinfo failed",
)


class HuggingFaceBackend:
    def __init__(self, spec: SourceSpec, settings: SourceSettings) -> None:
        self._repo = spec.location
        self._revision = spec.revision or settings.hf_revision or "main"
        self._endpoint = (settings.hf_endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self._token = settings.hf_token
        self._commit: str | None = None
        self._session: aiohttp.ClientSession | None = None
        # The transfer engine's threaded path (blocking_http.py) unless a proxy applies: then aiohttp's.
        self.read_range_blocking: Callable[[RemoteFile, int, int], Iterator[memoryview]] | None = (
            self._read_range_blocking if is_direct(self._endpoint) else None
        )

    def describe(self) -> str:
        return f"hf://{self._repo}@{self._revision}"

    async def list_files(self) -> list[RemoteFile]:
        return await asyncio.to_thread(self._list)

    def _list(self) -> list[RemoteFile]:
        from huggingface_hub import HfApi, constants
        from huggingface_hub.hf_api import RepoFile

        # No telemetry: it would call the public Hub from a sidecar that may have no route to it. The library reads
        # this constant when it would send; the process environment is left as it is.
        constants.HF_HUB_DISABLE_TELEMETRY = True

        api = HfApi(endpoint=self._endpoint, token=self._token or False)
        for attempt in range(1, LIST_ATTEMPTS + 1):
            try:
                info = api.model_info(self._repo, revision=self._revision)
                commit = info.sha or self._revision
                entries = list(api.list_repo_tree(self._repo, revision=commit, recursive=True))
                break
            except Exception as exc:
                failure = self._classified(exc)
                if not isinstance(failure, RetryableError) or attempt == LIST_ATTEMPTS:
                    raise DownloadError(str(failure), reason=failure.reason, status=failure.status) from None
                delay = LIST_BACKOFF * 2 ** (attempt - 1) * (0.5 + random.random())
                if failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, LIST_RETRY_AFTER_CAP))
                time.sleep(delay)  # in a worker thread (list_files runs _list through asyncio.to_thread)
        self._commit = commit
        files: list[RemoteFile] = []
        for entry in entries:
            if not isinstance(entry, RepoFile):
                continue
            lfs: Any = entry.lfs
            sha256 = getattr(lfs, "sha256", None) or (lfs.get("sha256") if isinstance(lfs, dict) else None)
            files.append(
                RemoteFile(
                    path=safe_relative_path(entry.path),
                    size=int(entry.size),
                    etag=sha256 or entry.blob_id,
                    sha256=sha256,
                    git_sha1=None if sha256 else entry.blob_id,
                )
            )
        if not files:
            raise DownloadError(f"{self.describe()} has no files", reason="empty", status=404)
        return files

    def _classified(self, exc: Exception) -> DownloadError:
        from huggingface_hub import errors

        name = self.describe()
        if isinstance(exc, errors.RevisionNotFoundError):
            return DownloadError(f"{name}: revision {self._revision!r} not found", reason="not_found", status=404)
        if isinstance(exc, errors.GatedRepoError):
            return DownloadError(
                f"{name}: gated repository; a token with access is needed", reason="unauthorized", status=403
            )
        if isinstance(exc, errors.RepositoryNotFoundError):
            hint = "" if self._token else " (or private: set a token)"
            return DownloadError(f"{name}: repository not found{hint}", reason="not_found", status=404)
        if isinstance(exc, errors.HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else 502
            if status in (401, 403):
                return DownloadError(
                    f"{name}: access denied (HTTP {status}); check the token", reason="unauthorized", status=403
                )
            if status == 429 or status >= 500:
                headers = exc.response.headers if exc.response is not None else {}
                retry_after = parse_retry_after(headers.get("Retry-After"))
                return RetryableError(
                    f"{name}: the Hub answered HTTP {status_text(status)}",
                    throttled=status == 429,
                    retry_after=retry_after,
                )
            return DownloadError(
                f"{name}: the Hub answered HTTP {status_text(status)}", reason="http_status", status=502
            )
        host = urlsplit(self._endpoint).hostname or self._endpoint
        chain: list[str] = []
        cause: BaseException | None = exc
        while cause is not None and len(chain) < 10:
            chain.append(str(cause))
            cause = cause.__cause__ or cause.__context__
        if any(marker in text for text in chain for marker in _DNS_MARKERS):
            return DownloadError(
                f"{name}: cannot reach {self._endpoint}: cannot resolve host {host}", reason="unreachable", status=502
            )
        failure = RetryableError(f"{name}: cannot reach {self._endpoint}: {type(exc).__name__}")
        failure.reason = "unreachable"
        return failure

    def _file_url(self, file: RemoteFile) -> tuple[str, dict[str, str]]:
        url = f"{self._endpoint}/{self._repo}/resolve/{self._commit or self._revision}/{quote(file.path)}"
        return url, {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def read_range(self, file: RemoteFile, start: int, end: int) -> AsyncIterator[bytes]:
        if self._session is None:
            self._session = new_session()
        url, headers = self._file_url(file)
        return read_range(self._session, url, headers, start, end, f"{self.describe()}/{file.path}")

    def _read_range_blocking(self, file: RemoteFile, start: int, end: int) -> Iterator[memoryview]:
        url, headers = self._file_url(file)
        return read_range_blocking(url, headers, start, end, f"{self.describe()}/{file.path}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
