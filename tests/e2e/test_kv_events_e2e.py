"""Acceptance: KV-cache events from a real vLLM 0.32 (CPU) through `airuntime serve` into a real Redis, checked the
way Kthena's router reads them.

vLLM (the session's, tests/e2e/conftest.py) runs with prefix caching, 32-token blocks, a 64-block cache and
`--kv-events-config` whose endpoint is a concrete address, so vLLM *connects* and the sidecar binds; its replay
socket is a ROUTER. The test tokenizes prompts with vLLM's own /tokenize, hashes 32-token blocks as the router does
and finds this pod as owner; it forces evictions and a prefix-cache reset, kills and restarts vLLM and Redis, and
after each step compares everything Redis says about this pod with the reference model of the engine's whole
history, fetched independently from the engine's replay socket: nothing may stay wrong.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from tests.peers import vllm_cpu
from tests.peers.redis_server import RedisPeer, running_redis
from tests.support import secrets
from tests.support.exposition import sample_values
from tests.support.kv_events import (
    mapping_keys,
    pod_fields,
    reference_from_frames,
    replay_frames,
    router_block_hashes,
)
from tests.support.sidecar import SidecarProcess, sidecar_process

pytestmark = pytest.mark.e2e

POD = "tiny-0.kthena-test"
MODEL = vllm_cpu.SERVED_MODEL_NAME
QUESTIONS = ("What is cached?", "Who reads it?", "Where does it go?")


@pytest.fixture
def redis() -> Iterator[RedisPeer]:
    with running_redis(password=secrets.REDIS_PASSWORD) as peer:
        yield peer


def eventually(
    check: Callable[[], object], what: str, timeout: float = 30.0, detail: Callable[[], str] | None = None
) -> None:
    """Wait for `check()` to be True; on timeout fail with its last answer and `detail()` (e.g. the sidecar's log)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last is True:
            return
        time.sleep(0.2)
    more = f"\n{detail()}" if detail is not None else ""
    raise AssertionError(f"timed out waiting for {what}: {last}{more}")


def relay_metric(sidecar: SidecarProcess, name: str, **labels: str) -> float:
    status, body = vllm_cpu.http_json("GET", f"{sidecar.url}/metrics")
    assert status == 200
    key = (f"airuntime:kv_events_{name}", tuple(sorted(labels.items())))
    return sample_values(body).get(key, 0.0)


def relay_summary(sidecar: SidecarProcess) -> str:
    """The relay's own counters, for a failure message."""
    _status, body = vllm_cpu.http_json("GET", f"{sidecar.url}/metrics")
    values = sample_values(body)
    return "relay: " + ", ".join(
        f"{name.removeprefix('airuntime:kv_events_')}{dict(labels) or ''}={value:g}"
        for (name, labels), value in sorted(values.items())
        if name.startswith("airuntime:kv_events_") and value and not name.endswith(("_bucket", "_sum"))
    )


def tokens_of(peer: vllm_cpu.VllmPeer, prompt: str) -> list[int]:
    """What the router does: vLLM's /tokenize with the request's model, special tokens as a completion adds them."""
    status, body = vllm_cpu.http_json(
        "POST", f"{peer.base_url}/tokenize", {"model": MODEL, "prompt": prompt, "add_special_tokens": True}
    )
    assert status == 200, body
    tokens = json.loads(body)["tokens"]
    assert isinstance(tokens, list)
    return tokens


def router_score(redis: RedisPeer, model: str, hashes: list[int]) -> int:
    """Kthena's scoring: consecutive blocks from block 0 whose `matrix:kv:block:{model}@{hash}` has this pod."""
    pipe = redis.client().pipeline(transaction=False)
    for digest in hashes:
        pipe.hgetall(f"matrix:kv:block:{model}@{digest}")
    matched = 0
    for owners in pipe.execute():
        if POD.encode() not in owners:
            break
        matched += 1
    return matched


def matches_engine_history(peer: vllm_cpu.VllmPeer, redis: RedisPeer) -> Callable[[], object]:
    """Redis holds exactly the claims (and mapping keys) the engine's own history implies."""
    assert peer.kv_events is not None
    endpoint = peer.kv_events.replay_endpoint

    def check() -> object:
        frames = replay_frames(endpoint)
        if frames and frames[0].seq != 0:
            return f"the engine's buffer no longer starts at 0 ({frames[0].seq})"
        reference = reference_from_frames(MODEL, frames)
        claimed = set(pod_fields(redis.client(), POD))
        if claimed != reference.owned():
            return f"{len(claimed - reference.owned())} extra, {len(reference.owned() - claimed)} missing claims"
        mapped = {h for h, _ in mapping_keys(redis.client(), "vllm:kv:block", POD)}
        if mapped != {str(h) for h in reference.engine_hashes()}:
            return "mapping keys differ"
        return True

    return check


def test_real_vllm_kv_events_reach_redis_as_kthenas_router_reads_them(
    vllm_peer: vllm_cpu.VllmPeer, redis: RedisPeer
) -> None:
    ports = vllm_peer.kv_events
    assert ports is not None, "the session vLLM publishes KV events"
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port), "REDIS_PASSWORD": secrets.REDIS_PASSWORD}
    env |= {"VLLM_ZMQ_ENDPOINT": ports.endpoint, "VLLM_ZMQ_REPLAY_ENDPOINT": ports.replay_endpoint}
    args = ["--engine", "vllm", "--engine-url", vllm_peer.base_url, "--pod", POD, "--model", MODEL, "--kv-events-bind"]
    in_sync = matches_engine_history(vllm_peer, redis)
    with sidecar_process(args, env) as sidecar:
        eventually(lambda: relay_metric(sidecar, "full_syncs_total") >= 1, "the first sync")
        eventually(in_sync, "Redis to hold the history the session's other tests made")
        # vLLM's PUB socket connects to ours: what it publishes before that connection (and the subscription on
        # it) is up is dropped by ZeroMQ, and a gap is only seen at the next batch. Requests until a batch arrives
        # live, so the checks below start on a working stream (60 s at most, else a failure with the sidecar's log).
        before = relay_metric(sidecar, "batches_total", rank="0")
        warm_ups = iter(range(1_000))

        def live() -> bool:
            filler = "The quick brown fox jumps over the lazy dog. " * 10  # > 2 full blocks of 32 tokens: events
            vllm_cpu.complete(vllm_peer.base_url, MODEL, f"Warm-up request {next(warm_ups)}. {filler}")
            return relay_metric(sidecar, "batches_total", rank="0") > before

        eventually(live, "a live batch of KV events from vLLM", timeout=60, detail=lambda: sidecar.output()[-3000:])

        # A shared prefix: every full block of each prompt is owned by this pod, as the router scores it.
        prompts = [vllm_cpu.SHARED_PREFIX + question for question in QUESTIONS]
        for prompt in prompts:
            vllm_cpu.complete(vllm_peer.base_url, MODEL, prompt)
        for prompt in prompts:
            hashes = router_block_hashes(tokens_of(vllm_peer, prompt), vllm_cpu.KV_BLOCK_SIZE)
            assert len(hashes) >= 4
            eventually(
                lambda h=hashes: router_score(redis, MODEL, h) == len(h),
                "the prompt's blocks owned",
                detail=lambda: relay_summary(sidecar) + "\n" + sidecar.output()[-3000:],
            )
        eventually(in_sync, "Redis after the shared-prefix requests")
        assert relay_metric(sidecar, "replays_total", result="complete") >= 1

        # A LoRA request: its blocks are claimed under the adapter's name, the model the router sees for it.
        vllm_cpu.load_adapter(vllm_peer.base_url, "lora-a", vllm_peer.adapter_dirs["lora-a"])
        vllm_cpu.complete(vllm_peer.base_url, "lora-a", prompts[0])
        lora_hashes = router_block_hashes(tokens_of(vllm_peer, prompts[0]), vllm_cpu.KV_BLOCK_SIZE)
        eventually(lambda: router_score(redis, "lora-a", lora_hashes) == len(lora_hashes), "lora-a's blocks")

        # Evictions: more distinct prompts than the 64-block cache holds.
        for index in range(14):
            vllm_cpu.complete(vllm_peer.base_url, MODEL, vllm_cpu.distinct_prompt(index))
        eventually(lambda: relay_metric(sidecar, "blocks_total", outcome="removed") > 0, "BlockRemoved events")
        eventually(in_sync, "Redis after evictions")

        # A prefix-cache reset: AllBlocksCleared (vLLM publishes it with its next scheduler step, so a request
        # follows; the batch carries the clear and that request's new blocks).
        vllm_cpu.reset_prefix_cache(vllm_peer.base_url)
        vllm_cpu.complete(vllm_peer.base_url, MODEL, prompts[1])
        eventually(lambda: relay_metric(sidecar, "events_total", type="all_blocks_cleared") >= 1, "the reset")
        eventually(in_sync, "Redis after the reset and a request")
        stale = router_block_hashes(tokens_of(vllm_peer, vllm_cpu.distinct_prompt(13)), vllm_cpu.KV_BLOCK_SIZE)
        assert router_score(redis, MODEL, stale) == 0, "blocks cached before the reset are still claimed"

        # vLLM killed and started again: its claims are withdrawn, the new engine's appear.
        vllm_peer.kill()
        vllm_peer.start()
        eventually(in_sync, "Redis after vLLM restarted", timeout=60)
        vllm_cpu.complete(vllm_peer.base_url, MODEL, prompts[2])
        hashes = router_block_hashes(tokens_of(vllm_peer, prompts[2]), vllm_cpu.KV_BLOCK_SIZE)
        eventually(lambda: router_score(redis, MODEL, hashes) == len(hashes), "the restarted engine's blocks")
        eventually(in_sync, "Redis after a request to the restarted vLLM")

        # Redis killed; requests while it is down; Redis started again (empty): everything is rewritten.
        redis.kill()
        for prompt in prompts:
            vllm_cpu.complete(vllm_peer.base_url, MODEL, prompt + " again")
        ready_status, _ = vllm_cpu.http_json("GET", f"{sidecar.url}/ready")
        assert ready_status == 200, "/ready must not depend on Redis"
        redis.start()
        eventually(in_sync, "Redis rewritten after its restart", timeout=60)
        assert relay_metric(sidecar, "redis_errors_total", kind="connect") >= 1
        assert relay_metric(sidecar, "input_errors_total", kind="garbage") == 0
        output = sidecar.output()
    assert secrets.REDIS_PASSWORD not in output
