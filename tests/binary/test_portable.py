"""The portability gate (build/check_portable.py) on the built binary, and the names the program answers to.

The onefile launcher, the standalone program and every shared object of the payload may need glibc <= 2.28 and,
from the host, nothing but glibc, libgcc_s and a GCC 8 libstdc++ (pyzmq's libzmq); libraries the payload bundles
(libzmq, libsodium) are found in it. The gate itself is checked to fail on host libraries that need more (Debian
12's libssl, libapt-pkg), so a gate that reads nothing cannot pass, and to accept a library bundled beside its user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GATE = REPO_ROOT / "build" / "check_portable.py"


def gate(*paths: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("readelf") is None:
        pytest.skip("no readelf (binutils)")
    return subprocess.run([sys.executable, str(GATE), *map(str, paths)], capture_output=True, text=True, check=False)


def test_binary_and_payload_need_glibc_2_28_and_nothing_else(binary: Path, standalone: Path) -> None:
    result = gate(binary, standalone)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "highest glibc version needed: GLIBC_2." in result.stdout
    files = int(result.stdout.split(" ELF files")[0].rsplit("\n", 1)[-1])
    assert files > 20, f"the gate read only {files} ELF files: {result.stdout}"


def test_gate_fails_on_a_newer_glibc_and_a_host_library() -> None:
    host_libssl = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")
    if not host_libssl.exists():
        pytest.skip("no Debian 12 libssl.so.3 here")
    result = gate(host_libssl)
    assert result.returncode == 1
    assert "needs GLIBC_2.3" in result.stdout and "needs libcrypto.so.3 from the host" in result.stdout


def test_gate_fails_on_a_newer_libstdcxx() -> None:
    apt_pkg = Path("/usr/lib/x86_64-linux-gnu/libapt-pkg.so.6.0")
    if not apt_pkg.exists():
        pytest.skip("no Debian 12 libapt-pkg here")
    result = gate(apt_pkg)
    assert result.returncode == 1
    assert "needs GLIBCXX_3.4.29 (limit GLIBCXX_3.4.25, GCC 8)" in result.stdout, result.stdout


def test_gate_accepts_a_library_bundled_beside_its_user(tmp_path: Path) -> None:
    host = Path("/usr/lib/x86_64-linux-gnu")
    if shutil.which("readelf") is None:
        pytest.skip("no readelf (binutils)")
    if not (host / "libssl.so.3").exists():
        pytest.skip("no Debian 12 libssl.so.3 here")
    for name in ("libssl.so.3", "libcrypto.so.3"):
        shutil.copy(host / name, tmp_path / name)
    result = subprocess.run(
        [sys.executable, str(GATE), str(tmp_path), "--max-glibc", "2.99"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
    assert "2 ELF files" in result.stdout and "libcrypto.so.3" in result.stdout


def name_seen(program: Path, name: str, folder: Path, **env: str) -> str:
    """The name the program acts as when started as `name` (a symlink to it in a folder on PATH): its usage line
    names the command it runs under that name (runtime/cli.py: aibrix_runtime, aibrix_download, else airuntime)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).symlink_to(program)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRUNTIME_", "NUITKA_"))}
    clean.update(PATH=f"{folder}:{clean.get('PATH', '')}", **env)
    result = subprocess.run([name, "--help"], env=clean, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("Usage: ", 1)[1].split()[0]


@pytest.mark.parametrize("name", ["aibrix_runtime", "aibrix_download", "airuntime"])
def test_standalone_program_sees_its_invoked_name(standalone: Path, tmp_path: Path, name: str) -> None:
    assert name_seen(standalone / "airuntime", name, tmp_path / "bin") == name


@pytest.mark.parametrize("name", ["aibrix_runtime", "aibrix_download"])
def test_onefile_passes_the_invoked_name_through(binary: Path, tmp_path: Path, name: str) -> None:
    cache = str(tmp_path / "cache")
    assert name_seen(binary, name, tmp_path / "first", XDG_CACHE_HOME=cache) == name  # first start: unpacks
    assert name_seen(binary, name, tmp_path / "later", XDG_CACHE_HOME=cache) == name  # later: the cached payload


def test_relative_symlink_to_the_standalone_program(standalone: Path, tmp_path: Path) -> None:
    """CPython 3.11.2 aborted on a relative symlink (getpath's realpath freed a shifted pointer): fixed in our build."""
    (tmp_path / "bin").mkdir()
    link = tmp_path / "bin" / "aibrix_runtime"
    link.symlink_to(os.path.relpath(standalone / "airuntime", link.parent))
    result = subprocess.run(
        ["./bin/aibrix_runtime", "--help"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: aibrix_runtime" in result.stdout
