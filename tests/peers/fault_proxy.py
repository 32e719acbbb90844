"""A fault-injecting HTTP reverse proxy for tests, in front of any HTTP peer (SeaweedFS S3, the HF emulator, ...).

It runs on its own event loop in a daemon thread (like `tests.support.fake_engine.FakeEngine`), binds 127.0.0.1 on
a free port, and forwards every request byte-identically (method, raw path and query, headers in their order and
case including Host, Range and Authorization, body) unless a programmed fault matches it::

    with FaultProxy("http://127.0.0.1:8333") as proxy:
        proxy.url                                                   # "http://127.0.0.1:PORT"; point the client here
        proxy.add_fault(method="GET", path="/models/big.bin", drop_after_bytes=1 << 20)  # first GET cut at 1 MiB
        proxy.add_fault(status=503, times=2)                        # the next two requests (any) answer 503
        proxy.add_fault(path_prefix="/models/", stall_seconds=5)     # before answering
        proxy.add_fault(method="GET", stall_seconds=5, stall_after_bytes=4096)  # mid-body
        proxy.add_fault(path="/models/big.bin", range_start=1 << 20, status=503, times=None)  # one ranged part
        proxy.add_fault(method="GET", path="/models/big.bin", flip_byte_at=5)  # body byte 5 arrives inverted
        proxy.count("GET", "/models/big.bin")                       # requests seen (faulted ones included)
        proxy.records                                               # one `RequestRecord` per request, in order

Faults are checked in the order they were added; the first one that matches and has uses left (`times`, default 1;
`times=None` is forever) is applied and used up, so "the first GET of X is cut after 1 MiB, the second succeeds" is
one `add_fault(..., times=1)`. A status fault answers without contacting the upstream; drop and stall faults forward.
`drop_after_bytes` sends exactly that many body bytes (the real headers, including the full Content-Length, go
first) and then closes the connection (FIN after the bytes; `drop_mode="reset"` aborts with an RST instead);
`drop_after_bytes=0` closes right after the headers. `flip_byte_at` sends every byte, but the body byte at that
index (counted from the start of this response's body) with its bits inverted: corruption in transit. An RST makes both kernels discard the bytes they still hold, so
before a reset the proxy waits (bounded) until its socket's send queue is empty and gives the client a moment to read:
"sent" then means "reached the client's socket", and what the client loses is only what it had not read yet.

SigV4 and the Host header (checked with obstore 0.12.1 against SeaweedFS 4.48): the client signs the Host it
connects to, and SeaweedFS verifies the signature against the Host header it receives. So the client must be
configured with the proxy's URL as its endpoint (`S3Store(..., endpoint=proxy.url)`), and the proxy forwards Host
unchanged (`http://127.0.0.1:PROXYPORT`), which verifies fine upstream. Rewriting Host to the upstream address
(`rewrite_host=True`, for peers that care about Host, never for S3) would make SigV4 fail with 403
SignatureDoesNotMatch. Redirect `Location` headers that point at the upstream origin are rewritten to the proxy's
origin (`rewrite_location=True`, the default), so an HF-style 302 to a same-origin blob URL goes through the proxy
as well; redirects are never followed by the proxy itself.

Bodies: request bodies are read whole and resent with the same Content-Length (no chunked re-encoding, which S3 would
refuse for a signed PUT); responses are streamed in 64 KiB pieces, not decompressed, with the upstream's headers
(Content-Length, ETag, Content-Range, Date, Server, ...) minus hop-by-hop ones.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tests.support.threaded_server import ThreadedServer

HOST = "127.0.0.1"
CHUNK = 64 * 1024
# Request bodies are read whole before forwarding (so Content-Length is kept); larger ones get 413.
MAX_REQUEST_BODY = 1 << 30
# RFC 9110 hop-by-hop headers (plus the non-standard Proxy-Connection): not forwarded in either direction.
# Expect is dropped too: the proxy has read the whole body before it forwards the request.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect"}
)
# Headers aiohttp's client would add on its own; skipped so that the upstream sees only what the client sent.
CLIENT_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
DropMode = Literal["close", "reset"]


def default_error_body(status: int) -> bytes:
    """An S3-shaped XML error body (clients that only look at the status are not bothered by it)."""
    code = {500: "InternalError", 502: "BadGateway", 503: "SlowDown", 504: "GatewayTimeout"}.get(status, "Error")
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>injected by fault_proxy</Message></Error>"
    ).encode()


@dataclass
class Fault:
    """One programmed fault. Matching: every given criterion must hold (None matches anything).

    `path` is compared with the request's path without the query string (percent-encoded as sent);
    `query_contains` with the raw query string (e.g. "list-type=2", "partNumber=");
    `range_start` with the first byte of the request's Range header (`bytes=START-...`; no Range never matches).
    """

    method: str | None = None
    path: str | None = None
    path_prefix: str | None = None
    query_contains: str | None = None
    range_start: int | None = None
    status: int | None = None
    body: bytes | None = None
    headers: dict[str, str] | None = None
    drop_after_bytes: int | None = None
    drop_mode: DropMode = "close"
    stall_seconds: float = 0.0
    stall_after_bytes: int | None = None
    flip_byte_at: int | None = None
    times: int | None = 1
    applied: int = 0

    def matches(self, method: str, path: str, query: str, range_header: str | None = None) -> bool:
        if self.times is not None and self.applied >= self.times:
            return False
        if self.range_start is not None and range_start(range_header) != self.range_start:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        if self.path is not None and self.path != path:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        return self.query_contains is None or self.query_contains in query

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.applied >= self.times

    def describe(self) -> str:
        parts = []
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.drop_after_bytes is not None:
            parts.append(f"drop_after_bytes={self.drop_after_bytes}({self.drop_mode})")
        if self.stall_seconds:
            where = "before" if self.stall_after_bytes is None else f"after {self.stall_after_bytes} bytes"
            parts.append(f"stall={self.stall_seconds}s {where}")
        if self.flip_byte_at is not None:
            parts.append(f"flip_byte_at={self.flip_byte_at}")
        return ",".join(parts) or "none"


def range_start(header: str | None) -> int | None:
    """The first byte of a `bytes=START-[END]` Range header; None without one (or for a suffix range)."""
    if not header or not header.startswith("bytes="):
        return None
    start = header[len("bytes=") :].split("-", 1)[0].strip()
    return int(start) if start.isdigit() else None


@dataclass
class RequestRecord:
    """What the proxy saw and did for one request (filled in as the response goes out)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    started: float
    fault: str | None = None
    status: int | None = None
    body_bytes_sent: int = 0
    completed: bool = False
    error: str | None = None

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class _State:
    faults: list[Fault] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _ProxyApp:
    """The aiohttp side; every coroutine runs on the proxy's own loop."""

    def __init__(
        self, upstream: str, port: int, state: _State, rewrite_host: bool, rewrite_location: bool, timeout: float
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"upstream must be an http(s) URL, got {upstream!r}")
        self.upstream_origin = f"{parts.scheme}://{parts.netloc}"
        self.port = port
        self.state = state
        self.rewrite_host = rewrite_host
        self.rewrite_location = rewrite_location
        self.timeout = timeout
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.timeout),
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            skip_auto_headers=CLIENT_AUTO_HEADERS,
        )
        # A catch-all handler at the low level: no routing, no path normalisation by aiohttp's router.
        server = web.Server(self._handle, access_log=None, request_factory=self._make_request)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, self.port, reuse_address=True, backlog=512)
        await site.start()
        sockets = self._runner.addresses
        self.port = int(sockets[0][1])

    def _make_request(
        self,
        message: Any,
        payload: Any,
        protocol: Any,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        # aiohttp's default limit is 1 MiB, too small for S3 multipart parts (5 MiB+).
        return web.BaseRequest(
            message, payload, protocol, writer, task, asyncio.get_running_loop(), client_max_size=MAX_REQUEST_BODY
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _pick_fault(self, record: RequestRecord) -> Fault | None:
        with self.state.lock:
            self.state.records.append(record)
            for fault in self.state.faults:
                if fault.matches(record.method, record.path, record.query, record.range):
                    fault.applied += 1
                    record.fault = fault.describe()
                    return fault
        return None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw_path = request.raw_path  # as sent: percent-encoding and query untouched
        path, _, query = raw_path.partition("?")
        record = RequestRecord(
            method=request.method,
            path=path,
            query=query,
            headers={k.lower(): v for k, v in request.headers.items()},
            started=time.monotonic(),
        )
        fault = self._pick_fault(record)
        body = await request.read()
        if fault is not None and fault.stall_seconds and fault.stall_after_bytes is None:
            await asyncio.sleep(fault.stall_seconds)
        if fault is not None and fault.status is not None:
            record.status = fault.status
            payload = default_error_body(fault.status) if fault.body is None else fault.body
            response = web.Response(status=fault.status, body=payload, headers=fault.headers or {})
            if fault.body is None:
                response.content_type = "application/xml"
            record.body_bytes_sent = len(payload)
            record.completed = True
            return response
        try:
            return await self._forward(request, record, fault, raw_path, body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            record.error = f"upstream: {exc!r}"
            record.status = 502
            record.completed = True
            return web.Response(status=502, text=f"fault_proxy: upstream error {exc!r}\n")

    async def _forward(
        self, request: web.BaseRequest, record: RequestRecord, fault: Fault | None, raw_path: str, body: bytes
    ) -> web.StreamResponse:
        assert self._session is not None
        headers: list[tuple[str, str]] = []
        for name, value in request.raw_headers:
            key = name.decode("latin-1")
            if key.lower() in HOP_BY_HOP:
                continue
            text = value.decode("latin-1")
            if key.lower() == "host" and self.rewrite_host:
                text = urlsplit(self.upstream_origin).netloc
            headers.append((key, text))
        url = URL(self.upstream_origin + raw_path, encoded=True)
        async with self._session.request(
            request.method,
            url,
            headers=CIMultiDict(headers),
            data=body or None,
            allow_redirects=False,
        ) as upstream:
            record.status = upstream.status
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.raw_headers:
                key = name.decode("latin-1")
                if key.lower() in HOP_BY_HOP:
                    continue
                text = value.decode("latin-1")
                if key.lower() == "location" and self.rewrite_location and text.startswith(self.upstream_origin):
                    text = self.origin + text[len(self.upstream_origin) :]
                response.headers.add(key, text)
            if "Content-Length" in upstream.headers:
                response.content_length = int(upstream.headers["Content-Length"])
            await response.prepare(request)
            if request.method == "HEAD" or upstream.status in (204, 304):
                record.completed = True
                await response.write_eof()
                return response
            try:
                await self._stream_body(request, response, upstream, record, fault)
            except (TimeoutError, aiohttp.ClientError) as exc:
                # Headers are out already: all the proxy can do is cut the connection, as the upstream did.
                record.error = f"upstream: {exc!r}"
                if request.transport is not None:
                    request.transport.close()
            return response

    async def _stream_body(
        self,
        request: web.BaseRequest,
        response: web.StreamResponse,
        upstream: aiohttp.ClientResponse,
        record: RequestRecord,
        fault: Fault | None,
    ) -> None:
        drop_at = None if fault is None else fault.drop_after_bytes
        stall_at = None if fault is None or not fault.stall_seconds else fault.stall_after_bytes
        flip_at = None if fault is None else fault.flip_byte_at
        if drop_at == 0:
            await self._drop(request, fault)
            return
        sent = 0
        async for chunk in upstream.content.iter_chunked(CHUNK):
            piece = chunk
            if flip_at is not None and sent <= flip_at < sent + len(piece):
                flipped = bytearray(piece)
                flipped[flip_at - sent] ^= 0xFF
                piece = bytes(flipped)
                flip_at = None
            if stall_at is not None and sent + len(piece) >= stall_at:
                head, piece = piece[: stall_at - sent], piece[stall_at - sent :]
                await response.write(head)
                sent += len(head)
                record.body_bytes_sent = sent
                assert fault is not None
                await asyncio.sleep(fault.stall_seconds)
                stall_at = None
            if drop_at is not None and sent + len(piece) >= drop_at:
                await response.write(piece[: drop_at - sent])
                record.body_bytes_sent = drop_at
                await self._drop(request, fault)
                return
            if piece:
                await response.write(piece)
                sent += len(piece)
                record.body_bytes_sent = sent
        await response.write_eof()
        record.completed = True

    async def _drop(self, request: web.BaseRequest, fault: Fault | None) -> None:
        transport = request.transport
        if transport is None:
            return
        if fault is not None and fault.drop_mode == "reset":
            await _drained(transport)
            await asyncio.sleep(0.2)  # the client reads what its socket holds; an RST would discard it
            transport.abort()
            return
        await asyncio.sleep(0.01)  # let the bytes already written reach the socket before the FIN
        transport.close()


_SIOCOUTQ = 0x5411  # Linux: bytes in a TCP socket's send queue not yet acknowledged by the peer


async def _drained(transport: asyncio.BaseTransport, limit: float = 2.0) -> None:
    """Wait (at most `limit` seconds) until the transport's buffer and its socket's send queue are empty."""
    sock = transport.get_extra_info("socket")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        pending = array.array("i", [0])
        if sock is not None:
            with contextlib.suppress(OSError):
                fcntl.ioctl(sock.fileno(), _SIOCOUTQ, pending)
        buffered = transport.get_write_buffer_size() if isinstance(transport, asyncio.WriteTransport) else 0
        if buffered == 0 and pending[0] == 0:
            return
        await asyncio.sleep(0.005)


class FaultProxy(ThreadedServer):
    """The proxy on a background thread with its own loop; usable from sync tests. Also a context manager.

    `upstream` is an origin such as "http://127.0.0.1:8333"; `port=0` picks a free port. `upstream_read_timeout`
    bounds each read from the upstream (seconds).
    """

    def __init__(
        self,
        upstream: str,
        port: int = 0,
        *,
        rewrite_host: bool = False,
        rewrite_location: bool = True,
        upstream_read_timeout: float = 120.0,
    ) -> None:
        self._state = _State()
        self._app = _ProxyApp(upstream, port, self._state, rewrite_host, rewrite_location, upstream_read_timeout)
        super().__init__(self._app, "fault-proxy")

    @property
    def url(self) -> str:
        return self._app.origin

    @property
    def upstream(self) -> str:
        return self._app.upstream_origin

    # ----------------------------------------------------------------------------------------- faults

    def add_fault(
        self,
        *,
        method: str | None = None,
        path: str | None = None,
        path_prefix: str | None = None,
        query_contains: str | None = None,
        range_start: int | None = None,
        status: int | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        drop_after_bytes: int | None = None,
        drop_mode: DropMode = "close",
        stall_seconds: float = 0.0,
        stall_after_bytes: int | None = None,
        flip_byte_at: int | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Program a fault for the next `times` matching requests (None: all of them). Returns it (see `applied`)."""
        if status is None and drop_after_bytes is None and not stall_seconds and flip_byte_at is None:
            raise ValueError("a fault needs status, drop_after_bytes, stall_seconds or flip_byte_at")
        fault = Fault(
            method=method,
            path=path,
            path_prefix=path_prefix,
            query_contains=query_contains,
            range_start=range_start,
            status=status,
            body=body,
            headers=headers,
            drop_after_bytes=drop_after_bytes,
            drop_mode=drop_mode,
            stall_seconds=stall_seconds,
            stall_after_bytes=stall_after_bytes,
            flip_byte_at=flip_byte_at,
            times=times,
        )
        with self._state.lock:
            self._state.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()

    def pending_faults(self) -> list[Fault]:
        """Faults with uses left."""
        with self._state.lock:
            return [fault for fault in self._state.faults if not fault.exhausted]

    # ----------------------------------------------------------------------------------------- observing

    @property
    def records(self) -> list[RequestRecord]:
        """A snapshot of all requests so far, in arrival order."""
        with self._state.lock:
            return list(self._state.records)

    def count(self, method: str | None = None, path: str | None = None, *, path_prefix: str | None = None) -> int:
        """Requests seen (faulted ones included) with this method and path / path prefix (None: any)."""
        return len(self.matching(method, path, path_prefix=path_prefix))

    def matching(
        self, method: str | None = None, path: str | None = None, *, path_prefix: str | None = None
    ) -> list[RequestRecord]:
        return [
            r
            for r in self.records
            if (method is None or r.method == method.upper())
            and (path is None or r.path == path)
            and (path_prefix is None or r.path.startswith(path_prefix))
        ]

    def counts(self) -> dict[tuple[str, str], int]:
        """Requests per (method, path)."""
        result: dict[tuple[str, str], int] = {}
        for r in self.records:
            result[(r.method, r.path)] = result.get((r.method, r.path), 0) + 1
        return result

    def reset_records(self) -> None:
        with self._state.lock:
            self._state.records.clear()


def main() -> None:
    """`python tests/peers/fault_proxy.py UPSTREAM [PORT]`: a plain pass-through proxy until Ctrl-C (debugging)."""
    import sys

    upstream = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    with FaultProxy(upstream, port) as proxy:
        print(f"proxying {proxy.url} -> {proxy.upstream}; Ctrl-C stops", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1.0)


if __name__ == "__main__":
    main()
