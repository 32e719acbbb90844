"""Object stores through obstore: S3 (`s3://`), Volcengine TOS (`tos://`) and Huawei OBS (`obs://`) over the S3
protocol with per-provider endpoints, plus Google Cloud Storage (`gs://`) and Azure Blob (`az://`).

gs:// and az:// take the service's base URL from `endpoint` (plain http:// allowed: emulators), Azure's account
name from `account_name` (or the endpoint) and its key from `access_key`; `skip_signature` sends unsigned requests
(public buckets, emulators). Other credentials come from the providers' environment variables, read by obstore.

A prefix names a "directory" (every object under `prefix/`); when nothing is under it, it is tried as one object.
S3 single-part ETags are MD5s and are checked after the download; multipart ETags (`md5-N`) cannot be, so those
files are checked by size.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

from runtime.download.backends.base import Chunk, DownloadError, RemoteFile, RetryableError
from runtime.download.credentials import SourceSettings
from runtime.download.layout import safe_relative_path
from runtime.download.uri import SourceSpec

_MD5_ETAG = re.compile(r'"?([0-9a-fA-F]{32})"?')
STREAM_CHUNK = 256 * 1024
DEFAULT_REGIONS = {"s3": "us-east-1", "tos": "cn-beijing", "obs": "cn-north-4"}


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
    options: dict[str, Any] = {"region": region}
    if endpoint:
        options["endpoint"] = endpoint
        if endpoint.startswith("http://"):
            options["client_options"] = {"allow_http": True}
    style = settings.addressing_style or ("path" if spec.scheme == "s3" and endpoint else "virtual")
    options["virtual_hosted_style_request"] = style == "virtual"
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
    options: dict[str, Any] = {}
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

    def describe(self) -> str:
        return self._spec.describe()

    async def list_files(self) -> list[RemoteFile]:
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
        except DownloadError:
            raise
        except Exception as exc:
            raise _classified(exc, self.describe(), listing=True) from None
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

    async def read_range(self, file: RemoteFile, start: int, end: int) -> AsyncIterator[Chunk]:
        import obstore

        key = self._keys[file.path]
        try:
            result = await obstore.get_async(
                self._store,
                key,
                options={"range": (start, end), "if_match": file.etag} if file.etag else {"range": (start, end)},
            )
            async for chunk in result.stream(min_chunk_size=STREAM_CHUNK):
                yield chunk  # obstore's buffer, written as it is (no copy)
        except DownloadError:
            raise
        except Exception as exc:
            raise _classified(exc, f"{self.describe()}/{file.path}", listing=False) from None

    async def close(self) -> None:
        return None


def _classified(exc: Exception, what: str, listing: bool) -> DownloadError:
    from obstore import exceptions

    message = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    if isinstance(exc, exceptions.NotFoundError | FileNotFoundError) or any(
        marker in message for marker in ("NoSuchBucket", "ContainerNotFound", "404 Not Found")
    ):
        detail = "no object under that prefix and no object of that name" if listing else "object not found"
        return DownloadError(f"{what}: not found ({detail})", reason="not_found", status=404)
    if isinstance(exc, exceptions.PermissionDeniedError | exceptions.UnauthenticatedError):
        return DownloadError(f"{what}: access denied; check the keys and the bucket policy", "unauthorized", 403)
    if isinstance(exc, exceptions.PreconditionError):
        return DownloadError(f"{what}: the object changed during the download", reason="changed", status=409)
    if any(marker in message for marker in ("403 Forbidden", "SignatureDoesNotMatch", "InvalidAccessKeyId")):
        return DownloadError(f"{what}: access denied; check the keys and the bucket policy", "unauthorized", 403)
    if listing:  # obstore already retried; a listing that still fails means the store cannot be reached
        return DownloadError(f"{what}: cannot list: {message}", reason="unreachable", status=502)
    return RetryableError(f"{what}: {message}")
