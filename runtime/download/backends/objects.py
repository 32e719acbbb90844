"""Object stores through obstore: S3 (`s3://`), Volcengine TOS (`tos://`) and Huawei OBS (`obs://`) over the S3
protocol with per-provider endpoints, plus Google Cloud Storage (`gs://`) and Azure Blob (`az://`).

gs:// and az:// take the service's base URL from `endpoint` (plain http:// allowed: emulators), Azure's account
name from `account_name` (or the endpoint) and its key from `access_key`; `skip_signature` sends unsigned requests
(public buckets, emulators). Other credentials come from the providers' environment variables, read by obstore.

A prefix names a "directory" (every object under `prefix/`); when nothing is under it, it is tried as one object.
S3 single-part ETags are MD5s and are checked after the download; multipart ETags (`md5-N`) cannot be, so those
files are checked by size.

Retries happen in one place, not two: obstore's own retry loop is off (`max_retries=0`), the transfer engine
retries ranged GETs from the byte reached, and the listing is retried here a few times. A failure becomes one line
naming the status and S3 error code (`HTTP 503 Service Unavailable (SlowDown)`), the host that does not resolve,
or the connection that dropped; never obstore's multi-line debug text (which holds the request URL and headers).
429 and 503 SlowDown count as throttling (longer waits). obstore does not expose response headers on errors, so an
object store's Retry-After cannot be read; the throttling backoff stands in for it.
"""

from __future__ import annotations

import asyncio
import random
import re
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from typing import Any

from runtime.download.backends.base import Chunk, RemoteFile
from runtime.download.credentials import SourceSettings
from runtime.download.layout import safe_relative_path
from runtime.download.uri import SourceSpec
from runtime.errors import DownloadError, RetryableError
from runtime.urls import shown_url

_MD5_ETAG = re.compile(r'"?([0-9a-fA-F]{32})"?')
STREAM_CHUNK = 256 * 1024
BLOCKING_CHUNK = 64 * 1024  # obstore copies each chunk into new bytes; smaller network reads are joined first
DEFAULT_REGIONS = {"s3": "us-east-1", "tos": "cn-beijing", "obs": "cn-north-4"}
_DNS_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")  # a bucket name usable as one host name label
# Domains whose S3 endpoints take virtual-hosted requests (BUCKET.endpoint): AWS, Volcengine TOS, Huawei OBS.
PROVIDER_DOMAINS = (".amazonaws.com", ".amazonaws.com.cn", ".volces.com", ".ivolces.com", ".myhuaweicloud.com",
                    ".myhuaweicloud.eu")  # fmt: skip
# obstore's retries off: the transfer engine (GETs) and list_files (listing) retry, with one budget each.
RETRY_CONFIG: dict[str, Any] = {"max_retries": 0}
LIST_ATTEMPTS = 4
LIST_BACKOFF = 0.25
_STATUS = re.compile(r"non-2xx status code: (\d{3})(?: ([^:\n]*))?")
_S3_CODE = re.compile(r"<Code>([A-Za-z0-9.]{1,64})</Code>")
_URL_HOST = re.compile(r"https?://\[?([A-Za-z0-9.\-:]+?)\]?(?::\d+)?[/\s,)]")
_DNS_MARKERS = ("dns error", "failed to lookup address", "Name or service not known", "nodename nor servname")


def provider_endpoint(scheme: str, settings: SourceSettings, region: str) -> str | None:
    """The S3-protocol endpoint of TOS and OBS (and of S3 only when one is configured)."""
    endpoint = settings.endpoint
    if scheme == "tos":
        endpoint = endpoint or f"tos-s3-{region}.volces.com"
        host = endpoint.split("://", 1)[-1]
        if host.startswith("tos-") and not host.startswith("tos-s3-"):
            endpoint = endpoint.replace("tos-", "tos-s3-", 1)  # TOS's native endpoint -> its S3-compatible one
    elif scheme == "obs":
        endpoint = endpoint or f"obs.{region}.myhuaweicloud.com"
    if endpoint and "://" not in endpoint:
        endpoint = "https://" + endpoint
    return endpoint


def addressing_style(settings: SourceSettings, endpoint: str | None, bucket: str = "") -> str:
    """`virtual` (BUCKET.host) for the providers' own domains, `path` (host/BUCKET) for any other endpoint (an IP,
    an on-premises store, a private name), as boto3 and the AWS CLI do; also `path` for a bucket whose name cannot
    be a host name label (dots would break the TLS wildcard). Config `addressing_style` overrides."""
    if settings.addressing_style:
        return settings.addressing_style
    if bucket and not _DNS_BUCKET.fullmatch(bucket):
        return "path"
    if not endpoint:
        return "virtual"  # AWS's own endpoints
    host = (urllib.parse.urlsplit(endpoint).hostname or "").lower()
    return "virtual" if host.endswith(PROVIDER_DOMAINS) else "path"


def build_store(spec: SourceSpec, settings: SourceSettings) -> Any:
    from obstore.store import AzureStore, GCSStore, S3Store

    if spec.scheme in ("gs", "az"):
        cloud = cloud_store_options(spec.scheme, settings)
        try:
            return GCSStore(spec.location, **cloud) if spec.scheme == "gs" else AzureStore(spec.location, **cloud)
        except Exception as exc:  # obstore checks the settings here (missing account, undecodable key, ...)
            first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            if "Account must be specified" in first:
                first = (
                    "no storage account name: set config account_name or AZURE_STORAGE_ACCOUNT_NAME, or an endpoint "
                    "that names it (https://ACCOUNT.blob.core.windows.net, http://host:port/ACCOUNT)"
                )
            raise DownloadError(f"{spec.describe()}: {first}", reason="bad_request", status=400) from None
    region = settings.region or DEFAULT_REGIONS[spec.scheme]
    endpoint = provider_endpoint(spec.scheme, settings, region)
    options: dict[str, Any] = {"region": region, "retry_config": RETRY_CONFIG}
    if endpoint:
        options["endpoint"] = endpoint
        if endpoint.startswith("http://"):
            options["client_options"] = {"allow_http": True}
    options["virtual_hosted_style_request"] = addressing_style(settings, endpoint, spec.location) == "virtual"
    if settings.access_key and settings.secret_key:
        options["access_key_id"] = settings.access_key
        options["secret_access_key"] = settings.secret_key
        if settings.session_token:
            options["session_token"] = settings.session_token
    elif spec.scheme != "s3":
        raise DownloadError(
            f"{spec.scheme}:// needs an access key and secret key (config access_key/secret_key or the environment)",
            reason="unauthorized",
            status=400,
        )
    return S3Store(spec.location, **options)


def azure_account(settings: SourceSettings) -> str | None:
    """`account_name`, else the account in the endpoint: https://ACCOUNT.blob.core.windows.net or, path-style
    (Azurite and other emulators), http://127.0.0.1:10000/ACCOUNT."""
    if settings.account_name:
        return settings.account_name
    if not settings.endpoint:
        return None
    parts = urllib.parse.urlsplit(settings.endpoint if "://" in settings.endpoint else "https://" + settings.endpoint)
    host = parts.hostname or ""
    if ".blob." in host:
        return host.split(".", 1)[0]
    segment = parts.path.strip("/").split("/", 1)[0]
    return segment or None


def cloud_store_options(scheme: str, settings: SourceSettings) -> dict[str, Any]:
    """GCSStore / AzureStore keyword arguments from the settings (obstore adds what it finds in the environment)."""
    options: dict[str, Any] = {"retry_config": RETRY_CONFIG}
    endpoint = settings.endpoint
    if endpoint:
        endpoint = (endpoint if "://" in endpoint else "https://" + endpoint).rstrip("/")
        if endpoint.startswith("http://"):
            options["client_options"] = {"allow_http": True}
    if settings.skip_signature:
        options["skip_signature"] = True
    if scheme == "gs":
        if endpoint:
            options["base_url"] = endpoint
        if settings.service_account_key:
            options["service_account_key"] = settings.service_account_key
        return options
    account = azure_account(settings)
    if account:
        options["account_name"] = account
    if endpoint:
        options["endpoint"] = endpoint
    if settings.access_key:
        options["account_key"] = settings.access_key
    return options


class ObjectStoreBackend:
    def __init__(self, spec: SourceSpec, settings: SourceSettings, store: Any = None) -> None:
        self._spec = spec
        self._settings = settings
        self._store = store if store is not None else build_store(spec, settings)
        self._keys: dict[str, str] = {}  # relative path -> object key
        self._tried = _endpoint_tried(spec, settings)

    def describe(self) -> str:
        return self._spec.describe()

    async def list_files(self) -> list[RemoteFile]:
        for attempt in range(1, LIST_ATTEMPTS + 1):
            try:
                return await self._list_once()
            except RetryableError as exc:
                if attempt == LIST_ATTEMPTS:
                    raise DownloadError(
                        f"{exc} (gave up after {attempt} attempts)", reason="unreachable", status=502
                    ) from None
                delay = max(LIST_BACKOFF * 2 ** (attempt - 1), 1.0 if exc.throttled else 0.0)
                await asyncio.sleep(delay * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _list_once(self) -> list[RemoteFile]:
        import obstore

        prefix = self._spec.prefix
        found: list[RemoteFile] = []
        try:
            stream = obstore.list(self._store, prefix=f"{prefix}/" if prefix else None)
            async for batch in stream:
                for meta in batch:
                    key = meta["path"]
                    if key.endswith("/"):
                        continue  # a "directory" marker
                    relative = key[len(prefix) + 1 :] if prefix else key
                    found.append(self._remote(relative, key, meta))
            if not found and prefix:
                meta = await obstore.head_async(self._store, prefix)
                found.append(self._remote(prefix.rsplit("/", 1)[-1], prefix, meta))
            elif not found:
                detail = f"{self.describe()} ({self._tried}): not found (the bucket lists no object)"
                raise DownloadError(detail, reason="not_found", status=404)
        except DownloadError:
            raise
        except Exception as exc:
            raise _classified(exc, f"{self.describe()} ({self._tried})", listing=True) from None
        return found

    def _remote(self, relative: str, key: str, meta: Any) -> RemoteFile:
        path = safe_relative_path(relative)
        self._keys[path] = key
        etag = meta.get("e_tag")
        md5_match = _MD5_ETAG.fullmatch(etag) if etag and self._settings.verify_md5 else None
        return RemoteFile(
            path=path,
            size=int(meta["size"]),
            etag=etag,
            md5=md5_match.group(1).lower() if md5_match else None,
        )

    def _get_options(self, file: RemoteFile, start: int, end: int) -> Any:  # obstore's GetOptions
        return {"range": (start, end), "if_match": file.etag} if file.etag else {"range": (start, end)}

    async def read_range(self, file: RemoteFile, start: int, end: int) -> AsyncIterator[Chunk]:
        import obstore

        key = self._keys[file.path]
        try:
            result = await obstore.get_async(self._store, key, options=self._get_options(file, start, end))
            async for chunk in result.stream(min_chunk_size=STREAM_CHUNK):
                yield chunk  # obstore's buffer, written as it is (no copy)
        except DownloadError:
            raise
        except Exception as exc:
            raise _classified(exc, f"{self._spec.scheme}://{self._spec.location}/{key}", listing=False) from None

    def read_range_blocking(self, file: RemoteFile, start: int, end: int) -> Iterator[Chunk]:
        """The same bytes through obstore's blocking API, for a thread of its own (the transfer engine's fast
        path: see runtime/download/part_thread.py). The GIL is released while obstore waits."""
        import obstore

        key = self._keys[file.path]
        try:
            result = obstore.get(self._store, key, options=self._get_options(file, start, end))
            yield from result.stream(min_chunk_size=BLOCKING_CHUNK)
        except DownloadError:
            raise
        except Exception as exc:
            raise _classified(exc, f"{self._spec.scheme}://{self._spec.location}/{key}", listing=False) from None

    async def close(self) -> None:
        return None


def _endpoint_tried(spec: SourceSpec, settings: SourceSettings) -> str:
    """Where a listing went, for its error message: the endpoint and the addressing style of S3-protocol stores."""
    if spec.scheme in ("gs", "az"):  # an Azure endpoint may carry a SAS query: shown without it
        return f"endpoint {shown_url(settings.endpoint)}" if settings.endpoint else f"{spec.scheme} default endpoint"
    region = settings.region or DEFAULT_REGIONS[spec.scheme]
    endpoint = provider_endpoint(spec.scheme, settings, region)
    style = addressing_style(settings, endpoint, spec.location)
    shown = shown_url(endpoint) if endpoint else "AWS S3"
    return f"endpoint {shown}, {'virtual-hosted' if style == 'virtual' else 'path'}-style requests"


def _classified(exc: Exception, what: str, listing: bool) -> DownloadError:
    """One line for an obstore failure: final (not found, access denied, changed) or RetryableError."""
    from obstore import exceptions

    text = str(exc)
    message = describe_failure(text) if text else type(exc).__name__
    if isinstance(exc, exceptions.NotFoundError | FileNotFoundError) or any(
        marker in text for marker in ("NoSuchBucket", "ContainerNotFound", "404 Not Found")
    ):
        detail = "no object under that prefix and no object of that name" if listing else "object not found"
        return DownloadError(f"{what}: not found ({detail})", reason="not_found", status=404)
    if isinstance(exc, exceptions.PermissionDeniedError | exceptions.UnauthenticatedError):
        return DownloadError(
            f"{what}: access denied; check the keys and the bucket policy", reason="unauthorized", status=403
        )
    if isinstance(exc, exceptions.PreconditionError):
        return DownloadError(f"{what}: the object changed during the download", reason="changed", status=409)
    if any(marker in text for marker in ("403 Forbidden", "SignatureDoesNotMatch", "InvalidAccessKeyId")):
        return DownloadError(
            f"{what}: access denied; check the keys and the bucket policy", reason="unauthorized", status=403
        )
    status = _STATUS.search(text)
    if status is not None:
        code = int(status.group(1))
        if code == 429 or code >= 500:
            throttled = code == 429 or "<Code>SlowDown</Code>" in text
            return RetryableError(f"{what}: {message}", throttled=throttled)
        return DownloadError(f"{what}: {message}", reason="http_status", status=502)
    if any(marker in text for marker in _DNS_MARKERS):  # retrying a name that does not resolve would only wait
        return DownloadError(f"{what}: {message}", reason="unreachable", status=502)
    if listing:
        return RetryableError(f"{what}: cannot list: {message}")
    return RetryableError(f"{what}: {message}")


def describe_failure(text: str) -> str:
    """obstore's multi-line error text as one short line: the status and S3 code, the host that does not resolve,
    the refused connection, or the dropped body; else its first line without the request URL."""
    status = _STATUS.search(text)
    if status is not None:
        code = _S3_CODE.search(text)
        phrase = f" {status.group(2).strip()}" if status.group(2) and status.group(2).strip() else ""
        shown = f" ({code.group(1)})" if code and code.group(1) != "Error" else ""
        return f"HTTP {status.group(1)}{phrase}{shown}"
    host_match = _URL_HOST.search(text)
    host = host_match.group(1) if host_match else "the endpoint"
    if any(marker in text for marker in _DNS_MARKERS):
        return f"cannot resolve host {host}"
    if "Connection refused" in text or "ConnectionRefused" in text:
        return f"cannot connect to {host}: connection refused"
    if "kind: Connect" in text or "error sending request" in text:
        return f"cannot connect to {host}"
    if "body error" in text or "IncompleteBody" in text or "UnexpectedEof" in text:
        return "connection dropped mid-transfer"
    if "timed out" in text.lower() or "Timeout" in text:
        return f"timed out talking to {host}"
    first = text.splitlines()[0]
    return re.sub(r"https?://\S+", "<url>", first)[:300]
