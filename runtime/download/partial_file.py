"""The partial file a download writes: chunks at any offset, one write at a time, each fed to the file's checksum.

Both ways of fetching a part write through here: the asyncio path (transfer.py, in a worker thread) and the part
threads (part_thread.py). Writes are blocking: call them from a thread.

Writes to one file are serialized by `write_lock`: the kernel serializes them anyway (ext4 holds the inode's lock
for the copy), but its waiters spin on a CPU while the holder copies. On the 2-vCPU bench machine, after other
files were just freed, copies into new page-cache pages were slow and 8 writers spinning on 2 files cost twice the
CPU of the whole download (15 % of samples in `rwsem_spin_on_owner`); waiting on a Python lock sleeps instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.download.backends.base import Chunk
from runtime.download.digest import ContentDigest

IOV_MAX = 1024


@dataclass(frozen=True)
class PartialFile:
    fd: int
    digest: ContentDigest | None = None  # None when the source publishes no checksum for the file
    write_lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, offset: int, chunks: Sequence[Chunk]) -> int:
        """Write `chunks` one after another at `offset` and feed them to the digest; returns the bytes written."""
        views = [memoryview(chunk).cast("B") for chunk in chunks]
        total = sum(view.nbytes for view in views)
        with self.write_lock:
            _pwrite_all(self.fd, list(views), offset)
        if self.digest is not None:
            self.digest.written(offset, views)
        return total


def _pwrite_all(fd: int, views: list[memoryview], offset: int) -> None:
    """Write every view at `offset` with as few `pwritev` calls as the kernel allows, looping over short writes."""
    while views:
        written = os.pwritev(fd, views[:IOV_MAX], offset)
        offset += written
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if written:
            views[0] = views[0][written:]
