"""Starting the disk write of downloaded bytes early, so the fsync before a file's rename has little left to wait for.

Linux keeps written pages dirty in memory until a background threshold (10 % of RAM by default) or 30 s pass; a
download smaller than that is all written out by the fsync at its end, after the network part is over, so the disk
idles while bytes arrive and the network idles while the disk writes. `start_writeback` asks the kernel to begin
writing a range now without waiting for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), which overlaps the two. It
changes no guarantee: the fsync still decides when a file is durable. Where the call does not exist (another libc,
no ctypes) it does nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    import ctypes  # on first use: a sidecar that never downloads does not load it

    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Begin writing [offset, offset + length) of `fd` to disk; returns at once. Failures are ignored: the
    fsync that follows reports any real one."""
    function = _sync_file_range()
    if function is not None and length > 0:
        function(fd, offset, length, SYNC_FILE_RANGE_WRITE)
