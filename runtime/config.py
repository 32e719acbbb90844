"""The sidecar's configuration, read once at start: every `serve` setting declared in one place, with its flags,
its variables, its default, its check and its help.

`ServeConfig` is that declaration: each field carries a `Setting` (its flags and environment variables, newest
spelling first), from which the CLI builds its options (runtime/cli_options.py) and `from_options` builds the frozen
object the server runs with. Adding a setting is one field here (plus its test).

Precedence for every setting: command-line flag > our `AIRUNTIME_*` variable > a competitor's variable (AIBrix's
`INFERENCE_ENGINE*`, `METRIC_SCRAPE_PATH`, Kthena's names) > default. Values are checked here, and a value the sidecar
cannot use is a `ConfigError` naming the setting; `describe()` shows the result with secrets masked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from yarl import URL

from runtime.download.env import DownloaderEnv
from runtime.errors import ConfigError
from runtime.settings import setting
from runtime.urls import mask_secret, public_url

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


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


def read_token_file(path: str | None) -> str | None:
    """The API token from a file (e.g. a mounted Secret), trailing newline stripped."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --api-token-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise ConfigError(f"--api-token-file {path} is empty")
    return token


def check_api_token(token: str | None) -> str | None:
    if token is None or not token.strip():
        return None
    token = token.strip()
    if len(token) < 8 or any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ConfigError("the API token must be at least 8 printable characters without spaces")
    return token


def normalize_roots(raw: Sequence[str]) -> tuple[str, ...]:
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


def _path_setting(flag: str) -> Callable[[str | None], str | None]:
    def normalize(raw: str | None) -> str | None:
        if raw is None:
            return None
        text = raw.strip()
        if not text:
            raise ConfigError(f"{flag} must not be empty")
        return text if text.startswith("/") else "/" + text

    return normalize


def _lower(value: str) -> str:
    return value.lower()


ENGINE_ALIASES = {"vllmdisaggregated": "vllm"}  # Kthena's name for vLLM in prefill/decode disaggregation


def _engine_choices() -> Sequence[str]:
    from runtime.metrics.rule_tables import engine_choices

    return [*engine_choices(), *ENGINE_ALIASES]


def canonical_engine(value: str) -> str:
    return ENGINE_ALIASES.get(value.lower(), value.lower())


def _profile_choices() -> Sequence[str]:
    from runtime.metrics.rule_tables import available_profiles

    return available_profiles()


def _none_if_empty(value: str | None) -> str | None:
    return value or None


@dataclass(frozen=True)
class ServeConfig:
    # -- the engine and its metrics (shared with `metrics rewrite`) -------------------------------------------
    engine: str = setting(
        "auto", "-E", "--engine", env=("AIRUNTIME_ENGINE", "INFERENCE_ENGINE"), kind="choice",
        choices=_engine_choices, parse=canonical_engine,
        help="Inference engine beside the sidecar; auto recognises it from its metrics.",
    )  # fmt: skip
    metrics_prefix: str | None = setting(
        None, "--metrics-prefix", env=("AIRUNTIME_METRICS_PREFIX",),
        help="Prefix of unified metric names, PREFIX:name [default: airuntime, or the profile's].",
    )  # fmt: skip
    metrics_profile: str = setting(
        "default", "--metrics-profile", env=("AIRUNTIME_METRICS_PROFILE",), kind="choice", choices=_profile_choices,
        help="Name set of the unified families: our own, or another product's (aibrix, kthena).",
    )  # fmt: skip
    metrics_rules: str | None = setting(
        None, "--metrics-rules", env=("AIRUNTIME_METRICS_RULES",), kind="file",
        help="JSON or YAML file of extra or replacing rename rules.",
    )  # fmt: skip
    raw_metrics: bool = setting(
        True, "--raw-metrics/--no-raw-metrics", env=("AIRUNTIME_RAW_METRICS",), kind="bool",
        help="Keep the engine's own families beside the unified ones.",
    )  # fmt: skip
    engine_url: str = setting(
        "http://localhost:8000", "-B", "--engine-url", "--engine-base-url",
        env=("AIRUNTIME_ENGINE_URL", "INFERENCE_ENGINE_ENDPOINT"), parse=normalize_engine_url,
        help="Base URL of the engine.",
    )  # fmt: skip
    engine_metrics_path: str | None = setting(
        None, "-M", "--engine-metrics-path", env=("AIRUNTIME_ENGINE_METRICS_PATH", "METRIC_SCRAPE_PATH"),
        parse=_path_setting("--engine-metrics-path"),
        help="Path of the engine's Prometheus endpoint [default: the engine's own, /metrics for most].",
    )  # fmt: skip
    engine_health_path: str | None = setting(
        None, "--engine-health-path", env=("AIRUNTIME_ENGINE_HEALTH_PATH",),
        parse=_path_setting("--engine-health-path"),
        help="Path of the engine's health check used by /ready [default: the engine's own, e.g. /health].",
    )  # fmt: skip
    engine_api_key: str | None = setting(
        None, "--engine-api-key", env=("AIRUNTIME_ENGINE_API_KEY", "INFERENCE_ENGINE_API_KEY"), secret=True,
        parse=_none_if_empty, help="Sent to the engine as a Bearer token. Never logged.",
    )  # fmt: skip
    scrape_timeout: float = setting(
        2.0, "--scrape-timeout", env=("AIRUNTIME_SCRAPE_TIMEOUT",), kind="float", low=0.05, high=300,
        help="Seconds to wait for the engine's metrics or health answer.",
    )  # fmt: skip
    max_scrape_bytes: int = setting(
        4 * 1024 * 1024, "--max-scrape-bytes", env=("AIRUNTIME_MAX_SCRAPE_BYTES",), kind="int", low=1024,
        high=1 << 31, help="Largest engine /metrics answer read; a bigger one fails the scrape (reason too_large).",
    )  # fmt: skip
    # -- where the sidecar listens, what it is ----------------------------------------------------------------
    host: str = setting("0.0.0.0", "-H", "--host", env=("AIRUNTIME_HOST",), help="Listen address.")
    port: int = setting(
        9000, "-P", "--port", env=("AIRUNTIME_PORT",), kind="int", low=0, high=65535,
        help="Listen port (0: any free port).",
    )  # fmt: skip
    pod: str = setting(
        "", "-I", "--pod", env=("AIRUNTIME_POD",),
        help="This pod as NAME.NAMESPACE: sidecar_info label, and the owner name of KV-cache blocks in Redis.",
    )  # fmt: skip
    model: str = setting(
        "", "-N", "--model", env=("AIRUNTIME_MODEL",),
        help="The served model name: sidecar_info label, and the model of KV-cache block keys in Redis.",
    )  # fmt: skip
    log_level: str = setting(
        "info", "--log-level", env=("AIRUNTIME_LOG_LEVEL",), kind="choice", choices=lambda: LOG_LEVELS, parse=_lower,
        help="Least severe log level written.",
    )  # fmt: skip
    log_format: str = setting(
        "text", "--log-format", env=("AIRUNTIME_LOG_FORMAT",), kind="choice", choices=lambda: LOG_FORMATS,
        help="Text lines, or one JSON object per line.",
    )  # fmt: skip
    # -- downloads and adapters -------------------------------------------------------------------------------
    models_dir: str = setting(
        "/tmp/airuntime/models", "--models-dir", env=("AIRUNTIME_MODELS_DIR", "DOWNLOADER_LOCAL_DIR"), kind="dir",
        help="Base of relative download targets and of AIBrix's /v1/model/list.",
    )  # fmt: skip
    adapters_dir: str = setting(
        "/tmp/airuntime/adapters", "--adapters-dir", env=("AIRUNTIME_ADAPTERS_DIR",), kind="dir",
        help="Where LoRA adapters downloaded without an output_dir land (ADAPTERS_DIR/NAME).",
    )  # fmt: skip
    lora_adapters_file: str | None = setting(
        None, "--lora-adapters", env=("AIRUNTIME_LORA_ADAPTERS",), kind="file",
        help="YAML/JSON list of {name, source} adapters kept loaded; re-read when it changes.",
    )  # fmt: skip
    lora_reconcile_interval: float = setting(
        5.0, "--lora-reconcile-interval", env=("AIRUNTIME_LORA_RECONCILE_INTERVAL",), kind="float", low=0.2,
        high=3600, help="Seconds between checks that the engine still has every desired adapter.",
    )  # fmt: skip
    # -- security and limits ----------------------------------------------------------------------------------
    api_token: str | None = setting(
        None, "--api-token", env=("AIRUNTIME_API_TOKEN",), secret=True, parse=check_api_token,
        help="Require `Authorization: Bearer TOKEN` on the management API (downloads, LoRA). Never logged.",
    )  # fmt: skip
    api_token_file: str | None = setting(
        None, "--api-token-file", env=("AIRUNTIME_API_TOKEN_FILE",), kind="file",
        help="Read the API token from this file (e.g. a mounted Secret) instead of the command line.",
    )  # fmt: skip
    protect_metrics: bool = setting(
        False, "--protect-metrics/--no-protect-metrics", env=("AIRUNTIME_PROTECT_METRICS",), kind="bool",
        help="Require the API token on /metrics too (probes stay open for the kubelet).",
    )  # fmt: skip
    allowed_roots: tuple[str, ...] = setting(
        (), "--allowed-root", env=("AIRUNTIME_ALLOWED_ROOTS",), kind="dir", multiple=True, parse=normalize_roots,
        help="Directory every output_dir, local_dir, lora_path and pvc:// path must resolve into; repeatable "
        "(env: colon-separated). Unset: any path.",
    )  # fmt: skip
    max_request_bytes: int = setting(
        1024 * 1024, "--max-request-bytes", env=("AIRUNTIME_MAX_REQUEST_BYTES",), kind="int", low=1024,
        high=1 << 30, help="Largest request body accepted (413 beyond).",
    )  # fmt: skip
    shutdown_timeout: float = setting(
        20.0, "--shutdown-timeout", env=("AIRUNTIME_SHUTDOWN_TIMEOUT",), kind="float", low=0.5, high=3600,
        help="Seconds SIGTERM waits for requests and downloads before checkpointing them and exiting.",
    )  # fmt: skip
    # -- read from the environment only (AIBrix's downloader variables), once ---------------------------------
    downloader: DownloaderEnv = field(default_factory=DownloaderEnv)

    @classmethod
    def from_options(cls, values: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> ServeConfig:
        """The configuration from the CLI's parsed options (every declared setting by field name) and the
        environment's downloader variables; ConfigError names the setting at fault."""
        parsed: dict[str, Any] = {}
        for item in fields(cls):
            declared = item.metadata.get("setting")
            if declared is None or item.name not in values:
                continue
            value = values[item.name]
            if declared.parse is not None and value is not None:
                value = declared.parse(value)
            parsed[item.name] = value
        parsed["downloader"] = DownloaderEnv.read(os.environ if environ is None else environ)
        return cls(**parsed).checked()

    def checked(self) -> ServeConfig:
        """Checks across settings; the token file read into `api_token`."""
        if self.api_token and self.api_token_file:
            raise ConfigError("give --api-token or --api-token-file, not both")
        config = self
        if self.api_token_file:
            config = replace(self, api_token=check_api_token(read_token_file(self.api_token_file)))
        if config.engine_api_key and public_url(config.engine_url) != config.engine_url:
            raise ConfigError("the engine URL carries a user/password and --engine-api-key is set; give only one")
        if config.protect_metrics and not config.api_token:
            raise ConfigError("--protect-metrics needs --api-token or --api-token-file")
        return config

    def describe(self) -> dict[str, Any]:
        """The configuration as printed at start: secrets masked."""
        described = asdict(self)
        for item in fields(self):
            declared = item.metadata.get("setting")
            if declared is not None and declared.secret and described[item.name]:
                described[item.name] = mask_secret(described[item.name])
        described["engine_url"] = public_url(self.engine_url)
        described["allowed_roots"] = list(self.allowed_roots)
        return described
