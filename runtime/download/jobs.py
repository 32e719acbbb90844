"""Download jobs of the HTTP API: started, joined, listed and reported while they run.

A request for a target directory that a running job already fills joins that job (same source) or is refused
with 409 (another source): the bytes are never fetched twice. Finished jobs are kept (the last `KEEP_FINISHED`)
so callers can read how they ended.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from runtime.download.service import PreparedDownload, execute
from runtime.download.transfer import DownloadResult, Progress
from runtime.errors import DownloadError

log = logging.getLogger("airuntime.download")

KEEP_FINISHED = 200


@dataclass
class DownloadJob:
    id: str
    prepared: PreparedDownload
    progress: Progress = field(default_factory=Progress)
    state: str = "running"  # running, completed, failed
    error: str | None = None
    reason: str | None = None
    status: int = 200
    result: DownloadResult | None = None
    created_at: float = field(default_factory=time.time)
    task: asyncio.Task[None] | None = None

    @property
    def output_dir(self) -> str:
        return str(self.prepared.request.local_dir)

    def snapshot(self) -> dict[str, Any]:
        progress = self.progress
        return {
            "id": self.id,
            "source": self.prepared.describe(),
            "output_dir": self.output_dir,
            "state": self.state,
            "files_total": progress.files_total,
            "files_done": progress.files_done,
            "files_skipped": progress.files_skipped,
            "bytes_total": progress.bytes_total,
            "bytes_done": progress.bytes_done,
            "bytes_per_second": round(progress.rate, 1),
            "seconds": round(progress.elapsed, 3),
            "error": self.error,
            "created_at": self.created_at,
        }


class JobRegistry:
    def __init__(self, on_finished: Any = None) -> None:
        self._jobs: OrderedDict[str, DownloadJob] = OrderedDict()
        self._ids = itertools.count(1)
        self._on_finished = on_finished

    def start(self, prepared: PreparedDownload, progress: Progress | None = None) -> tuple[DownloadJob, bool]:
        """The job filling the request's directory: a running one (joined=True) or a new one."""
        for job in self._jobs.values():
            if job.state == "running" and job.output_dir == str(prepared.request.local_dir):
                if job.prepared.describe() != prepared.describe():
                    raise DownloadError(
                        f"{job.output_dir} is being filled from {job.prepared.describe()} by job {job.id}",
                        reason="conflict",
                        status=409,
                    )
                return job, True
        job = DownloadJob(id=f"dl-{next(self._ids)}-{int(time.time())}", prepared=prepared)
        if progress is not None:
            job.progress = progress
        job.task = asyncio.ensure_future(self._run(job))
        self._jobs[job.id] = job
        self._forget_old()
        return job, False

    async def _run(self, job: DownloadJob) -> None:
        try:
            job.result = await execute(job.prepared, job.progress)
            job.state = "completed"
        except DownloadError as exc:
            job.state, job.error, job.reason, job.status = "failed", str(exc), exc.reason, exc.status
            log.warning("download failed", extra={"fields": {"job": job.id, "reason": exc.reason, "error": str(exc)}})
        except asyncio.CancelledError:
            job.state, job.error, job.reason, job.status = (
                "failed",
                "cancelled (the sidecar is stopping)",
                "cancelled",
                503,
            )
            raise
        finally:
            if self._on_finished is not None:
                self._on_finished(job)

    async def wait(self, job: DownloadJob) -> DownloadJob:
        assert job.task is not None
        await asyncio.shield(job.task)
        return job

    def get(self, job_id: str) -> DownloadJob | None:
        return self._jobs.get(job_id)

    def all(self) -> list[DownloadJob]:
        return list(self._jobs.values())

    def running(self) -> int:
        return sum(1 for job in self._jobs.values() if job.state == "running")

    async def cancel_all(self) -> None:
        tasks = [job.task for job in self._jobs.values() if job.task is not None and not job.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.state != "running"]
        for job_id in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job_id]
