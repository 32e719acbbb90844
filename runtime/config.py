"""The sidecar's effective configuration: one frozen object built from flags and environment by the CLI.

Precedence for every setting: command-line flag > our `AIRUNTIME_*` variable > a competitor's variable (AIBrix's
`INFERENCE_ENGINE*`, `METRIC_SCRAPE_PATH`) > default. The CLI declares the variables; this module validates values
and describes the result with secrets masked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from yarl import URL


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

    def describe(self) -> dict[str, Any]:
        """The configuration as printed at start: secrets masked."""
        described = asdict(self)
        if self.engine_api_key:
            described["engine_api_key"] = mask_secret(self.engine_api_key)
        described["engine_url"] = str(URL(self.engine_url).with_user(None).with_password(None))
        return described


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


def normalize_path(raw: str, setting: str) -> str:
    text = raw.strip()
    if not text:
        raise ConfigError(f"{setting} must not be empty")
    return text if text.startswith("/") else "/" + text
