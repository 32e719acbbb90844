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

from dataclasses import dataclass
from typing import Any

from runtime.engine.client import EngineClient
from runtime.errors import EngineError

RUNTIME_LORA_ENGINES = ("vllm", "sglang")
STATIC_LORA_NOTES = {
    "tgi": "TGI loads adapters only at launch (LORA_ADAPTERS / --lora-adapters)",
    "lmdeploy": "LMDeploy loads adapters only at launch (--adapters)",
    "trtllm": "TensorRT-LLM takes adapters per request (lora_request / lora_task_id), not through a load API",
    "llamacpp": "llama.cpp only rescales adapters preloaded with --lora at launch (POST /lora-adapters)",
}


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    path: str | None


class EngineLoraApi:
    def __init__(self, client: EngineClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout  # loading a large adapter can take minutes

    @staticmethod
    def check_supported(engine: str) -> None:
        if engine in RUNTIME_LORA_ENGINES:
            return
        note = STATIC_LORA_NOTES.get(engine)
        if note is not None:
            raise EngineError(f"engine {engine} cannot load LoRA adapters at run time: {note}", 501, "unsupported")
        raise EngineError(
            "the engine is not recognised yet (no successful metrics scrape); start with --engine vllm or sglang",
            503,
            "unknown_engine",
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

    async def models(self, auth: str | None) -> tuple[int, Any]:
        """`GET /v1/models` as the engine answers it (status, decoded body); EngineError when it does not answer."""
        return await self._client.call("GET", "/v1/models", None, auth, self._timeout)

    async def loaded(self, engine: str, auth: str | None) -> dict[str, LoadedAdapter]:
        """Adapters the engine reports in `GET /v1/models` (cards with a parent)."""
        self.check_supported(engine)
        status, payload = await self.models(auth)
        if status != 200 or not isinstance(payload, dict):
            raise EngineError(f"engine answered HTTP {status} on /v1/models", 502)
        adapters: dict[str, LoadedAdapter] = {}
        for card in payload.get("data", []):
            if isinstance(card, dict) and card.get("parent") and isinstance(card.get("id"), str):
                root = card.get("root")
                adapters[card["id"]] = LoadedAdapter(card["id"], root if isinstance(root, str) else None)
        return adapters

    async def _post(self, engine: str, path: str, body: dict[str, Any], auth: str | None) -> None:
        status, payload = await self._client.call("POST", path, body, auth, self._timeout)
        if engine == "sglang" and isinstance(payload, dict) and "success" in payload:
            if payload.get("success") and status == 200:
                return
            raise EngineError(f"engine: {payload.get('error_message') or 'failed'}", _client_status(status))
        if status == 200:
            return
        raise EngineError(f"engine: {_message(payload, status)}", _client_status(status))


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
