"""What the server peers (azurite, fake_gcs, seaweedfs, vllm_cpu) share: a server in its own process group logging to
a file, free 127.0.0.1 ports, waiting for an HTTP 200 with a deadline, stopping the whole group, pip and CLI plumbing.

Standard library only: the peers import it at module level and also run as scripts (`python tests/peers/X.py`),
where they import it as the top-level module `processes`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
# Ports are picked below Linux's default ephemeral range (32768-60999) so client sockets do not collide.
PORT_RANGE = (20000, 32000)
HOST = "127.0.0.1"


# --------------------------------------------------------------------------------------------- install


def project_python() -> Path:
    """The project venv's interpreter (falls back to the running one)."""
    candidate = REPO_ROOT / ".venv" / "bin" / "python"
    return candidate if candidate.exists() else Path(sys.executable)


def run(cmd: Sequence[str | os.PathLike[str]], env: dict[str, str] | None = None) -> None:
    """Echo the command (`+ ...`), run it, raise on a non-zero exit."""
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, env=env)


def pip(python: Path, *args: str) -> None:
    """`python -m pip ARGS` without the caller's PYTHONPATH and without pip's version check."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    run([python, "-m", "pip", *args], env=env)


def cli(doc: str | None, *, install: str, status: str) -> tuple[argparse.ArgumentParser, Any]:
    """A peer's command line: the parser and its subcommands, `install` and `status` already added."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help=install)
    sub.add_parser("status", help=status)
    return parser, sub


# --------------------------------------------------------------------------------------------- ports


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_port_base(count: int = 1, attempts: int = 200) -> int:
    """A base port such that base..base+count-1 are all free on 127.0.0.1, below the ephemeral range (bound and
    released, so racy: callers retry)."""
    rng = random.Random()
    low, high = PORT_RANGE
    for _ in range(attempts):
        base = rng.randrange(low, high - count + 1)
        if all(port_free(base + i) for i in range(count)):
            return base
    if count == 1:
        raise RuntimeError(f"no free port found in {low}-{high}")
    raise RuntimeError(f"no {count} consecutive free ports found in {low}-{high}")


def free_port() -> int:
    """A port the kernel picks (in the ephemeral range) on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------- HTTP


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def http_request(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    host: str = HOST,
    timeout: float = 30.0,
) -> RawResponse:
    """One plain request with http.client (path includes the query); any status is returned, not raised."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------- logs


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def log_path(env_var: str, name: str, default_dir: Path) -> Path:
    """DIR/name when $env_var names a DIR to keep the log in (created), else default_dir/name."""
    log_dir = os.environ.get(env_var)
    if not log_dir:
        return default_dir / name
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return Path(log_dir) / name


@contextlib.contextmanager
def log_tail_on_error(log: Path) -> Iterator[None]:
    """When the body raises, print the log's tail to stderr first (the log may go with a temp dir)."""
    try:
        yield
    except BaseException:
        print(f"---- tail of {log} ----\n{tail(log)}", file=sys.stderr, flush=True)
        raise


# --------------------------------------------------------------------------------------------- processes


def start_in_group(
    cmd: Sequence[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None, note: str = ""
) -> subprocess.Popen[bytes]:
    """Start `cmd` in its own session (process group), stdout and stderr appended to `log` after a `====` line."""
    with log.open("ab") as sink:
        sink.write(f"\n==== {dt.datetime.now(dt.UTC).isoformat()} {note}{' '.join(cmd)}\n".encode())
        sink.flush()
        return subprocess.Popen(
            list(cmd),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def wait_group_gone(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Until the leader has exited and no process of its group is left; False after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_alive(proc.pid):
            return True
        time.sleep(0.05)
    return False


def stop_group(proc: subprocess.Popen[bytes], timeout: float, *, graceful: bool = True) -> None:
    """SIGTERM the process group and wait up to `timeout` for all of it to go, then SIGKILL what is left
    (only SIGKILL when not `graceful`)."""
    if graceful:
        signal_group(proc, signal.SIGTERM)
        if wait_group_gone(proc, timeout):
            return
    signal_group(proc, signal.SIGKILL)
    wait_group_gone(proc, 10.0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def wait_ok(
    proc: subprocess.Popen[bytes] | None,
    probe: Callable[[], RawResponse],
    *,
    name: str,
    log: Path,
    timeout: float,
    interval: float = 0.05,
) -> float:
    """Call `probe` until it answers 200 (within `timeout`; seconds taken); RuntimeError when the process exits
    first, TimeoutError at the deadline, both with the log's tail."""
    started = time.monotonic()
    deadline = started + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is None or proc.poll() is not None:
            code = None if proc is None else proc.returncode
            raise RuntimeError(f"{name} exited with {code} before it answered; log {log}:\n{tail(log)}")
        try:
            response = probe()
            if response.status == 200:
                return time.monotonic() - started
            last = f"{response.status} {response.body[:200]!r}"
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{name} did not answer 200 within {timeout:.0f}s (last: {last}); log {log}:\n{tail(log)}")


class Server(Protocol):
    log_path: Path

    def stop(self) -> None: ...


S = TypeVar("S", bound=Server)


@contextlib.contextmanager
def serving(
    launch: Callable[[], S],
    wait: Callable[[S], object],
    *,
    port_taken: str,
    stop: Callable[[S], None] = lambda server: server.stop(),
    attempts: int = 3,
) -> Iterator[S]:
    """`launch()` a server on freshly picked ports and `wait` until it is ready, again (up to `attempts` times) when
    it failed because a port was taken meanwhile (`port_taken` in its log: ports are checked, then released); yield
    it, `stop` it on exit (after printing its log's tail when the body raised)."""
    for attempt in range(attempts):
        server = launch()
        try:
            wait(server)
            break
        except BaseException as exc:
            stop(server)
            retry = isinstance(exc, RuntimeError) and port_taken in tail(server.log_path, 200)
            if not retry or attempt == attempts - 1:
                raise
    try:
        with log_tail_on_error(server.log_path):
            yield server
    finally:
        stop(server)


class ServerProcess:
    """For a peer dataclass with `proc` and `log_path` fields: the process, its memory and its log."""

    proc: subprocess.Popen[bytes] | None
    log_path: Path

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_bytes(self) -> int | None:
        """Resident memory of the server process (from /proc), or None when it is not running."""
        if self.proc is None:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.M)
        return int(match.group(1)) * 1024 if match else None

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def run_until_interrupted(self) -> None:
        """For `serve`: block until Ctrl-C or until the server exits."""
        with contextlib.suppress(KeyboardInterrupt):
            while self.is_running():
                time.sleep(1.0)
