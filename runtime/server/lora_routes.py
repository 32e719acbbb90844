"""LoRA endpoints: Kthena's `POST /v1/load_lora_adapter` / `POST /v1/unload_lora_adapter`, AIBrix's
`POST /v1/lora_adapter/load` / `POST /v1/lora_adapter/unload`, and ours, `GET /v1/lora_adapters`.

Engine answers pass through faithfully (an engine 404 is our 404, never a 200); the caller's Authorization header
(or --engine-api-key) is forwarded to the engine. AIBrix's `lora_path` may also be a Hugging Face repo id or any
source the downloader takes: the adapter is then downloaded into the adapters directory and loaded from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from runtime.download.credentials import config_from_request
from runtime.download.service import DownloadRequest
from runtime.errors import ApiError
from runtime.fields import field_bool, field_int, field_str
from runtime.lora import aibrix
from runtime.lora.manager import AdapterRecord, LoraManager
from runtime.server.jsonio import json_response, read_json_object
from runtime.server.state import SidecarState

LORA: web.AppKey[LoraManager] = web.AppKey("airuntime_lora")


def _auth(request: web.Request) -> str | None:
    """The caller's Authorization, forwarded to the engine (Kthena's behaviour) unless it carries our own API
    token: that one never leaves the sidecar, and --engine-api-key authenticates to the engine instead."""
    if SidecarState.of(request).config.api_token:
        return None
    return request.headers.get("Authorization")


def _check_paths(request: web.Request, path: Path, download: DownloadRequest | None) -> None:
    roots = SidecarState.of(request).allowed_roots
    roots.check(path, "lora_path")
    if download is not None:
        roots.check_download(download, "output_dir")


def _answer(record: AdapterRecord, changed: bool, status: int = 200) -> web.Response:
    message = "adapter loaded" if changed else "adapter already loaded from the same path; nothing to do"
    body = {"status": "success", "message": message, "local_path": record.path, "adapter": record.public(True)}
    return json_response(body, status)


async def kthena_load(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    manager = request.app[LORA]
    name = field_str(body, "lora_name")
    path, download = manager.prepare_load(
        name,
        source=field_str(body, "source", required=False),
        lora_path=field_str(body, "lora_path", required=False),
        output_dir=field_str(body, "output_dir", required=False),
        config=config_from_request(body.get("config")),
        max_workers=field_int(body, "max_workers", 8, 1, 256),
    )
    _check_paths(request, path, download)
    inplace = field_bool(body, "load_inplace", False)
    if field_bool(body, "async_download", False):
        manager.load_in_background(name, path, download, inplace=inplace, auth=_auth(request))
        message = "LoRA adapter download and load started in background"
        return json_response({"status": "started", "message": message, "lora_name": name, "lora_path": str(path)}, 202)
    record, changed = await manager.load(name, path, download, inplace=inplace, auth=_auth(request))
    return _answer(record, changed)


async def unload(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    name = field_str(body, "lora_name")
    await request.app[LORA].unload(name, auth=_auth(request))
    return json_response({"status": "success", "message": f"adapter {name!r} unloaded", "lora_name": name})


async def aibrix_load(request: web.Request) -> web.Response:
    """AIBrix's load, direct (`lora_path`) or delegated (`artifact_url`); malformed fields are 422, as AIBrix's."""
    body = await read_json_object(request)
    aibrix.check_keys(body, aibrix.LOAD_KEYS)
    name = field_str(body, "lora_name", status=422)
    manager = request.app[LORA]
    artifact = field_str(body, "artifact_url", required=False, status=422)
    if artifact is not None and body.get("lora_path") is not None:
        raise ApiError("give lora_path (an adapter to load) or artifact_url (one to download), not both", 422)
    if artifact is not None:  # AIBrix's controller in sidecar mode: download the artifact, then load it
        local_dir = field_str(body, "local_dir", required=False)
        path, download = manager.prepare_load(
            name,
            source=aibrix.artifact_source(artifact),
            output_dir=str(Path(local_dir) / name) if local_dir else None,  # local_dir: type checked above
            config=aibrix.artifact_config(body),
        )
    else:
        path, download = manager.prepare_load(name, lora_path_or_source=field_str(body, "lora_path", status=422))
    _check_paths(request, path, download)
    record, changed = await manager.load(
        name, path, download, inplace=field_bool(body, "load_inplace", False), auth=_auth(request)
    )
    return _answer(record, changed)


async def aibrix_unload(request: web.Request) -> web.Response:
    """AIBrix's unload: `{"lora_name"}` or `{"lora_name", "cleanup_local"}` succeeds when the engine no longer has
    the adapter (as AIBrix's does), and with cleanup_local (its default) removes the downloaded files from the
    adapters folder; `{"lora_name", "lora_int_id"}` passes the engine's answer through."""
    body = await read_json_object(request)
    aibrix.check_keys(body, aibrix.UNLOAD_KEYS)
    name = field_str(body, "lora_name", status=422)
    manager = request.app[LORA]
    if body.get("lora_int_id") is not None:
        await manager.unload(name, auth=_auth(request))
        return json_response({"status": "success", "message": f"adapter {name!r} unloaded", "lora_name": name})
    if field_bool(body, "cleanup_local", True, 422):
        message = await manager.unload_and_remove(name, auth=_auth(request))
    else:
        message = await manager.unload_idempotent(name, auth=_auth(request))
    return json_response({"status": "success", "message": message, "lora_name": name})


async def engine_models(request: web.Request) -> web.Response:
    """`GET /v1/models` of the engine, through the sidecar (AIBrix's controller asks the sidecar for it)."""
    status, payload = await request.app[LORA].engine_models(_auth(request))
    if not isinstance(payload, dict | list):  # not a JSON document: the engine's answer cannot be passed on
        status = status if status >= 400 else 502
        payload = {"error": f"engine answered /v1/models without a JSON document (HTTP {status})", "status": status}
    return json_response(payload, status)


async def list_adapters(request: web.Request) -> web.Response:
    entries, engine_error = await request.app[LORA].listing(_auth(request))
    payload: dict[str, Any] = {"object": "list", "data": entries}
    if engine_error:
        payload["engine_error"] = engine_error
    return json_response(payload)
