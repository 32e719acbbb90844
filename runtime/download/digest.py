"""A file's checksum (sha256, MD5 or git blob id) computed while its parts are written, in whatever order they come.

Parts are fetched in parallel, so bytes land out of order, but a digest must see them in order. `ContentDigest`
keeps a cursor (how far the digest has read) and the ranges written beyond it. A writer that has just written the
bytes at the cursor feeds them to the digest from memory; ranges written ahead of the cursor are read back from
the file (the page cache: they were just written) when the cursor reaches them, by whichever writer is feeding at
the time. One writer feeds at a time; the others only record their range and go on. `finish` reads back whatever
is left (parts resumed from an earlier run, a file copied inside the kernel) and compares. So nothing is held in
memory beyond the chunk being written, and the whole-file read after the download is gone.

Writers are threads (the transfer engine writes off the event loop); every method but `record` may block.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from runtime.download.backends.base import Chunk, RemoteFile

if TYPE_CHECKING:
    from hashlib import _Hash

READ_BACK = 8 * 1024 * 1024


def expected_checksum(remote: RemoteFile) -> tuple[str, str] | None:
    """(kind, hex digest) the source publishes for `remote`, strongest first; None when it publishes none."""
    if remote.sha256:
        return "sha256", remote.sha256.lower()
    if remote.md5:
        return "md5", remote.md5.lower()
    if remote.git_sha1:
        return "git sha1", remote.git_sha1.lower()
    return None


def new_hash(kind: str, size: int) -> _Hash:
    if kind == "sha256":
        return hashlib.sha256()
    if kind == "md5":
        return hashlib.md5(usedforsecurity=False)
    return hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)  # git's blob id: header, then the content


class ContentDigest:
    """The checksum of the file open as `fd` (duplicated: the caller keeps and closes its own), fed as it is written."""

    def __init__(self, remote: RemoteFile, kind: str, expected: str, fd: int) -> None:
        self._kind = kind
        self._expected = expected
        self._size = remote.size
        self._hash = new_hash(kind, remote.size)
        self._fd = os.dup(fd)
        self._mutex = threading.Lock()  # guards everything below; never held while hashing or reading
        self._cursor = 0
        self._ahead: dict[int, int] = {}  # start -> end of ranges written beyond the cursor
        self._feeding = False
        self._closed = False

    @classmethod
    def for_remote(cls, remote: RemoteFile, fd: int) -> ContentDigest | None:
        checksum = expected_checksum(remote)
        return None if checksum is None else cls(remote, checksum[0], checksum[1], fd)

    @property
    def hashed(self) -> int:
        """Bytes fed so far (from the start of the file)."""
        return self._cursor

    def record(self, start: int, end: int) -> None:
        """Bytes [start, end) are on disk already (a resumed part): read back when the cursor gets there. Never
        blocks: safe on the event loop."""
        if end > start:
            with self._mutex:
                self._ahead[start] = end

    def written(self, offset: int, chunks: Sequence[Chunk]) -> None:
        """`chunks` were just written at `offset`, one after another. Feeds them, and whatever they make
        contiguous, unless another writer is feeding (then that one will)."""
        length = sum(memoryview(chunk).nbytes for chunk in chunks)
        if not length:
            return
        with self._mutex:
            if self._closed:
                return
            self._ahead[offset] = offset + length
            if self._feeding:
                return
            self._feeding = True
        try:
            self._feed(offset, chunks)
        except BaseException:
            with self._mutex:
                self._feeding = False
                if self._closed:
                    self._close_fd()
            raise

    def _feed(self, offset: int, chunks: Sequence[Chunk]) -> None:
        """Feed from the cursor on while the next range is known; stops feeding under the same lock that writers
        record under, so a range recorded meanwhile is never left behind."""
        while True:
            with self._mutex:
                start = self._cursor
                end = None if self._closed else self._ahead.pop(start, None)
                if end is None:
                    self._feeding = False
                    if self._closed:
                        self._close_fd()  # close() left it to us
                    return
            if start == offset and chunks:
                for chunk in chunks:
                    self._hash.update(chunk)
                chunks = ()
            else:
                self._read_back(start, end)
            with self._mutex:
                self._cursor = end

    def _read_back(self, start: int, end: int) -> None:
        while start < end:
            data = os.pread(self._fd, min(READ_BACK, end - start), start)
            if not data:
                raise OSError(f"the file ends at byte {start}, {end - start} bytes early")
            self._hash.update(data)
            start += len(data)

    def finish(self) -> str | None:
        """None when the whole file has the expected checksum, else what differs. Reads back what was not fed
        (blocking); call once every writer is done."""
        with self._mutex:
            if self._closed or self._feeding:
                raise RuntimeError("finish() called twice or while a writer feeds")
            self._feeding = True
            self._ahead.clear()
            start = self._cursor
        try:
            self._read_back(start, self._size)
            self._cursor = self._size
            actual = self._hash.hexdigest()
        finally:
            with self._mutex:
                self._feeding = False
                self._closed = True
                self._close_fd()
        if actual != self._expected:
            return f"{self._kind} {actual} on disk, {self._expected} at the source"
        return None

    def close(self) -> None:
        """Stop feeding: a writer still running from a cancelled attempt is ignored from now on. The duplicate fd
        is closed now, or by the writer feeding at this moment when it stops."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            if not self._feeding:
                self._close_fd()

    def _close_fd(self) -> None:  # with the mutex held
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
