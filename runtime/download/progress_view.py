"""How the CLI shows a running download: a one-line bar on a terminal (bytes, rate, ETA, files), or a log line
every few seconds when stderr is not a terminal, and nothing but the summary in quiet mode."""

from __future__ import annotations

import asyncio
import sys
import time

from runtime.download.transfer import Progress

BAR_INTERVAL = 0.25
LOG_INTERVAL = 10.0


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def status_line(progress: Progress) -> str:
    rate = progress.rate
    remaining = max(0, progress.bytes_total - progress.bytes_done)
    eta = f"{remaining / rate:.0f}s" if rate > 0 and remaining else "-"
    percent = 100 * progress.bytes_done / progress.bytes_total if progress.bytes_total else 0.0
    return (
        f"{human_bytes(progress.bytes_done)} / {human_bytes(progress.bytes_total)} ({percent:.0f}%)  "
        f"{human_bytes(rate)}/s  ETA {eta}  files {progress.files_done}/{progress.files_total}"
    )


async def show_progress(progress: Progress, quiet: bool) -> None:
    """Runs until cancelled."""
    if quiet:
        await asyncio.Event().wait()
    terminal = sys.stderr.isatty()
    interval = BAR_INTERVAL if terminal else LOG_INTERVAL
    last = time.monotonic()
    try:
        while True:
            await asyncio.sleep(interval)
            if progress.files_total == 0:
                continue
            if terminal:
                sys.stderr.write("\r\x1b[2K" + status_line(progress))
                sys.stderr.flush()
            elif time.monotonic() - last >= LOG_INTERVAL:
                last = time.monotonic()
                print("airuntime: " + status_line(progress), file=sys.stderr, flush=True)
    finally:
        if terminal:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
