"""Running the server: bind, serve on uvloop, and shut down gracefully on SIGTERM/SIGINT.

The first signal starts a drain bounded by `--shutdown-timeout`: the listening socket closes, `/ready` answers
503, new work is refused, running downloads get most of the budget to finish, then whatever still runs is cancelled
(downloads keep their partial files and resume records, so the next run resumes) and the process exits 0. A second
signal, or a drain that overruns its budget, exits at once with 128+signal (partial files stay resumable: nothing
is ever renamed to a final name before it is complete and verified).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from aiohttp import web

from runtime.config import ServeConfig
from runtime.metrics.rules import RuleSet
from runtime.server.app import create_app
from runtime.server.download_routes import DOWNLOADS
from runtime.server.state import SidecarState

log = logging.getLogger("airuntime.server")

LISTEN_BACKLOG = 512  # 200 scrapers connecting at once must not overflow it (aiohttp's default is 128)
CANCEL_RESERVE_MAX = 5.0  # seconds kept at the end of the drain to cancel and checkpoint what still runs


def serve(config: ServeConfig, rules: RuleSet) -> None:
    """Run the sidecar until SIGTERM/SIGINT, then drain within config.shutdown_timeout."""
    import uvloop

    app = create_app(config, rules)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        sock = bind(config.host, config.port)
    except OSError as exc:
        loop.close()
        raise SystemExit(f"airuntime: error: cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    try:
        loop.run_until_complete(run_until_signalled(app, sock, config))
    finally:
        loop.close()


async def run_until_signalled(app: web.Application, sock: socket.socket, config: ServeConfig) -> None:
    loop = asyncio.get_running_loop()
    timeout = config.shutdown_timeout
    reserve = min(CANCEL_RESERVE_MAX, timeout * 0.25)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=reserve)
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=LISTEN_BACKLOG)
    await site.start()
    log.info("listening", extra={"fields": {"address": f"http://{config.host}:{config.port}"}})

    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if received:
            _exit_now(signum, "second signal during shutdown: exiting now")
        received.append(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await stop.wait()
        first = received[0]
        log.info(
            "shutting down",
            extra={"fields": {"signal": signal.Signals(first).name, "timeout_s": timeout}},
        )
        watchdog = loop.call_later(timeout, _exit_now, first, f"shutdown did not finish within {timeout:g}s")
        app[SidecarState.KEY].draining = True
        await site.stop()  # no new connections from here on
        running = [job.task for job in app[DOWNLOADS].all() if job.task is not None and not job.task.done()]
        if running:
            log.info("waiting for downloads", extra={"fields": {"running": len(running)}})
            await asyncio.wait(running, timeout=max(0.0, timeout - reserve - 0.5))
        await runner.cleanup()  # cancels what still runs (downloads checkpoint), waits `reserve` for handlers
        watchdog.cancel()
        log.info("stopped")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _exit_now(signum: int, why: str) -> None:
    log.warning(why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(128 + signum)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
