"""Mounted volumes (`pvc://path`, `file:///path`, `/path`): files are cloned (reflink) where the filesystem allows,
else copied in the kernel (`copy_file_range`), with the same filtering, verification and manifest as any source."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

from runtime.download.backends.base import RemoteFile
from runtime.download.layout import META_DIR, PARTIAL_SUFFIX, safe_relative_path
from runtime.errors import DownloadError

FICLONE = 0x40049409  # linux/fs.h: clone a whole file (copy-on-write) where the filesystem supports it
READ_CHUNK = 4 * 1024 * 1024


class LocalBackend:
    def __init__(self, path: str) -> None:
        self._root = Path(path)

    def describe(self) -> str:
        return f"pvc://{self._root}"

    async def list_files(self) -> list[RemoteFile]:
        return await asyncio.to_thread(self._walk)

    def _walk(self) -> list[RemoteFile]:
        if self._root.is_file():
            return [RemoteFile(path=safe_relative_path(self._root.name), size=self._root.stat().st_size)]
        if not self._root.is_dir():
            raise DownloadError(f"{self._root} does not exist or is not readable", reason="not_found", status=404)
        found: list[RemoteFile] = []
        for directory, subdirs, files in os.walk(self._root):
            subdirs[:] = sorted(d for d in subdirs if d != META_DIR)
            for name in sorted(files):
                if PARTIAL_SUFFIX in name:
                    continue
                full = Path(directory) / name
                relative = full.relative_to(self._root).as_posix()
                stat = full.stat()
                found.append(
                    RemoteFile(path=safe_relative_path(relative), size=stat.st_size, etag=f"{stat.st_mtime_ns}")
                )
        if not found:
            raise DownloadError(f"{self._root} holds no files", reason="empty", status=404)
        return found

    def _source(self, remote: RemoteFile) -> Path:
        return self._root if self._root.is_file() else self._root / remote.path

    async def read_range(self, remote: RemoteFile, start: int, end: int) -> AsyncIterator[bytes]:
        with open(self._source(remote), "rb") as handle:
            handle.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = await asyncio.to_thread(handle.read, min(READ_CHUNK, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk

    async def place_file(self, remote: RemoteFile, destination_fd: int) -> bool:
        """Clone or kernel-copy the whole file into `destination_fd`; False when neither is possible here."""
        return await asyncio.to_thread(self._place, self._source(remote), destination_fd, remote.size)

    @staticmethod
    def _place(source: Path, destination_fd: int, size: int) -> bool:
        with open(source, "rb") as handle:
            try:
                fcntl.ioctl(destination_fd, FICLONE, handle.fileno())
                return True
            except OSError:
                pass
            offset = 0
            try:
                while offset < size:
                    copied = os.copy_file_range(handle.fileno(), destination_fd, size - offset, offset, offset)
                    if copied == 0:
                        break
                    offset += copied
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    return False
                raise
            return offset == size

    async def close(self) -> None:
        return None
