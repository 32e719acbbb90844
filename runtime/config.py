"""The sidecar's effective configuration: one frozen object built from flags and environment by the CLI.

Precedence for every setting: command-line flag > our `AIRUNTIME_*` variable > a competitor's variable (AIBrix's
`INFERENCE_ENGINE*`, `METRIC_SCRAPE_PATH`) > default. The CLI declares the variables; this module validates values
and describes the result with secrets masked.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from yarl import URL

if TYPE_CHECKING:
    from runtime.kv_events.settings import KvEventsSettings


class ConfigError(ValueError):
    """A setting has a value the sidecar cannot use; the message names the setting."""


@dataclass(frozen=True)
class ServeConfig:
    engine: str
    engine_url: str
    engine_metrics_path: str | None  # None: the engine table's (most: /metrics)
    engine_health_path: str | None
    engine_api_key: str | None
    host: str
    port: int
    metrics_prefix: str | None
    metrics_profile: str
    metrics_rules: str | None
    raw_metrics: bool
    scrape_timeout: float
    log_level: str
    log_format: str
    pod: str
    model: str
    models_dir: str = "/tmp/airuntime/models"  # where relative download targets and AIBrix's model list live
    adapters_dir: str = "/tmp/airuntime/adapters"  # where adapters downloaded without an output_dir land
    lora_adapters_file: str | None = None  # adapters that must stay loaded, re-read on change
    lora_reconcile_interval: float = 5.0
    api_token: str | None = None  # required as `Authorization: Bearer` on the management API when set
    protect_metrics: bool = False  # /metrics needs the token too
    allowed_roots: tuple[str, ...] = ()  # when set, every path a request names must resolve inside one of them
    max_request_bytes: int = 1024 * 1024
    max_scrape_bytes: int = 4 * 1024 * 1024
    shutdown_timeout: float = 20.0
    kv_events: KvEventsSettings | None = None  # the KV-cache event relay, when a Redis is configured

    def describe(self) -> dict[str, Any]:
        """The configuration as printed at start: secrets masked."""
        described = asdict(self)
        for secret in ("engine_api_key", "api_token"):
            if described[secret]:
                described[secret] = mask_secret(described[secret])
        described["engine_url"] = public_url(self.engine_url)
        described["allowed_roots"] = list(self.allowed_roots)
        described["kv_events"] = self.kv_events.describe() if self.kv_events else None
        return described


def public_url(url: str) -> str:
    """The URL as it may appear in logs, errors and /ready: no user or password."""
    try:
        parsed = URL(url)
    except ValueError:
        return "<unparseable URL>"
    if parsed.user is None and parsed.password is None:
        return url
    return str(parsed.with_user(None).with_password(None))


def mask_secret(secret: str) -> str:
    return "****" if secret else ""


def normalize_engine_url(raw: str) -> str:
    """`http(s)://host[:port][/base]` without a trailing slash; a bare `host:port` gets `http://`."""
    text = raw.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        url = URL(text)
    except ValueError as exc:
        raise ConfigError(f"engine URL {raw!r} is not a URL: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"engine URL {raw!r} must look like http://HOST:PORT")
    return str(url).rstrip("/")


def resolve_api_token(token: str | None, token_file: str | None) -> str | None:
    """The management API token from the flag/variable or a file (trailing newline stripped); never both."""
    if token and token_file:
        raise ConfigError("give --api-token or --api-token-file, not both")
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read --api-token-file {token_file}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        if not token:
            raise ConfigError(f"--api-token-file {token_file} is empty")
    if token is None:
        return None
    token = token.strip()
    if not token:
        return None
    if len(token) < 8 or any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ConfigError("the API token must be at least 8 printable characters without spaces")
    return token


def normalize_roots(raw: tuple[str, ...]) -> tuple[str, ...]:
    """Allowed roots as absolute, symlink-resolved directories (they need not exist yet)."""
    roots: list[str] = []
    for entry in raw:
        for part in entry.split(os.pathsep):
            if not part.strip():
                continue
            if not os.path.isabs(part):
                raise ConfigError(f"--allowed-root {part!r} must be an absolute path")
            resolved = os.path.realpath(part)
            if resolved not in roots:
                roots.append(resolved)
    return tuple(roots)


def normalize_path(raw: str, setting: str) -> str:
    text = raw.strip()
    if not text:
        raise ConfigError(f"{setting} must not be empty")
    return text if text.startswith("/") else "/" + text
