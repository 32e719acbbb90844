"""One download, end to end: parse the source, resolve its settings, open the backend, run the transfer engine,
and make every failure a DownloadError whose message holds no secret. The CLI and the HTTP API both call this."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.download.backends.base import Backend
from runtime.download.credentials import SourceSettings, resolve_settings, validate_config
from runtime.download.transfer import DownloadResult, FileFilter, Progress, TransferSettings, run_download
from runtime.download.uri import OBJECT_STORE_SCHEMES, SourceSpec, parse_source
from runtime.errors import DownloadError


@dataclass(frozen=True)
class DownloadRequest:
    source: str
    local_dir: Path
    revision: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    file_filter: FileFilter = field(default_factory=FileFilter)
    transfer: TransferSettings = field(default_factory=TransferSettings)


@dataclass(frozen=True)
class PreparedDownload:
    spec: SourceSpec
    settings: SourceSettings
    request: DownloadRequest

    def describe(self) -> str:
        return self.spec.describe()


def prepare(request: DownloadRequest, env: Mapping[str, str] | None = None) -> PreparedDownload:
    """Validate a request without touching the network: DownloadError (400) for anything malformed."""
    spec = parse_source(request.source, request.revision)
    config = validate_config(request.config)
    settings = resolve_settings(spec.scheme, config, os.environ if env is None else env)
    if request.transfer.max_workers < 1 or request.transfer.max_workers > 256:
        raise DownloadError("max_workers must be between 1 and 256", reason="bad_request", status=400)
    if not str(request.local_dir).strip():
        raise DownloadError("the target directory is empty", reason="bad_request", status=400)
    return PreparedDownload(spec=spec, settings=settings, request=request)


def open_backend(prepared: PreparedDownload) -> Backend:
    spec, settings = prepared.spec, prepared.settings
    if spec.scheme == "hf":
        from runtime.download.backends.huggingface import HuggingFaceBackend

        return HuggingFaceBackend(spec, settings)
    if spec.scheme == "ms":
        from runtime.download.backends.modelscope import ModelScopeBackend

        return ModelScopeBackend(spec, settings)
    if spec.scheme in OBJECT_STORE_SCHEMES:
        from runtime.download.backends.objects import ObjectStoreBackend

        return ObjectStoreBackend(spec, settings)
    if spec.scheme == "https":
        from runtime.download.backends.https import HttpsBackend

        return HttpsBackend(spec.location)
    from runtime.download.backends.local import LocalBackend

    return LocalBackend(spec.location)


async def execute(prepared: PreparedDownload, progress: Progress | None = None) -> DownloadResult:
    """Run the download; any failure comes out as a DownloadError with secrets masked."""
    secrets = prepared.settings.secrets()
    backend: Backend | None = None
    try:
        backend = open_backend(prepared)
        return await run_download(
            backend,
            prepared.request.local_dir,
            prepared.request.transfer,
            prepared.request.file_filter,
            progress,
        )
    except DownloadError as exc:
        raise DownloadError(redact(str(exc), secrets), reason=exc.reason, status=exc.status) from None
    except OSError as exc:
        raise DownloadError(
            redact(f"{exc.strerror or exc}: {exc.filename or ''}", secrets), reason="disk", status=507
        ) from None
    except Exception as exc:
        raise DownloadError(redact(f"{type(exc).__name__}: {exc}", secrets), reason="other", status=500) from None
    finally:
        if backend is not None:
            await backend.close()


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "****")
    return text
