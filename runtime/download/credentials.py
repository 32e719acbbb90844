"""Where a download's endpoint, region and credentials come from: the request's `config`, then the environment.

`config` keys (Kthena's): hf_token hf_endpoint hf_revision ms_token ms_revision access_key secret_key endpoint region,
plus ours: ms_endpoint (ModelScope's; `endpoint` works too) session_token addressing_style (path|virtual)
verify_md5 (false for SSE-KMS buckets, whose ETags are not MD5s), account_name (Azure; else taken from an endpoint
like https://ACCOUNT.blob.core.windows.net or http://host/ACCOUNT), skip_signature (gs/az: unsigned requests, for
public buckets and emulators) and service_account_key (gs: a service account's JSON key, as AIBrix's
gcp_service_account_json).
For gs://, `endpoint` is the service's base URL (GCS `base_url`); for az://, `endpoint` is the account's blob
endpoint and `access_key` its account key.
Environment fallbacks, by source:
  hf   HF_TOKEN / HF_AUTH_TOKEN / HUGGING_FACE_HUB_TOKEN, HF_ENDPOINT, HF_REVISION
  ms   MS_TOKEN (Kthena's) / MODELSCOPE_API_TOKEN (the SDK's), MS_REVISION, MODELSCOPE_ENDPOINT / MODELSCOPE_DOMAIN
       (config ms_endpoint wins over config endpoint, which wins over both variables)
  s3   AWS_ACCESS_KEY_ID / ACCESS_KEY, AWS_SECRET_ACCESS_KEY / SECRET_KEY, AWS_SESSION_TOKEN,
       AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / ENDPOINT, AWS_REGION / AWS_DEFAULT_REGION; with no keys at all,
       the default AWS chain (web identity / IRSA, container and instance credentials)
  tos  TOS_ACCESS_KEY / ACCESS_KEY, TOS_SECRET_KEY / SECRET_KEY, TOS_ENDPOINT / ENDPOINT, TOS_REGION
  obs  OBS_ACCESS_KEY_ID / ACCESS_KEY, OBS_SECRET_ACCESS_KEY / SECRET_KEY, OBS_ENDPOINT / ENDPOINT, OBS_REGION
  gs   GOOGLE_BASE_URL; credentials as obstore finds them (GOOGLE_SERVICE_ACCOUNT[_KEY|_PATH],
       GOOGLE_APPLICATION_CREDENTIALS, GOOGLE_BEARER_TOKEN, else the GCE metadata server)
  az   AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY / AZURE_STORAGE_ACCESS_KEY / AZURE_STORAGE_MASTER_KEY,
       AZURE_STORAGE_ENDPOINT / AZURE_ENDPOINT; other AZURE_* credentials (SAS, service principal, managed
       identity, AZURE_STORAGE_USE_EMULATOR) as obstore finds them
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from runtime.errors import DownloadError

CONFIG_KEYS = (
    "hf_token",
    "hf_endpoint",
    "hf_revision",
    "ms_token",
    "ms_endpoint",
    "ms_revision",
    "access_key",
    "secret_key",
    "session_token",
    "endpoint",
    "region",
    "addressing_style",
    "verify_md5",
    "account_name",
    "skip_signature",
    "service_account_key",
)
_BOOL_KEYS = ("verify_md5", "skip_signature")
SECRET_KEYS = ("hf_token", "ms_token", "secret_key", "session_token", "access_key", "service_account_key")

_ENV: dict[str, dict[str, tuple[str, ...]]] = {
    "hf": {
        "hf_token": ("HF_TOKEN", "HF_AUTH_TOKEN", "HUGGING_FACE_HUB_TOKEN"),
        "hf_endpoint": ("HF_ENDPOINT",),
        "hf_revision": ("HF_REVISION",),
    },
    "ms": {
        "ms_token": ("MS_TOKEN", "MODELSCOPE_API_TOKEN"),
        "ms_revision": ("MS_REVISION",),
        "endpoint": ("MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN"),
    },
    "s3": {
        "access_key": ("AWS_ACCESS_KEY_ID", "ACCESS_KEY"),
        "secret_key": ("AWS_SECRET_ACCESS_KEY", "SECRET_KEY"),
        "session_token": ("AWS_SESSION_TOKEN",),
        "endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "ENDPOINT"),
        "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    },
    "tos": {
        "access_key": ("TOS_ACCESS_KEY", "ACCESS_KEY"),
        "secret_key": ("TOS_SECRET_KEY", "SECRET_KEY"),
        "endpoint": ("TOS_ENDPOINT", "ENDPOINT"),
        "region": ("TOS_REGION",),
    },
    "obs": {
        "access_key": ("OBS_ACCESS_KEY_ID", "ACCESS_KEY"),
        "secret_key": ("OBS_SECRET_ACCESS_KEY", "SECRET_KEY"),
        "endpoint": ("OBS_ENDPOINT", "ENDPOINT"),
        "region": ("OBS_REGION",),
    },
    "gs": {
        "endpoint": ("GOOGLE_BASE_URL",),
    },
    "az": {
        "account_name": ("AZURE_STORAGE_ACCOUNT_NAME",),
        "access_key": ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_MASTER_KEY"),
        "endpoint": ("AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"),
    },
}


@dataclass(frozen=True)
class SourceSettings:
    hf_token: str | None = None
    hf_endpoint: str | None = None
    hf_revision: str | None = None
    ms_token: str | None = None
    ms_endpoint: str | None = None
    ms_revision: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    endpoint: str | None = None
    region: str | None = None
    addressing_style: str | None = None
    verify_md5: bool = True
    account_name: str | None = None
    skip_signature: bool = False
    service_account_key: str | None = None  # GCS: a service account's JSON key

    def secrets(self) -> list[str]:
        return [value for key in SECRET_KEYS if isinstance(value := getattr(self, key), str) and value]


def config_from_request(raw: Any) -> dict[str, Any]:
    """Kthena's `config`: an object, or a JSON string of one (Kthena itself sends the string); None/"" is empty."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise DownloadError(f"'config' is a string but not JSON: {exc}", reason="bad_request", status=400) from None
    return validate_config(raw)


def validate_config(config: Any) -> dict[str, Any]:
    """A request's `config` as a dict of known keys; DownloadError (400) names what is wrong."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise DownloadError("'config' must be an object (or a JSON string of one)", reason="bad_request", status=400)
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise DownloadError(
            f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}",
            reason="bad_request",
            status=400,
        )
    for key, value in config.items():
        if key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise DownloadError(f"config {key!r} must be true or false", reason="bad_request", status=400)
        elif value is not None and not isinstance(value, str):
            raise DownloadError(f"config {key!r} must be a string", reason="bad_request", status=400)
    style = config.get("addressing_style")
    if style not in (None, "path", "virtual"):
        raise DownloadError("config 'addressing_style' must be 'path' or 'virtual'", reason="bad_request", status=400)
    return dict(config)


def resolve_settings(scheme: str, config: Mapping[str, Any], env: Mapping[str, str]) -> SourceSettings:
    values: dict[str, Any] = {key: config[key] for key in CONFIG_KEYS if config.get(key) not in (None, "")}
    for key, names in _ENV.get(scheme, {}).items():
        if key not in values:
            found = next((env[name] for name in names if env.get(name)), None)
            if found is not None:
                values[key] = found
    return SourceSettings(**values)
