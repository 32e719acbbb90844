"""How tests start the sidecar: one place, so the same suites run against the source or a built binary.

Set AIRUNTIME_BIN to an executable (e.g. dist/airuntime) to test it; otherwise `python -m runtime` runs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tests.support import secrets

REPO_ROOT = Path(__file__).resolve().parents[2]


def sidecar_command() -> list[str]:
    binary = os.environ.get("AIRUNTIME_BIN")
    if binary:
        return [binary]
    return [sys.executable, "-m", "runtime"]


def program_command(name: str, folder: Path) -> list[str]:
    """The program invoked under another name (`aibrix_runtime`, `aibrix_download`): a link named so in `folder` to
    the binary, or the package's console script of that name when testing the source."""
    binary = os.environ.get("AIRUNTIME_BIN")
    if binary:
        link = folder / name
        if not link.exists():
            link.symlink_to(Path(binary).resolve())
        return [str(link)]
    script = Path(sys.executable).parent / name
    if not script.exists():
        raise RuntimeError(f"{script} is missing: `make venv` installs the package's console scripts")
    return [str(script)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http_ok(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except Exception as exc:
            last_error = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s: {last_error}")


class SidecarProcess:
    """A running `airuntime serve`: its base URL, process, and output so far."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: IO[bytes]) -> None:
        self.proc = proc
        self.url = url
        self._log = log

    def output(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")


@contextmanager
def sidecar_process(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    port: int | None = None,
    command: Sequence[str] | None = None,
) -> Iterator[SidecarProcess]:
    """Start `airuntime serve ARGS --host 127.0.0.1 --port P` (or COMMAND ARGS ...), wait for /health, yield it, stop
    it (SIGTERM, then SIGKILL after 10 s). Its output is kept for the suite-wide secret check."""
    port = port or free_port()
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONPATH", str(REPO_ROOT))
    if env:
        full_env.update(env)
    command = [*(command or [*sidecar_command(), "serve"]), *args, "--host", "127.0.0.1", "--port", str(port)]
    # output goes to a file, not a pipe: a chatty sidecar can never block on a full pipe
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, env=full_env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        sidecar = SidecarProcess(proc, f"http://127.0.0.1:{port}", log)
        try:
            try:
                wait_http_ok(f"{sidecar.url}/health", proc=proc)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}; sidecar output:\n{sidecar.output()[-4000:]}") from None
            yield sidecar
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            secrets.keep_output(f"sidecar {' '.join(args)[:200]}", sidecar.output())


@contextmanager
def running_sidecar(args: Sequence[str], env: dict[str, str] | None = None, port: int | None = None) -> Iterator[str]:
    """Start `airuntime serve ARGS --host 127.0.0.1 --port P`, wait for /health, yield its base URL, stop it."""
    with sidecar_process(args, env, port) as sidecar:
        yield sidecar.url
