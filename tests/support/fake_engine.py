"""A fake LLM engine for tests and benchmarks: fixed Prometheus payload at /metrics, 200 at /health, faults.

In-process (sync tests, benchmarks): the server runs on its own event loop in a daemon thread::

    with FakeEngine(payload) as engine:          # binds 127.0.0.1 on a free port
        engine.url                               # "http://127.0.0.1:PORT"
        engine.set_mode("slow", delay=3.0)        # switch faults at run time, thread-safe
        engine.requests["/metrics"]               # how many requests each path got

As a separate process (keeps the engine off the load generator's GIL)::

    python -m tests.support.fake_engine --port 8001 --payload-file tests/fixtures/vllm-0.32.0-metrics.txt
    curl -X POST 'http://127.0.0.1:8001/_control?mode=error500'     # or mode=slow&delay=2

`FakeEngineProcess` wraps that command as a context manager with the same `url`/`set_mode` API. With
``--vary-values`` (``FakeEngineProcess(..., vary_values=True)``) each answer carries new sample values, as a busy
engine's would: the payload with every finite value raised by a step per line, from a rotation of
``VARIANTS`` versions made at start (so the engine's own cost per answer stays the same).

Modes (they apply to /metrics; /health follows `refuse`, `slow` and `error500` only):

* ``ok``: 200, the payload, ``Content-Type: text/plain; version=0.0.4; charset=utf-8``.
* ``refuse``: the listening socket is closed, so connections are refused; leaving the mode re-binds the port.
* ``slow``: sleeps ``delay`` seconds, then answers like ``ok``.
* ``error500``: 500 with a short text body.
* ``garbage``: 200, the metrics content type, ``garbage_size`` random bytes (seeded, so reproducible).
* ``truncated``: 200 with ``Content-Length`` of the full payload, sends half, then closes the connection.
* ``reset``: like ``truncated`` but aborts the connection with an RST (SO_LINGER 0) instead of a FIN.
* ``stall``: 200, headers and half the payload, then nothing for ``delay`` seconds (a hung engine mid-body).
* ``huge``: 200, 50 MB of valid exposition lines, chunked (no Content-Length); the in-process engine's
  ``set_mode("huge", declare_length=True)`` sends the Content-Length up front instead.
* ``drip``: 200, the payload at one byte per ``delay`` seconds (a slow-loris engine).

The control endpoint ``POST /_control`` (query ``mode``, ``delay``, ``garbage_size``) is unreachable while in
``refuse`` mode, so a subprocess engine cannot be switched back out of it; the in-process `FakeEngine` can.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, get_args

from aiohttp import web

from tests.support.threaded_server import ThreadedServer

Mode = Literal["ok", "refuse", "slow", "error500", "garbage", "truncated", "reset", "stall", "huge", "drip"]
HUGE_BYTES = 50 * 1024 * 1024
MODES: tuple[str, ...] = get_args(Mode)
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HOST = "127.0.0.1"

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VLLM_FIXTURE = FIXTURES / "vllm-0.32.0-metrics.txt"

# Used when the recorded vLLM fixture is absent: a few families shaped like vLLM's.
MINIMAL_VLLM_PAYLOAD = b"""\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 1.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 1234.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="tiny"} 5678.0
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.5",model_name="tiny"} 2.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="1.0",model_name="tiny"} 5.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 7.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="tiny"} 7.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="tiny"} 6.5
"""


VARIANTS = 64
_SAMPLE_VALUE_RE = re.compile(rb"^([^#\n][^\n]*) ([0-9.eE+-]+)$", re.MULTILINE)


def varied_payloads(payload: bytes, count: int = VARIANTS) -> list[bytes]:
    """`count` versions of `payload`, version k with each finite sample value raised by k times a per-line step."""

    def version(k: int) -> bytes:
        index = 0

        def bump(match: re.Match[bytes]) -> bytes:
            nonlocal index
            index += 1
            try:
                value = float(match[2])
            except ValueError:
                return match[0]
            if not math.isfinite(value):
                return match[0]
            return b"%s %s" % (match[1], repr(value + k * (index % 7 + 1) * 0.5).encode())

        return _SAMPLE_VALUE_RE.sub(bump, payload)

    return [version(k) for k in range(count)]


def vllm_payload() -> bytes:
    """The recorded vLLM exposition (`VLLM_FIXTURE`) if that file exists, else `MINIMAL_VLLM_PAYLOAD`."""
    return VLLM_FIXTURE.read_bytes() if VLLM_FIXTURE.is_file() else MINIMAL_VLLM_PAYLOAD


class _EngineApp:
    """The aiohttp side; every method runs on the engine's own loop."""

    def __init__(self, payload: bytes, port: int, control: bool, vary_values: bool = False) -> None:
        self.payload = payload
        self._variants = varied_payloads(payload) if vary_values else None  # else `payload`, which tests may swap
        self._answers = 0
        self.port = port
        self.mode: str = "ok"
        self.delay = 1.0
        self.garbage_size = 4096
        self.declare_length = False
        self.requests: Counter[str] = Counter()
        self._random = random.Random(0)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._background: set[asyncio.Task[None]] = set()
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        if control:
            app.router.add_post("/_control", self._control)
        self._app = app

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        # Our own asyncio server around aiohttp's protocol factory, so `refuse` can close and re-open it.
        assert self._runner is not None and self._runner.server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._runner.server, HOST, self.port, reuse_address=True, backlog=512)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._runner is not None and self._runner.server is not None:
            # Drop keep-alive connections too: a closed port must not keep answering old clients.
            await self._runner.server.shutdown(0.5)
        if server is not None:
            await server.wait_closed()

    async def stop(self) -> None:
        await self._close_listener()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        # Handlers still sleeping (slow mode, client gone) would otherwise die with the loop, noisily.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def set_mode(self, mode: str, delay: float | None, garbage_size: int | None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if delay is not None:
            self.delay = delay
        if garbage_size is not None:
            self.garbage_size = garbage_size
        self.mode = mode
        if mode == "refuse" and self._server is not None:
            await self._close_listener()
        elif mode != "refuse" and self._server is None and self._runner is not None:
            await self._listen()

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        self.requests["/metrics"] += 1
        mode = self.mode
        if mode == "slow":
            await asyncio.sleep(self.delay)
        elif mode == "error500":
            return web.Response(status=500, text="engine failure (fake)\n")
        elif mode == "garbage":
            body = self._random.randbytes(self.garbage_size)
            return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
        elif mode in ("reset", "stall", "huge", "drip"):
            return await self._misbehave(request, mode)
        elif mode == "truncated":
            response = web.StreamResponse(headers={"Content-Type": METRICS_CONTENT_TYPE})
            response.content_length = len(self.payload)
            await response.prepare(request)
            await response.write(self.payload[: len(self.payload) // 2])
            await asyncio.sleep(0.01)  # let the partial body reach the socket before the close
            if request.transport is not None:
                request.transport.close()
            return response
        body = self.payload
        if self._variants is not None:
            self._answers += 1
            body = self._variants[self._answers % len(self._variants)]
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _misbehave(self, request: web.Request, mode: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": METRICS_CONTENT_TYPE})
        if mode == "huge":
            line = b'vllm:num_requests_running{engine="0",model_name="tiny",filler="' + b"x" * 200 + b'"} 1.0\n'
            block = line * (64 * 1024 // len(line))
            blocks = HUGE_BYTES // len(block)
            if self.declare_length:
                response.content_length = blocks * len(block)
            await response.prepare(request)
            for _ in range(blocks):
                await response.write(block)
            await response.write_eof()
            return response
        response.content_length = len(self.payload)
        await response.prepare(request)
        if mode == "drip":
            for index in range(len(self.payload)):
                await response.write(self.payload[index : index + 1])
                await asyncio.sleep(self.delay)
            return response
        await response.write(self.payload[: len(self.payload) // 2])
        if mode == "stall":
            await asyncio.sleep(self.delay)
            return response
        await asyncio.sleep(0.01)
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return response

    async def _health(self, request: web.Request) -> web.Response:
        self.requests["/health"] += 1
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        if self.mode == "error500":
            return web.Response(status=500, text="unhealthy (fake)\n")
        return web.Response(text="ok\n")

    async def _control(self, request: web.Request) -> web.Response:
        query = request.query
        mode = query.get("mode", self.mode)
        try:
            delay = float(query["delay"]) if "delay" in query else None
            garbage_size = int(query["garbage_size"]) if "garbage_size" in query else None
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        except ValueError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        if mode == "refuse":
            # Closing the port drops this very connection: answer first, close right after.
            task = asyncio.get_running_loop().create_task(self.set_mode(mode, delay, garbage_size))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            await self.set_mode(mode, delay, garbage_size)
        return web.Response(text=f"{mode}\n", headers={"Connection": "close"})


class FakeEngine(ThreadedServer):
    """The fake engine on a background thread with its own event loop; usable from sync code.

    `port=0` picks a free port (kept across `refuse` → other mode switches). Also a context manager.
    """

    def __init__(self, payload: bytes | None = None, port: int = 0, control_endpoint: bool = True) -> None:
        self._engine = _EngineApp(vllm_payload() if payload is None else payload, port, control_endpoint)
        super().__init__(self._engine, "fake-engine")

    @property
    def mode(self) -> str:
        return self._engine.mode

    @property
    def requests(self) -> Counter[str]:
        """Requests served per path (a live view; read it from the test thread)."""
        return self._engine.requests

    def set_mode(
        self,
        mode: Mode,
        *,
        delay: float | None = None,
        garbage_size: int | None = None,
        declare_length: bool = False,
    ) -> None:
        """Switch the fault mode; returns once the change (e.g. closing the port for `refuse`) is done."""
        self._engine.declare_length = declare_length
        self._call(self._engine.set_mode(mode, delay, garbage_size))

    def set_payload(self, payload: bytes) -> None:
        """Serve `payload` from the next request on."""
        self._loop.call_soon_threadsafe(setattr, self._engine, "payload", payload)


class FakeEngineProcess:
    """The fake engine as a subprocess (`python -m tests.support.fake_engine`); same `url`/`set_mode` API.

    `set_mode` goes through ``POST /_control``, so it cannot leave ``refuse`` (the port is closed then).
    """

    def __init__(self, payload_file: Path | None = None, port: int | None = None, vary_values: bool = False) -> None:
        from tests.support.sidecar import REPO_ROOT, free_port

        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self._command = [sys.executable, "-m", "tests.support.fake_engine", "--port", str(self.port)]
        if payload_file is not None:
            self._command += ["--payload-file", str(payload_file)]
        if vary_values:
            self._command.append("--vary-values")
        self._cwd = REPO_ROOT
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FakeEngineProcess:
        from tests.support.sidecar import wait_http_ok

        self._proc = subprocess.Popen(self._command, cwd=self._cwd)
        wait_http_ok(f"{self.url}/health", proc=self._proc)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)

    def set_mode(self, mode: Mode, *, delay: float | None = None, garbage_size: int | None = None) -> None:
        query = f"mode={mode}"
        if delay is not None:
            query += f"&delay={delay}"
        if garbage_size is not None:
            query += f"&garbage_size={garbage_size}"
        request = urllib.request.Request(f"{self.url}/_control?{query}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
        except urllib.error.URLError as exc:
            if mode != "refuse":  # the port closes under the request in refuse mode
                raise
            del exc
        if mode == "refuse":
            _wait_refused(self.port)


def _wait_refused(port: int, timeout: float = 5.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                pass
        except ConnectionRefusedError:
            return
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"port {port} still accepts connections")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--payload-file", type=Path, help="default: the vLLM fixture, else a minimal payload")
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--vary-values", action="store_true", help="new sample values in every answer")
    args = parser.parse_args(argv)
    payload = args.payload_file.read_bytes() if args.payload_file else vllm_payload()

    async def serve() -> None:
        engine = _EngineApp(payload, args.port, control=True, vary_values=args.vary_values)
        await engine.start()
        await engine.set_mode(args.mode, args.delay, None)
        try:
            await asyncio.Event().wait()
        finally:
            await engine.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
