"""Safe concurrent writers on a shared volume without trusting flock: each download run holds a lease, and owns
the partial files named after it.

`DirectoryLock` (lock.py) makes a second downloader wait for the first, but flock(2) silently succeeds on some
network filesystems (Lustre, GPFS, some NFS mounts), as huggingface_hub found. Correctness therefore never rests on
it: a run writes only partial files carrying its own id (layout.py), renews its lease file
`.airuntime/runs/RUN` every HEARTBEAT seconds while it runs, and removes it when it ends (finished, failed or
cancelled). Another run's partial file is taken over (renamed, then resumed) only when that run is over: its lease
is gone, or has not been renewed for STALE seconds (a run killed with SIGKILL, a pod that vanished). Ages are
measured between two mtimes set by the same file server, never against this host's clock.

While the owner of a partial of the same remote version still runs, a run waits for it (it finishes the file, or
dies and its partial is taken over) instead of fetching the same bytes in parallel. A run whose partial was taken
over while it was alive (its loop stalled past STALE) finds out before renaming it into place, and starts over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path
from types import TracebackType

from runtime.download.layout import meta_dir

HEARTBEAT = 2.0
STALE = 10.0


class RunLease:
    def __init__(self, root: Path) -> None:
        self.id = secrets.token_hex(6)
        self._dir = meta_dir(root) / "runs"
        self._path = self._dir / self.id
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunLease:
        await asyncio.to_thread(self._renew)
        self._task = asyncio.ensure_future(self._keep_renewing())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(OSError):
            self._path.unlink()

    def _renew(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._path.touch()

    async def _keep_renewing(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            with contextlib.suppress(OSError):  # a full disk must not end the download; the lease just ages
                await asyncio.to_thread(self._renew)

    def owner_running(self, run: str) -> bool:
        """Whether run `run` still runs: its lease exists and was renewed within STALE seconds of ours. Blocking
        (stat on a possibly remote volume): call it in a thread."""
        if run == self.id:
            return True
        if not run:
            return False  # a partial from before runs had ids: its writer is long gone
        try:
            theirs = (self._dir / run).stat().st_mtime
        except OSError:
            return False
        try:
            ours = self._path.stat().st_mtime
        except OSError:
            return True  # cannot tell: assume it runs (waiting is safe, taking over might not be)
        return ours - theirs < STALE


def same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (False once another run took the partial over)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
