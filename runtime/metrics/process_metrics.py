"""The sidecar process's own resource use, read from /proc at each render: `NAMESPACE_process_*` with the names,
types and help texts of prometheus_client's process collector (what dashboards of Python services already read).

One read of /proc/self/stat gives CPU time, virtual and resident memory; /proc/self/fd counts open files; the start
time and the clock tick come once. Hosts without /proc (not Linux) render nothing.
"""

from __future__ import annotations

import os
import resource

from runtime.metrics.registry import format_value, header

# (suffix, type, help)
FAMILIES = (
    ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
    ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."),
    ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."),
    ("process_open_fds", "gauge", "Number of open file descriptors."),
    ("process_max_fds", "gauge", "Maximum number of open file descriptors."),
)


class ProcessMetrics:
    def __init__(self, namespace: str) -> None:
        self.names = [f"{namespace}_{suffix}" for suffix, _kind, _help in FAMILIES]
        self._headers = [header(f"{namespace}_{suffix}", help_text, kind) for suffix, kind, help_text in FAMILIES]
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._start: float | None = None
        try:
            self._start = _boot_time() + float(_stat_fields()[19]) / self._ticks
        except (OSError, ValueError, IndexError):
            self._start = None  # no /proc: nothing to render

    def render(self, out: list[str]) -> None:
        if self._start is None:
            return
        try:
            fields = _stat_fields()
            open_fds = len(os.listdir("/proc/self/fd"))
        except OSError:
            return
        values = (
            float(fields[20]),  # vsize, bytes
            float(int(fields[21]) * self._page),  # rss, pages
            self._start,
            (int(fields[11]) + int(fields[12])) / self._ticks,  # utime + stime, ticks
            float(open_fds),
            float(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        )
        for name, head, value in zip(self.names, self._headers, values, strict=True):
            out.append(f"{head}{name} {format_value(value)}\n")


def _stat_fields() -> list[bytes]:
    """The fields of /proc/self/stat after the command name (which may hold spaces): field 3 (state) is index 0."""
    fd = os.open("/proc/self/stat", os.O_RDONLY)
    try:
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)
    return raw[raw.rindex(b")") + 2 :].split()


def _boot_time() -> float:
    with open("/proc/stat", "rb") as stat:
        for line in stat:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")
