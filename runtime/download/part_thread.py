"""Copying one byte range to its place in a file from a thread of its own, for backends with a blocking reader.

An object store read through obstore's blocking API in a thread costs about half the CPU of the same read through
its asyncio API (no hand-off to the event loop per chunk, no thread hand-off per write) and holds one chunk per
part in memory. The event loop only starts the thread and waits for it. What the thread does:

- pulls chunks from the reader and writes each at its offset (`PartialFile.write`: one write at a time per file,
  fed to the file's checksum) through a duplicate of the file's fd, so the caller may close its own whenever it
  likes, and advances `PartCursor.offset` after each write: when the reader fails, the caller retries from there;
- reports bytes to the event loop in batches (`call_soon_threadsafe` every `REPORT_EVERY` bytes and at the end),
  and starts the disk write of each batch (writeback.py);
- stops at the next chunk once the awaiting task is cancelled. Threads are daemons: a reader blocked on a stalled
  connection (bounded by the store's own timeout) never delays the process's exit.

glibc gives every thread that allocates its own malloc arena (up to 8 per core), and each keeps the chunks freed in
it: 8 part threads held ~14 MiB more at peak than 2 arenas do. Before the first thread starts, the process is
limited to `MALLOC_ARENAS` (mallopt; nothing happens on a libc without it or when MALLOC_ARENA_MAX is set).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from runtime.download.backends.base import Chunk
from runtime.download.partial_file import PartialFile
from runtime.download.writeback import start_writeback
from runtime.errors import DownloadError

REPORT_EVERY = 4 * 1024 * 1024
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


@dataclass
class PartCursor:
    offset: int  # the next byte to write: everything before it (from the part's start) is on disk


class _Stopped(Exception):
    """The awaiting task was cancelled: the thread stops at the next chunk."""


async def copy_in_thread(
    reader: Iterator[Chunk],
    file: PartialFile,
    cursor: PartCursor,
    end: int,
    on_bytes: Callable[[int], None],
    what: str,
) -> None:
    """Copy `reader`'s chunks to `file` from `cursor.offset` up to `end` in a new thread; returns when the reader
    is exhausted, raises what the thread raised (or CancelledError: the thread then stops at its next chunk)."""
    _limit_malloc_arenas()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    stop = threading.Event()
    own = replace(file, fd=os.dup(file.fd))  # the same lock and digest

    def settle(error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def report(count: int) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody counts any more
            loop.call_soon_threadsafe(on_bytes, count)

    def run() -> None:
        error: BaseException | None = None
        try:
            _copy(reader, own, cursor, end, stop, report, what)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the awaiting task as it is
            error = exc
        finally:
            os.close(own.fd)
            close = getattr(reader, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):  # the outcome is decided already
                    close()  # a generator: its connection goes now, not at garbage collection
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="airuntime-part", daemon=True).start()
    try:
        await done
    except asyncio.CancelledError:
        stop.set()
        raise


@functools.cache
def _limit_malloc_arenas() -> None:
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    except (ImportError, OSError, AttributeError):
        pass


def _copy(
    reader: Iterator[Chunk],
    file: PartialFile,
    cursor: PartCursor,
    end: int,
    stop: threading.Event,
    report: Callable[[int], None],
    what: str,
) -> None:
    unreported = 0
    try:
        for chunk in reader:
            if stop.is_set():
                raise _Stopped()
            size = memoryview(chunk).nbytes
            offset = cursor.offset
            if offset + size > end:
                raise DownloadError(f"{what}: the source sent more bytes than asked for", reason="size")
            file.write(offset, (chunk,))
            cursor.offset = offset + size
            unreported += size
            if unreported >= REPORT_EVERY:
                report(unreported)
                start_writeback(file.fd, cursor.offset - unreported, unreported)
                unreported = 0
    finally:
        if unreported:
            report(unreported)
