"""Run an async test server on its own event loop in a daemon thread, so sync tests and benchmarks can use it.

The test peers (fake engine, Hub emulator, fault proxy) wrap an object with `port`, `start()` and `stop()`
coroutines; this class gives them start/stop, use as a context manager, and `_call` to run a coroutine on
the server's loop from the test thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Protocol, Self


class AsyncServer(Protocol):
    port: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ThreadedServer:
    def __init__(self, app: AsyncServer, thread_name: str) -> None:
        self._server = app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=thread_name, daemon=True)
        self._started = False

    def start(self) -> Self:
        self._thread.start()
        self._call(self._server.start())
        self._started = True
        return self

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            self._call(self._server.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, None], timeout: float = 30.0) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
