"""A real Redis (Debian's `redis-server`) on a free 127.0.0.1 port, as a test peer; and a server that hangs.

    python tests/peers/redis_server.py install   # apt-get install redis-server (idempotent)
    python tests/peers/redis_server.py status

`running_redis(password=...)` yields a `RedisPeer` that tests can stop, kill and start again on the same port (no
persistence: a restarted Redis is empty, as after a crash). Standard library only at module level.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from tests.peers import processes
except ImportError:  # run as a script
    import processes  # type: ignore[no-redef]


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def install() -> None:
    if redis_binary():
        print(f"redis-server at {redis_binary()}", flush=True)
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    processes.run(["apt-get", "update", "-q"], env=env)
    processes.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"], env=env)


@dataclass
class RedisPeer(processes.ServerProcess):
    port: int
    password: str | None
    workdir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        binary = redis_binary()
        assert binary is not None
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir), "--protected-mode", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self, timeout: float = 15.0) -> None:
        self.proc = processes.start_in_group(self.command(), self.log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{processes.tail(self.log_path)}")
            if self.ping():
                return
            time.sleep(0.02)
        raise TimeoutError(f"redis-server did not answer within {timeout}s:\n{processes.tail(self.log_path)}")

    def ping(self) -> bool:
        try:
            return bool(self.client(socket_timeout=1).ping())
        except Exception:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop_group(self.proc, 10)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            processes.stop_group(self.proc, 0, graceful=False)
            self.proc = None

    def client(self, **options: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **options)


@contextlib.contextmanager
def running_redis(password: str | None = None) -> Iterator[RedisPeer]:
    if redis_binary() is None:
        raise RuntimeError("redis-server is not installed: python tests/peers/redis_server.py install")
    with tempfile.TemporaryDirectory(prefix="airuntime-redis-") as tmp:
        workdir = Path(tmp)
        with processes.serving(
            lambda: RedisPeer(processes.pick_port_base(), password, workdir, workdir / "redis.log"),
            lambda peer: peer.start(),
            port_taken="Address already in use",
        ) as peer:
            yield peer


class HangingServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (a Redis that hangs)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.listener.accept()
                self.connections.append(connection)

    def __enter__(self) -> HangingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser, _ = processes.cli(__doc__, install="apt-get install redis-server", status="exit 0 when installed")
    args = parser.parse_args(argv)
    if args.command == "install":
        install()
    elif args.command == "status":
        print(redis_binary() or "redis-server: missing")
        return 0 if redis_binary() else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
