"""The relay's settings: Kthena's variables unchanged, our flags over them, errors that name the setting, and no
relay (nor its imports) without a Redis."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runtime.config import ConfigError
from runtime.kv_events.settings import KvEventsFlags, build_settings
from tests.support import secrets
from tests.support.sidecar import REPO_ROOT
from tests.unit.test_cli import effective_config, run_cli

KTHENA = {"REDIS_HOST": "redis-server.kthena-system", "REDIS_PASSWORD": secrets.REDIS_PASSWORD}


def settings(flags: KvEventsFlags | None = None, engine: str = "vllm", pod: str = "p.ns", model: str = "m", **env: str):
    return build_settings(flags or KvEventsFlags(), engine=engine, pod=pod, model=model, environ=env)


def test_off_without_a_redis() -> None:
    assert settings() == (None, [])
    assert settings(KvEventsFlags(enabled=False), REDIS_HOST="r") == (None, [])


def test_kthena_variables_and_defaults() -> None:
    relay, notes = settings(**KTHENA)
    assert relay is not None and not notes
    assert (relay.redis.host, relay.redis.port, relay.redis.db) == ("redis-server.kthena-system", 6379, 0)
    assert relay.redis.password == secrets.REDIS_PASSWORD and not relay.redis.tls
    assert (relay.endpoint, relay.topic, relay.bind, relay.replay_endpoint) == (
        "tcp://localhost:5557",
        "kv-events",
        False,
        None,
    )
    assert relay.mapping_prefix == "vllm:kv:block"
    assert secrets.REDIS_PASSWORD not in str(relay.describe())
    sglang, _ = settings(engine="sglang", REDIS_HOST="r", SGLANG_ZMQ_ENDPOINT="tcp://*:6000")
    assert sglang is not None and (sglang.topic, sglang.bind, sglang.mapping_prefix) == ("", True, "sglang:kv:block")


def test_our_flags_win_and_the_url_carries_user_password_tls() -> None:
    flags = KvEventsFlags(
        redis_url=f"rediss://relay:{secrets.REDIS_PASSWORD}@redis.example:6380/0",
        endpoint="tcp://127.0.0.1:7000",
        replay_endpoint="tcp://127.0.0.1:7100",
        topic="",
        bind=True,
        dp_size=2,
    )
    relay, _ = settings(flags, REDIS_HOST="ignored", VLLM_ZMQ_ENDPOINT="tcp://ignored:1")
    assert relay is not None
    assert (relay.redis.host, relay.redis.port, relay.redis.username, relay.redis.tls) == (
        "redis.example",
        6380,
        "relay",
        True,
    )
    assert [(r.rank, r.endpoint, r.replay_endpoint) for r in relay.ranks()] == [
        (0, "tcp://127.0.0.1:7000", "tcp://127.0.0.1:7100"),
        (1, "tcp://127.0.0.1:7001", "tcp://127.0.0.1:7101"),
    ]
    assert relay.describe()["redis"]["url"] == "rediss://relay:****@redis.example:6380/0"


def test_engine_auto_pod_from_kthena_variables() -> None:
    relay, _ = settings(engine="auto", pod="", REDIS_HOST="r", POD_NAME="tiny-0", NAMESPACE="prod")
    assert relay is not None and relay.engine == "vllm" and relay.pod == "tiny-0.prod"
    sglang, _ = settings(engine="auto", REDIS_HOST="r", SGLANG_ZMQ_ENDPOINT="tcp://localhost:30001")
    assert sglang is not None and sglang.engine == "sglang"


def test_kthena_style_setup_without_pod_or_model_stays_off_with_a_note() -> None:
    relay, notes = settings(pod="", REDIS_HOST="r")
    assert relay is None and notes and "--pod" in notes[0]
    relay, notes = settings(engine="tgi", REDIS_HOST="r")
    assert relay is None and "tgi" in notes[0]


@pytest.mark.parametrize(
    ("flags", "env", "needle"),
    [
        (KvEventsFlags(), {"REDIS_HOST": "r", "REDIS_PORT": "abc"}, "REDIS_PORT='abc' is not a number"),
        (KvEventsFlags(), {"REDIS_HOST": "r", "REDIS_PORT": "70000"}, "REDIS_PORT='70000' is out of range"),
        (KvEventsFlags(), {"REDIS_HOST": "r", "REDIS_DB": "x"}, "REDIS_DB"),
        (KvEventsFlags(), {"REDIS_HOST": "r", "VLLM_ZMQ_ENDPOINT": "localhost:5557"}, "VLLM_ZMQ_ENDPOINT"),
        (KvEventsFlags(), {"REDIS_HOST": "r", "VLLM_ZMQ_REPLAY_ENDPOINT": "tcp://h:0"}, "VLLM_ZMQ_REPLAY_ENDPOINT"),
        (KvEventsFlags(endpoint="tcp://h:65535", dp_size=2), {"REDIS_HOST": "r"}, "--kv-events-endpoint"),
        (KvEventsFlags(endpoint="ipc:///tmp/kv", dp_size=2), {"REDIS_HOST": "r"}, "ipc endpoints"),
        (KvEventsFlags(endpoint="tcp://*:5557", bind=False), {"REDIS_HOST": "r"}, "wildcard"),
        (KvEventsFlags(redis_url="http://r:1"), {}, "--redis-url"),
        (KvEventsFlags(redis_url="redis://r:1/zero"), {}, "database must be a number"),
        (KvEventsFlags(redis_url="redis://r:99999"), {}, "--redis-url"),
        (KvEventsFlags(enabled=True), {}, "needs a Redis"),
    ],
)
def test_bad_values_name_the_setting(flags: KvEventsFlags, env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("*", r"\*")):
        settings(flags, **env)


def test_explicit_relay_without_pod_is_an_error() -> None:
    with pytest.raises(ConfigError, match="--pod"):
        settings(KvEventsFlags(redis_url="redis://r"), pod="")


def test_cli_prints_the_relay_config_masked_and_fails_in_one_line() -> None:
    config = effective_config(["--engine", "vllm", "--pod", "tiny-0.prod", "--model", "tiny"], KTHENA)
    relay = config["kv_events"]
    assert isinstance(relay, dict) and relay["redis"]["url"] == "redis://****@redis-server.kthena-system:6379/0"
    assert relay["pod"] == "tiny-0.prod" and relay["socket"] == "connect"
    assert effective_config([])["kv_events"] is None
    flagged = effective_config(["-I", "p.ns", "-N", "m", "--redis-url", "redis://x", "--kv-events-bind"])
    assert flagged["kv_events"]["socket"] == "bind"  # type: ignore[index]
    result = run_cli(["serve", "-I", "p", "-N", "m", "--print-config"], {"REDIS_HOST": "r", "REDIS_PORT": "x"})
    assert result.returncode == 2
    assert result.stderr.decode().strip() == "airuntime: error: REDIS_PORT='x' is not a number"


def test_a_sidecar_without_redis_never_imports_the_relay_dependencies() -> None:
    code = (
        "import sys, asyncio\n"
        "from runtime.cli import cli\n"
        "from runtime.config import ServeConfig\n"
        "from runtime.metrics.rules import build_ruleset\n"
        "from runtime.server.app import create_app\n"
        "from aiohttp.test_utils import TestServer\n"
        "config = ServeConfig('vllm', 'http://127.0.0.1:9', None, None, None, '127.0.0.1', 0, None, 'default', None,"
        " True, 1.0, 'info', 'text', '', '')\n"
        "async def main():\n"
        "    server = TestServer(create_app(config, build_ruleset('vllm')))\n"
        "    await server.start_server()\n"
        "    await server.close()\n"
        "asyncio.run(main())\n"
        "loaded = sorted(m for m in ('zmq', 'msgspec', 'redis', 'runtime.kv_events.relay') if m in sys.modules)\n"
        "print(loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
