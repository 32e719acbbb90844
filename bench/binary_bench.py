"""Benchmark of the airuntime binary against `python -m runtime` and, when present, the AIBrix and Kthena runtimes.

For each runtime, beside a fake vLLM engine (tests/support/fake_engine.FakeEngineProcess):
- first start: process start to the first 200 from its health path; for the binary with an empty payload cache
  (so it unpacks), for the others simply the first of the runs;
- later start: median of --runs starts (the binary with its payload cache already filled);
- idle memory 3 s after the first health answer: RSS and PSS of each process (the onefile launcher and its child
  separately when there are two) and the total;
- memory under load: peak total RSS while --clients threads fetch /metrics for --load-seconds (requests/s too).
The binary runs three ways: the standalone folder (dist/airuntime.dist/airuntime, what the image ships: nothing
unpacked), the onefile as built (a cached payload makes the launcher exec the program: one process) and the onefile
with AIRUNTIME_ONEFILE_FORK=1 (stock Nuitka: launcher + child). Plus the binary's size and an image size estimate from
build/out/rootfs (make rootfs): the folder's size and its gzip-compressed tar (the shape of an image layer), with and
without the binary.

    .venv/bin/python bench/binary_bench.py [--bin dist/airuntime] [--runs 5] [--load-seconds 10]

Prints a table and writes bench/results/binary_bench.json. Traffic goes to 127.0.0.1 only and is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import host_info, print_header, process_tree, write_json  # noqa: E402
from tests.support.fake_engine import FakeEngineProcess  # noqa: E402
from tests.support.sidecar import free_port  # noqa: E402

AIBRIX_VENV = Path("/tmp/bench/aibrix-venv")
KTHENA_SRC = Path("/tmp/bench/kthena-src/python")
KTHENA_VENV = Path("/tmp/bench/kthena-venv")
MB = 1024 * 1024


@dataclass
class Runtime:
    name: str
    command: Callable[[int, str], list[str]]  # (port, engine_url) -> argv
    health_path: str
    env: dict[str, str] = field(default_factory=dict)
    before_first: Callable[[], None] | None = None  # e.g. empty the binary's payload cache


@dataclass
class Result:
    name: str
    first_start_s: float | None = None
    later_start_s: float | None = None
    later_starts_s: list[float] = field(default_factory=list)
    idle: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> {rss_mb, pss_mb}
    idle_total_rss_mb: float | None = None
    idle_total_pss_mb: float | None = None
    load_peak_rss_mb: float | None = None
    load_requests_per_s: float | None = None
    error: str | None = None


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB of one process."""
    rss = pss = 0.0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, pss


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def wait_health(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return time.perf_counter()
        except Exception:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            for pid in reversed(process_tree(proc.pid)):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()


def start(runtime: Runtime, engine_url: str, log: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRUNTIME_", "INFERENCE_ENGINE"))}
    env.update({k: v.replace("{engine}", engine_url) for k, v in runtime.env.items()})
    with log.open("ab") as sink:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            runtime.command(port, engine_url), env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        t1 = wait_health(base + runtime.health_path, proc)
    except Exception:
        stop(proc)
        raise
    return proc, base, t1 - t0


def load(base: str, seconds: float, clients: int, proc: subprocess.Popen[bytes]) -> tuple[float, float]:
    """(peak total RSS MB, requests/s) while `clients` threads GET /metrics for `seconds`."""
    deadline = time.monotonic() + seconds
    count = [0] * clients

    def client(i: int) -> None:
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
                    response.read()
                count[i] += 1
            except Exception:
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    peak = 0.0
    while time.monotonic() < deadline:
        peak = max(peak, sum(memory(pid)[0] for pid in process_tree(proc.pid)))
        time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=15)
    return peak, sum(count) / seconds


def measure(runtime: Runtime, engine_url: str, args: argparse.Namespace, logdir: Path) -> Result:
    result = Result(runtime.name)
    log = logdir / f"{runtime.name.replace(' ', '_')}.log"
    try:
        if runtime.before_first:
            runtime.before_first()
        proc, base, result.first_start_s = start(runtime, engine_url, log)
        try:
            time.sleep(3)
            tree = process_tree(proc.pid)
            for index, pid in enumerate(tree):
                role = (
                    "launcher" if index == 0 and len(tree) > 1 else ("child" if len(tree) == 2 else process_name(pid))
                )
                if role in result.idle:
                    role = f"{role}-{pid}"
                rss, pss = memory(pid)
                result.idle[role] = {"rss_mb": round(rss, 1), "pss_mb": round(pss, 1)}
            result.idle_total_rss_mb = round(sum(v["rss_mb"] for v in result.idle.values()), 1)
            result.idle_total_pss_mb = round(sum(v["pss_mb"] for v in result.idle.values()), 1)
            peak, rate = load(base, args.load_seconds, args.clients, proc)
            result.load_peak_rss_mb, result.load_requests_per_s = round(peak, 1), round(rate, 1)
        finally:
            stop(proc)
        for _ in range(args.runs):
            proc, _, elapsed = start(runtime, engine_url, log)
            stop(proc)
            result.later_starts_s.append(round(elapsed, 3))
        result.later_start_s = round(statistics.median(result.later_starts_s), 3)
        result.first_start_s = round(result.first_start_s, 3)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc} (log {log})"
    return result


def tar_gz_size(root: Path, skip: set[str]) -> tuple[int, int]:
    """(bytes of files, bytes of the gzip -6 compressed tar) of root without the relative paths in skip."""
    buffer = io.BytesIO()
    raw = 0

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        nonlocal raw
        name = info.name.removeprefix("./")
        if any(name == s or name.startswith(s + "/") for s in skip):
            return None
        if info.isfile():
            raw += info.size
        return info

    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        tar.add(root, arcname=".", filter=keep)
    return raw, buffer.tell()


def image_estimate(rootfs: Path) -> dict[str, float] | None:
    if not (rootfs / ".complete").exists():
        return None
    transient = {"home/nonroot/.cache", "tmp/airuntime-65532", "dev", "proc", ".complete", ".packages"}
    with_raw, with_gz = tar_gz_size(rootfs, transient)
    base_raw, base_gz = tar_gz_size(rootfs, transient | {"opt/airuntime", "usr/local/bin"})
    return {
        "rootfs_mb": round(with_raw / MB, 1),
        "rootfs_tar_gz_mb": round(with_gz / MB, 1),
        "base_without_binary_mb": round(base_raw / MB, 1),
        "base_without_binary_tar_gz_mb": round(base_gz / MB, 1),
    }


def serve_command(executable: Path) -> Callable[[int, str], list[str]]:
    return lambda p, e: [str(executable), "serve", "--host", "127.0.0.1", "--port", str(p), "--engine-url", e]


def runtimes(binary: Path, cache_root: Path) -> list[Runtime]:
    venv_python = REPO / ".venv" / "bin" / "python"
    binary_cache = cache_root / "binary-cache"

    def empty_binary_cache() -> None:
        shutil.rmtree(binary_cache, ignore_errors=True)

    found: list[Runtime] = []
    program = binary.parent / "airuntime.dist" / "airuntime"
    if program.is_file():
        found.append(
            Runtime(
                "standalone (image)",
                serve_command(program),
                "/health",
            )
        )
    if binary.is_file():
        found.append(
            Runtime(
                "airuntime binary",
                serve_command(binary),
                "/health",
                env={"XDG_CACHE_HOME": str(binary_cache)},
                before_first=empty_binary_cache,
            )
        )
        fork_cache = cache_root / "binary-fork-cache"
        found.append(
            Runtime(
                "binary, fork mode",
                serve_command(binary),
                "/health",
                env={"XDG_CACHE_HOME": str(fork_cache), "AIRUNTIME_ONEFILE_FORK": "1"},
                before_first=lambda: shutil.rmtree(fork_cache, ignore_errors=True),
            )
        )
    found.append(
        Runtime(
            "python -m runtime",
            lambda p, e: [
                str(venv_python),
                "-m",
                "runtime",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(p),
                "--engine-url",
                e,
            ],
            "/health",
            env={"PYTHONPATH": str(REPO)},
        )
    )
    if (AIBRIX_VENV / "bin" / "aibrix_runtime").exists():
        prom_dir = cache_root / "aibrix-prom"
        prom_dir.mkdir(exist_ok=True)
        found.append(
            Runtime(
                "AIBrix runtime",
                lambda p, e: [str(AIBRIX_VENV / "bin" / "aibrix_runtime"), "--host", "127.0.0.1", "--port", str(p)],
                "/healthz",
                env={
                    "INFERENCE_ENGINE": "vllm",
                    "INFERENCE_ENGINE_ENDPOINT": "{engine}",
                    "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
                },
            )
        )
    if (KTHENA_SRC / "kthena" / "runtime" / "app.py").exists() and (KTHENA_VENV / "bin" / "python").exists():
        found.append(
            Runtime(
                "Kthena runtime",
                lambda p, e: [
                    str(KTHENA_VENV / "bin" / "python"),
                    str(KTHENA_SRC / "kthena" / "runtime" / "app.py"),
                    "-E",
                    "vllm",
                    "-H",
                    "127.0.0.1",
                    "-P",
                    str(p),
                    "-B",
                    e,
                    "-M",
                    "/metrics",
                    "-I",
                    "pod-0",
                    "-N",
                    "m",
                ],
                "/health",
                env={
                    "PYTHONPATH": str(KTHENA_SRC),
                    "REDIS_HOST": "127.0.0.1",
                    "VLLM_ZMQ_ENDPOINT": "tcp://127.0.0.1:5557",
                    "SGLANG_ZMQ_ENDPOINT": "tcp://127.0.0.1:5557",
                },
            )
        )
    return found


def fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description="airuntime binary benchmark")
    parser.add_argument("--bin", type=Path, default=REPO / "dist" / "airuntime")
    parser.add_argument("--rootfs", type=Path, default=REPO / "build" / "out" / "rootfs")
    parser.add_argument("--runs", type=int, default=5, help="later starts to time")
    parser.add_argument("--load-seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--only", action="append", help="run only runtimes whose name contains this")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "binary_bench.json")
    args = parser.parse_args()

    report: dict[str, object] = {
        "machine": host_info(),
        "settings": {"runs": args.runs, "load_seconds": args.load_seconds, "clients": args.clients},
    }
    if args.bin.is_file():
        report["binary"] = {"path": str(args.bin), "size_mb": round(args.bin.stat().st_size / MB, 2)}
    results: list[Result] = []
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="airuntime-bench-") as tmp, FakeEngineProcess() as engine:
        chosen = [r for r in runtimes(args.bin, Path(tmp)) if not args.only or any(o in r.name for o in args.only)]
        for runtime in chosen:
            print(f"measuring {runtime.name} ...", file=sys.stderr, flush=True)
            results.append(measure(runtime, engine.url, args, args.json.parent))
    report["runtimes"] = [asdict(r) for r in results]
    estimate = image_estimate(args.rootfs)
    report["image_estimate"] = estimate

    header = (
        f"{'runtime':<19} {'first start':>11} {'later start':>11} {'idle RSS':>22} {'idle PSS':>9} "
        f"{'RSS under load':>15} {'req/s':>7}"
    )
    print_header(header)
    for r in results:
        if r.error:
            print(f"{r.name:<19} error: {r.error}")
            continue
        parts = " + ".join(f"{v['rss_mb']:g}" for v in r.idle.values())
        idle = f"{parts} = {fmt(r.idle_total_rss_mb)}" if len(r.idle) > 1 else fmt(r.idle_total_rss_mb)
        print(
            f"{r.name:<19} {fmt(r.first_start_s, ' s'):>11} {fmt(r.later_start_s, ' s'):>11} {idle + ' MB':>22} "
            f"{fmt(r.idle_total_pss_mb, ' MB'):>9} {fmt(r.load_peak_rss_mb, ' MB'):>15} "
            f"{fmt(r.load_requests_per_s):>7}"
        )
    if "binary" in report:
        print(f"binary size: {report['binary']['size_mb']} MB")  # type: ignore[index]
    if estimate:
        print(
            f"image estimate (build/out/rootfs): {estimate['rootfs_mb']} MB on disk, "
            f"{estimate['rootfs_tar_gz_mb']} MB as tar.gz; without the binary {estimate['base_without_binary_mb']} "
            f"MB / {estimate['base_without_binary_tar_gz_mb']} MB"
        )
    write_json(args.json, report)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
