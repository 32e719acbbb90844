"""ContentDigest: the checksum of a file written in parts, out of order, by several threads at once."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

from runtime.download.backends.base import RemoteFile
from runtime.download.digest import ContentDigest, expected_checksum

KIB = 1024


def _content(size: int, seed: int) -> bytes:
    return hashlib.shake_256(b"digest-%d" % seed).digest(size)


def _remote(data: bytes, kind: str) -> RemoteFile:
    if kind == "sha256":
        return RemoteFile("f", len(data), sha256=hashlib.sha256(data).hexdigest())
    if kind == "md5":
        return RemoteFile("f", len(data), md5=hashlib.md5(data).hexdigest().upper())
    git = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return RemoteFile("f", len(data), git_sha1=git)


def _chunks(start: int, end: int, rng: random.Random) -> list[tuple[int, int]]:
    spans = []
    while start < end:
        size = min(end - start, rng.choice((1, 7, 4 * KIB, 33 * KIB, 64 * KIB)))
        spans.append((start, start + size))
        start += size
    return spans


def _open(tmp_path: Path, size: int) -> int:
    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, size)
    return fd


@pytest.mark.parametrize("kind", ["sha256", "md5", "git sha1"])
@pytest.mark.parametrize("seed", range(6))
def test_parts_written_by_threads_in_any_order_give_the_whole_file_checksum(
    tmp_path: Path, kind: str, seed: int
) -> None:
    rng = random.Random(seed)
    data = _content(rng.randrange(1, 600 * KIB), seed)
    part = rng.choice((50 * KIB, 128 * KIB, 1 << 30))
    parts = [(start, min(start + part, len(data))) for start in range(0, len(data), part)]
    fd = _open(tmp_path, len(data))
    resumed = set(rng.sample(range(len(parts)), rng.randrange(len(parts)))) if len(parts) > 1 else set()
    for index in resumed:  # on disk from an earlier run: recorded, never written in this one
        start, end = parts[index]
        os.pwrite(fd, data[start:end], start)
    digest = ContentDigest.for_remote(_remote(data, kind), fd)
    assert digest is not None
    for index in resumed:
        digest.record(*parts[index])

    def writer(start: int, end: int, seed: int) -> None:
        local = random.Random(seed)
        for first, last in _chunks(start, end, local):
            os.pwrite(fd, data[first:last], first)
            halves = [data[first : (first + last) // 2], data[(first + last) // 2 : last]]
            digest.written(first, halves)  # several chunks written one after another
            if local.random() < 0.05:
                threading.Event().wait(0.001)

    todo = [index for index in range(len(parts)) if index not in resumed]
    rng.shuffle(todo)
    threads = [threading.Thread(target=writer, args=(*parts[index], seed * 100 + index)) for index in todo]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert digest.finish() is None
    os.close(fd)


def test_everything_fed_while_writing_leaves_nothing_to_read_back(tmp_path: Path) -> None:
    data = _content(300 * KIB, 1)
    fd = _open(tmp_path, len(data))
    digest = ContentDigest.for_remote(_remote(data, "sha256"), fd)
    assert digest is not None
    for start in (100 * KIB, 200 * KIB, 0):  # the last write at the cursor makes all three contiguous
        os.pwrite(fd, data[start : start + 100 * KIB], start)
        digest.written(start, [data[start : start + 100 * KIB]])
    assert digest.hashed == len(data)  # fed while writing, the two ranges ahead read back from the file
    assert digest.finish() is None
    os.close(fd)


def test_a_byte_that_differs_on_disk_or_in_memory_is_reported(tmp_path: Path) -> None:
    data = _content(200 * KIB, 2)
    remote = _remote(data, "md5")
    fd = _open(tmp_path, len(data))
    digest = ContentDigest.for_remote(remote, fd)
    assert digest is not None
    corrupt = bytearray(data[100 * KIB :])
    corrupt[5] ^= 1
    os.pwrite(fd, bytes(corrupt), 100 * KIB)  # ahead of the cursor: read back from the file later
    digest.written(100 * KIB, [bytes(corrupt)])
    os.pwrite(fd, data[: 100 * KIB], 0)
    digest.written(0, [data[: 100 * KIB]])
    problem = digest.finish()
    assert problem is not None and problem.startswith("md5 ") and f"{remote.md5.lower()} at the source" in problem  # type: ignore[union-attr]
    os.close(fd)


def test_a_file_shorter_than_announced_is_an_error_not_a_match(tmp_path: Path) -> None:
    data = _content(10 * KIB, 3)
    fd = _open(tmp_path, 5 * KIB)
    os.pwrite(fd, data[: 5 * KIB], 0)
    digest = ContentDigest.for_remote(_remote(data, "sha256"), fd)
    assert digest is not None
    with pytest.raises(OSError, match="ends at byte 5120"):
        digest.finish()
    os.close(fd)


def test_after_close_writers_are_ignored_and_the_duplicate_fd_is_gone(tmp_path: Path) -> None:
    data = _content(10 * KIB, 4)
    fd = _open(tmp_path, len(data))
    before = len(os.listdir("/proc/self/fd"))
    digest = ContentDigest.for_remote(_remote(data, "sha256"), fd)
    assert digest is not None
    assert len(os.listdir("/proc/self/fd")) == before + 1
    digest.close()
    assert len(os.listdir("/proc/self/fd")) == before
    digest.written(0, [data])  # a writer of a cancelled attempt: nothing happens
    assert digest.hashed == 0
    digest.close()
    os.close(fd)


def test_no_checksum_no_digest_and_the_strongest_one_wins() -> None:
    assert ContentDigest.for_remote(RemoteFile("f", 3), 0) is None
    both = RemoteFile("f", 3, sha256="AB" * 32, md5="cd" * 16)
    assert expected_checksum(both) == ("sha256", "ab" * 32)
