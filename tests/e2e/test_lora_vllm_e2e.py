"""LoRA adapters through the sidecar into a real vLLM (CPU build, tiny model, runtime LoRA updating on): from a local
path (AIBrix API), from S3 (SeaweedFS), the ModelScope emulator and the HuggingFace Hub emulator (Kthena API),
completions through each, unload, and the sidecar loading its adapters again by itself after vLLM is killed and
restarted."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import vllm_cpu
from tests.peers.hub_emulator import HubEmulator
from tests.peers.modelscope_emulator import ModelScopeEmulator
from tests.peers.seaweedfs import S3Peer, running_seaweedfs
from tests.support.sidecar import program_command, running_sidecar, sidecar_process

pytestmark = pytest.mark.e2e


def call(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 300) -> tuple[int, Any]:
    """(status, JSON body, or the text when the answer is not JSON: vLLM's LoRA successes are plain text)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw or b"null")
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def engine_adapters(peer: vllm_cpu.VllmPeer) -> dict[str, str]:
    status, models = call("GET", f"{peer.base_url}/v1/models", timeout=10)
    assert status == 200
    return {card["id"]: card["root"] for card in models["data"] if card.get("parent")}


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Peer]:
    with running_seaweedfs(buckets=("adapters",)) as peer:
        yield peer


def test_adapters_from_every_source_and_reload_after_engine_restart(
    vllm_peer: vllm_cpu.VllmPeer, s3: S3Peer, tmp_path: Path
) -> None:
    lora_a, lora_b = vllm_peer.adapter_dirs["lora-a"], vllm_peer.adapter_dirs["lora-b"]
    for file in lora_b.iterdir():
        s3.put_file("adapters", f"lora-b/{file.name}", file)
    for name in list(engine_adapters(vllm_peer)):  # a clean engine (another test may have loaded lora-a)
        call("POST", f"{vllm_peer.base_url}/v1/unload_lora_adapter", {"lora_name": name})
    s3_config = {
        "endpoint": s3.endpoint,
        "access_key": s3.access_key,
        "secret_key": s3.secret_key,
        "addressing_style": "path",
    }
    args = ["--engine", "vllm", "--engine-url", vllm_peer.base_url, "--adapters-dir", str(tmp_path / "adapters")]
    args += ["--lora-reconcile-interval", "1"]
    with HubEmulator() as hub, ModelScopeEmulator() as ms, running_sidecar(args) as sidecar:
        hub.add_repo("org/lora-hf", {f.name: f.read_bytes() for f in lora_a.iterdir()})
        ms.add_repo("org/lora-ms", {f.name: f.read_bytes() for f in lora_b.iterdir()}, token="ms-lora-token-e2e")

        status, body = call(
            "POST", f"{sidecar}/v1/lora_adapter/load", {"lora_name": "local-a", "lora_path": str(lora_a)}
        )
        assert status == 200, body
        request = {"lora_name": "s3-b", "source": "s3://adapters/lora-b", "config": json.dumps(s3_config)}
        status, body = call("POST", f"{sidecar}/v1/load_lora_adapter", request)
        assert status == 200, body
        assert set(engine_adapters(vllm_peer)) == {"local-a", "s3-b"}
        for name in ("local-a", "s3-b"):
            result = vllm_cpu.complete(vllm_peer.base_url, name, "airuntime loads adapters")
            assert result["model"] == name

        status, body = call(
            "POST", f"{sidecar}/v1/lora_adapter/load", {"lora_name": "local-a", "lora_path": str(lora_a)}
        )
        assert status == 200 and "already loaded" in body["message"]
        status, body = call("POST", f"{sidecar}/v1/unload_lora_adapter", {"lora_name": "s3-b"})
        assert status == 200, body
        status, body = call("POST", f"{sidecar}/v1/unload_lora_adapter", {"lora_name": "s3-b"})
        assert status == 404, body  # Kthena's unload: vLLM's own 404 passes through
        status, body = call("POST", f"{sidecar}/v1/lora_adapter/unload", {"lora_name": "s3-b"})
        assert status == 200 and "was not loaded" in body["message"], body  # AIBrix's unload: already gone is done
        ms_config = {"ms_endpoint": ms.endpoint, "ms_token": "ms-lora-token-e2e"}
        request = {"lora_name": "ms-b", "source": "ms://org/lora-ms", "config": json.dumps(ms_config)}
        status, body = call("POST", f"{sidecar}/v1/load_lora_adapter", request)
        assert status == 200, body
        assert set(engine_adapters(vllm_peer)) == {"local-a", "ms-b"}
        assert vllm_cpu.complete(vllm_peer.base_url, "ms-b", "from ModelScope")["model"] == "ms-b"
        status, body = call("POST", f"{sidecar}/v1/unload_lora_adapter", {"lora_name": "ms-b"})
        assert status == 200, body
        request = {"lora_name": "hf-a", "source": "org/lora-hf", "config": {"hf_endpoint": hub.endpoint}}
        status, body = call("POST", f"{sidecar}/v1/load_lora_adapter", request)
        assert status == 200, body
        assert set(engine_adapters(vllm_peer)) == {"local-a", "hf-a"}
        assert vllm_cpu.complete(vllm_peer.base_url, "hf-a", "hello")["model"] == "hf-a"

        status, listing = call("GET", f"{sidecar}/v1/lora_adapters")
        states = {entry["name"]: (entry["state"], entry["engine_loaded"]) for entry in listing["data"]}
        assert states == {"local-a": ("loaded", True), "hf-a": ("loaded", True)}

        vllm_peer.kill()
        vllm_peer.start()
        wait_for(lambda: set(engine_adapters(vllm_peer)) == {"local-a", "hf-a"}, 120, "the sidecar to reload both")
        assert vllm_cpu.complete(vllm_peer.base_url, "hf-a", "after the restart")["model"] == "hf-a"
        with urllib.request.urlopen(f"{sidecar}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'airuntime:lora_operations_total{operation="reload",result="ok"} 2.0' in metrics
        assert 'airuntime:lora_adapters{state="loaded"} 2.0' in metrics
    for name in list(engine_adapters(vllm_peer)):
        call("POST", f"{vllm_peer.base_url}/v1/unload_lora_adapter", {"lora_name": name})


def test_aibrix_controller_and_sample_forms_against_vllm(
    vllm_peer: vllm_cpu.VllmPeer, s3: S3Peer, tmp_path: Path
) -> None:
    """What AIBrix users run, unchanged: `aibrix_runtime --port P` with INFERENCE_ENGINE*, its controller's calls in
    sidecar mode (GET /v1/models, a delegated load from an artifact URL with credentials, unload with cleanup), its
    docs' `lora_path` as a Hugging Face repo id, and its metric names at /metrics/."""
    lora_a, lora_b = vllm_peer.adapter_dirs["lora-a"], vllm_peer.adapter_dirs["lora-b"]
    for file in lora_b.iterdir():
        s3.put_file("adapters", f"aibrix-b/{file.name}", file)
    for name in list(engine_adapters(vllm_peer)):
        call("POST", f"{vllm_peer.base_url}/v1/unload_lora_adapter", {"lora_name": name})
    adapters = tmp_path / "aibrix-adapters"
    with HubEmulator() as hub:
        hub.add_repo("bharati2324/tiny-code-lora", {f.name: f.read_bytes() for f in lora_a.iterdir()})
        env = {
            "INFERENCE_ENGINE": "vllm",
            "INFERENCE_ENGINE_ENDPOINT": vllm_peer.base_url,
            "HF_ENDPOINT": hub.endpoint,
            "AIRUNTIME_ADAPTERS_DIR": str(adapters),  # AIBrix's default is /tmp/aibrix/adapters: kept inside the test
        }
        with sidecar_process([], env, command=program_command("aibrix_runtime", tmp_path)) as sidecar:
            url = sidecar.url
            status, models = call("GET", f"{url}/v1/models")
            assert status == 200 and [card["id"] for card in models["data"]] == ["tiny"]

            status, body = call(
                "POST",
                f"{url}/v1/lora_adapter/load",
                {"lora_name": "code-lora", "lora_path": "bharati2324/tiny-code-lora"},
            )
            assert status == 200, body
            assert body["local_path"] == str(adapters / "code-lora")
            credentials = {
                "aws_access_key_id": s3.access_key,
                "aws_secret_access_key": s3.secret_key,
                "endpoint": s3.endpoint,
            }
            delegated = {"lora_name": "s3-d", "artifact_url": "s3://adapters/aibrix-b", "credentials": credentials}
            status, body = call("POST", f"{url}/v1/lora_adapter/load", delegated)
            assert status == 200, body
            assert set(engine_adapters(vllm_peer)) == {"code-lora", "s3-d"}
            for name in ("code-lora", "s3-d"):
                assert vllm_cpu.complete(vllm_peer.base_url, name, "aibrix forms")["model"] == name

            status, body = call("POST", f"{url}/v1/lora_adapter/load", {"lora_name": "x", "lora_pth": "/nope"})
            assert status == 422 and "lora_pth" in body["error"]
            status, body = call("POST", f"{url}/v1/lora_adapter/unload", {"lora_name": "s3-d"})
            assert status == 200, body
            assert not (adapters / "s3-d").exists()  # cleanup_local, AIBrix's default
            status, body = call("POST", f"{url}/v1/lora_adapter/unload", {"lora_name": "s3-d"})
            assert status == 200 and "was not loaded" in body["message"]

            with urllib.request.urlopen(f"{url}/metrics/", timeout=10) as response:
                metrics = response.read().decode()
            assert "aibrix:queue_size" in metrics and "vllm:num_requests_waiting" in metrics
            assert s3.secret_key not in sidecar.output()
    for name in list(engine_adapters(vllm_peer)):
        call("POST", f"{vllm_peer.base_url}/v1/unload_lora_adapter", {"lora_name": name})
