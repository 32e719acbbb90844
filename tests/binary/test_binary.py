"""The onefile binary itself: size, linkage, build stamp, where and when it unpacks, signals, serving."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.fake_engine import FakeEngine
from tests.support.sidecar import free_port, running_sidecar, wait_http_ok

# Issue 11: the binary <= 25 MB.
SIZE_LIMIT = 25_000_000
# What the onefile launcher may link: glibc only (static libpython; the payload's own libraries are unpacked).
LAUNCHER_LIBS = {"linux-vdso.so.1", "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "ld-linux-x86-64.so.2"}
GATE = Path(__file__).resolve().parents[2] / "build" / "check_portable.py"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRUNTIME_", "INFERENCE_ENGINE", "NUITKA_"))}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def run(binary: Path, *args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def only_child(folder: Path) -> Path:
    """The one payload folder under folder (`<version>-<commit>`, `-dirty-<time>` for uncommitted builds)."""
    children = [p for p in folder.iterdir() if p.is_dir()]
    assert len(children) == 1, f"expected one payload folder in {folder}: {children}"
    return children[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.rglob("*") if p.is_file()
    }


def test_size_under_target(binary: Path) -> None:
    size = binary.stat().st_size
    assert size < SIZE_LIMIT, f"{binary} is {size / 1e6:.1f} MB, target under {SIZE_LIMIT / 1e6:.0f} MB"


def test_version_carries_the_build_stamp(binary: Path, tmp_path: Path) -> None:
    result = run(binary, "--version", env=clean_env(XDG_CACHE_HOME=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("airuntime ")
    assert re.fullmatch(r"commit: [0-9a-f]{7,40}(-dirty)?", lines[1]), lines
    assert re.fullmatch(r"built: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lines[2]), lines
    assert lines[3].startswith("python: CPython 3."), lines


def test_launcher_links_only_glibc(binary: Path) -> None:
    if shutil.which("ldd") is None:
        pytest.skip("no ldd")
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    libs = {Path(line.split()[0]).name for line in out.splitlines() if line.strip()}
    assert libs <= LAUNCHER_LIBS, f"unexpected libraries: {sorted(libs - LAUNCHER_LIBS)}"


def test_unpacked_payload_passes_the_portability_gate(binary: Path, tmp_path: Path) -> None:
    """What the onefile unpacks needs glibc <= 2.28 and nothing else from the host (build/check_portable.py)."""
    if shutil.which("readelf") is None:
        pytest.skip("no readelf (binutils)")
    cache = tmp_path / "cache"
    assert run(binary, "--version", env=clean_env(XDG_CACHE_HOME=str(cache))).returncode == 0
    result = subprocess.run(
        [sys.executable, str(GATE), str(binary), str(cache)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_first_start_unpacks_later_starts_reuse(binary: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert run(binary, "--version", env=clean_env(XDG_CACHE_HOME=str(cache))).returncode == 0
    folder = only_child(cache / "airuntime")
    first = snapshot(folder)
    assert len(first) > 10, f"expected the unpacked payload in {folder}"
    assert (folder / ".lock").exists() and (folder / ".complete").exists()
    size, main = (folder / ".complete").read_text().splitlines()
    assert int(size) > 0 and Path(main).parent == folder
    result = run(binary, "--version", env=clean_env(XDG_CACHE_HOME=str(cache), AIRUNTIME_ONEFILE_DEBUG="1"))
    assert result.returncode == 0 and "(unpacked)" in result.stderr, result.stderr
    assert snapshot(folder) == first, "a later start rewrote files of the payload"


def test_bad_marker_means_verify_and_repair(binary: Path, tmp_path: Path) -> None:
    """A marker that does not match this binary's payload is ignored: every file is checked and fixed."""
    cache = tmp_path / "cache"
    env = clean_env(XDG_CACHE_HOME=str(cache))
    assert run(binary, "--version", env=env).returncode == 0
    folder = only_child(cache / "airuntime")
    marker = folder / ".complete"
    size, main = marker.read_text().splitlines()
    marker.write_text(f"{int(size) + 1}\n{main}\n")
    victim = max((p for p in folder.rglob("*.so*") if p.is_file()), key=lambda p: p.stat().st_size)
    original = victim.read_bytes()
    victim.write_bytes(b"corrupt")
    assert run(binary, "--version", env=env).returncode == 0
    assert victim.read_bytes() == original, "the corrupted file was not restored"
    assert marker.read_text().splitlines()[0] == size


def test_verify_mode_checks_every_file(binary: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert run(binary, "--version", env=clean_env(XDG_CACHE_HOME=str(cache))).returncode == 0
    folder = only_child(cache / "airuntime")
    victim = max((p for p in folder.rglob("*.so*") if p.is_file()), key=lambda p: p.stat().st_size)
    original = victim.read_bytes()
    victim.write_bytes(b"corrupt")
    env = clean_env(XDG_CACHE_HOME=str(cache), AIRUNTIME_ONEFILE_VERIFY="1")
    assert run(binary, "--version", env=env).returncode == 0
    assert victim.read_bytes() == original


def test_home_without_cache_uses_home_dot_cache(binary: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(HOME=str(home))
    env.pop("XDG_CACHE_HOME", None)
    assert run(binary, "--version", env=env).returncode == 0
    assert list((home / ".cache" / "airuntime").iterdir())


def test_unwritable_cache_falls_back_to_tmpdir(binary: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = clean_env(XDG_CACHE_HOME=str(blocker), TMPDIR=str(tmpdir), AIRUNTIME_ONEFILE_DEBUG="1")
    result = run(binary, "--version", env=env)
    assert result.returncode == 0, result.stderr
    fallback = only_child(tmpdir / f"airuntime-{os.getuid()}")
    assert str(fallback) in result.stderr
    assert len(snapshot(fallback)) > 10
    assert not (fallback / ".complete").exists(), "no fast path in the TMPDIR fallback"
    assert (fallback.parent.stat().st_mode & 0o777) == 0o700


def test_unwritable_home_falls_back(binary: Path, tmp_path: Path) -> None:
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    env = clean_env(HOME=str(home), TMPDIR=str(tmp_path))
    env.pop("XDG_CACHE_HOME", None)
    result = run(binary, "--version", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / f"airuntime-{os.getuid()}").is_dir()


def test_fallback_refuses_a_folder_others_can_write(binary: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    shared = tmp_path / f"airuntime-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    result = run(binary, "--version", env=clean_env(XDG_CACHE_HOME=str(blocker), TMPDIR=str(tmp_path)))
    assert result.returncode == 1
    assert "XDG_CACHE_HOME" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_nowhere_to_unpack_is_one_line(binary: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = run(binary, "--version", env=clean_env(XDG_CACHE_HOME=str(blocker), TMPDIR=str(blocker)))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("airuntime: cannot unpack to ") and "XDG_CACHE_HOME" in lines[0]


@pytest.mark.parametrize("marker", [True, False], ids=["with-marker", "verified"])
def test_read_only_prefilled_cache_is_used(binary: Path, tmp_path: Path, marker: bool) -> None:
    """A payload unpacked beforehand (e.g. at image build) serves from a read-only mount without writing."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a read-only bind mount")
    cache = tmp_path / "cache"
    assert run(binary, "--version", env=clean_env(XDG_CACHE_HOME=str(cache))).returncode == 0
    if not marker:
        (only_child(cache / "airuntime") / ".complete").unlink()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && exec "$2" --version'
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(cache), str(binary)],
        env=clean_env(XDG_CACHE_HOME=str(cache), TMPDIR=str(tmpdir), AIRUNTIME_ONEFILE_DEBUG="1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "read-only payload" in result.stderr, result.stderr
    assert ("(unpacked)" in result.stderr) == marker, result.stderr
    assert not any(tmpdir.iterdir()), "fell back to TMPDIR although the read-only cache was complete"


def test_concurrent_first_starts(binary: Path, tmp_path: Path) -> None:
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run(binary, "--version", env=env), range(4)))
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
    assert len({r.stdout for r in results}) == 1


def test_serves_health_and_rewritten_metrics(binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with FakeEngine() as engine, running_sidecar(["--engine", "vllm", "--engine-url", engine.url]) as base:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            body = response.read().decode()
            assert response.status == 200
    assert "vllm:num_requests_running" in body
    assert re.search(r"^airuntime:\w+", body, re.M), body[:2000]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _start_serving(binary: Path, tmp_path: Path, **extra: str) -> subprocess.Popen[bytes]:
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "serve", "--host", "127.0.0.1", "--port", str(port), "--engine-url", "http://127.0.0.1:9"],
        env=clean_env(XDG_CACHE_HOME=str(tmp_path), **extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http_ok(f"http://127.0.0.1:{port}/health", proc=proc, timeout=30)
    return proc


def test_cached_start_is_one_process(binary: Path, tmp_path: Path) -> None:
    """With its payload cached, the launcher becomes the program: no second process, SIGTERM goes straight to it."""
    assert run(binary, "--version", env=clean_env(XDG_CACHE_HOME=str(tmp_path))).returncode == 0
    proc = _start_serving(binary, tmp_path)
    try:
        assert _children(proc.pid) == [], "expected no onefile child process"
        exe = os.readlink(f"/proc/{proc.pid}/exe")
        assert exe.startswith(str(tmp_path)) and exe.endswith(".bin"), exe
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_fork_mode_sigterm_to_launcher_stops_the_child(binary: Path, tmp_path: Path) -> None:
    """AIRUNTIME_ONEFILE_FORK=1: stock Nuitka's launcher + child; SIGTERM to the launcher still stops both."""
    proc = _start_serving(binary, tmp_path, AIRUNTIME_ONEFILE_FORK="1")
    try:
        children = _children(proc.pid)
        assert len(children) == 1, f"expected one child of the onefile launcher, got {children}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{children[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{children[0]}").exists(), "the child outlived the launcher"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_download_from_hub_emulator(binary: Path, tmp_path: Path) -> None:
    """The lazily imported download stack (huggingface_hub, httpx2, tqdm, filelock) is in the payload and works."""
    from tests.peers.hub_emulator import HubEmulator

    files = {"config.json": b'{"model_type": "llama"}', "weights/part-1.bin": os.urandom(300_000)}
    target = tmp_path / "model"
    with HubEmulator() as hub:
        hub.add_repo("org/tiny", files)
        env = clean_env(
            XDG_CACHE_HOME=str(tmp_path / "cache"),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HOME=str(tmp_path / "hf"),
        )
        config = json.dumps({"hf_endpoint": hub.endpoint})
        result = run(binary, "download", "org/tiny", "--local-dir", str(target), "--config", config, "-q", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    for name, data in files.items():
        assert (target / name).read_bytes() == data
