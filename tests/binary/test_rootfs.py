"""The program in a distroless-cc-like filesystem (build/rootfs.sh): chroot, uid 65532, no shell, no host files.

Proves the image's contents are enough: `--version` runs, `serve` answers /health on 127.0.0.1 and rewrites a
fake engine's metrics (the chroot shares the host's network); the standalone folder ships unpacked in
/opt/airuntime, so with the whole root read-only (no writable HOME, /tmp or cache volume) it still serves, and a
first start writes nothing anywhere; `aibrix_runtime` and `aibrix_download` reach the same program under their
own names.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.fake_engine import FakeEngine
from tests.support.sidecar import free_port, wait_http_ok

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = REPO_ROOT / "build" / "run_in_rootfs.sh"


@pytest.fixture(scope="module")
def image_root(rootfs: Path, standalone: Path) -> Path:
    """The rootfs with the standalone folder under test in /opt/airuntime (copied in when it differs)."""
    target = rootfs / "opt" / "airuntime"
    if not (target / "airuntime").exists() or not filecmp.cmp(standalone / "airuntime", target / "airuntime", False):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(standalone, target, symlinks=True)
    return rootfs


def in_rootfs(
    root: Path, *args: str, env: str = "", timeout: float = 60, **runner_env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(RUNNER), str(root), "--", *args],
        env={**os.environ, "ROOTFS_ENV": env, **runner_env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def serving(root: Path, args: list[str], env: str = "", **runner_env: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        ["bash", str(RUNNER), str(root), "--", "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "ROOTFS_ENV": env, **runner_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            wait_http_ok(f"http://127.0.0.1:{port}/health", proc=proc, timeout=30)
        except (RuntimeError, TimeoutError) as exc:
            proc.kill()
            output = proc.communicate(timeout=5)[0].decode(errors="replace")[-3000:]
            raise AssertionError(f"{exc}; output:\n{output}") from None
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_rootfs_has_no_shell_and_runs_as_nonroot(image_root: Path) -> None:
    assert not (image_root / "bin" / "sh").exists() and not (image_root / "usr" / "bin" / "sh").exists()
    assert "nonroot:x:65532:65532:" in (image_root / "etc" / "passwd").read_text()
    assert (image_root / "etc" / "ssl" / "certs" / "ca-certificates.crt").stat().st_size > 100_000


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """(mtime, size, mode) of everything in the rootfs but the mount points the runner fills."""
    skip = ("proc/", "dev/")
    found: dict[str, tuple[int, int, int]] = {}
    for path in root.rglob("*"):
        rel = str(path.relative_to(root))
        if rel.startswith(skip) or rel in ("proc", "dev"):
            continue
        info = path.lstat()
        found[rel] = (info.st_mtime_ns, info.st_size, info.st_mode)
    return found


def test_program_ships_unpacked_and_read_only(image_root: Path) -> None:
    program = image_root / "opt" / "airuntime" / "airuntime"
    info = program.stat()
    assert info.st_uid == 0 and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    for name in ("airuntime", "aibrix_runtime", "aibrix_download"):
        assert os.readlink(image_root / "usr" / "local" / "bin" / name) == "/opt/airuntime/airuntime"


def test_version_in_rootfs(image_root: Path) -> None:
    result = in_rootfs(image_root, "--version")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("airuntime ") and "built: " in result.stdout


def test_first_start_writes_nothing(image_root: Path) -> None:
    before = tree(image_root)
    with FakeEngine() as engine, serving(image_root, ["--engine", "vllm", "--engine-url", engine.url]) as base:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            assert response.status == 200
    after = tree(image_root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == [], f"the program wrote into the image: {changed[:20]}"


def test_serve_health_and_metrics_in_rootfs(image_root: Path) -> None:
    with FakeEngine() as engine, serving(image_root, ["--engine", "vllm", "--engine-url", engine.url]) as base:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{base}/ready", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            assert "vllm:num_requests_running" in response.read().decode()


def test_kv_event_relay_in_rootfs(image_root: Path) -> None:
    """pyzmq's libzmq needs libstdc++ from the host: the image's (distroless cc) serves it, and the relay writes."""
    from tests.peers.processes import pick_port_base
    from tests.peers.redis_server import redis_binary, running_redis
    from tests.support.kv_events import pod_fields
    from tests.support.kv_publisher import KvPublisher, stored

    if redis_binary() is None:
        pytest.fail("redis-server is not installed (make peers installs it)")
    base = pick_port_base(1)
    endpoint = f"tcp://127.0.0.1:{base}"
    with running_redis() as redis, FakeEngine() as engine, KvPublisher(endpoint, None) as publisher:
        env = f"REDIS_HOST=127.0.0.1 REDIS_PORT={redis.port} VLLM_ZMQ_ENDPOINT={endpoint}"
        args = ["--engine", "vllm", "--engine-url", engine.url, "--pod", "p.ns", "--model", "m"]
        with serving(image_root, args, env=env):
            deadline = time.monotonic() + 30
            while not pod_fields(redis.client(), "p.ns"):
                assert time.monotonic() < deadline, "the relay in the rootfs wrote nothing to Redis"
                publisher.publish_events([stored([21], list(range(32)))])
                time.sleep(0.5)


def test_read_only_root_without_writable_home_or_tmp(image_root: Path) -> None:
    """readOnlyRootFilesystem and no volume: HOME and /tmp cannot be written, and the program serves all the same."""
    probe = in_rootfs(image_root, "--version", ROOTFS_READONLY="1", env="HOME=/nonexistent TMPDIR=/tmp")
    assert probe.returncode == 0, probe.stderr
    with (
        FakeEngine() as engine,
        serving(
            image_root, ["--engine", "vllm", "--engine-url", engine.url], "HOME=/home/nonroot", ROOTFS_READONLY="1"
        ) as base,
    ):
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            assert "vllm:num_requests_running" in response.read().decode()
    # the runner really mounts the root read-only: even root cannot write there (the program runs as 65532)
    check = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && touch "$1/tmp/x"',
            "sh",
            str(image_root),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode != 0 and "Read-only file system" in check.stderr, check.stderr


@pytest.mark.parametrize("name", ["aibrix_runtime", "aibrix_download", "airuntime"])
def test_names_reach_the_program(image_root: Path, name: str) -> None:
    program = f"/usr/local/bin/{name}"
    # runtime/cli.py acts on that name (aibrix_runtime runs serve, aibrix_download download): its usage says so
    usage = in_rootfs(image_root, "--help", ROOTFS_PROGRAM=program, ROOTFS_READONLY="1")
    assert usage.returncode == 0 and f"Usage: {name}" in usage.stdout, usage.stdout + usage.stderr


@pytest.mark.parametrize("env", ["LANG=C.UTF-8", "LANG=en_US.UTF-8", "LC_ALL=C.UTF-8"])
def test_locale_variables_do_not_abort(image_root: Path, env: str) -> None:
    """Without the C.utf8 locale in the image, LANG naming a missing locale made the binary abort (exit 134)."""
    result = in_rootfs(image_root, "--version", env=env)
    assert result.returncode == 0, f"{env}: exit {result.returncode} {result.stderr}"
