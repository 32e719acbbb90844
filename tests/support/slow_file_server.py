"""A throttled HTTP file server with Range support (the rate is shared by all connections), on its own thread: downloads that are still running when a
test sends SIGTERM. Counts the body bytes it sent, so a test can prove a resumed download fetched only the rest::

    with SlowFileServer(directory, bytes_per_second=2 << 20) as server:
        server.url + "/model.bin"   # HEAD gives size and ETag; GET honours `Range: bytes=a-b`
        server.bytes_sent           # body bytes written so far, all requests
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

from aiohttp import web

from tests.support.threaded_server import ThreadedServer

CHUNK = 64 * 1024
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class _SlowFiles:
    def __init__(self, directory: Path, bytes_per_second: float) -> None:
        self.directory = directory
        self.rate = bytes_per_second
        self.port = 0
        self.bytes_sent = 0
        self._active = 0
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_route("HEAD", "/{name}", self._head)
        app.router.add_get("/{name}", self._get, allow_head=False)
        self._app = app

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _file(self, request: web.Request) -> Path:
        path = self.directory / request.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound()
        return path

    @staticmethod
    def _etag(path: Path) -> str:
        stat = path.stat()
        return '"' + hashlib.sha1(f"{stat.st_size}-{stat.st_mtime_ns}".encode()).hexdigest() + '"'

    async def _head(self, request: web.Request) -> web.StreamResponse:
        path = self._file(request)
        response = web.StreamResponse(headers={"ETag": self._etag(path), "Accept-Ranges": "bytes"})
        response.content_length = path.stat().st_size
        await response.prepare(request)
        await response.write_eof()
        return response

    async def _get(self, request: web.Request) -> web.StreamResponse:
        path = self._file(request)
        size = path.stat().st_size
        start, end = 0, size
        status = 200
        match = _RANGE.fullmatch(request.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(size, int(match.group(2)) + 1) if match.group(2) else size
            status = 206
        response = web.StreamResponse(status=status, headers={"ETag": self._etag(path), "Accept-Ranges": "bytes"})
        if status == 206:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        response.content_length = end - start
        await response.prepare(request)
        self._active += 1
        try:
            with path.open("rb") as handle:
                handle.seek(start)
                offset = start
                while offset < end:
                    chunk = handle.read(min(CHUNK, end - offset))
                    await response.write(chunk)
                    self.bytes_sent += len(chunk)
                    offset += len(chunk)
                    await asyncio.sleep(len(chunk) * self._active / self.rate)  # the rate is for all connections
        finally:
            self._active -= 1
        return response


class SlowFileServer(ThreadedServer):
    def __init__(self, directory: Path, bytes_per_second: float) -> None:
        self._files = _SlowFiles(directory, bytes_per_second)
        super().__init__(self._files, "slow-file-server")

    @property
    def bytes_sent(self) -> int:
        return self._files.bytes_sent
