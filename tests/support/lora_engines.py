"""Engine stand-ins for the LoRA API, in-process aiohttp servers for the fast suite.

- `VllmLoraEngine` answers as a real vLLM 0.32 answered on this project's CPU peer (recorded in the e2e suite):
  plain-text success, JSON errors `{"error": {"message", "type", "param", "code"}}` with 400 for an adapter loaded
  twice without `load_inplace`, 404 for a missing path or an unknown adapter; adapters in `GET /v1/models` with
  `parent`. The real engine is tested in tests/e2e/test_lora_vllm_e2e.py.
- `SglangLoraEngine` implements SGLang 0.5.23's `POST /load_lora_adapter` / `POST /unload_lora_adapter` as its
  source defines them (srt/entrypoints/http_server.py, srt/managers/io_struct.py): 200
  `{"success": true, "error_message": null, "loaded_adapters": {...}}`, 400 with `success: false`. No SGLang
  engine runs on these CPUs, so this stand-in is the only SGLang peer.
Both record requests (path, body, Authorization), can delay loads, and can "restart" (forget every adapter).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

BASE_MODEL = "tiny"


class _LoraEngine:
    def __init__(self) -> None:
        self.adapters: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, Any], str | None]] = []
        self.load_delay = 0.0
        self.server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def start(self) -> _LoraEngine:
        app = web.Application()
        self.routes(app)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def restart(self) -> None:
        self.adapters.clear()

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def loads(self, name: str | None = None) -> int:
        return sum(
            1
            for path, body, _ in self.requests
            if "load_lora" in path and "unload" not in path and (name is None or body.get("lora_name") == name)
        )

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = orjson.loads(await request.read())
        self.requests.append((request.path, body, request.headers.get("Authorization")))
        return body  # type: ignore[no-any-return]

    async def _models(self, request: web.Request) -> web.Response:
        cards = [{"id": BASE_MODEL, "object": "model", "root": "/models/tiny", "parent": None}]
        cards += [
            {"id": name, "object": "model", "root": path, "parent": BASE_MODEL} for name, path in self.adapters.items()
        ]
        return web.json_response({"object": "list", "data": cards})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text="# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 0\n")


class VllmLoraEngine(_LoraEngine):
    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/load_lora_adapter", self._load)
        app.router.add_post("/v1/unload_lora_adapter", self._unload)

    @staticmethod
    def _error(message: str, kind: str, code: int) -> web.Response:
        payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return web.json_response(payload, status=code)

    async def _load(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return self._error("lora_name and lora_path are required", "InvalidUserInput", 400)
        if name in self.adapters and not body.get("load_inplace"):
            return self._error(
                f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, set "
                "'load_inplace' to True.",
                "InvalidUserInput",
                400,
            )
        await asyncio.sleep(self.load_delay)
        if not (Path(path) / "adapter_config.json").is_file():
            return self._error(f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError", 404)
        self.adapters[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        name = body.get("lora_name")
        if name not in self.adapters:
            return self._error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
        del self.adapters[name]
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


class SglangLoraEngine(_LoraEngine):
    def routes(self, app: web.Application) -> None:
        app.router.add_post("/load_lora_adapter", self._load)
        app.router.add_post("/unload_lora_adapter", self._unload)

    def _answer(self, success: bool, error: str | None) -> web.Response:
        payload = {"success": success, "error_message": error, "loaded_adapters": dict(self.adapters)}
        return web.json_response(payload, status=200 if success else 400)

    async def _load(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        name, path = body.get("lora_name"), body.get("lora_path")
        await asyncio.sleep(self.load_delay)
        if name in self.adapters:
            return self._answer(False, f"Failed to load LoRA adapter {name}: already loaded")
        if not (Path(str(path)) / "adapter_config.json").is_file():
            return self._answer(False, f"Failed to load LoRA adapter {name}: cannot find {path}")
        self.adapters[str(name)] = str(path)
        return self._answer(True, None)

    async def _unload(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        name = body.get("lora_name")
        if name not in self.adapters:
            return self._answer(False, f"LoRA adapter {name} is not loaded")
        del self.adapters[str(name)]
        return self._answer(True, None)


def make_adapter(directory: Path, seed: int = 0) -> Path:
    """A small PEFT-shaped adapter folder (config + weights file)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}'
    )
    (directory / "adapter_model.safetensors").write_bytes(bytes([seed % 256]) * 4096)
    return directory
