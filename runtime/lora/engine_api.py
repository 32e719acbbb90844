"""Each engine's own LoRA API, behind one interface: load, unload, and list what the engine has loaded.

- vLLM: `POST /v1/load_lora_adapter {lora_name, lora_path, load_inplace}` and `POST /v1/unload_lora_adapter
  {lora_name}` (plain-text success, JSON errors: 400 already loaded / invalid, 404 not found); needs
  `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` (else the routes answer 404). Loaded adapters are the
  `GET /v1/models` cards with a `parent`.
- SGLang: `POST /load_lora_adapter` and `POST /unload_lora_adapter` (no `/v1`), answering
  `{success, error_message, loaded_adapters}`; also listed by `GET /v1/models` with `parent`.
- TGI, LMDeploy, TensorRT-LLM and llama.cpp fix their adapters at launch (llama.cpp only rescales preloaded
  ones): asking them is a clear "not supported" (501), not a confusing engine 404.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from runtime.bounded_read import BodyTooLarge, read_bounded
from runtime.config import public_url

RUNTIME_LORA_ENGINES = ("vllm", "sglang")
STATIC_LORA_NOTES = {
    "tgi": "TGI loads adapters only at launch (LORA_ADAPTERS / --lora-adapters)",
    "lmdeploy": "LMDeploy loads adapters only at launch (--adapters)",
    "trtllm": "TensorRT-LLM takes adapters per request (lora_request / lora_task_id), not through a load API",
    "llamacpp": "llama.cpp only rescales adapters preloaded with --lora at launch (POST /lora-adapters)",
}


class EngineLoraError(Exception):
    """The engine refused or could not be reached; `status` is what our API answers, `message` says why."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    path: str | None


class EngineLoraApi:
    def __init__(self, session: Callable[[], aiohttp.ClientSession], engine_url: str, timeout: float) -> None:
        self._session = session  # the sidecar's client session, opened when the server starts
        self._engine_url = engine_url
        self._timeout = timeout

    @staticmethod
    def check_supported(engine: str) -> None:
        if engine in RUNTIME_LORA_ENGINES:
            return
        note = STATIC_LORA_NOTES.get(engine)
        if note is not None:
            raise EngineLoraError(f"engine {engine} cannot load LoRA adapters at run time: {note}", 501)
        raise EngineLoraError(
            "the engine is not recognised yet (no successful metrics scrape); start with --engine vllm or sglang",
            503,
        )

    async def load(self, engine: str, name: str, path: str, inplace: bool, auth: str | None) -> None:
        self.check_supported(engine)
        if engine == "vllm":
            body: dict[str, Any] = {"lora_name": name, "lora_path": path}
            if inplace:
                body["load_inplace"] = True
            await self._post(engine, "/v1/load_lora_adapter", body, auth)
        else:
            await self._post(engine, "/load_lora_adapter", {"lora_name": name, "lora_path": path}, auth)

    async def unload(self, engine: str, name: str, auth: str | None) -> None:
        self.check_supported(engine)
        path = "/v1/unload_lora_adapter" if engine == "vllm" else "/unload_lora_adapter"
        await self._post(engine, path, {"lora_name": name}, auth)

    async def loaded(self, engine: str, auth: str | None) -> dict[str, LoadedAdapter]:
        """Adapters the engine reports in `GET /v1/models` (cards with a parent)."""
        self.check_supported(engine)
        status, payload = await self._request("GET", "/v1/models", None, auth)
        if status != 200 or not isinstance(payload, dict):
            raise EngineLoraError(f"engine answered HTTP {status} on /v1/models", 502)
        adapters: dict[str, LoadedAdapter] = {}
        for card in payload.get("data", []):
            if isinstance(card, dict) and card.get("parent") and isinstance(card.get("id"), str):
                root = card.get("root")
                adapters[card["id"]] = LoadedAdapter(card["id"], root if isinstance(root, str) else None)
        return adapters

    async def _post(self, engine: str, path: str, body: dict[str, Any], auth: str | None) -> None:
        status, payload = await self._request("POST", path, body, auth)
        if engine == "sglang" and isinstance(payload, dict) and "success" in payload:
            if payload.get("success") and status == 200:
                return
            raise EngineLoraError(f"engine: {payload.get('error_message') or 'failed'}", _client_status(status))
        if status == 200:
            return
        raise EngineLoraError(f"engine: {_message(payload, status)}", _client_status(status))

    async def _request(self, method: str, path: str, body: dict[str, Any] | None, auth: str | None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = auth
        url = self._engine_url + path
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session().request(
                    method, url, data=orjson.dumps(body) if body is not None else None, headers=headers
                ) as response:
                    raw = await read_bounded(response)
                    status = response.status
        except TimeoutError:
            raise EngineLoraError(f"engine did not answer {path} within {self._timeout:g}s", 504) from None
        except (aiohttp.ClientError, OSError) as exc:
            where = public_url(self._engine_url)
            raise EngineLoraError(f"engine unreachable at {where}: {type(exc).__name__}", 502) from None
        except BodyTooLarge as exc:
            raise EngineLoraError(f"engine answer to {path} rejected: {exc}", 502) from None
        try:
            payload: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            payload = raw.decode("utf-8", "replace")[:500]
        return status, payload


def _message(payload: Any, status: int) -> str:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for key in ("message", "detail", "error_message", "error"):
            if isinstance(payload.get(key), str):
                return str(payload[key])
    if isinstance(payload, str) and payload.strip():
        return payload.strip()
    return f"HTTP {status}"


def _client_status(status: int) -> int:
    """The engine's status, passed through faithfully; 5xx stay 5xx (502 when the engine gave none)."""
    return status if 400 <= status < 600 else 502
