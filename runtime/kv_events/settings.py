"""What the KV-cache event relay is told: one frozen object built from our flags and Kthena's variables.

Kthena's runtime reads `REDIS_HOST`, `REDIS_PORT`, `REDIS_DB`, `REDIS_PASSWORD`, `VLLM_ZMQ_ENDPOINT`,
`VLLM_ZMQ_TOPIC_FILTER`, `SGLANG_ZMQ_ENDPOINT` and `SGLANG_ZMQ_TOPIC_FILTER`; they work unchanged here, plus
`VLLM_ZMQ_REPLAY_ENDPOINT` / `SGLANG_ZMQ_REPLAY_ENDPOINT`. Our flags (`--redis-url`, `--kv-events-*`) win over them.
Every value is checked here; an error names the flag or variable it came from. Standard library only: the sidecar
imports this module even when the relay never runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from runtime.errors import ConfigError
from runtime.urls import mask_secret

KV_ENGINES = ("vllm", "sglang")
DEFAULT_ENDPOINT = "tcp://localhost:5557"  # Kthena's default for both engines
DEFAULT_TOPIC = {"vllm": "kv-events", "sglang": ""}  # Kthena's defaults
DEFAULT_MAX_BLOCKS = 1_000_000
BIND_HOSTS = ("*", "0.0.0.0", "::", "[::]")
_TCP = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True)
class RedisTarget:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool
    ca_file: str | None

    def describe(self) -> dict[str, Any]:
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.username}:" if self.username else ""
        secret = f"{user}{mask_secret(self.password or '')}@" if (self.password or self.username) else ""
        return {"url": f"{scheme}://{secret}{self.host}:{self.port}/{self.db}", "ca_file": self.ca_file}


@dataclass(frozen=True)
class RankEndpoint:
    """One data-parallel rank: where its batches arrive and where its replay socket is."""

    rank: int
    endpoint: str
    replay_endpoint: str | None


@dataclass(frozen=True)
class KvEventsSettings:
    engine: str  # vllm or sglang: names the private mapping keys (`vllm:kv:block:...`)
    redis: RedisTarget
    pod: str  # the hash field: `<pod-name>.<namespace>`, as Kthena's router names owners
    model: str  # `matrix:kv:block:{model}@{hash}`: the request's "model" as the router sees it
    endpoint: str
    replay_endpoint: str | None
    topic: str
    bind: bool  # bind the SUB socket (the engine connects, e.g. its endpoint is tcp://127.0.0.1:5557)
    dp_size: int = 1
    dp_rank_start: int = 0
    router_block_size: int | None = None  # hash chunks of this many tokens (a divisor of the engine's block size)
    max_blocks: int = DEFAULT_MAX_BLOCKS

    @property
    def mapping_prefix(self) -> str:
        return f"{self.engine}:kv:block"

    def ranks(self) -> list[RankEndpoint]:
        """One subscription per data-parallel rank: the engine offsets tcp ports by the rank."""
        ranks = range(self.dp_rank_start, self.dp_rank_start + self.dp_size)
        return [
            RankEndpoint(
                rank,
                offset_endpoint(self.endpoint, rank),
                offset_endpoint(self.replay_endpoint, rank) if self.replay_endpoint else None,
            )
            for rank in ranks
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "redis": self.redis.describe(),
            "pod": self.pod,
            "model": self.model,
            "endpoint": self.endpoint,
            "replay_endpoint": self.replay_endpoint,
            "topic": self.topic,
            "socket": "bind" if self.bind else "connect",
            "dp_ranks": [r.rank for r in self.ranks()],
            "router_block_size": self.router_block_size,
            "max_blocks": self.max_blocks,
        }


@dataclass(frozen=True)
class KvEventsFlags:
    """The serve settings `--redis-url` and `--kv-events-*` (runtime/config.py), unresolved."""

    enabled: bool | None = None  # None: run whenever a Redis is configured
    redis_url: str | None = None
    redis_ca_file: str | None = None
    endpoint: str | None = None
    replay_endpoint: str | None = None
    topic: str | None = None
    bind: bool | None = None  # None: bind only a wildcard endpoint (tcp://*:5557)
    dp_size: int = 1
    dp_rank_start: int = 0
    router_block_size: int | None = None
    max_blocks: int = DEFAULT_MAX_BLOCKS


def build_settings(
    flags: KvEventsFlags, *, engine: str, pod: str, model: str, environ: Mapping[str, str] | None = None
) -> tuple[KvEventsSettings | None, list[str]]:
    """The relay's settings, or None when it does not run, plus notes to log once logging is set up."""
    env = os.environ if environ is None else environ
    redis_configured = bool(flags.redis_url or env.get("REDIS_HOST"))
    if flags.enabled is False or (flags.enabled is None and not redis_configured):
        return None, []
    explicit = flags.enabled is True or bool(flags.redis_url)
    if not redis_configured:
        raise ConfigError("--kv-events needs a Redis: --redis-url (AIRUNTIME_REDIS_URL) or REDIS_HOST")
    kv_engine = _relay_engine(engine, env)
    if kv_engine is None:
        if explicit:
            raise ConfigError(f"the KV-event relay needs --engine vllm or sglang (or auto), not {engine}")
        return None, [f"KV-event relay off: REDIS_HOST is set but engine {engine} publishes no KV-cache events"]
    pod = pod or _pod_from_env(env)
    if not pod or not model:
        missing = " and ".join(name for name, value in (("--pod", pod), ("--model", model)) if not value)
        if explicit:
            raise ConfigError(f"the KV-event relay needs {missing} (the router's owner and model names)")
        return None, [f"KV-event relay off: REDIS_HOST is set but {missing} is not (Kthena's sidecar needs both)"]
    return _settings(flags, kv_engine, pod, model, env), []


def _settings(flags: KvEventsFlags, engine: str, pod: str, model: str, env: Mapping[str, str]) -> KvEventsSettings:
    var = engine.upper()
    endpoint_source = "--kv-events-endpoint" if flags.endpoint else f"{var}_ZMQ_ENDPOINT"
    endpoint = flags.endpoint or env.get(f"{var}_ZMQ_ENDPOINT") or DEFAULT_ENDPOINT
    replay_source = "--kv-events-replay-endpoint" if flags.replay_endpoint else f"{var}_ZMQ_REPLAY_ENDPOINT"
    replay = flags.replay_endpoint or env.get(f"{var}_ZMQ_REPLAY_ENDPOINT") or None
    topic = flags.topic if flags.topic is not None else env.get(f"{var}_ZMQ_TOPIC_FILTER", DEFAULT_TOPIC[engine])
    bind = flags.bind if flags.bind is not None else _is_wildcard(endpoint)
    settings = KvEventsSettings(
        engine=engine,
        redis=_redis_target(flags, env),
        pod=_checked_name(pod, "--pod"),
        model=_checked_name(model, "--model"),
        endpoint=check_endpoint(endpoint, endpoint_source, flags.dp_rank_start + flags.dp_size - 1),
        replay_endpoint=check_endpoint(replay, replay_source, flags.dp_rank_start + flags.dp_size - 1)
        if replay
        else None,
        topic=topic,
        bind=bind,
        dp_size=flags.dp_size,
        dp_rank_start=flags.dp_rank_start,
        router_block_size=flags.router_block_size,
        max_blocks=flags.max_blocks,
    )
    if not bind and _is_wildcard(endpoint):
        raise ConfigError(f"{endpoint_source} {endpoint}: a wildcard address can only be bound, not connected to")
    return settings


def _relay_engine(engine: str, env: Mapping[str, str]) -> str | None:
    """`auto` relays vLLM's events unless only SGLang's variables are set."""
    if engine in KV_ENGINES:
        return engine
    if engine != "auto":
        return None
    sglang_only = any(k.startswith("SGLANG_ZMQ_") for k in env) and not any(k.startswith("VLLM_ZMQ_") for k in env)
    return "sglang" if sglang_only else "vllm"


def _pod_from_env(env: Mapping[str, str]) -> str:
    """Kthena's manifests pass --pod $(POD_NAME).$(NAMESPACE) and set both variables."""
    name, namespace = env.get("POD_NAME", ""), env.get("NAMESPACE", "")
    return f"{name}.{namespace}" if name and namespace else ""


def _checked_name(value: str, setting: str) -> str:
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ConfigError(f"{setting} {value!r} must not contain spaces or control characters")
    return value


def _redis_target(flags: KvEventsFlags, env: Mapping[str, str]) -> RedisTarget:
    if flags.redis_url:
        return _parse_redis_url(flags.redis_url, env.get("REDIS_PASSWORD") or None, flags.redis_ca_file)
    return RedisTarget(
        host=env.get("REDIS_HOST", "").strip(),
        port=_int_var(env, "REDIS_PORT", 6379, 1, 65535),
        db=_int_var(env, "REDIS_DB", 0, 0, 1 << 20),
        username=None,
        password=env.get("REDIS_PASSWORD") or None,  # Kthena: an empty password sends no AUTH
        tls=False,
        ca_file=flags.redis_ca_file,
    )


def _parse_redis_url(url: str, fallback_password: str | None, ca_file: str | None) -> RedisTarget:
    setting = "--redis-url"
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError as exc:
        raise ConfigError(f"{setting}: not a redis://[user[:password]@]host[:port][/db] URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"{setting}: must look like redis://[user[:password]@]host[:port][/db] (rediss:// for TLS)")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(f"{setting}: the database must be a number, got {path!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{setting}: query options are not supported (use --redis-ca-file for TLS)")
    password = unquote(parts.password) if parts.password is not None else fallback_password
    return RedisTarget(
        host=parts.hostname,
        port=port,
        db=int(path) if path else 0,
        username=unquote(parts.username) if parts.username else None,
        password=password or None,
        tls=parts.scheme == "rediss",
        ca_file=ca_file,
    )


def _int_var(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} is out of range ({low}-{high})")
    return value


def _is_wildcard(endpoint: str) -> bool:
    match = _TCP.match(endpoint)
    return match is not None and match.group("host") in BIND_HOSTS


def check_endpoint(endpoint: str, setting: str, highest_rank: int) -> str:
    """tcp://HOST:PORT or ipc://PATH; every data-parallel rank's port (PORT + rank) must exist."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        if highest_rank > 0:
            raise ConfigError(f"{setting} {endpoint}: ipc endpoints have no per-rank form; use tcp:// for DP ranks")
        return endpoint
    match = _TCP.match(endpoint)
    if match is None:
        raise ConfigError(f"{setting} {endpoint!r}: must be tcp://HOST:PORT or ipc://PATH")
    port = int(match.group("port"))
    if port < 1 or port + highest_rank > 65535:
        raise ConfigError(f"{setting} {endpoint}: port {port} (+ rank up to {highest_rank}) is not a valid port")
    return endpoint


def offset_endpoint(endpoint: str, rank: int) -> str:
    """The endpoint of a data-parallel rank, as vLLM and SGLang derive it: the tcp port plus the rank."""
    if rank == 0 or not endpoint.startswith("tcp://"):
        return endpoint
    base, _, port = endpoint.rpartition(":")
    return f"{base}:{int(port) + rank}"
