"""copy_in_thread: a part copied from a blocking reader in its own thread, awaited from the event loop."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.download.part_thread import REPORT_EVERY, PartCursor, copy_in_thread
from runtime.download.partial_file import PartialFile
from runtime.errors import DownloadError, RetryableError

MIB = 1024 * 1024


def _fd(tmp_path: Path, size: int) -> int:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, size)
    return fd


def test_chunks_land_at_their_offsets_and_every_byte_is_reported(tmp_path: Path) -> None:
    data = os.urandom(3 * REPORT_EVERY + 12345)
    fd = _fd(tmp_path, len(data) + 100)
    reported: list[int] = []

    def reader() -> Iterator[bytes]:
        for start in range(0, len(data), 300_000):
            yield data[start : start + 300_000]

    cursor = PartCursor(100)
    asyncio.run(copy_in_thread(reader(), PartialFile(fd), cursor, 100 + len(data), reported.append, "f"))
    assert cursor.offset == 100 + len(data)
    assert os.pread(fd, len(data), 100) == data
    assert sum(reported) == len(data) and len(reported) <= 5  # in batches, not per chunk
    os.close(fd)


def test_a_reader_failing_midway_leaves_the_cursor_at_the_byte_reached(tmp_path: Path) -> None:
    fd = _fd(tmp_path, 10 * MIB)

    def reader() -> Iterator[bytes]:
        yield b"a" * MIB
        yield b"b" * MIB
        raise RetryableError("connection dropped mid-transfer")

    cursor = PartCursor(0)
    reported: list[int] = []
    with pytest.raises(RetryableError, match="dropped"):
        asyncio.run(copy_in_thread(reader(), PartialFile(fd), cursor, 10 * MIB, reported.append, "f"))
    assert cursor.offset == 2 * MIB and sum(reported) == 2 * MIB
    assert os.pread(fd, 1, 2 * MIB - 1) == b"b"
    os.close(fd)


def test_a_source_sending_more_than_asked_is_an_error(tmp_path: Path) -> None:
    fd = _fd(tmp_path, 10)
    with pytest.raises(DownloadError, match="more bytes than asked for"):
        asyncio.run(copy_in_thread(iter([b"x" * 11]), PartialFile(fd), PartCursor(0), 10, lambda n: None, "f"))
    os.close(fd)


def test_cancelling_the_awaiting_task_stops_the_thread_at_its_next_chunk(tmp_path: Path) -> None:
    fd = _fd(tmp_path, 100 * MIB)
    gate = threading.Event()
    pulled = threading.Event()
    stopped = threading.Event()

    def reader() -> Iterator[bytes]:
        try:
            yield b"x" * MIB
            pulled.set()
            gate.wait(5)
            yield b"y" * MIB  # read after the cancellation: must not be written
            yield b"z" * MIB
        finally:
            stopped.set()

    cursor = PartCursor(0)

    async def main() -> None:
        task = asyncio.create_task(copy_in_thread(reader(), PartialFile(fd), cursor, 100 * MIB, lambda n: None, "f"))
        await asyncio.to_thread(pulled.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        await asyncio.to_thread(stopped.wait, 5)

    asyncio.run(main())
    assert stopped.is_set()  # the reader was closed (its connection released), not left to the collector
    assert cursor.offset == MIB
    assert os.pread(fd, 1, MIB) == b"\0"
    os.close(fd)


def test_the_thread_writes_through_its_own_fd(tmp_path: Path) -> None:
    fd = _fd(tmp_path, 2 * MIB)

    def reader() -> Iterator[bytes]:
        yield b"a" * MIB
        os.close(fd)  # the caller closes its fd meanwhile (a failed sibling part): the thread keeps writing
        yield b"b" * MIB

    cursor = PartCursor(0)
    asyncio.run(copy_in_thread(reader(), PartialFile(fd), cursor, 2 * MIB, lambda n: None, "f"))
    assert (tmp_path / "f").read_bytes() == b"a" * MIB + b"b" * MIB
