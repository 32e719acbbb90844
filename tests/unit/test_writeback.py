"""start_writeback: sync_file_range reached through ctypes, errors left to the fsync that follows."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from runtime.download.writeback import SYNC_FILE_RANGE_WRITE, _sync_file_range, start_writeback


def test_the_call_reaches_the_kernel_and_failures_are_left_to_fsync(tmp_path: Path) -> None:
    function = _sync_file_range()
    assert function is not None  # glibc here: the call exists
    assert function(-1, 0, 4096, SYNC_FILE_RANGE_WRITE) == -1 and ctypes.get_errno() == errno.EBADF
    start_writeback(-1, 0, 4096)  # ignored: never raises
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"x" * (1 << 20), 0)
    assert function(fd, 0, 1 << 20, SYNC_FILE_RANGE_WRITE) == 0
    start_writeback(fd, 0, 1 << 20)
    os.fsync(fd)
    os.close(fd)
