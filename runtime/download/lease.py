"""Safe concurrent writers on a shared volume without trusting flock: each download run holds a lease, and owns
the partial files named after it.

`DirectoryLock` (lock.py) makes a second downloader wait for the first, but flock(2) silently succeeds on some
network filesystems (Lustre, GPFS, some NFS mounts), as huggingface_hub found. Correctness therefore never rests on
it: a run writes only partial files carrying its own id (layout.py), and holds a lease file `.airuntime/runs/RUN`,
renewed every HEARTBEAT seconds by a thread of its own (never queued behind writes, fsyncs or hashing) and removed
when the run ends (finished, failed or cancelled). The lease holds who the run is: host, boot and process.

Another run's partial file is taken over (renamed, then resumed) only once that run is over:
- its lease is gone (the run ended); or
- it ran on this host (same host name and boot) and its process is gone: known at once, so a download killed with
  SIGKILL and started again resumes without waiting; or
- its lease was not renewed for STALE seconds, measured against our own lease's mtime on the same volume (both set
  by the file server on NFS; the lease is opened before it is read, which revalidates NFS's attribute cache).

While the owner of a partial of the same remote version still runs, a run waits for it (it finishes the file, or
dies and its partial is taken over) instead of fetching the same bytes in parallel. Should a run's partial still
be taken over while it runs (its host froze for longer than STALE), both runs write the same bytes of the same
remote version at the same offsets, and the run that lost its partial finds out before it would rename it, and
starts that file over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import threading
from pathlib import Path
from types import TracebackType

import orjson

from runtime.download.layout import meta_dir

HEARTBEAT = 2.0
STALE = 30.0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), "" when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


class RunLease:
    def __init__(self, root: Path) -> None:
        self.id = secrets.token_hex(6)
        self._dir = meta_dir(root) / "runs"
        self._path = self._dir / self.id
        self._identity = {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid()}
        self._identity["start"] = _process_start(os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def __aenter__(self) -> RunLease:
        await asyncio.to_thread(self._write)
        await asyncio.to_thread(self.remove_leases_of_runs_over)
        self._thread = threading.Thread(target=self._keep_renewing, name=f"lease-{self.id}", daemon=True)
        self._thread.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT + 1)
        with contextlib.suppress(OSError):
            self._path.unlink()

    def _write(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._path.write_bytes(orjson.dumps(self._identity))

    def _keep_renewing(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            with contextlib.suppress(OSError):  # a full disk must not end the download; the lease just ages
                os.utime(self._path)

    def owner_running(self, run: str) -> bool:
        """Whether run `run` still runs (see the module docstring). Blocking: call it in a thread."""
        if run == self.id:
            return True
        if not run:
            return False  # a partial from before runs had ids: its writer is long gone
        try:
            with open(self._dir / run, "rb") as handle:  # opening revalidates NFS's cached attributes
                theirs, identity = os.fstat(handle.fileno()).st_mtime, handle.read()
        except OSError:
            return False
        if self._same_host_and_gone(identity):
            return False
        try:
            ours = self._path.stat().st_mtime
        except OSError:
            return True  # cannot tell: assume it runs (waiting is safe, taking over might not be)
        return ours - theirs < STALE

    def _same_host_and_gone(self, identity: bytes) -> bool:
        try:
            owner = orjson.loads(identity)
            same_host = (owner["host"], owner["boot"]) == (self._identity["host"], self._identity["boot"])
            return bool(same_host and owner["boot"] and _process_start(int(owner["pid"])) != owner["start"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return False  # an unreadable lease: rely on its age

    def remove_leases_of_runs_over(self) -> None:
        """Leases left by runs that ended without removing them (killed): removed once they are known to be over."""
        try:
            runs = [entry.name for entry in os.scandir(self._dir)]
        except OSError:
            return
        for run in runs:
            if run != self.id and not self.owner_running(run):
                with contextlib.suppress(OSError):
                    (self._dir / run).unlink()


def same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (False once another run took the partial over)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
