"""Download endpoints: Kthena's `POST /v1/download_model`, AIBrix's `POST /v1/model/download` and
`GET /v1/model/list`, and ours, `GET /v1/downloads` and `GET /v1/downloads/{id}`.

Kthena's `config` is accepted as an object or as a JSON string (Kthena itself demands the string). A synchronous
request answers 200 only after every file is complete and verified; an asynchronous one answers 202 with a job id.
AIBrix's endpoint answers 422 for a malformed field, as AIBrix's FastAPI does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from runtime.download import aibrix
from runtime.download.credentials import config_from_request
from runtime.download.jobs import DownloadJob, JobRegistry
from runtime.download.model_list import find_models
from runtime.download.service import DownloadRequest, prepare
from runtime.download.transfer import FileFilter, Progress, TransferSettings
from runtime.errors import ApiError, SidecarError
from runtime.fields import field_bool, field_int, field_str, field_str_list
from runtime.metrics.self_metrics import SidecarMetrics
from runtime.server.jsonio import json_response, read_json_object
from runtime.server.state import SidecarState

DOWNLOADS: web.AppKey[JobRegistry] = web.AppKey("airuntime_downloads")


def _start(request: web.Request, download: DownloadRequest) -> tuple[DownloadJob, bool]:
    state = SidecarState.of(request)
    state.allowed_roots.check_download(download)
    prepared = prepare(download)
    progress = Progress(on_bytes=state.metrics.download_bytes.labels(prepared.spec.scheme).inc)
    return request.app[DOWNLOADS].start(prepared, progress)


def _resolve_dir(request: web.Request, raw: str) -> Path:
    path = Path(raw)
    if not path.is_absolute():
        path = Path(SidecarState.of(request).config.models_dir) / path
    return path


async def kthena_download(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    download = DownloadRequest(
        source=field_str(body, "source"),
        local_dir=_resolve_dir(request, field_str(body, "output_dir")),
        revision=field_str(body, "revision", required=False),
        config=config_from_request(body.get("config")),
        file_filter=FileFilter(
            allow_suffixes=field_str_list(body, "allow_file_suffix"),
            allow_patterns=field_str_list(body, "allow_patterns"),
            ignore_patterns=field_str_list(body, "ignore_patterns"),
        ),
        transfer=TransferSettings(
            max_workers=field_int(body, "max_workers", 8, 1, 256), force=field_bool(body, "force", False)
        ),
    )
    async_download = field_bool(body, "async_download", False)
    job, joined = _start(request, download)
    shown = job.prepared.describe()  # never the raw source: it may carry a password or a signed query
    summary = {"source": shown, "output_dir": str(download.local_dir), "job_id": job.id, "joined": joined}
    if async_download:
        message = "joined the download already running" if joined else "Model download started in background"
        return json_response({"status": "started", "message": message, **summary, "job": job.snapshot()}, 202)
    await request.app[DOWNLOADS].wait(job)
    if job.state != "completed":
        return json_response(
            {"status": "failed", "error": job.error, "reason": job.reason, **summary, "job": job.snapshot()},
            job.status if job.status >= 400 else 502,
        )
    return json_response(
        {"status": "completed", "message": "Model download completed successfully", **summary, "job": job.snapshot()}
    )


async def aibrix_download(request: web.Request) -> web.Response:
    body = await read_json_object(request)  # a body that is not one JSON object is a 400 everywhere
    try:
        return _aibrix_download(request, body)
    except SidecarError as exc:
        raise exc.with_status(422) if exc.status == 400 else exc from None


def _aibrix_download(request: web.Request, body: dict[str, Any]) -> web.Response:
    state = SidecarState.of(request)
    model_uri = field_str(body, "model_uri")
    model_name = aibrix.model_name(model_uri, field_str(body, "model_name", required=False))
    if ".." in Path(model_name).parts or Path(model_name).is_absolute():
        raise ApiError(f"model_name {model_name!r} must be a relative name")
    local_dir = field_str(body, "local_dir", required=False) or state.config.models_dir
    options = aibrix.from_extra_config(body.get("download_extra_config"), state.config.downloader)
    root = _resolve_dir(request, local_dir) / model_name
    download = DownloadRequest(
        source=model_uri,
        local_dir=root,
        config=options.config,
        file_filter=options.file_filter,
        transfer=options.transfer,
    )
    job, _ = _start(request, download)
    status = "downloading" if job.state == "running" else "downloaded" if job.state == "completed" else "no_operation"
    return json_response(
        {
            "model_name": model_name,
            "model_root_path": str(root),
            "source": job.prepared.spec.scheme,
            "model_status": status,
            "job_id": job.id,
        }
    )


async def aibrix_list(request: web.Request) -> web.Response:
    """AIBrix sends `{"local_dir": ...}` as a JSON body on this GET; `?local_dir=` works too."""
    local_dir = request.query.get("local_dir", "")
    if request.body_exists:
        body = await read_json_object(request)
        unknown = sorted(set(body) - {"local_dir"})
        if unknown:
            raise ApiError(f"unknown field(s) {', '.join(unknown)}; allowed: local_dir", 422)
        local_dir = field_str(body, "local_dir", status=422)
    if "\x00" in local_dir:
        raise ApiError("query parameter 'local_dir' holds a NUL character")
    root = _resolve_dir(request, local_dir)  # relative to --models-dir, as for downloads
    SidecarState.of(request).allowed_roots.check(root, "local_dir")
    running = {job.output_dir: job for job in request.app[DOWNLOADS].all() if job.state == "running"}
    cards = []
    for model_root, source in await asyncio.to_thread(find_models, root):
        status = "downloading" if str(model_root) in running else "downloaded"
        cards.append(_card(root, model_root, source, status))
    listed = {card["model_root_path"] for card in cards}
    for output_dir, job in running.items():
        if output_dir not in listed and Path(output_dir).is_relative_to(root):
            cards.append(_card(root, Path(output_dir), job.prepared.describe(), "downloading"))
    return json_response({"object": "list", "data": cards})


def _card(root: Path, model_root: Path, source: str, status: str) -> dict[str, str]:
    return {
        "model_name": model_root.relative_to(root).as_posix(),
        "model_root_path": str(model_root),
        "source": source,
        "model_status": status,
    }


async def list_downloads(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": [job.snapshot() for job in request.app[DOWNLOADS].all()]})


async def get_download(request: web.Request) -> web.Response:
    job = request.app[DOWNLOADS].get(request.match_info["job_id"])
    if job is None:
        raise ApiError(f"no download job {request.match_info['job_id']!r}", 404, "not_found")
    return json_response(job.snapshot())


def count_finished(metrics: SidecarMetrics) -> Callable[[DownloadJob], None]:
    """What a finished job adds to the sidecar's metrics: files downloaded, or a failure by reason."""

    def finished(job: DownloadJob) -> None:
        scheme = job.prepared.spec.scheme
        if job.state == "completed" and job.result is not None:
            metrics.download_files.labels(scheme).inc(job.result.downloaded)
        elif job.reason:
            metrics.download_failures.labels(scheme, job.reason).inc()

    return finished
