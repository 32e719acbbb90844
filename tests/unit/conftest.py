"""Fixtures shared by the fast suites: the vLLM LoRA API stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.lora_engines import VllmLoraEngine


@pytest.fixture
async def vllm() -> AsyncIterator[VllmLoraEngine]:
    engine = VllmLoraEngine()
    await engine.start()
    yield engine
    await engine.close()
