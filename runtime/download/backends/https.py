"""One file over HTTPS (`https://host/path/model.gguf`): size and ETag from a HEAD, ranged GETs for the bytes
(from a thread each through blocking_http.py, or through aiohttp when a proxy applies)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import unquote, urlsplit

import aiohttp

from runtime.download.backends.base import RemoteFile
from runtime.download.backends.blocking_http import is_direct, read_range_blocking
from runtime.download.backends.http_range import connection_error, new_session, read_range, status_error
from runtime.download.layout import safe_relative_path
from runtime.errors import DownloadError, RetryableError


class HttpsBackend:
    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self._url = url
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None
        parts = urlsplit(url)
        self._shown = f"{parts.scheme}://{parts.hostname}{parts.path}"
        name = unquote(parts.path.rsplit("/", 1)[-1])
        if not name:
            raise DownloadError(f"{self._shown}: the URL does not name a file", reason="bad_source", status=400)
        self._name = safe_relative_path(name)
        # The transfer engine's threaded path (blocking_http.py) unless a proxy applies: then aiohttp's.
        self.read_range_blocking: Callable[[RemoteFile, int, int], Iterator[memoryview]] | None = (
            self._read_range_blocking if is_direct(url) else None
        )

    def describe(self) -> str:
        return self._shown

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = new_session()
        return self._session

    async def list_files(self) -> list[RemoteFile]:
        try:
            async with self._client().head(self._url, headers=self._headers, allow_redirects=True) as response:
                if response.status != 200:
                    raise status_error(response.status, self._shown, response.headers)
                length = response.headers.get("Content-Length")
                etag = response.headers.get("ETag")
        except (TimeoutError, aiohttp.ClientConnectionError, OSError) as exc:
            failure = connection_error(exc, self._url, self._shown)
            raise DownloadError(str(failure), reason="unreachable", status=502) from None
        except RetryableError as exc:
            raise DownloadError(str(exc), reason="unreachable", status=502) from None
        if length is None or not length.isdigit():
            raise DownloadError(f"{self._shown}: the server does not give the file size", reason="bad_source")
        return [RemoteFile(path=self._name, size=int(length), etag=etag)]

    def read_range(self, file: RemoteFile, start: int, end: int) -> AsyncIterator[bytes]:
        return read_range(self._client(), self._url, self._headers, start, end, self._shown)

    def _read_range_blocking(self, file: RemoteFile, start: int, end: int) -> Iterator[memoryview]:
        return read_range_blocking(self._url, self._headers, start, end, self._shown)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
