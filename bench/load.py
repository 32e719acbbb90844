#!/usr/bin/env python3
"""Load test of the sidecar: many concurrent scrapers, downloads and LoRA churn at once, for a bounded time.

What runs (everything on 127.0.0.1, each in its own process group, all stopped on exit, errors, Ctrl-C, SIGTERM):

* peers (this script with `_peers`, one process): the engine stand-in, serving the recorded vLLM payload at
  `/metrics` plus vLLM's LoRA API (`tests.support.lora_engines.VllmLoraEngine`'s handlers, with a per-load delay),
  `/v1/models`, `/version`, `/health` and `/_stats` (requests per path); and a static file server with Range
  support (aiohttp `FileResponse`) for a few random files generated once into the work dir;
* the sidecar (`tests.support.sidecar.sidecar_command()`: `python -m runtime`, or `AIRUNTIME_BIN`);
* the scrapers (this script with `_scrape`, `--scraper-procs` processes): `--scrapers` keep-alive connections in
  total, each scraping `/metrics` back to back (or every `--scrape-interval` s);
* in this process: `--downloads` synchronous Kthena downloads (`POST /v1/download_model` of a file over http://,
  a fresh target dir each, the result's sha256 checked, a new one started as one ends), LoRA churn (per adapter
  name: `--lora-dup` concurrent identical loads, exactly one of which must reach the engine, a listing, an unload),
  and a `/health` probe every 100 ms.

Warm-up (one of each operation), settle, then `--duration` s of load, then `--settle` s idle. Reported per class
(scrape, health, download, lora): count, errors by kind, latency p50/p90/p99/max; the sidecar's RSS (process tree)
cold, before the load, peak during it, after the settle; its CPU seconds; engine scrapes (coalescing). A table on
stdout, everything in `bench/results/load-TIMESTAMP.json` (`--output`).

Exit status: 0 when there was no error, RSS after settle grew at most `--max-rss-growth-mib` over before, and the
/health p99 was at most `--max-health-p99-ms`; 1 otherwise; 2 when the setup failed; 130 when interrupted.
The bounds and measured numbers are discussed in bench/README.md.

    .venv/bin/python bench/load.py                      # 60 s of load, ~75 s in all
    .venv/bin/python bench/load.py --duration 30 --scrape-interval 1 --max-health-p99-ms 5   # paced scrapers
    AIRUNTIME_BIN=dist/airuntime .venv/bin/python bench/load.py --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.common import (  # noqa: E402
    RssSampler,
    cpu_seconds,
    host_busy_pct,
    host_busy_seconds,
    host_info,
    print_header,
    process_tree,
    rss_bytes,
    start_group,
    stop_group,
    terminate_as_interrupt,
    write_json,
)
from tests.support.fake_engine import METRICS_CONTENT_TYPE, VLLM_FIXTURE  # noqa: E402
from tests.support.lora_engines import VllmLoraEngine, make_adapter  # noqa: E402
from tests.support.sidecar import free_port, sidecar_command  # noqa: E402

HOST = "127.0.0.1"
MIB = 1024 * 1024
RESULTS_DIR = REPO_ROOT / "bench" / "results"
CLASSES = ("scrape", "health", "download", "lora")
# A scrape answer is checked (every `--check-every`th per connection) for an engine family and the sidecar's
# own engine_up 1: the sidecar answers 200 even when its engine scrape failed, so the status alone proves little.
ENGINE_MARKER = b"\nvllm:num_requests_running{"
UP_MARKER = b"\nairuntime:engine_up 1"
SLOW_S = 0.5  # scrapes slower than this are listed with their time, to tell a start-up burst from stalls


def log(message: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in ms (nearest rank) of latencies in seconds."""
    if not values:
        return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(p / 100 * len(ordered) + 0.5) - 1))] * 1e3

    return {"p50_ms": rank(50), "p90_ms": rank(90), "p99_ms": rank(99), "max_ms": ordered[-1] * 1e3}


# -- peers: engine stand-in and file server (own process) --------------------------------------------------------


class LoadEngine(VllmLoraEngine):
    """vLLM's LoRA API as the project's stand-in answers it, plus the recorded /metrics payload and /version."""

    def __init__(self, payload: bytes, load_delay: float) -> None:
        super().__init__()
        self.payload = payload
        self.load_delay = load_delay
        self.hits: Counter[str] = Counter()

    def app(self) -> web.Application:
        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            self.hits[request.path] += 1
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[count])
        self.routes(app)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/version", self._version)
        app.router.add_get("/_stats", self._stats)
        return app

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await super()._record(request)
        del self.requests[:-100]  # only the counts matter here: keep the record bounded
        return body

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.payload, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.32.0"})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"hits": dict(self.hits), "adapters": sorted(self.adapters)})


def file_server(directory: Path) -> tuple[web.Application, Counter[str]]:
    """GET and HEAD of the files in `directory` (aiohttp's FileResponse: Range, ETag, Content-Length)."""
    hits: Counter[str] = Counter()

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        hits[request.method] += 1
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[count])
    app.router.add_static("/files/", directory)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"hits": dict(hits)})

    app.router.add_get("/_stats", stats)
    return app, hits


def peers_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="load.py _peers")
    parser.add_argument("--engine-port", type=int, required=True)
    parser.add_argument("--files-port", type=int, required=True)
    parser.add_argument("--files-dir", type=Path, required=True)
    parser.add_argument("--payload", type=Path, required=True)
    parser.add_argument("--load-delay", type=float, default=0.05)
    args = parser.parse_args(argv)
    engine = LoadEngine(args.payload.read_bytes(), args.load_delay)
    files_app, _ = file_server(args.files_dir)

    async def serve() -> None:
        runners = []
        for app, port in ((engine.app(), args.engine_port), (files_app, args.files_port)):
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            await web.TCPSite(runner, HOST, port, backlog=1024).start()
            runners.append(runner)
        try:
            await asyncio.Event().wait()
        finally:
            for runner in runners:
                await runner.cleanup()

    install_uvloop()
    with terminate_as_interrupt(), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


# -- scrapers (own processes) ------------------------------------------------------------------------------------


def scrape_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="load.py _scrape")
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--start-at", type=float, required=True, help="time.time() to start at")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--check-every", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        slow: list[tuple[float, float]] = []  # (seconds into the run, latency) of scrapes over SLOW_S, capped
        errors: Counter[str] = Counter()
        received = checked = 0
        headers = {"Accept-Encoding": "gzip" if args.gzip else "identity"}
        connector = aiohttp.TCPConnector(limit=args.connections)
        timeout = aiohttp.ClientTimeout(total=args.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
            await asyncio.sleep(max(0.0, args.start_at - time.time()))
            began = time.perf_counter()
            end = began + args.duration

            async def scraper(index: int) -> None:
                nonlocal received, checked
                n = index  # stagger the checked answers over the connections
                while (started := time.perf_counter()) < end:
                    n += 1
                    try:
                        async with session.get(args.url, headers=headers) as response:
                            body = await response.read()
                            status, encoding = response.status, response.headers.get("Content-Encoding", "")
                    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                        errors[type(exc).__name__] += 1
                        await asyncio.sleep(0.01)  # a dead sidecar must not turn this into a busy loop
                        continue
                    elapsed = time.perf_counter() - started
                    received += len(body)
                    if status != 200:
                        errors[f"status_{status}"] += 1
                        continue
                    if n % args.check_every == 0:
                        checked += 1
                        text = zlib.decompress(body, 47) if encoding == "gzip" else body
                        if ENGINE_MARKER not in text:
                            errors["no_engine_metrics"] += 1
                        elif UP_MARKER not in text:
                            errors["engine_up_not_1"] += 1
                    latencies.append(elapsed)
                    if elapsed > SLOW_S and len(slow) < 2000:
                        slow.append((round(started - began, 3), round(elapsed, 4)))
                    if args.interval:
                        await asyncio.sleep(args.interval)

            await asyncio.gather(*(scraper(i) for i in range(args.connections)))
            wall = time.perf_counter() - began
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "latencies_us": [round(value * 1e6) for value in latencies],
            "slow": slow,
            "errors": dict(errors),
            "bytes": received,
            "checked": checked,
            "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }

    install_uvloop()
    result = asyncio.run(run())
    args.out.write_text(json.dumps(result))


# -- the orchestrator ----------------------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Latencies (s) of successful operations and errors by kind, for one class."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    ops: Counter[str] = field(default_factory=Counter)

    def ok(self, seconds: float, op: str = "") -> None:
        self.latencies.append(seconds)
        if op:
            self.ops[op] += 1

    def error(self, kind: str, op: str = "") -> None:
        self.errors[f"{op}:{kind}" if op else kind] += 1
        if op:
            self.ops[op] += 1

    def summary(self, wall: float) -> dict[str, Any]:
        count = len(self.latencies) + sum(self.errors.values())
        return {
            "count": count,
            "ok": len(self.latencies),
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors),
            "per_s": round(count / wall, 1) if wall else 0.0,
            **{key: round(value, 3) for key, value in percentiles(self.latencies).items()},
            **({"ops": dict(self.ops)} if self.ops else {}),
        }


@dataclass
class SourceFile:
    name: str
    size: int
    sha256: str


def generate_files(directory: Path, sizes_mib: list[int], seed: int) -> list[SourceFile]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files = []
    for index, size_mib in enumerate(sizes_mib):
        name = f"model-{index}-{size_mib}m.safetensors"
        digest = hashlib.sha256()
        with (directory / name).open("wb") as out:
            for _ in range(size_mib):
                chunk = rng.randbytes(MIB)
                digest.update(chunk)
                out.write(chunk)
        files.append(SourceFile(name, size_mib * MIB, digest.hexdigest()))
    return files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def listen_overflows() -> int | None:
    """Host-wide TcpExt ListenOverflows (connections dropped because a listen queue was full), or None."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


def tree_cpu(root: int) -> float:
    return sum(value for pid in process_tree(root) if (value := cpu_seconds(pid)) is not None)


def tree_rss(root: int) -> int:
    return rss_bytes(process_tree(root))


class Service:
    """A process in its own group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        with log_path.open("ab") as sink:
            self.proc: subprocess.Popen[bytes] | None = start_group(argv, sink, env=env, cwd=REPO_ROOT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc)


async def wait_ok(session: aiohttp.ClientSession, url: str, service: Service, timeout: float) -> float:
    started = time.monotonic()
    last: object = None
    while time.monotonic() - started < timeout:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited before {url} answered:\n{service.tail()}")
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                await response.read()
                if response.status == 200:
                    return time.monotonic() - started
                last = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g}s (last: {last}):\n{service.tail()}")


@dataclass
class Context:
    args: argparse.Namespace
    work: Path
    sidecar_url: str
    files_url: str
    files: list[SourceFile]
    adapters: dict[str, Path]
    recorders: dict[str, Recorder] = field(default_factory=lambda: {name: Recorder() for name in CLASSES})
    download_bytes: int = 0
    lora_cycles: int = 0
    sequence: int = 0
    rss_timeline: list[tuple[float, float]] = field(default_factory=list)

    def target_dir(self, label: str) -> Path:
        self.sequence += 1
        return self.work / "downloads" / f"{label}-{self.sequence}"


async def one_download(session: aiohttp.ClientSession, ctx: Context, file: SourceFile, label: str) -> None:
    recorder = ctx.recorders["download"]
    target = ctx.target_dir(label)
    body = {"source": f"{ctx.files_url}/files/{file.name}", "output_dir": str(target)}
    started = time.perf_counter()
    try:
        timeout = aiohttp.ClientTimeout(total=ctx.args.download_timeout)
        async with session.post(f"{ctx.sidecar_url}/v1/download_model", json=body, timeout=timeout) as response:
            answer = await response.read()
            status = response.status
        elapsed = time.perf_counter() - started
        if status != 200:
            recorder.error(f"status_{status}")
            log(f"download {file.name} -> {status}: {answer[:300]!r}")
            return
        digest = await asyncio.to_thread(sha256_file, target / file.name)
        if digest != file.sha256:
            recorder.error("sha256_mismatch")
            log(f"download {file.name}: sha256 {digest} != {file.sha256}")
            return
        recorder.ok(elapsed)
        ctx.download_bytes += file.size
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        recorder.error(type(exc).__name__)
        log(f"download {file.name}: {type(exc).__name__}: {exc}")
    finally:
        await asyncio.to_thread(shutil.rmtree, target, True)


async def download_slot(session: aiohttp.ClientSession, ctx: Context, slot: int, end: float) -> None:
    count = 0
    while time.monotonic() < end:
        await one_download(session, ctx, ctx.files[(slot + count) % len(ctx.files)], f"slot{slot}")
        count += 1


async def lora_request(
    session: aiohttp.ClientSession, ctx: Context, op: str, method: str, path: str, body: dict[str, Any] | None
) -> dict[str, Any] | None:
    """One LoRA API call, recorded under `op`; the JSON answer when it was a 200."""
    recorder = ctx.recorders["lora"]
    started = time.perf_counter()
    try:
        async with session.request(method, f"{ctx.sidecar_url}{path}", json=body) as response:
            raw = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        recorder.error(type(exc).__name__, op)
        return None
    elapsed = time.perf_counter() - started
    if status != 200:
        recorder.error(f"status_{status}", op)
        log(f"lora {op} {body} -> {status}: {raw[:300]!r}")
        return None
    try:
        answer: dict[str, Any] = json.loads(raw)
    except ValueError:
        recorder.error("not_json", op)
        return None
    recorder.ok(elapsed, op)
    return answer


async def lora_churn(session: aiohttp.ClientSession, ctx: Context, name: str, end: float) -> None:
    """load x dup (concurrently; exactly one may change anything), list (ours must show loaded), unload; repeat."""
    recorder = ctx.recorders["lora"]
    body = {"lora_name": name, "lora_path": str(ctx.adapters[name])}
    while time.monotonic() < end:
        answers = await asyncio.gather(
            *(
                lora_request(session, ctx, "load", "POST", "/v1/load_lora_adapter", body)
                for _ in range(ctx.args.lora_dup)
            )
        )
        done = [answer for answer in answers if answer is not None]
        changed = sum(1 for answer in done if answer.get("message") == "adapter loaded")
        if len(done) == len(answers) and changed != 1:
            recorder.error(f"{changed}_of_{len(done)}_changed", "idempotence")
            log(f"lora {name}: {changed} of {len(done)} concurrent identical loads said 'adapter loaded'")
        listing = await lora_request(session, ctx, "list", "GET", "/v1/lora_adapters", None)
        if listing is not None:
            entry = next((item for item in listing.get("data", []) if item.get("name") == name), None)
            if entry is None or entry.get("state") != "loaded" or entry.get("engine_loaded") is not True:
                recorder.error("not_loaded_in_listing", "list")
                log(f"lora {name}: listing shows {entry}")
        await lora_request(session, ctx, "unload", "POST", "/v1/unload_lora_adapter", {"lora_name": name})
        ctx.lora_cycles += 1
        await asyncio.sleep(ctx.args.lora_pause)


async def health_probe(session: aiohttp.ClientSession, ctx: Context, end: float) -> None:
    recorder = ctx.recorders["health"]
    interval = ctx.args.health_interval
    tick = time.monotonic()
    while tick < end:
        started = time.perf_counter()
        try:
            async with session.get(f"{ctx.sidecar_url}/health", timeout=aiohttp.ClientTimeout(total=5)) as response:
                await response.read()
                status = response.status
            if status == 200:
                recorder.ok(time.perf_counter() - started)
            else:
                recorder.error(f"status_{status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            recorder.error(type(exc).__name__)
        tick += interval
        now = time.monotonic()
        if tick < now:  # late (a stall): skip the missed ticks rather than firing a burst
            tick = now + interval - (now - tick) % interval
        await asyncio.sleep(tick - now)


async def fetch_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
        response.raise_for_status()
        data: dict[str, Any] = await response.json()
        return data


OWN_SAMPLE_RE = re.compile(rb"^(airuntime:[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$", re.MULTILINE)


async def own_metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The sidecar's own counters that tell about the run (engine scrapes and their failures, downloads, LoRA)."""
    headers = {"Accept-Encoding": "identity"}
    async with session.get(f"{url}/metrics", headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as response:
        body = await response.read()
    wanted = ("scrape_errors", "scrape_duration_seconds_count", "invalid_lines", "download", "lora_operations")
    values: dict[str, float] = {}
    for name, labels, value in OWN_SAMPLE_RE.findall(body):
        key = (name + (labels or b"")).decode()
        if any(part in key for part in wanted) and "_bucket" not in key:
            values[key] = float(value)
    return values


def start_scrapers(ctx: Context, start_at: float, outputs: list[Path]) -> list[Service]:
    args = ctx.args
    procs = []
    per_proc = [
        args.scrapers // args.scraper_procs + (i < args.scrapers % args.scraper_procs)
        for i in range(args.scraper_procs)
    ]
    for index, (connections, out) in enumerate(zip(per_proc, outputs, strict=True)):
        argv = [sys.executable, str(Path(__file__).resolve()), "_scrape", "--url", f"{ctx.sidecar_url}/metrics"]
        argv += ["--connections", str(connections), "--start-at", f"{start_at:.3f}", "--duration", str(args.duration)]
        argv += ["--interval", str(args.scrape_interval), "--check-every", str(args.check_every), "--out", str(out)]
        if args.gzip:
            argv.append("--gzip")
        procs.append(Service(f"scraper-{index}", argv, dict(os.environ), ctx.work / f"scraper-{index}.log"))
    return procs


async def warm_up(session: aiohttp.ClientSession, ctx: Context) -> None:
    """One of each operation, so lazily imported code and first-use caches count in the `before` RSS."""
    async with session.get(f"{ctx.sidecar_url}/metrics") as response:
        await response.read()
    await one_download(session, ctx, min(ctx.files, key=lambda f: f.size), "warmup")
    name = next(iter(ctx.adapters))
    body = {"lora_name": name, "lora_path": str(ctx.adapters[name])}
    await lora_request(session, ctx, "load", "POST", "/v1/load_lora_adapter", body)
    await lora_request(session, ctx, "list", "GET", "/v1/lora_adapters", None)
    await lora_request(session, ctx, "unload", "POST", "/v1/unload_lora_adapter", {"lora_name": name})
    errors = {cls: dict(rec.errors) for cls, rec in ctx.recorders.items() if rec.errors}
    if errors:
        raise RuntimeError(f"warm-up failed: {errors}")
    ctx.recorders = {cls: Recorder() for cls in CLASSES}
    ctx.download_bytes = 0


async def rss_timeline(ctx: Context, pid: int, end: float) -> None:
    """The sidecar's RSS every second, to tell a plateau (buffers, allocator arenas) from steady growth (a leak)."""
    began = time.monotonic()
    while (now := time.monotonic()) < end:
        ctx.rss_timeline.append((round(now - began, 1), round(tree_rss(pid) / MIB, 1)))
        await asyncio.sleep(1.0)


async def drive(
    ctx: Context, session: aiohttp.ClientSession, outputs: list[Path], sidecar_pid: int, on_start: Callable[[], None]
) -> dict[str, Any]:
    """The load itself: scrapers in their processes, the rest here; returns the scrapers' merged results.
    `on_start` runs when the scrapers start (after their start-up time)."""
    args = ctx.args
    start_at = time.time() + args.scraper_startup
    scrapers = start_scrapers(ctx, start_at, outputs)
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        on_start()
        end = time.monotonic() + args.duration
        tasks = [health_probe(session, ctx, end), rss_timeline(ctx, sidecar_pid, end)]
        tasks += [download_slot(session, ctx, slot, end) for slot in range(args.downloads)]
        tasks += [lora_churn(session, ctx, name, end) for name in ctx.adapters]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.duration + args.download_timeout + 30)
        deadline = time.monotonic() + 60
        while any(s.alive() for s in scrapers) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for scraper in scrapers:
            if scraper.alive():
                raise RuntimeError(f"{scraper.name} did not finish:\n{scraper.tail()}")
            assert scraper.proc is not None
            if scraper.proc.returncode != 0:
                raise RuntimeError(f"{scraper.name} failed ({scraper.proc.returncode}):\n{scraper.tail()}")
    finally:
        for scraper in scrapers:
            scraper.stop()
    merged: dict[str, Any] = {"errors": Counter(), "bytes": 0, "checked": 0, "cpu_s": 0.0, "wall_s": 0.0, "slow": []}
    recorder = ctx.recorders["scrape"]
    for out in outputs:
        part = json.loads(out.read_text())
        recorder.latencies.extend(value / 1e6 for value in part["latencies_us"])
        recorder.errors.update(part["errors"])
        merged["bytes"] += part["bytes"]
        merged["checked"] += part["checked"]
        merged["cpu_s"] += part["cpu_s"]
        merged["wall_s"] = max(merged["wall_s"], part["wall_s"])
        merged["slow"] += part["slow"]
    merged["errors"] = dict(recorder.errors)
    return merged


def run(args: argparse.Namespace, report: dict[str, Any], work: Path) -> None:
    """Everything between start and stop of the peers and the sidecar; fills `report`."""
    services: list[Service] = []
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(REPO_ROOT))
    try:
        log(f"generating {args.file_sizes_mib} MiB of random files in {work / 'files'}")
        files = generate_files(work / "files", args.file_sizes_mib, args.seed)
        adapters = {f"load-{i}": make_adapter(work / "adapters" / f"load-{i}", i) for i in range(args.lora_adapters)}
        engine_port, files_port, sidecar_port = free_port(), free_port(), free_port()
        peers = Service(
            "peers",
            [
                *(sys.executable, str(Path(__file__).resolve()), "_peers", "--engine-port", str(engine_port)),
                *("--files-port", str(files_port), "--files-dir", str(work / "files"), "--payload", str(args.payload)),
                *("--load-delay", str(args.lora_load_delay)),
            ],
            env,
            work / "peers.log",
        )
        services.append(peers)
        engine_url, files_url = f"http://{HOST}:{engine_port}", f"http://{HOST}:{files_port}"
        sidecar_argv = [*sidecar_command(), "serve", "--engine", "vllm", "--engine-url", engine_url]
        sidecar_argv += ["--host", HOST, "--port", str(sidecar_port), "--models-dir", str(work / "models")]
        sidecar_argv += ["--adapters-dir", str(work / "adapters-dl")]
        sidecar_argv += ["--lora-reconcile-interval", str(args.reconcile_interval), *args.sidecar_arg]
        report["meta"]["sidecar_command"] = shlex.join(sidecar_argv)
        ctx = Context(args, work, f"http://{HOST}:{sidecar_port}", files_url, files, adapters)
        report["meta"]["files"] = [vars(f) for f in files]
        report["meta"]["host_busy_before_pct_of_core"] = round(host_busy_pct(2.0, per_core=True), 1)
        install_uvloop()
        outputs = [work / f"scraper-{i}.json" for i in range(args.scraper_procs)]

        async def session_run() -> None:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
                await wait_ok(session, f"{engine_url}/health", peers, 30)
                await wait_ok(session, f"{files_url}/_stats", peers, 30)
                sidecar = Service("sidecar", sidecar_argv, env, work / "sidecar.log")
                services.append(sidecar)
                spawned = time.monotonic()
                await wait_ok(session, f"{ctx.sidecar_url}/health", sidecar, 60)
                report["sidecar"]["ready_s"] = round(time.monotonic() - spawned, 2)
                report["sidecar"]["rss_cold_mib"] = round(tree_rss(sidecar.pid) / MIB, 1)
                log(f"sidecar up (pid {sidecar.pid}); warm-up")
                await warm_up(session, ctx)
                await asyncio.sleep(args.settle)
                rss_before = tree_rss(sidecar.pid)
                engine_before = await fetch_json(session, f"{engine_url}/_stats")
                own_before = await own_metrics(session, ctx.sidecar_url)
                marks: dict[str, float] = {}

                def on_start() -> None:
                    usage = resource.getrusage(resource.RUSAGE_SELF)
                    marks.update(
                        wall=time.perf_counter(),
                        sidecar=tree_cpu(sidecar.pid),
                        peers=tree_cpu(peers.pid),
                        host=host_busy_seconds(),
                        me=usage.ru_utime + usage.ru_stime,
                        overflows=listen_overflows() or 0,
                    )

                log(
                    f"load: {args.duration:g}s, {args.scrapers} scrapers in {args.scraper_procs} process(es), "
                    f"{args.downloads} downloads, {len(adapters)} LoRA adapters x {args.lora_dup} concurrent loads"
                )
                with RssSampler(sidecar.pid, interval=0.1) as sampler:
                    scrapers = await drive(ctx, session, outputs, sidecar.pid, on_start)
                wall = time.perf_counter() - marks["wall"]
                cpu_load = tree_cpu(sidecar.pid) - marks["sidecar"]
                peers_cpu = tree_cpu(peers.pid) - marks["peers"]
                host_busy = host_busy_seconds() - marks["host"]
                usage = resource.getrusage(resource.RUSAGE_SELF)
                my_cpu = usage.ru_utime + usage.ru_stime - marks["me"]
                overflows = (listen_overflows() or 0) - marks["overflows"]
                rss_end = tree_rss(sidecar.pid)
                log(f"load done in {wall:.1f}s; settling {args.settle:g}s")
                await asyncio.sleep(args.settle)
                rss_after = tree_rss(sidecar.pid)
                engine_after = await fetch_json(session, f"{engine_url}/_stats")
                files_stats = await fetch_json(session, f"{files_url}/_stats")
                own_after = await own_metrics(session, ctx.sidecar_url)
                if not sidecar.alive():
                    raise RuntimeError(f"the sidecar died:\n{sidecar.tail()}")
            measured_wall = scrapers["wall_s"] or args.duration
            report["classes"] = {cls: ctx.recorders[cls].summary(measured_wall) for cls in CLASSES}
            report["classes"]["scrape"]["checked_bodies"] = scrapers["checked"]
            report["classes"]["scrape"]["mb_received"] = round(scrapers["bytes"] / 1e6, 1)
            report["classes"]["download"]["mib_verified"] = round(ctx.download_bytes / MIB)
            report["classes"]["download"]["mib_s"] = round(ctx.download_bytes / MIB / wall, 1)
            report["classes"]["lora"]["cycles"] = ctx.lora_cycles

            def delta(key: str) -> int:
                return int(engine_after["hits"].get(key, 0) - engine_before["hits"].get(key, 0))

            sidecar_scrapes = report["classes"]["scrape"]["count"]
            engine_scrapes = delta("/metrics")
            engine_loads = delta("/v1/load_lora_adapter")
            report["engine"] = {
                "scrapes": engine_scrapes,
                "scrapes_per_s": round(engine_scrapes / wall, 1),
                "sidecar_scrapes_per_engine_scrape": round(sidecar_scrapes / engine_scrapes, 1)
                if engine_scrapes
                else None,
                "lora_loads": engine_loads,
                "lora_unloads": delta("/v1/unload_lora_adapter"),
                "models_listings": delta("/v1/models"),
                "lora_cycles": ctx.lora_cycles,
                "adapters_left": engine_after["adapters"],
                "hits": {k: v - engine_before["hits"].get(k, 0) for k, v in engine_after["hits"].items()},
                "file_server_hits": files_stats["hits"],
            }
            report["sidecar"]["own_metrics_delta"] = {
                key: value - own_before.get(key, 0.0)
                for key, value in own_after.items()
                if value - own_before.get(key, 0.0)
            }
            report["sidecar"].update(
                rss_before_mib=round(rss_before / MIB, 1),
                rss_peak_mib=round(max(sampler.peak, rss_end) / MIB, 1),
                rss_end_of_load_mib=round(rss_end / MIB, 1),
                rss_after_settle_mib=round(rss_after / MIB, 1),
                rss_growth_mib=round((rss_after - rss_before) / MIB, 1),
                cpu_s=round(cpu_load, 2),
                cpu_pct_of_core=round(100 * cpu_load / wall, 1),
            )
            report["load"] = {
                "wall_s": round(wall, 2),
                "scrapers_cpu_s": round(scrapers["cpu_s"], 2),
                "peers_cpu_s": round(peers_cpu, 2),
                "driver_cpu_s": round(my_cpu, 2),  # this process: health, downloads (sha256 checks), LoRA
                "other_cpu_s": round(host_busy - cpu_load - scrapers["cpu_s"] - peers_cpu - my_cpu, 2),
                "host_busy_pct_of_core": round(100 * host_busy / wall, 1),
                # SYNs dropped on full listen queues, host-wide (on an otherwise idle loopback: ours); each costs
                # the client a 1 s (then 3 s) SYN retransmit
                "listen_overflows": int(overflows),
            }
            report["rss_timeline_mib"] = ctx.rss_timeline
            if len(ctx.rss_timeline) >= 20:  # median of the last 10 s minus that of seconds 1-10: a leak's slope
                early = sorted(mib for _, mib in ctx.rss_timeline[1:11])[5]
                late = sorted(mib for _, mib in ctx.rss_timeline[-10:])[5]
                report["sidecar"]["rss_drift_mib"] = round(late - early, 1)
            report["classes"]["scrape"]["slow_over_500ms"] = sorted(scrapers["slow"])

        asyncio.run(session_run())
    finally:
        for service in reversed(services):
            service.stop()


def check(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Why the run fails (empty when it passes)."""
    problems = []
    classes = report.get("classes", {})
    for cls in CLASSES:
        summary = classes.get(cls)
        if summary is None:
            problems.append(f"{cls}: not measured")
            continue
        if summary["errors"]:
            problems.append(f"{cls}: {summary['errors']} error(s) {summary['errors_by_kind']}")
        if summary["ok"] == 0:
            problems.append(f"{cls}: nothing succeeded")
    failures = {
        key: value
        for key, value in report.get("sidecar", {}).get("own_metrics_delta", {}).items()
        if "scrape_errors" in key or "failures" in key or 'result="error"' in key or "invalid_lines" in key
    }
    if failures:
        problems.append(f"sidecar counted failures: {failures}")
    sidecar = report.get("sidecar", {})
    if "rss_growth_mib" in sidecar and sidecar["rss_growth_mib"] > args.max_rss_growth_mib:
        problems.append(
            f"RSS grew {sidecar['rss_growth_mib']} MiB (before {sidecar['rss_before_mib']}, after settle "
            f"{sidecar['rss_after_settle_mib']}) > --max-rss-growth-mib {args.max_rss_growth_mib:g}"
        )
    health = classes.get("health")
    if health and health["p99_ms"] > args.max_health_p99_ms:
        problems.append(f"/health p99 {health['p99_ms']:.2f} ms > --max-health-p99-ms {args.max_health_p99_ms:g}")
    return problems


def print_report(report: dict[str, Any]) -> None:
    classes = report.get("classes")
    if not classes:
        return
    print()
    print_header(
        f"{'class':<9} {'count':>8} {'per s':>8} {'errors':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    for cls in CLASSES:
        s = classes[cls]
        print(
            f"{cls:<9} {s['count']:>8} {s['per_s']:>8.1f} {s['errors']:>6} {s['p50_ms']:>8.2f} {s['p90_ms']:>8.2f} "
            f"{s['p99_ms']:>8.2f} {s['max_ms']:>8.1f}"
        )
    sidecar, engine, load = report["sidecar"], report["engine"], report["load"]
    print()
    print(
        f"sidecar RSS MiB: cold {sidecar['rss_cold_mib']}, before {sidecar['rss_before_mib']}, peak "
        f"{sidecar['rss_peak_mib']}, end of load {sidecar['rss_end_of_load_mib']}, after settle "
        f"{sidecar['rss_after_settle_mib']} (growth {sidecar['rss_growth_mib']:+}, drift during load "
        f"{sidecar.get('rss_drift_mib', '-')})"
    )
    print(
        f"sidecar CPU: {sidecar['cpu_s']} s ({sidecar['cpu_pct_of_core']}% of a core); "
        f"scrapers {load['scrapers_cpu_s']} s, peers {load['peers_cpu_s']} s, driver {load['driver_cpu_s']} s, "
        f"other {load['other_cpu_s']} s; "
        f"host busy {load['host_busy_pct_of_core']}% of a core over {load['wall_s']} s"
    )
    print(
        f"engine: {engine['scrapes']} scrapes ({engine['scrapes_per_s']}/s; "
        f"{engine['sidecar_scrapes_per_engine_scrape']} sidecar scrapes each), {engine['lora_loads']} LoRA loads "
        f"for {engine['lora_cycles']} load cycles, {engine['lora_unloads']} unloads"
    )
    slow = report["classes"]["scrape"]["slow_over_500ms"]
    if slow:
        print(
            f"scrapes over 500 ms: {len(slow)}, started between {slow[0][0]} s and {slow[-1][0]} s into the run; "
            f"listen queue overflows (host) {load['listen_overflows']}"
        )
    dl = report["classes"]["download"]
    print(f"downloads: {dl['ok']} verified (sha256), {dl['mib_verified']} MiB, {dl['mib_s']} MiB/s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--scrapers", type=int, default=200, help="concurrent keep-alive scrapers (default 200)")
    parser.add_argument("--scraper-procs", type=int, default=1, help="processes the scrapers are spread over")
    parser.add_argument("--scrape-interval", type=float, default=0.0, help="pause between a scraper's scrapes")
    parser.add_argument(
        "--gzip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="scrapers send Accept-Encoding: gzip, as Prometheus does (default on)",
    )
    parser.add_argument("--check-every", type=int, default=20, help="check every Nth scrape body of a connection")
    parser.add_argument("--downloads", type=int, default=4, help="downloads in flight at all times (default 4)")
    parser.add_argument(
        "--file-sizes-mib",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[32, 64, 128],
        help="sizes of the source files, comma-separated (default 32,64,128)",
    )
    parser.add_argument("--download-timeout", type=float, default=120.0)
    parser.add_argument("--lora-adapters", type=int, default=4, help="adapter names churned at once (default 4)")
    parser.add_argument("--lora-dup", type=int, default=3, help="concurrent identical loads per cycle (default 3)")
    parser.add_argument("--lora-load-delay", type=float, default=0.05, help="engine stand-in's delay per load")
    parser.add_argument("--lora-pause", type=float, default=0.05, help="pause between a name's cycles")
    parser.add_argument("--reconcile-interval", type=float, default=1.0, help="sidecar --lora-reconcile-interval")
    parser.add_argument("--health-interval", type=float, default=0.1)
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before `before` and `after` RSS")
    parser.add_argument("--scraper-startup", type=float, default=2.0, help="seconds the scrapers get to start")
    parser.add_argument(
        "--max-rss-growth-mib",
        type=float,
        default=64.0,
        help="fail when RSS after settle exceeds RSS before by more (default 64)",
    )
    parser.add_argument("--max-health-p99-ms", type=float, default=500.0, help="fail above this /health p99")
    parser.add_argument("--payload", type=Path, default=VLLM_FIXTURE, help="engine /metrics payload")
    parser.add_argument("--sidecar-arg", action="append", default=[], help="extra `serve` argument (repeatable)")
    parser.add_argument("--work-dir", type=Path, default=None, help="parent of the temp dir (default /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) for inspection")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="default bench/results/load-TIMESTAMP.json")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.scrapers < 1 or not 1 <= args.scraper_procs <= args.scrapers:
        parser.error("--duration and --scrapers must be positive, 1 <= --scraper-procs <= --scrapers")
    if args.downloads < 1 or args.lora_adapters < 1 or args.lora_dup < 1 or not args.file_sizes_mib:
        parser.error("--downloads, --lora-adapters, --lora-dup and --file-sizes-mib must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_peers"]:
        peers_main(argv[1:])
        return 0
    if argv[:1] == ["_scrape"]:
        scrape_main(argv[1:])
        return 0
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output = args.output or RESULTS_DIR / f"load-{stamp}.json"
    work = Path(tempfile.mkdtemp(prefix="airuntime-load-", dir=args.work_dir))
    report: dict[str, Any] = {
        "meta": {
            "command": shlex.join([sys.executable, *sys.argv]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": host_info(loadavg_at_start=list(os.getloadavg())),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "airuntime_bin": os.environ.get("AIRUNTIME_BIN"),
        },
        "sidecar": {},
    }
    t0 = time.perf_counter()
    status = 0
    try:
        with terminate_as_interrupt():
            run(args, report, work)
    except KeyboardInterrupt:
        status = 130
        report["meta"]["interrupted"] = True
        log("interrupted: processes stopped")
    except Exception as exc:  # report and exit 2; the processes are stopped by now
        status = 2
        report["meta"]["error"] = f"{type(exc).__name__}: {exc}"
        log(f"setup or run failed: {type(exc).__name__}: {exc}")
    finally:
        report["meta"]["wall_s"] = round(time.perf_counter() - t0, 1)
        if args.keep:
            log(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if status == 0:
        problems = check(report, args)
        report["problems"] = problems
        report["passed"] = not problems
        status = 1 if problems else 0
    write_json(output, report)
    print_report(report)
    for problem in report.get("problems", []):
        print(f"FAIL: {problem}")
    print(f"\n{'PASS' if status == 0 else 'FAIL'} (exit {status}); results in {output}")
    return status


if __name__ == "__main__":
    sys.exit(main())
