"""A real Azure Blob server (Azurite, Microsoft's emulator, from npm) on 127.0.0.1, as a test peer for az://.

Run from the project venv (only the standard library is imported at module level):

    python tests/peers/azurite.py install     # idempotent: npm install azurite@3.37.0 into ~/.cache/airuntime/azurite
    python tests/peers/azurite.py status      # exit 0 when the pinned Azurite is there
    python tests/peers/azurite.py serve       # run it in the foreground until Ctrl-C (prints endpoint and key)

Tests use `running_azurite(containers=("models",))`, which yields an `AzuritePeer`: `account_name`,
`account_key`, `endpoint` (the blob service URL of the account, path-style: `http://127.0.0.1:PORT/ACCOUNT`, what
obstore's `AzureStore(endpoint=...)` wants) for the client under test, and helpers to seed and inspect the store
(`create_container`, `put_blob`, `put_tree`, `list_blobs`, `request()` for a raw SharedKey-signed request with the
standard library, `store()` for an obstore `AzureStore`).

What runs: `node node_modules/azurite/dist/src/blob/main.js` (the `azurite-blob` bin, blob service only) with
`--blobHost 127.0.0.1 --blobPort P --inMemoryPersistence --extentMemoryLimit 256 --skipApiVersionCheck --loose
--disableTelemetry` (Azurite 3.x sends usage telemetry unless told not to), cwd a temp dir (`--location` is refused
alongside `--inMemoryPersistence`). The
account comes from `AZURITE_ACCOUNTS=name:base64key` (not the well-known devstoreaccount1), so a test can tell a
right key from a wrong one: Azurite checks SharedKey signatures (wrong key -> 403 AuthorizationFailure, for the
listing and for blob reads alike); anonymous requests to a private container -> 403 too.

Requests are path-style (`/ACCOUNT/CONTAINER/BLOB`): with SharedKey the canonicalized resource is `/ACCOUNT` +
the whole URL path, i.e. `/ACCOUNT/ACCOUNT/CONTAINER/...` (what obstore does with an explicit endpoint).

Measured on this 2-core machine: `npm install` of 3.37.0 takes ~40 s and 365 MB (457 packages); the server
listens ~2.5-4 s after launch (node startup dominates); RSS ~140 MB idle. ETags are `"0x..."` (not MD5s), listing
ETags come unquoted; If-Match is enforced (412); a missing blob -> 404, a missing container -> 404
ContainerNotFound (obstore raises a GenericError for the listing, not NotFoundError).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import hmac
import json
import os
import re
import shutil
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

AZURITE_VERSION = "3.37.0"
DEFAULT_ACCOUNT = "airuntime"
DEFAULT_KEY = base64.b64encode(b"airuntime-azurite-test-key-0123456789").decode()
API_VERSION = "2021-08-06"
DEFAULT_START_TIMEOUT = 60.0
EXTENT_MEMORY_LIMIT_MB = 256


# --------------------------------------------------------------------------------------------- install


def install_dir() -> Path:
    """$AIRUNTIME_AZURITE_DIR, else ~/.cache/airuntime/azurite (an npm prefix: package.json + node_modules)."""
    override = os.environ.get("AIRUNTIME_AZURITE_DIR")
    return Path(override) if override else Path.home() / ".cache" / "airuntime" / "azurite"


def blob_main(root: Path | None = None) -> Path:
    return (root or install_dir()) / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"


def installed_version(root: Path | None = None) -> str | None:
    try:
        meta = json.loads(((root or install_dir()) / "node_modules" / "azurite" / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = meta.get("version")
    return version if isinstance(version, str) else None


def is_installed() -> bool:
    return installed_version() == AZURITE_VERSION and blob_main().exists() and shutil.which("node") is not None


def install() -> Path:
    """Idempotent: `npm install azurite@<pinned>` into install_dir() unless that version is already there."""
    started = time.monotonic()
    root = install_dir()
    if installed_version(root) != AZURITE_VERSION or not blob_main(root).exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm not found: Azurite is installed from the npm registry (install Node.js 18+)")
        root.mkdir(parents=True, exist_ok=True)
        package = root / "package.json"
        if not package.exists():
            package.write_text(json.dumps({"name": "airuntime-azurite", "private": True}) + "\n")
        cmd = [npm, "install", "--prefix", str(root), "--no-audit", "--no-fund", "--loglevel=error"]
        cmd.append(f"azurite@{AZURITE_VERSION}")
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    version = installed_version(root)
    if version != AZURITE_VERSION:
        raise RuntimeError(f"npm installed azurite {version}, want {AZURITE_VERSION}")
    print(f"azurite {version} in {root} (install step {time.monotonic() - started:.1f}s)", flush=True)
    return blob_main(root)


# --------------------------------------------------------------------------------------------- SharedKey (stdlib)

_SIGNED_STANDARD_HEADERS = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)


def shared_key_authorization(
    method: str, path: str, query: str, headers: dict[str, str], account: str, key: str
) -> str:
    """The `Authorization: SharedKey account:signature` value (Blob service, versions 2015-02-21 and later)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    if lowered.get("content-length") == "0":
        lowered["content-length"] = ""
    standard = "\n".join(lowered.get(name, "") for name in _SIGNED_STANDARD_HEADERS)
    ms_headers = "".join(f"{name}:{lowered[name].strip()}\n" for name in sorted(lowered) if name.startswith("x-ms-"))
    resource = f"/{account}{path}"
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    for name in sorted(params, key=str.lower):
        resource += f"\n{name.lower()}:{','.join(sorted(params[name]))}"
    to_sign = f"{method}\n{standard}\n{ms_headers}{resource}"
    digest = hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()
    return f"SharedKey {account}:{base64.b64encode(digest).decode()}"


# --------------------------------------------------------------------------------------------- running


class AzuriteNotInstalledError(RuntimeError):
    pass


@dataclass
class AzuritePeer(processes.ServerProcess):
    """A running Azurite blob service with one account (`account_name`/`account_key`), plus seeding helpers."""

    account_name: str
    account_key: str
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    containers: list[str] = field(default_factory=list)
    started_seconds: float = 0.0

    @property
    def endpoint(self) -> str:
        """The account's blob service URL, path-style (obstore `AzureStore(endpoint=...)`)."""
        return f"http://127.0.0.1:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};AccountKey={self.account_key};"
            f"BlobEndpoint={self.endpoint};"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL after `timeout` (Azurite exits on SIGTERM in well under a second)."""
        if self.proc is not None:
            processes.stop_group(self.proc, timeout)
            self.proc = None

    # ------------------------------------------------------------------------------------- raw requests

    def request(
        self,
        method: str,
        container: str = "",
        blob: str = "",
        *,
        query: str = "",
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        account_key: str | None = None,
        sign: bool = True,
        timeout: float = 30.0,
    ) -> RawResponse:
        """One SharedKey-signed path-style request (no retries); any status is returned, not raised."""
        path = f"/{self.account_name}"
        if container:
            path += "/" + container
        if blob:
            path += "/" + urllib.parse.quote(blob, safe="/-_.~")
        sent = {
            "x-ms-date": email.utils.formatdate(usegmt=True),
            "x-ms-version": API_VERSION,
            "content-length": str(len(body)),
            **(headers or {}),
        }
        if sign:
            sent["authorization"] = shared_key_authorization(
                method, path, query, sent, self.account_name, account_key or self.account_key
            )
        target = path + (f"?{query}" if query else "")
        return processes.http_request(self.port, method, target, body=body, headers=sent, timeout=timeout)

    def create_container(self, name: str) -> None:
        """Create Container; an existing one (409 ContainerAlreadyExists) is fine."""
        response = self.request("PUT", name, query="restype=container")
        if response.status not in (201, 409):
            raise RuntimeError(f"create container {name!r}: {response.status} {response.body[:300]!r}")
        if name not in self.containers:
            self.containers.append(name)

    def put_blob(self, container: str, name: str, data: bytes) -> str:
        """Put Blob (one request, a block blob); returns the ETag with its quotes."""
        response = self.request(
            "PUT",
            container,
            name,
            body=data,
            headers={"x-ms-blob-type": "BlockBlob", "content-type": "application/octet-stream"},
        )
        if response.status != 201:
            raise RuntimeError(f"put blob {container}/{name}: {response.status} {response.body[:300]!r}")
        return response.headers.get("etag", "")

    def put_tree(self, container: str, prefix: str, files: dict[str, bytes]) -> None:
        """Upload `{relative path: bytes}` under `prefix`."""
        for rel, data in files.items():
            self.put_blob(container, f"{prefix.rstrip('/')}/{rel}" if prefix else rel, data)

    def list_blobs(self, container: str, prefix: str = "") -> list[str]:
        """Blob names starting with `prefix`, sorted (one List Blobs page: up to 5000, enough for tests)."""
        query = "restype=container&comp=list" + (f"&prefix={urllib.parse.quote(prefix, safe='')}" if prefix else "")
        response = self.request("GET", container, query=query)
        if response.status != 200:
            raise RuntimeError(f"list {container}: {response.status} {response.body[:300]!r}")
        return sorted(re.findall(r"<Name>([^<]*)</Name>", response.body.decode()))

    def store(self, container: str, **kwargs: Any) -> Any:
        """An obstore `AzureStore` for `container` on this account (plain HTTP allowed)."""
        from obstore.store import AzureStore

        return AzureStore(
            container,
            account_name=self.account_name,
            account_key=self.account_key,
            endpoint=self.endpoint,
            client_options={"allow_http": True},
            **kwargs,
        )


def azurite_command(node: str, main: Path, port: int) -> list[str]:
    """(`--location` and `--inMemoryPersistence` are mutually exclusive: Azurite exits 1 given both.)"""
    return [
        node,
        str(main),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--inMemoryPersistence",
        "--extentMemoryLimit",
        str(EXTENT_MEMORY_LIMIT_MB),
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
    ]


def _wait_ready(peer: AzuritePeer, timeout: float) -> None:
    """Until a signed List Containers answers 200 (proves the port, the account and the key)."""
    processes.wait_ok(
        peer.proc,
        lambda: peer.request("GET", query="comp=list", timeout=2),
        name="azurite",
        log=peer.log_path,
        timeout=timeout,
        interval=0.1,
    )


@contextlib.contextmanager
def running_azurite(
    containers: Sequence[str] = ("models",),
    *,
    account_name: str = DEFAULT_ACCOUNT,
    account_key: str = DEFAULT_KEY,
    start_timeout: float = DEFAULT_START_TIMEOUT,
) -> Iterator[AzuritePeer]:
    """Start Azurite's blob service on a free 127.0.0.1 port (in-memory), create `containers`, yield the peer.

    On exit the process group is stopped and the temp dir removed. Set $AIRUNTIME_AZURITE_LOG_DIR to keep
    Azurite's access log (appended to DIR/azurite.log).
    """
    node = shutil.which("node")
    if not is_installed() or node is None:
        raise AzuriteNotInstalledError(
            f"azurite {AZURITE_VERSION} not found in {install_dir()} (or no `node`); "
            "run `python tests/peers/azurite.py install`"
        )
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="airuntime-azurite-")))
        log_path = processes.log_path("AIRUNTIME_AZURITE_LOG_DIR", "azurite.log", root)
        env = dict(os.environ, AZURITE_ACCOUNTS=f"{account_name}:{account_key}")
        started = time.monotonic()

        def launch() -> AzuritePeer:
            port = processes.pick_port_base()
            peer = AzuritePeer(account_name=account_name, account_key=account_key, port=port, log_path=log_path)
            peer.proc = processes.start_in_group(azurite_command(node, blob_main(), port), log_path, env=env, cwd=root)
            return peer

        with processes.serving(launch, lambda peer: _wait_ready(peer, start_timeout), port_taken="EADDRINUSE") as peer:
            for name in containers:
                peer.create_container(name)
            peer.started_seconds = time.monotonic() - started
            yield peer


def main(argv: Sequence[str] | None = None) -> int:
    parser, sub = processes.cli(
        __doc__,
        install=f"npm install azurite@{AZURITE_VERSION} into {install_dir()} (idempotent)",
        status="exit 0 when the pinned Azurite is installed, 1 otherwise",
    )
    serve = sub.add_parser("serve", help="run Azurite's blob service in the foreground until interrupted")
    serve.add_argument("--container", action="append", default=None, help="container to create (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "install":
        install()
    elif args.command == "status":
        print(f"azurite: {installed_version() or 'missing'} in {install_dir()}; node: {shutil.which('node')}")
        return 0 if is_installed() else 1
    elif args.command == "serve":
        with running_azurite(containers=tuple(args.container or ["models"])) as peer:
            print(
                f"Azure Blob at {peer.endpoint}, account {peer.account_name!r}, key {peer.account_key!r}, "
                f"containers {peer.containers}; ready in {peer.started_seconds:.2f}s; log {peer.log_path}; "
                "Ctrl-C stops",
                flush=True,
            )
            peer.run_until_interrupted()
    return 0


if __name__ == "__main__":
    sys.exit(main())
