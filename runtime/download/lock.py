"""One download per target directory at a time, across processes and within one: an flock on `.airuntime/lock`.

The lock file lives in the metadata folder, outside the model files. A second downloader waits for the first, then
finds the files complete in the manifest and fetches nothing again.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from runtime.download.layout import meta_dir
from runtime.errors import DownloadError

POLL_SECONDS = 0.2


class DirectoryLock:
    def __init__(self, root: Path, timeout: float) -> None:
        self._path = meta_dir(root) / "lock"
        self._timeout = timeout
        self._fd: int | None = None
        self.waited = 0.0

    async def __aenter__(self) -> DirectoryLock:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - started > self._timeout:
                    os.close(fd)
                    raise DownloadError(
                        f"another download into {self._path.parent.parent} still runs after {self._timeout:g}s",
                        reason="locked",
                        status=409,
                    ) from None
                await asyncio.sleep(POLL_SECONDS)
        self.waited = time.monotonic() - started
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:  # a full disk: the pid is only informative, the flock is what counts
            pass
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
