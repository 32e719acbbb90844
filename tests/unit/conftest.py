"""Fixtures shared by the fast suites: the fake metrics engine and the vLLM LoRA API stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.fake_engine import MINIMAL_VLLM_PAYLOAD, FakeEngine
from tests.support.lora_engines import VllmLoraEngine


@pytest.fixture
async def vllm() -> AsyncIterator[VllmLoraEngine]:
    engine = VllmLoraEngine()
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture
def engine() -> Iterator[FakeEngine]:
    with FakeEngine(MINIMAL_VLLM_PAYLOAD) as fake:
        yield fake
