#!/usr/bin/env python3
"""Side-by-side /metrics benchmark: the engine itself, airuntime, and (if installed) AIBrix's and Kthena's runtimes.

One fake engine (`tests.support.fake_engine`, its own process) serves a recorded payload; every target scrapes that
same engine, one target at a time, so they never share the CPU with each other. Per target and payload:

* cold start: time from spawn to the first 200 on its health endpoint (median of `--cold-starts` spawns);
* output check: one GET of its metrics endpoint: size, families, whether unified token counters are present;
* load: scrape latency p50/p99 and throughput at each `--concurrency` for `--duration` seconds after `--warmup`,
  with the CPU used by the target, the engine and the load generator during the measured window;
* memory: RSS summed over the target's process tree, idle before load, peak during load, and after load.

Run from the repo root with the project's venv:

    .venv/bin/python bench/metrics_bench.py                        # full run, every installed target
    .venv/bin/python bench/metrics_bench.py --duration 1 --warmup 0 --cold-starts 1 --concurrency 1,8   # quick
    AIRUNTIME_BIN=dist/airuntime .venv/bin/python bench/metrics_bench.py --targets engine,airuntime

Competitor commands are templates with `{port}`, `{engine_url}`, `{engine}` and `{tmpdir}` placeholders
(`--aibrix-cmd`/`AIRUNTIME_BENCH_AIBRIX_CMD`, `--kthena-cmd`/`AIRUNTIME_BENCH_KTHENA_CMD`); by default the /tmp/bench
installs are used when they exist, else the target shows as "not installed". See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import (  # noqa: E402
    RssSampler,
    children_cpu_seconds,
    cpu_seconds,
    host_busy_seconds,
    host_info,
    print_header,
    process_tree,
    rss_bytes,
    start_group,
    stop_group,
    terminate_as_interrupt,
    wait_for_quiet_host,
    write_json,
)
from tests.support.fake_engine import VLLM_FIXTURE, FakeEngineProcess, vllm_payload  # noqa: E402
from tests.support.sidecar import free_port, sidecar_command  # noqa: E402

HOST = "127.0.0.1"
RESULTS = REPO_ROOT / "bench" / "results" / "metrics_bench.json"

AIBRIX_DEFAULT_CMD = (
    "env INFERENCE_ENGINE={engine} INFERENCE_ENGINE_ENDPOINT={engine_url} PROMETHEUS_MULTIPROC_DIR={tmpdir} "
    "/tmp/bench/aibrix-venv/bin/aibrix_runtime --host 127.0.0.1 --port {port}"
)
AIBRIX_DEFAULT_PROBE = Path("/tmp/bench/aibrix-venv/bin/aibrix_runtime")
KTHENA_DEFAULT_CMD = (
    "env PYTHONPATH=/tmp/bench/kthena-src/python REDIS_HOST=127.0.0.1 VLLM_ZMQ_ENDPOINT=tcp://127.0.0.1:5557 "
    "SGLANG_ZMQ_ENDPOINT=tcp://127.0.0.1:5557 /tmp/bench/kthena-venv/bin/python "
    "/tmp/bench/kthena-src/python/kthena/runtime/app.py -E {engine} -H 127.0.0.1 -P {port} -B {engine_url} "
    "-M /metrics -I pod-0 -N m"
)
KTHENA_DEFAULT_PROBES = (
    Path("/tmp/bench/kthena-venv/bin/python"),
    Path("/tmp/bench/kthena-src/python/kthena/runtime/app.py"),
)
ALL_TARGETS = ("engine", "airuntime", "aibrix", "kthena")

WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_s":%.6f,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,'
    .. '"status":%d,"timeout":%d},"p50_ms":%.4f,"p90_ms":%.4f,"p99_ms":%.4f,"max_ms":%.4f,"mean_ms":%.4f}\\n',
    summary.requests, summary.duration / 1e6, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, latency.mean / 1e3))
end
"""

SAMPLE_NAME_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", re.MULTILINE)
TYPE_RE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) ", re.MULTILINE)


# -- /proc accounting -------------------------------------------------------------------------------------------


def tree_cpu_seconds(root: int) -> dict[int, float]:
    """utime+stime of each live pid of the tree."""
    return {pid: seconds for pid in process_tree(root) if (seconds := cpu_seconds(pid)) is not None}


class CpuWindow:
    """CPU used by process trees between `start()` and `stop()` (processes that die in between are lost)."""

    def __init__(self, roots: dict[str, int | None]) -> None:
        self.roots = roots
        self._before: dict[str, dict[int, float]] = {}
        self._host_before = 0.0
        self._t0 = 0.0
        self.seconds: dict[str, float] = {}
        self.host_busy = 0.0
        self.wall = 0.0

    def _sample(self) -> dict[str, dict[int, float]]:
        return {name: tree_cpu_seconds(pid) if pid else {} for name, pid in self.roots.items()}

    def start(self) -> None:
        self._before = self._sample()
        self._host_before = host_busy_seconds()
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self.wall = time.perf_counter() - self._t0
        self.host_busy = host_busy_seconds() - self._host_before
        after = self._sample()
        for name, now in after.items():
            before = self._before.get(name, {})
            self.seconds[name] = sum(value - before.get(pid, 0.0) for pid, value in now.items())


# -- processes --------------------------------------------------------------------------------------------------


class Service:
    """A target process in its own session (process group), logging to a file; `stop()` ends the whole group."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.started_at = time.perf_counter()
            self.proc = start_group(self.argv, log, env=self.env, cwd=self.cwd)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept-Encoding": "identity"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_first_200(service: Service, port: int, path: str, timeout: float) -> float:
    """Seconds from spawn to the first 200 on `path`."""
    deadline = service.started_at + timeout
    while time.perf_counter() < deadline:
        if service.proc is None or service.proc.poll() is not None:
            raise RuntimeError(f"exited before {path} answered:\n{service.log_tail()}")
        try:
            status, _ = http_get(port, path, timeout=1.0)
            if status == 200:
                return time.perf_counter() - service.started_at
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{path} did not answer 200 within {timeout:g}s:\n{service.log_tail()}")


# -- load generators --------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    concurrency: int
    requests: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0
    bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    target_cpu_pct: float = 0.0  # of one core
    engine_cpu_pct: float = 0.0
    loadgen_cpu_pct: float = 0.0
    host_busy_pct: float = 0.0  # all cores: 200% is a saturated 2-core host
    other_cpu_pct: float = 0.0  # host busy minus target, engine and load generator: other processes, kernel
    target_cpu_ms_per_req: float = 0.0
    engine_cpu_ms_per_req: float = 0.0


class LoadGenerator:
    name = "?"

    def run(self, url: str, concurrency: int, duration: int) -> dict[str, Any]:
        raise NotImplementedError


class WrkLoad(LoadGenerator):
    def __init__(self, wrk: str, threads: int, workdir: Path, gzip: bool) -> None:
        self.wrk = wrk
        self.threads = threads
        self.script = workdir / "report.lua"
        self.script.write_text(WRK_LUA)
        self.gzip = gzip
        self.name = f"wrk ({subprocess.run([wrk, '-v'], capture_output=True, text=True).stdout.split()[1]})"

    def run(self, url: str, concurrency: int, duration: int) -> dict[str, Any]:
        threads = max(1, min(self.threads, concurrency))
        command = [self.wrk, "-t", str(threads), "-c", str(concurrency), "-d", f"{duration}s", "--timeout", "10s"]
        command += ["-s", str(self.script), "-H", f"Accept-Encoding: {'gzip' if self.gzip else 'identity'}", url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
        for line in done.stdout.splitlines():
            if line.startswith("BENCH_JSON "):
                result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
                return result
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")


class PythonLoad(LoadGenerator):
    """aiohttp clients in a separate process (this script with `_loadgen`); used when wrk is not installed."""

    def __init__(self, gzip: bool) -> None:
        self.gzip = gzip
        self.name = "python aiohttp (own process)"

    def run(self, url: str, concurrency: int, duration: int) -> dict[str, Any]:
        command = [sys.executable, str(Path(__file__).resolve()), "_loadgen", url, str(concurrency), str(duration)]
        if self.gzip:
            command.append("gzip")
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result


def python_loadgen_main(url: str, concurrency: int, duration: float, gzip: bool) -> None:
    import aiohttp

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
        received = 0
        headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
        connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            started = time.perf_counter()
            end = started + duration

            async def worker() -> None:
                nonlocal received
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    try:
                        async with session.get(url, headers=headers, allow_redirects=False) as response:
                            body = await response.read()
                            received += len(body)
                            if response.status >= 400:
                                errors["status"] += 1
                    except aiohttp.ClientConnectionError:
                        errors["connect"] += 1
                        continue
                    except TimeoutError:
                        errors["timeout"] += 1
                        continue
                    latencies.append(time.perf_counter() - t0)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
        latencies.sort()

        def pct(p: float) -> float:
            return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e3 if latencies else 0.0

        return {
            "requests": len(latencies),
            "duration_s": elapsed,
            "bytes": received,
            "errors": errors,
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": latencies[-1] * 1e3 if latencies else 0.0,
            "mean_ms": statistics.fmean(latencies) * 1e3 if latencies else 0.0,
        }

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(main())))


# -- targets ----------------------------------------------------------------------------------------------------


@dataclass
class TargetSpec:
    name: str
    health_path: str
    metrics_path: str
    template: str | None = None  # competitor command template; None for engine/airuntime
    missing: str | None = None  # why it is skipped
    note: str = ""


@dataclass
class Payload:
    engine: str
    path: Path
    data: bytes
    label: str


@dataclass
class OutputCheck:
    status: int = 0
    bytes: int = 0
    families: int = 0
    samples: int = 0
    engine_families_kept: str = ""
    own_families: int = 0  # families with a prefix other than the engine's (airuntime:, aibrix:, kthena:)
    prompt_tokens_prefixes: list[str] = field(default_factory=list)
    generation_tokens_prefixes: list[str] = field(default_factory=list)
    unified_token_counters: bool = False


@dataclass
class TargetResult:
    name: str
    status: str = "ok"
    command: str = ""
    note: str = ""
    metrics_path: str = ""
    health_path: str = ""
    cold_start_ms: list[float] = field(default_factory=list)
    cold_start_median_ms: float | None = None
    idle_cpu_pct: float | None = None
    rss_idle_mb: float | None = None
    rss_peak_mb: float | None = None
    rss_after_mb: float | None = None
    output: OutputCheck | None = None
    runs: list[LoadResult] = field(default_factory=list)
    error: str = ""


def check_output(body: bytes, status: int, payload: Payload) -> OutputCheck:
    text = body.decode("utf-8", errors="replace")
    families = set(TYPE_RE.findall(text))
    samples: list[str] = SAMPLE_NAME_RE.findall(text)
    engine_input = set(TYPE_RE.findall(payload.data.decode("utf-8", errors="replace")))
    prefix = payload.engine + ":"

    def prefixes(suffix: str) -> list[str]:
        return sorted({name.split(":", 1)[0] for name in samples if ":" in name and name.endswith(suffix)})

    prompt = prefixes(":prompt_tokens_total")
    generation = prefixes(":generation_tokens_total")
    return OutputCheck(
        status=status,
        bytes=len(body),
        families=len(families),
        samples=len(samples),
        engine_families_kept=f"{len(engine_input & families)}/{len(engine_input)}",
        own_families=len({f for f in families if ":" in f and not f.startswith(prefix)}),
        prompt_tokens_prefixes=prompt,
        generation_tokens_prefixes=generation,
        unified_token_counters=bool(set(prompt) - {payload.engine} and set(generation) - {payload.engine}),
    )


def airuntime_argv(engine: str, engine_url: str, port: int) -> list[str]:
    return [
        *sidecar_command(),
        "serve",
        "--engine",
        engine,
        "--engine-url",
        engine_url,
        "--engine-metrics-path",
        "/metrics",  # the fake engine's, whatever the engine's table says (trtllm-serve: /prometheus/metrics)
        "--host",
        HOST,
        "--port",
        str(port),
    ]


def render_template(template: str, *, port: int, engine_url: str, engine: str, tmpdir: Path) -> list[str]:
    values = {"{port}": str(port), "{engine_url}": engine_url, "{engine}": engine, "{tmpdir}": str(tmpdir)}
    argv = []
    for token in shlex.split(template):
        for key, value in values.items():
            token = token.replace(key, value)
        argv.append(token)
    return argv


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, loadgen: LoadGenerator) -> None:
        self.args = args
        self.workdir = workdir
        self.loadgen = loadgen

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def start_target(self, spec: TargetSpec, payload: Payload, engine_url: str, run_id: str) -> tuple[Service, int]:
        port = free_port()
        env = dict(os.environ)
        cwd = REPO_ROOT
        if spec.name == "airuntime":
            env.setdefault("PYTHONPATH", str(REPO_ROOT))
            argv = airuntime_argv(payload.engine, engine_url, port)
        else:
            assert spec.template is not None
            tmpdir = Path(tempfile.mkdtemp(prefix=f"{spec.name}-", dir=self.workdir))
            argv = render_template(
                spec.template, port=port, engine_url=engine_url, engine=payload.engine, tmpdir=tmpdir
            )
            cwd = tmpdir
        log_path = self.workdir / f"{spec.name}-{payload.label}-{run_id}.log"
        service = Service(argv, env, cwd, log_path)
        service.start()
        return service, port

    def measure_target(
        self,
        spec: TargetSpec,
        payload: Payload,
        engine: FakeEngineProcess,
        engine_pid: int | None,
        results: list[dict[str, Any]],
    ) -> None:
        """Measure one target; its result goes to `results` even when interrupted (status "interrupted")."""
        result = TargetResult(
            name=spec.name, note=spec.note, metrics_path=spec.metrics_path, health_path=spec.health_path
        )
        if spec.missing:
            result.status = "not installed"
            result.error = spec.missing
            results.append(asdict(result))
            return
        service: Service | None = None
        try:
            if spec.name == "engine":
                port, root = engine.port, engine_pid
                result.command = "fake engine: python -m tests.support.fake_engine --payload-file " + str(payload.path)
            else:
                for attempt in range(self.args.cold_starts):
                    if service is not None:
                        service.stop()
                        time.sleep(0.3)
                    service, port = self.start_target(spec, payload, engine.url, f"start{attempt}")
                    seconds = wait_first_200(service, port, spec.health_path, self.args.start_timeout)
                    result.cold_start_ms.append(round(seconds * 1e3, 1))
                assert service is not None
                result.command = shlex.join(service.argv)
                result.cold_start_median_ms = round(statistics.median(result.cold_start_ms), 1)
                root = service.pid
            assert root is not None

            status, body = http_get(port, spec.metrics_path)
            result.output = check_output(body, status, payload)
            if status != 200:
                raise RuntimeError(f"{spec.metrics_path} answered {status}: {body[:300]!r}")

            idle = CpuWindow({"target": root})
            idle.start()
            time.sleep(self.args.settle)
            idle.stop()
            result.idle_cpu_pct = round(100 * idle.seconds["target"] / idle.wall, 1)
            result.rss_idle_mb = round(rss_bytes(process_tree(root)) / 2**20, 1)

            url = f"http://{HOST}:{port}{spec.metrics_path}"
            with RssSampler(root) as sampler:
                for concurrency in self.args.concurrency:
                    result.runs.append(self.load(url, concurrency, root, engine_pid, spec.name == "engine"))
            result.rss_peak_mb = round(sampler.peak / 2**20, 1)
            time.sleep(self.args.settle)
            result.rss_after_mb = round(rss_bytes(process_tree(root)) / 2**20, 1)
        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
            result.status = "failed"
            result.error = str(exc)
            self.log(f"  {spec.name}: FAILED: {exc}")
        except KeyboardInterrupt:
            result.status = "interrupted"
            raise
        finally:
            if service is not None:
                service.stop()
            results.append(asdict(result))

    def load(self, url: str, concurrency: int, root: int, engine_pid: int | None, direct: bool) -> LoadResult:
        if self.args.warmup > 0:
            self.loadgen.run(url, concurrency, self.args.warmup)
        window = CpuWindow({"target": root, "engine": None if direct else engine_pid})
        before_children = children_cpu_seconds()
        window.start()
        raw = self.loadgen.run(url, concurrency, self.args.duration)
        window.stop()
        loadgen_cpu = children_cpu_seconds() - before_children
        wall = window.wall
        requests = int(raw["requests"])
        out = LoadResult(
            concurrency=concurrency,
            requests=requests,
            duration_s=round(float(raw["duration_s"]), 3),
            rps=round(requests / float(raw["duration_s"]), 1) if raw["duration_s"] else 0.0,
            p50_ms=round(float(raw["p50_ms"]), 3),
            p90_ms=round(float(raw["p90_ms"]), 3),
            p99_ms=round(float(raw["p99_ms"]), 3),
            max_ms=round(float(raw["max_ms"]), 3),
            mean_ms=round(float(raw["mean_ms"]), 3),
            bytes=int(raw["bytes"]),
            errors={k: int(v) for k, v in raw["errors"].items() if int(v)},
            target_cpu_pct=round(100 * window.seconds["target"] / wall, 1),
            engine_cpu_pct=round(100 * (window.seconds["target"] if direct else window.seconds["engine"]) / wall, 1),
            loadgen_cpu_pct=round(100 * loadgen_cpu / wall, 1),
            host_busy_pct=round(100 * window.host_busy / wall, 1),
        )
        ours = window.seconds["target"] + (0.0 if direct else window.seconds["engine"]) + loadgen_cpu
        out.other_cpu_pct = round(max(0.0, 100 * (window.host_busy - ours) / wall), 1)
        if requests:
            out.target_cpu_ms_per_req = round(1e3 * window.seconds["target"] / requests, 3)
            engine_seconds = window.seconds["target"] if direct else window.seconds["engine"]
            out.engine_cpu_ms_per_req = round(1e3 * engine_seconds / requests, 3)
        self.log(
            f"    c={concurrency:<3} {out.rps:>9.1f} req/s  p50 {out.p50_ms:8.2f} ms  p99 {out.p99_ms:8.2f} ms  "
            f"cpu target {out.target_cpu_pct:5.1f}% engine {out.engine_cpu_pct:5.1f}% "
            f"loadgen {out.loadgen_cpu_pct:5.1f}% other {out.other_cpu_pct:5.1f}%"
            + (f"  errors {out.errors}" if out.errors else "")
        )
        return out


# -- reporting --------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_tables(report: dict[str, Any]) -> None:
    for payload in report["payloads"]:
        print()
        print(
            f"== payload {payload['file']} ({payload['engine']}, {payload['bytes']} bytes), "
            f"loadgen {report['meta']['loadgen']}, {report['meta']['duration_s']}s per level "
            f"after {report['meta']['warmup_s']}s warm-up, "
            + (
                "the same values in every answer"
                if report["meta"].get("values") == "same"
                else "new values every answer"
            )
        )
        head = f"{'target':<10} {'c':>3} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
        head += f"{'tgt cpu%':>8} {'eng cpu%':>8} {'lg cpu%':>7} {'other%':>6} {'tgt ms/req':>10} {'eng ms/req':>10}"
        print_header(head)
        for target in payload["targets"]:
            if not target["runs"]:
                print(f"{target['name']:<10} {target['status']}")
                continue
            for run in target["runs"]:
                errors = sum(run["errors"].values())
                print(
                    f"{target['name']:<10} {run['concurrency']:>3} {run['rps']:>9.1f} {run['p50_ms']:>8.2f} "
                    f"{run['p99_ms']:>8.2f} {errors:>6} {run['target_cpu_pct']:>8.1f} {run['engine_cpu_pct']:>8.1f} "
                    f"{run['loadgen_cpu_pct']:>7.1f} {run['other_cpu_pct']:>6.1f} "
                    f"{run['target_cpu_ms_per_req']:>10.3f} {run['engine_cpu_ms_per_req']:>10.3f}"
                )
        print()
        head = (
            f"{'target':<10} {'status':<13} {'cold start ms':>13} {'idle cpu%':>9} {'RSS idle':>8} {'RSS peak':>8} "
            f"{'RSS after':>9} {'out bytes':>9} {'families':>8} {'engine fam':>10} {'own fam':>7}  "
            "unified token counters"
        )
        print_header(head)
        for target in payload["targets"]:
            output = target["output"] or {}
            if output:
                prompt = ",".join(output["prompt_tokens_prefixes"]) or "none"
                gen = ",".join(output["generation_tokens_prefixes"]) or "none"
                tokens = f"{'yes' if output['unified_token_counters'] else 'NO'} (prompt: {prompt}; gen: {gen})"
            else:
                tokens = "-"
            cold = target["cold_start_median_ms"]
            print(
                f"{target['name']:<10} {target['status']:<13} {_fmt(cold, '.0f'):>13} "
                f"{_fmt(target['idle_cpu_pct']):>9} {_fmt(target['rss_idle_mb']):>8} {_fmt(target['rss_peak_mb']):>8} "
                f"{_fmt(target['rss_after_mb']):>9} {output.get('bytes', '-'):>9} {output.get('families', '-'):>8} "
                f"{output.get('engine_families_kept', '-'):>10} {output.get('own_families', '-'):>7}  {tokens}"
            )
        notes = [f"  {t['name']}: {t['note']}" for t in payload["targets"] if t["note"]]
        notes += [f"  {t['name']}: {t['error'].splitlines()[0]}" for t in payload["targets"] if t["error"]]
        if notes:
            print("notes:")
            print("\n".join(notes))
    print()
    print("RSS in MiB, summed over each target's process tree (/proc statm). cpu% = CPU time / wall time of the")
    print("measured window, 100 = one core; other% is CPU the rest of the host used meanwhile (other processes,")
    print("kernel): high values mean the numbers are contended. ms/req = CPU ms per request served to the load")
    print("generator. 'engine' rows are the fake engine served directly (its RSS and cpu are the fake engine's).")


# -- main -------------------------------------------------------------------------------------------------------


def parse_payloads(values: list[str] | None) -> list[Payload]:
    if not values:
        values = [str(VLLM_FIXTURE)] if VLLM_FIXTURE.is_file() else ["vllm=<builtin>"]
    payloads = []
    for value in values:
        engine, sep, file = value.partition("=")
        if not sep:
            file, engine = value, Path(value).name.split("-", 1)[0].lower()
        if file == "<builtin>":
            data, path = vllm_payload(), Path("<tests.support.fake_engine.vllm_payload()>")
        else:
            path = Path(file).resolve()
            data = path.read_bytes()
        label = re.sub(r"[^A-Za-z0-9.]+", "_", path.stem)[:60]
        payloads.append(Payload(engine=engine, path=path, data=data, label=label))
    return payloads


def build_specs(args: argparse.Namespace) -> list[TargetSpec]:
    def competitor(given: str | None, env_var: str, default: str, probes: tuple[Path, ...]) -> str | None:
        if given is not None:
            return given or None
        if env_var in os.environ:
            return os.environ[env_var] or None
        return default if all(p.exists() for p in probes) else None

    aibrix = competitor(args.aibrix_cmd, "AIRUNTIME_BENCH_AIBRIX_CMD", AIBRIX_DEFAULT_CMD, (AIBRIX_DEFAULT_PROBE,))
    kthena = competitor(args.kthena_cmd, "AIRUNTIME_BENCH_KTHENA_CMD", KTHENA_DEFAULT_CMD, KTHENA_DEFAULT_PROBES)
    specs = {
        "engine": TargetSpec("engine", "/health", "/metrics", note=""),
        "airuntime": TargetSpec(
            "airuntime",
            "/health",
            "/metrics",
            note=f"AIRUNTIME_BIN={os.environ['AIRUNTIME_BIN']}" if os.environ.get("AIRUNTIME_BIN") else "",
        ),
        "aibrix": TargetSpec(
            "aibrix",
            "/healthz",
            "/metrics/",
            template=aibrix,
            missing=None if aibrix else "no --aibrix-cmd / AIRUNTIME_BENCH_AIBRIX_CMD and no /tmp/bench/aibrix-venv",
            note="benchmarked on /metrics/ directly (its /metrics answers 307 -> /metrics/)",
        ),
        "kthena": TargetSpec(
            "kthena",
            "/health",
            "/metrics",
            template=kthena,
            missing=None if kthena else "no --kthena-cmd / AIRUNTIME_BENCH_KTHENA_CMD and no /tmp/bench/kthena-*",
        ),
    }
    return [specs[name] for name in args.targets]


def make_loadgen(args: argparse.Namespace, workdir: Path) -> LoadGenerator:
    wrk = shutil.which("wrk")
    if args.loadgen in ("auto", "wrk") and wrk:
        return WrkLoad(wrk, args.wrk_threads, workdir, args.gzip)
    if args.loadgen == "wrk":
        raise SystemExit("wrk not found (apt-get install -y wrk), or use --loadgen python")
    return PythonLoad(args.gzip)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--payload",
        action="append",
        metavar="[ENGINE=]FILE",
        help="recorded exposition to serve (repeatable); ENGINE defaults to the file name's first "
        "dash-separated word. Default: tests/fixtures/vllm-0.32.0-metrics.txt, else the built-in "
        "tests.support.fake_engine.vllm_payload()",
    )
    parser.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
        help=f"comma-separated subset of {','.join(ALL_TARGETS)}",
    )
    parser.add_argument(
        "--concurrency",
        default="1,8,32",
        type=lambda s: [int(c) for c in s.split(",")],
        help="comma-separated connection counts",
    )
    parser.add_argument("--duration", type=int, default=5, help="measured seconds per concurrency level")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each level (0: none)")
    parser.add_argument("--cold-starts", type=int, default=3, help="spawns to time; the median is reported")
    parser.add_argument("--settle", type=float, default=1.0, help="idle seconds before idle/after-load RSS")
    parser.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for a health 200")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each target, wait up to SECONDS for the host to be quiet (other processes)",
    )
    parser.add_argument("--idle-threshold", type=float, default=30.0, help="'quiet' for --wait-idle: host CPU %%")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (at most one per connection)")
    parser.add_argument("--gzip", action="store_true", help="send Accept-Encoding: gzip like Prometheus does")
    parser.add_argument(
        "--same-values",
        action="store_true",
        help="the engine answers the payload as is every time (default: new sample values in every answer, as a "
        "busy engine's; the engine's cost per answer is the same either way)",
    )
    parser.add_argument(
        "--aibrix-cmd",
        default=None,
        help="AIBrix runtime command template ('' skips it); env AIRUNTIME_BENCH_AIBRIX_CMD",
    )
    parser.add_argument(
        "--kthena-cmd",
        default=None,
        help="Kthena runtime command template ('' skips it); env AIRUNTIME_BENCH_KTHENA_CMD",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the targets' logs (printed path)")
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(ALL_TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.duration < 1 or args.cold_starts < 1 or any(c < 1 for c in args.concurrency):
        parser.error("--duration, --cold-starts and every --concurrency must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    payloads = parse_payloads(args.payload)
    specs = build_specs(args)
    started_wall = time.time()
    t0 = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="airuntime-bench-"))
    report: dict[str, Any] = {"meta": {}, "payloads": []}
    interrupted = False
    try:
        with terminate_as_interrupt():
            loadgen = make_loadgen(args, workdir)
            report["meta"] = {
                "command": shlex.join([sys.executable, *sys.argv]),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_wall)),
                "host": host_info(loadavg_at_start=Path("/proc/loadavg").read_text().split()[:3]),
                "loadgen": loadgen.name,
                "wrk_threads": args.wrk_threads if isinstance(loadgen, WrkLoad) else None,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "concurrency": args.concurrency,
                "cold_starts": args.cold_starts,
                "accept_encoding": "gzip" if args.gzip else "identity",
                "values": "same" if args.same_values else "vary",
                "airuntime_command": shlex.join(sidecar_command()),
            }
            bench = Bench(args, workdir, loadgen)
            for payload in payloads:
                payload_file = payload.path if payload.path.is_file() else workdir / "builtin-payload.txt"
                if not payload.path.is_file():
                    payload_file.write_bytes(payload.data)
                entry: dict[str, Any] = {
                    "file": str(payload.path),
                    "engine": payload.engine,
                    "bytes": len(payload.data),
                    "targets": [],
                }
                report["payloads"].append(entry)
                bench.log(f"payload {payload.path} ({payload.engine}, {len(payload.data)} bytes)")
                with FakeEngineProcess(payload_file, vary_values=not args.same_values) as engine:
                    engine_pid = engine._proc.pid if engine._proc is not None else None
                    for spec in specs:
                        if args.wait_idle > 0 and not spec.missing:
                            busy = wait_for_quiet_host(args.idle_threshold, args.wait_idle, bench.log, per_core=True)
                            bench.log(f"  host busy {busy:.0f}% before {spec.name}")
                        bench.log(f"  {spec.name} ...")
                        bench.measure_target(spec, payload, engine, engine_pid, entry["targets"])
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: processes stopped; partial results follow", file=sys.stderr)
    finally:
        report["meta"]["wall_s"] = round(time.perf_counter() - t0, 1)
        report["meta"]["interrupted"] = interrupted
        write_json(args.output, report)
        if args.keep_logs:
            print(f"target logs: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if report["payloads"]:
        print_tables(report)
    print(f"\nwall time {report['meta']['wall_s']}s; results in {args.output}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "_loadgen":
        python_loadgen_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), gzip="gzip" in sys.argv[5:])
    else:
        sys.exit(main())
