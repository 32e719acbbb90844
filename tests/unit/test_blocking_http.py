"""blocking_http: ranged GETs with http.client against real HTTP servers (the standard library's, in a thread)."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from runtime.download.backends.blocking_http import BUFFER, is_direct, read_range_blocking
from runtime.errors import DownloadError, RetryableError

DATA = hashlib.shake_256(b"blocking-http").digest(3 * BUFFER + 777)


class Origin:
    """One HTTP server; `behaviour` decides each answer; every request's headers are kept."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.behaviour = "range"
        self.redirect_to = ""
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                origin.requests.append({k.lower(): v for k, v in self.headers.items()})
                origin.answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        first, last = (int(x) for x in handler.headers["Range"].removeprefix("bytes=").split("-"))
        if self.behaviour == "redirect":
            handler.send_response(302)
            handler.send_header("Location", self.redirect_to + handler.path)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        elif self.behaviour == "throttle":
            handler.send_response(503)
            handler.send_header("Retry-After", "7")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        elif self.behaviour == "whole":  # ignores Range
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(DATA)))
            handler.end_headers()
            handler.wfile.write(DATA)
        elif self.behaviour == "wrong-range":
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes 0-9/{len(DATA)}")
            handler.send_header("Content-Length", "10")
            handler.end_headers()
            handler.wfile.write(DATA[:10])
        else:
            body = DATA[first : last + 1]
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {first}-{last}/{len(DATA)}")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            if self.behaviour == "cut":
                handler.wfile.write(body[: len(body) // 2])
                handler.wfile.flush()
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
            handler.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origins() -> Iterator[tuple[Origin, Origin]]:
    first, second = Origin(), Origin()
    yield first, second
    first.close()
    second.close()


def fetch(url: str, start: int, end: int, headers: dict[str, str] | None = None) -> bytes:
    return b"".join(bytes(view) for view in read_range_blocking(url + "/f", headers or {}, start, end, "f"))


def test_a_range_arrives_in_buffer_sized_views(origins: tuple[Origin, Origin]) -> None:
    origin, _ = origins
    views = [bytes(v) for v in read_range_blocking(origin.url + "/f", {}, 5, len(DATA) - 3, "f")]
    assert b"".join(views) == DATA[5:-3]
    assert max(len(v) for v in views) <= BUFFER and len(views) >= 3
    assert origin.requests[0]["range"] == f"bytes=5-{len(DATA) - 4}"
    assert origin.requests[0]["accept-encoding"] == "identity"


def test_authorization_follows_a_redirect_on_the_same_origin_only(origins: tuple[Origin, Origin]) -> None:
    hub, cdn = origins
    hub.behaviour, hub.redirect_to = "redirect", cdn.url
    assert fetch(hub.url, 0, 1000, {"Authorization": "Bearer hf_secret"}) == DATA[:1000]
    assert hub.requests[0]["authorization"] == "Bearer hf_secret"
    assert "authorization" not in cdn.requests[0]  # a CDN's signed URL must not get the Hub token
    assert cdn.requests[0]["range"] == "bytes=0-999"


def test_a_server_ignoring_range_is_skipped_to_the_start(origins: tuple[Origin, Origin]) -> None:
    origin, _ = origins
    origin.behaviour = "whole"
    assert fetch(origin.url, BUFFER + 10, BUFFER + 20) == DATA[BUFFER + 10 : BUFFER + 20]


def test_a_206_for_another_range_is_retried(origins: tuple[Origin, Origin]) -> None:
    origin, _ = origins
    origin.behaviour = "wrong-range"
    with pytest.raises(RetryableError, match="asked for bytes 100-199, got Content-Range bytes 0-9"):
        fetch(origin.url, 100, 200)


def test_throttling_passes_retry_after_on(origins: tuple[Origin, Origin]) -> None:
    origin, _ = origins
    origin.behaviour = "throttle"
    with pytest.raises(RetryableError) as caught:
        fetch(origin.url, 0, 10)
    assert caught.value.throttled and caught.value.retry_after == 7.0
    assert "503 Service Unavailable" in str(caught.value)


def test_a_body_cut_midway_is_a_dropped_connection_after_the_bytes_received(origins: tuple[Origin, Origin]) -> None:
    origin, _ = origins
    origin.behaviour = "cut"
    received = bytearray()
    with pytest.raises(RetryableError, match=r"f: connection to 127\.0\.0\.1 dropped mid-transfer"):
        for view in read_range_blocking(origin.url + "/f", {}, 0, 2 * BUFFER, "f"):
            received += view
    assert bytes(received) == DATA[: len(received)] and 0 < len(received) <= BUFFER


def test_refused_and_unresolvable_hosts_are_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RetryableError, match=r"cannot connect to 127\.0\.0\.1: connection refused"):
        fetch(f"http://127.0.0.1:{port}", 0, 10)
    with pytest.raises(RetryableError, match=r"cannot resolve host no-such-host\.invalid"):
        fetch("http://no-such-host.invalid", 0, 10)


def test_a_redirect_to_another_scheme_is_refused(origins: tuple[Origin, Origin]) -> None:
    origin, _ = origins
    origin.behaviour, origin.redirect_to = "redirect", "ftp://example.com"
    with pytest.raises(DownloadError, match="redirected to a ftp URL"):
        fetch(origin.url, 0, 10)


def test_proxies_from_the_environment_keep_the_aiohttp_path(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "all_proxy",
                 "no_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert is_direct("https://huggingface.co/x")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert not is_direct("https://huggingface.co/x")
    assert is_direct("http://mirror.internal/x")  # no proxy for plain http
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert is_direct("https://huggingface.co/x")
