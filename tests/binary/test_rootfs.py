"""The binary in a distroless-cc-like filesystem (build/rootfs.sh): chroot, uid 65532, no shell, no host files.

Proves the image's contents are enough: `--version` runs, `serve` answers /health on 127.0.0.1 and rewrites a
fake engine's metrics (the chroot shares the host's network), and an unwritable HOME falls back to /tmp.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
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
def image_root(rootfs: Path, binary: Path) -> Path:
    """The rootfs with the binary under test in /usr/local/bin (copied in when it differs)."""
    target = rootfs / "usr" / "local" / "bin" / "airuntime"
    if not target.exists() or not filecmp.cmp(binary, target, shallow=False):
        shutil.copy2(binary, target)
    return rootfs


def in_rootfs(root: Path, *args: str, env: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(RUNNER), str(root), "--", *args],
        env={**os.environ, "ROOTFS_ENV": env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def serving(root: Path, args: list[str], env: str = "") -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        ["bash", str(RUNNER), str(root), "--", "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "ROOTFS_ENV": env},
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


def test_version_in_rootfs(image_root: Path) -> None:
    result = in_rootfs(image_root, "--version")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("airuntime ") and "built: " in result.stdout
    assert list((image_root / "home" / "nonroot" / ".cache" / "airuntime").iterdir())


def test_serve_health_and_metrics_in_rootfs(image_root: Path) -> None:
    with FakeEngine() as engine, serving(image_root, ["--engine", "vllm", "--engine-url", engine.url]) as base:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{base}/ready", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            assert "vllm:num_requests_running" in response.read().decode()


def test_unwritable_home_in_rootfs_falls_back_to_tmp(image_root: Path) -> None:
    result = in_rootfs(image_root, "--version", env="HOME=/nonexistent AIRUNTIME_ONEFILE_DEBUG=1")
    assert result.returncode == 0, result.stderr
    assert "/tmp/airuntime-65532/" in result.stderr


@pytest.mark.parametrize("env", ["LANG=C.UTF-8", "LANG=en_US.UTF-8", "LC_ALL=C.UTF-8"])
def test_locale_variables_do_not_abort(image_root: Path, env: str) -> None:
    """Without the C.utf8 locale in the image, LANG naming a missing locale made the binary abort (exit 134)."""
    result = in_rootfs(image_root, "--version", env=env)
    assert result.returncode == 0, f"{env}: exit {result.returncode} {result.stderr}"
