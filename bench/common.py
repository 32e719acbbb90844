"""What the benchmarks share: /proc accounting (process trees, RSS, CPU, host busy), processes in their own group,
SIGTERM as Ctrl-C, and the report's table headers and JSON file."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# -- /proc accounting -------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()  # fields from `state` (field 3) on; comm may hold spaces


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from the ppid fields in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    return total


def cpu_seconds(pid: int, *, waited_children: bool = False) -> float | None:
    """utime+stime of a live process (plus cutime+cstime, what its exited children used, with `waited_children`);
    None when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return sum(int(value) for value in fields[11 : 15 if waited_children else 13]) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU seconds of this process's waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def host_busy_seconds() -> float:
    """CPU-seconds the whole host spent busy (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


def host_busy_pct(window: float = 2.0, *, per_core: bool = False) -> float:
    """How busy the host is over `window` seconds, in percent of all cores (of one core with `per_core`: 200 is a
    saturated 2-core host)."""
    before, started = host_busy_seconds(), time.perf_counter()
    time.sleep(window)
    busy = 100 * (host_busy_seconds() - before) / (time.perf_counter() - started)
    return busy if per_core else busy / (os.cpu_count() or 1)


def wait_for_quiet_host(
    threshold_pct: float, max_wait: float, log: Callable[[str], None], *, per_core: bool = False
) -> float:
    """Wait (at most `max_wait` s) until the host is under `threshold_pct` busy over 2 s; returns the last reading.

    (Not the load average: the previous run's own processes keep the 1-minute average up for a minute.)"""
    deadline = time.monotonic() + max_wait
    while True:
        busy = host_busy_pct(per_core=per_core)
        if busy < threshold_pct or time.monotonic() >= deadline:
            return busy
        log(f"host {busy:.0f}% busy (other processes); waiting for < {threshold_pct:.0f}%")


class RssSampler:
    """Peak RSS of a process tree (sum over its processes) every `interval` s, on a background thread; the tree
    is looked up again every `refresh` s."""

    def __init__(self, root: int, interval: float = 0.1, refresh: float = 1.0) -> None:
        self.root = root
        self.interval = interval
        self.refresh = refresh
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        pids = process_tree(self.root)
        refreshed = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - refreshed > self.refresh:
                pids, refreshed = process_tree(self.root), time.monotonic()
            self.peak = max(self.peak, rss_bytes(pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# -- processes --------------------------------------------------------------------------------------------------


def start_group(argv: list[str], log: IO[bytes], *, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """`argv` in its own session (process group), stdout and stderr to `log`, no stdin."""
    return subprocess.Popen(
        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_group(pgid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group, SIGKILL after 10 s; then SIGKILL what is left of it once the leader is gone."""
    kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.wait(timeout=5)
    kill_group(proc.pid)  # leftovers of the group (workers)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so every `finally` (stopping processes, removing temp dirs) runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- reporting --------------------------------------------------------------------------------------------------


def host_info(**extra: Any) -> dict[str, Any]:
    """The machine, for a report's metadata (plus `extra`)."""
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(), **extra}


def print_header(head: str) -> None:
    """A table's header line, underlined."""
    print(head)
    print("-" * len(head))


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
