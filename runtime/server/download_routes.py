"""Download endpoints: Kthena's `POST /v1/download_model`, AIBrix's `POST /v1/model/download` and
`GET /v1/model/list`, and ours, `GET /v1/downloads` and `GET /v1/downloads/{id}`.

Kthena's `config` is accepted as an object or as a JSON string (Kthena itself demands the string). A synchronous
request answers 200 only after every file is complete and verified; an asynchronous one answers 202 with a job id.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from runtime.download.backends.base import DownloadError
from runtime.download.credentials import validate_config
from runtime.download.jobs import DownloadJob, JobRegistry
from runtime.download.manifest import MANIFEST_NAME
from runtime.download.service import DownloadRequest, prepare
from runtime.download.transfer import FileFilter, Progress, TransferSettings
from runtime.download.uri import SourceError, parse_source
from runtime.server.jsonio import (
    BadRequest,
    field_bool,
    field_int,
    field_str,
    field_str_list,
    json_response,
    read_json_object,
)
from runtime.server.state import SidecarState

DOWNLOADS: web.AppKey[JobRegistry] = web.AppKey("airuntime_downloads")


def parse_config(raw: Any, status: int = 400) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"'config' is a string but not JSON: {exc}", status) from None
    if not isinstance(raw, dict):
        raise BadRequest("'config' must be an object or a JSON string of one", status)
    try:
        return validate_config(raw)  # now, even where only some requests use it (a LoRA load from a path)
    except DownloadError as exc:
        raise BadRequest(str(exc), status) from None


def _progress_for(state: SidecarState, scheme: str) -> Progress:
    counter = state.metrics.download_bytes.labels(scheme)
    return Progress(on_bytes=counter.inc)


def _start(request: web.Request, download: DownloadRequest) -> tuple[DownloadJob, bool]:
    state = SidecarState.of(request)
    state.allowed_roots.check_download(download)
    try:
        prepared = prepare(download)
    except DownloadError as exc:
        raise BadRequest(str(exc), exc.status) from None
    try:
        return request.app[DOWNLOADS].start(prepared, _progress_for(state, prepared.spec.scheme))
    except DownloadError as exc:
        raise BadRequest(str(exc), exc.status) from None


def _resolve_dir(request: web.Request, raw: str) -> Path:
    path = Path(raw)
    if not path.is_absolute():
        path = Path(SidecarState.of(request).config.models_dir) / path
    return path


async def kthena_download(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    source = field_str(body, "source")
    output_dir = field_str(body, "output_dir")
    assert source is not None and output_dir is not None
    download = DownloadRequest(
        source=source,
        local_dir=_resolve_dir(request, output_dir),
        revision=field_str(body, "revision", required=False),
        config=parse_config(body.get("config")),
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


AIBRIX_CONFIG_KEYS = {
    "ak": "access_key",
    "sk": "secret_key",
    "endpoint": "endpoint",
    "region": "region",
    "hf_endpoint": "hf_endpoint",
    "hf_token": "hf_token",
    "hf_revision": "hf_revision",
}
AIBRIX_TUNING_KEYS = ("num_threads", "max_io_queue", "io_chunksize", "part_threshold", "part_chunksize")


def aibrix_extra_config(raw: Any) -> tuple[dict[str, Any], FileFilter, TransferSettings]:
    """AIBrix's download_extra_config as our config, file filter and transfer settings (AIBrix's env fallbacks too)."""
    extra = {} if raw is None else raw  # false, 0, [] and "" are not objects
    if not isinstance(extra, dict):
        raise BadRequest("'download_extra_config' must be an object", 422)
    unknown = set(extra) - set(AIBRIX_CONFIG_KEYS) - set(AIBRIX_TUNING_KEYS) - {"allow_file_suffix", "force_download"}
    if unknown:
        raise BadRequest(f"unknown download_extra_config key(s): {', '.join(sorted(unknown))}", 422)
    config = {ours: extra[theirs] for theirs, ours in AIBRIX_CONFIG_KEYS.items() if extra.get(theirs) is not None}
    suffixes = field_str_list(extra, "allow_file_suffix", 422) or env_suffixes()
    workers = field_int(extra, "num_threads", env_int("DOWNLOADER_NUM_THREADS", 16), 1, 256, 422)
    part_size = field_int(extra, "part_chunksize", 32 * 1024 * 1024, 1024 * 1024, 1 << 34, 422)
    force = field_bool(extra, "force_download", env_flag("DOWNLOADER_FORCE_DOWNLOAD"), 422)
    return (
        config,
        FileFilter(allow_suffixes=suffixes),
        TransferSettings(max_workers=workers, part_size=part_size, force=force),
    )


def env_suffixes() -> tuple[str, ...]:
    raw = os.environ.get("DOWNLOADER_ALLOW_FILE_SUFFIX", "")
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip().isdigit() and int(raw) > 0 else default


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def aibrix_model_name(model_uri: str, model_name: str | None) -> str:
    if model_name:
        return model_name
    spec = parse_source(model_uri)
    if spec.scheme in ("hf", "ms"):
        return spec.location
    tail = (spec.prefix or spec.location).rstrip("/").rsplit("/", 1)[-1]
    return tail.removesuffix(".git") or spec.location


async def aibrix_download(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    model_uri = field_str(body, "model_uri", status=422)
    assert model_uri is not None
    try:
        model_name = aibrix_model_name(model_uri, field_str(body, "model_name", required=False, status=422))
    except SourceError as exc:
        raise BadRequest(str(exc), 422) from None
    if ".." in Path(model_name).parts or Path(model_name).is_absolute():
        raise BadRequest(f"model_name {model_name!r} must be a relative name", 422)
    local_dir = field_str(body, "local_dir", required=False, status=422) or SidecarState.of(request).config.models_dir
    config, file_filter, transfer = aibrix_extra_config(body.get("download_extra_config"))
    root = _resolve_dir(request, local_dir) / model_name
    download = DownloadRequest(
        source=model_uri, local_dir=root, config=config, file_filter=file_filter, transfer=transfer
    )
    try:
        job, _ = _start(request, download)
    except BadRequest as exc:
        raise BadRequest(str(exc), 422 if exc.status == 400 else exc.status) from None
    return json_response(
        {
            "model_name": model_name,
            "model_root_path": str(root),
            "source": job.prepared.spec.scheme,
            "model_status": "downloading" if job.state == "running" else _aibrix_status(job),
            "job_id": job.id,
        }
    )


def _aibrix_status(job: DownloadJob) -> str:
    return "downloaded" if job.state == "completed" else "no_operation"


async def aibrix_list(request: web.Request) -> web.Response:
    local_dir = request.query.get("local_dir", "")
    if "\x00" in local_dir:
        raise BadRequest("query parameter 'local_dir' holds a NUL character")
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


LIST_MAX_DEPTH = 4  # ROOT/org/name/.airuntime/manifest.json is depth 3
LIST_MAX_DIRS = 10_000  # a listing of `/` must not walk the whole filesystem


def find_models(root: Path) -> list[tuple[Path, str]]:
    """(model root, source) for every downloaded model under ROOT: a bounded walk that never follows symlinks,
    run off the event loop."""
    found: list[tuple[Path, str]] = []
    pending = [(root, 0)]
    visited = 0
    while pending and visited < LIST_MAX_DIRS:
        directory, depth = pending.pop()
        visited += 1
        manifest = directory / ".airuntime" / MANIFEST_NAME
        if manifest.is_file():
            try:
                source = str(orjson.loads(manifest.read_bytes()).get("source", ""))
            except (OSError, orjson.JSONDecodeError, AttributeError):
                source = ""
            found.append((directory, source))
            continue
        if depth >= LIST_MAX_DEPTH:
            continue
        try:
            with os.scandir(directory) as entries:
                children = [
                    Path(entry.path)
                    for entry in entries
                    if entry.is_dir(follow_symlinks=False) and entry.name != ".airuntime"
                ]
        except OSError:
            continue
        pending.extend((child, depth + 1) for child in children)
    return sorted(found)


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
        raise BadRequest(f"no download job {request.match_info['job_id']!r}", 404)
    return json_response(job.snapshot())


def add_routes(app: web.Application, state: SidecarState) -> None:
    def finished(job: DownloadJob) -> None:
        scheme = job.prepared.spec.scheme
        if job.state == "completed" and job.result is not None:
            state.metrics.download_files.labels(scheme).inc(job.result.downloaded)
        elif job.reason:
            state.metrics.download_failures.labels(scheme, job.reason).inc()

    registry = JobRegistry(on_finished=finished)
    app[DOWNLOADS] = registry
    state.metrics.downloads_active.set_function(registry.running)

    async def stop_jobs(app: web.Application) -> None:
        await registry.cancel_all()

    app.on_shutdown.append(stop_jobs)
    app.router.add_post("/v1/download_model", kthena_download)
    app.router.add_post("/v1/model/download", aibrix_download)
    app.router.add_get("/v1/model/list", aibrix_list)
    app.router.add_get("/v1/downloads", list_downloads)
    app.router.add_get("/v1/downloads/{job_id}", get_download)
