"""The transfer engine: from a backend's file list to complete, verified files in the target directory.

- Large files are split into ranged parts fetched in parallel (unless the source marks a file as not `ranged`);
  small files are fetched concurrently; one semaphore bounds all of it (`max_workers`). Bytes stream to disk
  through `pwrite` at their offset: memory stays bounded.
- A file is written under a hidden partial name in its own directory, fsynced, verified (size always; sha256, MD5
  or git blob id when the source gives one) and only then renamed to its final name. The checksum is computed while
  the parts are written (digest.py), not by reading the file again afterwards.
- Backends with a blocking reader (`read_range_blocking`: object stores, and the Hub and HTTPS when no proxy
  applies) copy each part from a thread of its own (part_thread.py): about half the CPU of the asyncio path and
  one chunk in memory per part.
- An interrupted file resumes: the partial file keeps its bytes and a small JSON beside it records which parts are
  done for which remote version; a transient failure inside a part is retried from the byte where it stopped.
- The manifest makes a re-run skip finished files; `force` fetches everything again.

Faults (tests/e2e/test_download_faults_e2e.py): 5xx, 429, 503 SlowDown and dropped connections are retried per
part, `retries` times with exponential backoff and jitter; throttling waits at least `throttle_delay` and honours a
Retry-After up to `retry_after_cap`. Whatever fails, nothing lands under a final name unverified, and the error is
one line (`DownloadError`). A failed file keeps its partial file and resume record when at least one part is done
(a re-run fetches only the missing parts; this includes a full disk: free space or grow it and run again);
a partial file with nothing resumable in it is deleted. Disk errors name the path and the cause (no space left,
permission denied, read-only file system).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import orjson

from runtime.download.backends.base import Backend, Chunk, RemoteFile
from runtime.download.digest import ContentDigest, expected_checksum, new_hash
from runtime.download.layout import final_path, partial_path, partials_of, record_path, write_atomically
from runtime.download.lease import RunLease, same_file
from runtime.download.lock import DirectoryLock
from runtime.download.manifest import Manifest
from runtime.download.part_thread import PartCursor, copy_in_thread
from runtime.download.partial_file import PartialFile
from runtime.download.writeback import start_writeback
from runtime.errors import DownloadError, RetryableError

log = logging.getLogger("airuntime.download")

MIB = 1024 * 1024
WRITE_CHUNK = 1 * MIB
HASH_CHUNK = 8 * MIB
MANIFEST_SAVE_INTERVAL = 1.0
CLAIM_POLL = 0.5  # seconds between looks at a file another run is writing


@dataclass(frozen=True)
class FileFilter:
    """Which listed files to fetch: by suffix (AIBrix's DOWNLOADER_ALLOW_FILE_SUFFIX) and by glob patterns."""

    allow_suffixes: tuple[str, ...] = ()
    allow_patterns: tuple[str, ...] = ()
    ignore_patterns: tuple[str, ...] = ()

    def wants(self, path: str) -> bool:
        name = path.rsplit("/", 1)[-1]
        if self.allow_suffixes and not any(name.endswith(suffix) for suffix in self.allow_suffixes):
            return False
        if self.allow_patterns and not any(fnmatch(path, pattern) for pattern in self.allow_patterns):
            return False
        return not any(fnmatch(path, pattern) for pattern in self.ignore_patterns)

    def describe(self) -> str:
        parts = []
        if self.allow_suffixes:
            parts.append("suffixes " + ",".join(self.allow_suffixes))
        if self.allow_patterns:
            parts.append("patterns " + ",".join(self.allow_patterns))
        if self.ignore_patterns:
            parts.append("ignoring " + ",".join(self.ignore_patterns))
        return "; ".join(parts) or "all files"


@dataclass(frozen=True)
class TransferSettings:
    max_workers: int = 8
    part_size: int = 32 * MIB  # files larger than this are fetched as parallel ranged parts of this size
    force: bool = False
    retries: int = 6
    backoff_base: float = 0.25
    throttle_delay: float = 1.0  # the least wait after a 429 or 503 SlowDown (before jitter)
    retry_after_cap: float = 30.0  # a source's Retry-After is honoured up to this many seconds
    lock_timeout: float = 6 * 3600.0


@dataclass
class Progress:
    """Live numbers of one download, read by the CLI's progress bar, the job API and the metrics."""

    files_total: int = 0
    files_done: int = 0
    files_skipped: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_fetched: int = 0  # bytes actually transferred in this run (not counting skipped or resumed ones)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    on_bytes: Callable[[int], None] | None = None

    def add_bytes(self, count: int) -> None:
        self.bytes_done += count
        self.bytes_fetched += count
        if self.on_bytes is not None:
            self.on_bytes(count)

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.time()) - self.started_at

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return self.bytes_fetched / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class DownloadResult:
    files: list[str]
    downloaded: int
    skipped: int
    bytes_fetched: int
    seconds: float
    waited_for_lock: float


async def run_download(
    backend: Backend,
    root: Path,
    settings: TransferSettings,
    file_filter: FileFilter | None = None,
    progress: Progress | None = None,
) -> DownloadResult:
    """Download every wanted file of `backend` into `root`; returns only when all are complete and verified."""
    progress = progress or Progress()
    file_filter = file_filter or FileFilter()
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = DirectoryLock(root, settings.lock_timeout)
        await lock.__aenter__()
    except OSError as exc:
        raise disk_error(exc, root) from None
    try:
        listed = await backend.list_files()
        wanted = [remote for remote in listed if file_filter.wants(remote.path)]
        if not wanted:
            raise DownloadError(
                f"{backend.describe()} has {len(listed)} file(s) but none matches {file_filter.describe()}",
                reason="empty",
                status=404,
            )
        try:
            lease = RunLease(root)
            await lease.__aenter__()
        except OSError as exc:
            raise disk_error(exc, root) from None
        try:
            await _Transfer(backend, root, settings, progress, lease).run(wanted)
        finally:
            await lease.__aexit__(None, None, None)
    finally:
        await lock.__aexit__(None, None, None)
    progress.finished_at = time.time()
    return DownloadResult(
        files=[remote.path for remote in wanted],
        downloaded=progress.files_done - progress.files_skipped,
        skipped=progress.files_skipped,
        bytes_fetched=progress.bytes_fetched,
        seconds=progress.elapsed,
        waited_for_lock=lock.waited,
    )


class _Transfer:
    def __init__(
        self, backend: Backend, root: Path, settings: TransferSettings, progress: Progress, lease: RunLease
    ) -> None:
        self._backend = backend
        self._lease = lease
        self._root = root
        self._settings = settings
        self._progress = progress
        self._slots = asyncio.Semaphore(settings.max_workers)
        self._open_files = asyncio.Semaphore(max(4, settings.max_workers * 2))
        self._manifest = Manifest.load(root, backend.describe())
        self._last_save = 0.0
        self._manifest_lock = asyncio.Lock()

    async def run(self, files: list[RemoteFile]) -> None:
        self._progress.files_total = len(files)
        self._progress.bytes_total = sum(remote.size for remote in files)
        pending = []
        for remote in files:
            if not self._settings.force and await self._is_complete(remote):
                self._progress.files_done += 1
                self._progress.files_skipped += 1
                self._progress.bytes_done += remote.size
            else:
                pending.append(remote)
        try:
            async with asyncio.TaskGroup() as group:
                for remote in pending:
                    group.create_task(self._fetch_file(remote))
        except Exception as failures:  # a TaskGroup's ExceptionGroup, or a plain error around it
            try:
                await self._save_manifest()  # the files that did complete count on the next run
            except OSError as exc:  # a full disk, most likely: the first failure is the one to report
                log.info("cannot save the manifest", extra={"fields": {"error": str(exc)}})
            raise _as_download_error(failures, self._root) from None
        try:
            await self._save_manifest()
        except OSError as exc:
            raise disk_error(exc, self._root) from None

    async def _is_complete(self, remote: RemoteFile) -> bool:
        path = final_path(self._root, remote.path)
        entry = self._manifest.matches_remote(remote)
        if entry is not None and self._manifest.unchanged_on_disk(entry, path):
            return True
        # Not recorded, or changed on disk since: trust it only if its content checks out.
        if not path.is_file() or path.stat().st_size != remote.size or expected_checksum(remote) is None:
            return False
        problem = await asyncio.to_thread(_verify, path, remote)
        if problem is not None:
            log.warning(
                "file on disk does not match the source; fetching again", extra={"fields": {"file": remote.path}}
            )
            return False
        self._manifest.record(remote, path, time.time())
        return True

    async def _fetch_file(self, remote: RemoteFile) -> None:
        async with self._open_files:
            mismatches = 0
            while True:
                done = await self._claim(remote)
                if done is None:  # another run completed it while we waited
                    self._progress.files_done += 1
                    self._progress.files_skipped += 1
                    self._progress.bytes_done += remote.size
                    return
                try:
                    await self._fetch_once(remote, done)
                    return
                except _TakenOver:
                    log.warning("another download took this file over; waiting for it", extra=_fields(remote))
                except _ChecksumMismatch as mismatch:
                    mismatches += 1
                    if mismatches == 2:
                        raise DownloadError(str(mismatch), reason="checksum") from None
                    log.warning("checksum mismatch; fetching the file again", extra=_fields(remote))

    async def _claim(self, remote: RemoteFile) -> set[int] | None:
        """The parts of `remote` already in our partial file (taken over from a run that is over), or None when
        another run, still running when we looked, completed the file while we waited for it."""
        waited_since: float | None = None
        while True:
            done, other_running = await asyncio.to_thread(self._take_over, remote)
            if not other_running:
                return done
            if waited_since is None:
                waited_since = time.monotonic()
                log.info("another download is writing this file; waiting for it", extra=_fields(remote))
            await asyncio.sleep(CLAIM_POLL)
            if await self._is_complete(remote):
                return None
            if time.monotonic() - waited_since > self._settings.lock_timeout:
                raise DownloadError(f"{remote.path}: another download still writes it", reason="locked", status=409)

    def _take_over(self, remote: RemoteFile) -> tuple[set[int], bool]:
        """Look at every partial download of `remote` (blocking: run in a thread). Resumable ones of runs that are
        over: the first is renamed to ours, the others removed. Returns (parts in ours, whether a running run
        writes this file too)."""
        ours = partial_path(self._root, remote.path, self._lease.id)
        adopted: set[int] = set()
        other_running = False
        for run, partial in partials_of(self._root, remote.path):
            if run == self._lease.id:
                continue
            record = record_path(partial)
            done = _resumable_parts(partial, record, remote, self._part_size(remote))
            if self._lease.owner_running(run):
                other_running = other_running or bool(done) or not record.exists()
                continue
            if done and not adopted and _rename_pair(partial, record, ours, record_path(ours)):
                adopted = done
                continue
            for leftover in (partial, record):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        return adopted, other_running

    def _part_size(self, remote: RemoteFile) -> int:
        """Ranged parts of the configured size, or the whole file as one part when the source ignores Range for it."""
        return self._settings.part_size if remote.ranged else max(remote.size, 1)

    async def _fetch_once(self, remote: RemoteFile, done: set[int]) -> None:
        final = final_path(self._root, remote.path)
        partial = partial_path(self._root, remote.path, self._lease.id)
        state_path = record_path(partial)
        parts = _split(remote.size, self._part_size(remote))
        if done:
            resumed = sum(end - start for index, (start, end) in enumerate(parts) if index in done)
            self._progress.bytes_done += resumed
            log.info("resuming", extra={"fields": {"file": remote.path, "bytes": resumed}})
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise disk_error(exc, partial) from None
        state = _PartState(state_path, remote, self._part_size(remote), done) if len(parts) > 1 else None
        digest: ContentDigest | None = None
        try:
            os.ftruncate(fd, remote.size)
            digest = ContentDigest.for_remote(remote, fd)
            if digest is not None:
                for index in done:
                    digest.record(*parts[index])
            await self._fill(remote, PartialFile(fd, digest), parts, done, state)
            await asyncio.to_thread(os.fsync, fd)
            if not await asyncio.to_thread(same_file, fd, partial):
                raise _TakenOver()
        except _TakenOver:
            os.close(fd)
            if digest is not None:
                digest.close()
            raise
        except BaseException as failures:  # a TaskGroup's ExceptionGroup, a plain error around it, a cancellation
            os.close(fd)
            if digest is not None:
                digest.close()
            if not isinstance(failures, Exception):
                raise
            if not (state is not None and state.done):  # nothing a re-run could resume: do not leave it behind
                partial.unlink(missing_ok=True)
                state_path.unlink(missing_ok=True)
            raise _as_download_error(failures, partial) from None
        os.close(fd)
        await self._verify_and_place(remote, partial, state_path, final, digest)

    async def _fill(
        self,
        remote: RemoteFile,
        file: PartialFile,
        parts: list[tuple[int, int]],
        done: set[int],
        state: _PartState | None,
    ) -> None:
        """Every part not done yet into `file`: copied inside the kernel from a local source, else fetched."""
        place = getattr(self._backend, "place_file", None)
        if place is not None and not done and await place(remote, file.fd):
            self._progress.add_bytes(remote.size)
            return
        async with asyncio.TaskGroup() as group:
            for index, (start, end) in enumerate(parts):
                if index not in done:
                    group.create_task(self._fetch_part(remote, file, index, start, end, state))

    async def _verify_and_place(
        self, remote: RemoteFile, partial: Path, state_path: Path, final: Path, digest: ContentDigest | None
    ) -> None:
        problem = await asyncio.to_thread(_verify_written, partial, remote, digest)
        if problem is not None:
            partial.unlink(missing_ok=True)
            state_path.unlink(missing_ok=True)
            raise _ChecksumMismatch(f"{remote.path}: {problem}")
        try:
            os.replace(partial, final)
            state_path.unlink(missing_ok=True)
            await asyncio.to_thread(_fsync_directory, final.parent)
        except OSError as exc:
            raise disk_error(exc, final) from None
        self._manifest.record(remote, final, time.time())
        self._progress.files_done += 1
        now = time.monotonic()
        if now - self._last_save > MANIFEST_SAVE_INTERVAL:
            self._last_save = now
            await self._save_manifest()

    async def _save_manifest(self) -> None:
        """Write the manifest (and fsync it) off the event loop: a busy disk must not stall /health."""
        async with self._manifest_lock:
            data = self._manifest.serialize()
            await asyncio.to_thread(self._manifest.write, data)

    async def _fetch_part(
        self,
        remote: RemoteFile,
        file: PartialFile,
        index: int,
        start: int,
        end: int,
        state: _PartState | None,
    ) -> None:
        offset = start
        failures = 0
        blocking = getattr(self._backend, "read_range_blocking", None)
        async with self._slots:
            while offset < end:
                pending = _Pending()
                try:
                    if blocking is not None:
                        cursor = PartCursor(offset)
                        try:
                            reader = blocking(remote, offset, end)
                            await copy_in_thread(reader, file, cursor, end, self._progress.add_bytes, remote.path)
                        finally:
                            offset = cursor.offset
                    else:
                        async for chunk in self._backend.read_range(remote, offset, end):
                            pending.add(chunk)
                            if pending.size >= WRITE_CHUNK:
                                offset = await self._write(file, pending, offset, end, remote)
                        if pending.size:
                            offset = await self._write(file, pending, offset, end, remote)
                    if offset != end:
                        raise RetryableError(f"the source sent {offset - start} of {end - start} bytes")
                except RetryableError as exc:
                    if pending.size:
                        offset = await self._write(file, pending, offset, end, remote)
                    failures += 1
                    if failures > self._settings.retries:
                        raise DownloadError(f"{exc} (gave up after {failures} attempts)", reason=exc.reason) from None
                    delay = self._retry_delay(exc, failures)
                    log.info(
                        "retrying part",
                        extra={"fields": {"file": remote.path, "offset": offset, "error": str(exc), "delay": delay}},
                    )
                    await asyncio.sleep(delay)
        if state is not None:
            await state.mark_done(index)

    def _retry_delay(self, exc: RetryableError, failures: int) -> float:
        """Exponential backoff with jitter; longer when throttled; a Retry-After honoured up to the cap."""
        settings = self._settings
        delay: float = settings.backoff_base * 2.0 ** (failures - 1)
        if exc.throttled:
            delay = max(delay, settings.throttle_delay)
        delay = min(delay, settings.retry_after_cap) * (0.5 + random.random())
        if exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, settings.retry_after_cap))
        return delay

    async def _write(self, file: PartialFile, pending: _Pending, offset: int, end: int, remote: RemoteFile) -> int:
        size = pending.size
        if offset + size > end:
            raise DownloadError(f"{remote.path}: the source sent more bytes than asked for", reason="size")
        await asyncio.to_thread(_write_and_start_writeback, file, pending.take(), offset)
        self._progress.add_bytes(size)
        return offset + size


class _Pending:
    """Received chunks not yet on disk, kept as they came (no copy) and written with one pwritev."""

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.size = 0

    def add(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.size += memoryview(chunk).nbytes

    def take(self) -> list[Chunk]:
        chunks, self.chunks, self.size = self.chunks, [], 0
        return chunks


def _write_and_start_writeback(file: PartialFile, chunks: list[Chunk], offset: int) -> None:
    start_writeback(file.fd, offset, file.write(offset, chunks))


class _ChecksumMismatch(Exception):
    pass


class _TakenOver(Exception):
    """Our partial file was taken over by another run while we wrote it (see lease.py)."""


def _fields(remote: RemoteFile) -> dict[str, dict[str, str]]:
    return {"fields": {"file": remote.path}}


def _rename_pair(partial: Path, record: Path, new_partial: Path, new_record: Path) -> bool:
    """Take over a partial file and its record by renaming both; False when another run was first."""
    try:
        os.rename(partial, new_partial)
    except OSError:
        return False
    try:
        os.rename(record, new_record)
    except OSError:
        os.rename(new_partial, partial)  # the record went with someone else: give the bytes back
        return False
    return True


def _as_download_error(failures: Exception, path: Path) -> Exception:
    """The first failure inside (nested) task groups, as a DownloadError when it is a disk problem (at `path` when
    the error does not name a file). Callers use plain `except`, not `except*`: an exception raised inside an
    `except*` clause comes out wrapped in a new group when compiled by Nuitka, unlike CPython."""
    first: BaseException = failures
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    if isinstance(first, DownloadError | _ChecksumMismatch):
        return first
    if isinstance(first, OSError):
        return disk_error(first, path)
    if isinstance(first, Exception):
        return first
    raise first


_DISK_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
}


def disk_error(exc: OSError, path: Path) -> DownloadError:
    """One line for a local file-system failure: what went wrong and where (HTTP 507 in the API)."""
    where = exc.filename if isinstance(exc.filename, str) and exc.filename else str(path)
    cause = _DISK_ERRORS.get(exc.errno or 0) or (exc.strerror or type(exc).__name__).lower()
    return DownloadError(f"cannot write {where}: {cause}", reason="disk", status=507)


class _PartState:
    """The resume record of one partial file: its remote version and the parts already on disk."""

    def __init__(self, path: Path, remote: RemoteFile, part_size: int, done: set[int]) -> None:
        self._path = path
        self._header = {"size": remote.size, "etag": remote.etag, "part_size": part_size}
        self._done = set(done)
        self._lock = asyncio.Lock()

    @property
    def done(self) -> set[int]:
        return self._done

    async def mark_done(self, index: int) -> None:
        """Record a finished part; the write and its fsync run in a thread, one at a time."""
        async with self._lock:
            done = self._done | {index}
            data = orjson.dumps({**self._header, "done": sorted(done)})
            await asyncio.to_thread(write_atomically, self._path, data)
            self._done = done  # only once recorded on disk: `done` is what a re-run will resume


def _resumable_parts(partial: Path, state_path: Path, remote: RemoteFile, part_size: int) -> set[int]:
    try:
        state = orjson.loads(state_path.read_bytes())
        if partial.stat().st_size != remote.size:
            return set()
    except (OSError, orjson.JSONDecodeError):
        return set()
    if (state.get("size"), state.get("etag"), state.get("part_size")) != (remote.size, remote.etag, part_size):
        return set()  # the remote file changed, or another part size: start over
    return {index for index in state.get("done", []) if isinstance(index, int)}


def _split(size: int, part_size: int) -> list[tuple[int, int]]:
    if size == 0:
        return []
    return [(start, min(start + part_size, size)) for start in range(0, size, part_size)]


def _verify_written(path: Path, remote: RemoteFile, digest: ContentDigest | None) -> str | None:
    """None when the file just written has the remote's size and (when known) checksum, else what is wrong."""
    size = path.stat().st_size
    if size != remote.size:
        if digest is not None:
            digest.close()
        return f"size {size} on disk, {remote.size} at the source"
    return digest.finish() if digest is not None else None


def _verify(path: Path, remote: RemoteFile) -> str | None:
    """None when `path` (a file found on disk) has the remote's size and (when known) checksum, else what is wrong."""
    size = path.stat().st_size
    if size != remote.size:
        return f"size {size} on disk, {remote.size} at the source"
    checksum = expected_checksum(remote)
    if checksum is None:
        return None
    kind, expected = checksum
    digest = new_hash(kind, size)
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected:
        return f"{kind} {actual} on disk, {expected} at the source"
    return None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
