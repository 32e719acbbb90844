"""A download run's lease (runtime/download/lease.py): when another run's partial files may be taken over."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson

from runtime.download import lease as lease_module
from runtime.download.lease import RunLease


def write_lease(root: Path, run: str, **identity: object) -> Path:
    path = root / ".airuntime" / "runs" / run
    path.write_bytes(orjson.dumps(identity))
    return path


async def test_who_is_running(tmp_path: Path) -> None:
    async with RunLease(tmp_path) as lease:
        ours = orjson.loads((tmp_path / ".airuntime" / "runs" / lease.id).read_bytes())
        assert lease.owner_running(lease.id)
        assert not lease.owner_running("")  # a partial named before runs had ids
        assert not lease.owner_running("gone0000")  # no lease: the run ended
        # this host, a process that still runs (ourselves under another run id): running
        write_lease(tmp_path, "alive", **ours)
        assert lease.owner_running("alive")
        # this host, a process that is gone: over at once (a killed download resumes without waiting)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        write_lease(tmp_path, "killed", **{**ours, "pid": int(dead.stdout), "start": "1"})
        assert not lease.owner_running("killed")
        # another host: running while its lease is renewed, over once it is STALE seconds older than ours
        other = write_lease(tmp_path, "remote", host="other-pod", boot="x", pid=1, start="1")
        assert lease.owner_running("remote")
        ours_mtime = (tmp_path / ".airuntime" / "runs" / lease.id).stat().st_mtime
        os.utime(other, (ours_mtime - lease_module.STALE - 1, ours_mtime - lease_module.STALE - 1))
        assert not lease.owner_running("remote")
        lease.remove_leases_of_runs_over()
        assert sorted(p.name for p in (tmp_path / ".airuntime" / "runs").iterdir()) == sorted([lease.id, "alive"])
    assert not (tmp_path / ".airuntime" / "runs" / lease.id).exists()  # removed when the run ends


async def test_the_lease_is_renewed_by_its_own_thread_while_the_event_loop_is_blocked(tmp_path: Path) -> None:
    """Renewals never wait behind the event loop or the default thread pool (writes, fsyncs, hashing)."""
    lease_module_heartbeat = lease_module.HEARTBEAT
    lease_module.HEARTBEAT = 0.05
    try:
        async with RunLease(tmp_path) as lease:
            path = tmp_path / ".airuntime" / "runs" / lease.id
            before = path.stat().st_mtime_ns
            __import__("time").sleep(0.5)  # the loop is blocked, as by a long synchronous call
            assert path.stat().st_mtime_ns > before
            await asyncio.sleep(0)
    finally:
        lease_module.HEARTBEAT = lease_module_heartbeat
