"""AIBrix's LoRA requests as ours: the load body of `POST /v1/lora_adapter/load` in both of AIBrix's forms.

- Direct: `{"lora_name", "lora_path"}`. A `lora_path` that is no directory on this volume but a source the
  downloader takes (a Hugging Face repo id, s3://, ms://, ...) is downloaded into the adapters folder first.
- Delegated, as AIBrix's ModelAdapter controller sends it in sidecar mode: `{"lora_name", "artifact_url",
  "credentials"?, "credentials_secret"?, "additional_config"?, "local_dir"?}`. The artifact is downloaded into
  LOCAL_DIR/NAME (default: the adapters folder, which AIBrix's webhook shares with the engine) and loaded from there.
  AIBrix's schemes: s3, gcs, tos, huggingface, http(s); credentials come from the body, else from the files of
  `/var/run/secrets/aibrix/<credentials_secret>/` (one key per file); `additional_config` is merged over them.
  Credential keys are AIBrix's (`CREDENTIAL_KEYS`); other keys of a Secret are not ours to read: never read.
Unknown body keys are refused (AIBrix's own models forbid them).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from runtime.errors import ApiError

LOAD_KEYS = (
    "lora_name",
    "lora_path",
    "load_inplace",
    "artifact_url",
    "credentials",
    "credentials_secret",
    "additional_config",
    "local_dir",
)
UNLOAD_KEYS = ("lora_name", "cleanup_local", "lora_int_id")
SECRETS_MOUNT = Path("/var/run/secrets/aibrix")
SCHEMES = {"s3": "s3", "gcs": "gs", "tos": "tos", "huggingface": "hf", "http": "http", "https": "https"}
CREDENTIAL_KEYS = {
    "aws_access_key_id": "access_key",
    "aws_secret_access_key": "secret_key",
    "aws_session_token": "session_token",
    "aws_region": "region",
    "TOS_ACCESS_KEY": "access_key",
    "TOS_SECRET_KEY": "secret_key",
    "TOS_SESSION_KEY": "session_token",
    "endpoint": "endpoint",
    "tos_endpoint": "endpoint",
    "region": "region",
    "tos_region": "region",
    "huggingface_token": "hf_token",
    "gcp_service_account_json": "service_account_key",
}
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # a Kubernetes object name


# The optional fields' types (null is always allowed); lora_name, lora_path and load_inplace are read by the route.
FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "artifact_url": str,
    "credentials_secret": str,
    "local_dir": str,
    "cleanup_local": bool,
    "lora_int_id": int,
}


def check_keys(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Unknown fields, and optional fields of the wrong type or empty, are 422 as in AIBrix's models."""
    unknown = sorted(str(key) for key in body if key not in allowed)
    if unknown:
        raise ApiError(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}", 422)
    for key, kind in FIELD_TYPES.items():
        value = body.get(key)
        if value is None:
            continue
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind) or value == "":
            raise ApiError(f"field {key!r} must be a non-empty {getattr(kind, '__name__', kind)}", 422)


def artifact_source(url: str) -> str:
    """AIBrix's artifact URL as our source: gcs:// is gs://, huggingface://org/name is a Hugging Face repo."""
    scheme, sep, rest = url.partition("://")
    ours = SCHEMES.get(scheme.lower()) if sep else None
    if ours is None:  # the URL itself is not echoed: it may carry a password
        shown = f"scheme {scheme[:20]!r}" if sep else "no scheme"
        raise ApiError(f"artifact_url has {shown}; it must be one of {', '.join(SCHEMES)}", 422)
    return rest if ours == "hf" else f"{ours}://{rest}"


def artifact_config(body: dict[str, Any], secrets_mount: Path | None = None) -> dict[str, Any]:
    """Our download config from AIBrix's credentials: the body's, else the mounted Secret's, then
    additional_config over them."""
    credentials = _string_map(body.get("credentials"), "credentials")
    secret = body.get("credentials_secret")
    if not credentials and secret:
        credentials = _read_secret(secret, SECRETS_MOUNT if secrets_mount is None else secrets_mount)
    credentials.update(_string_map(body.get("additional_config"), "additional_config"))
    return {ours: credentials[theirs] for theirs, ours in CREDENTIAL_KEYS.items() if credentials.get(theirs)}


def _string_map(raw: Any, field: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ApiError(f"field {field!r} must be an object of strings", 422)
    return {str(key): value for key, value in raw.items()}


def _read_secret(name: Any, mount: Path) -> dict[str, str]:
    if not isinstance(name, str) or not _SECRET_NAME.fullmatch(name):
        raise ApiError("field 'credentials_secret' must be the name of a Secret", 422)
    folder = mount / name
    if not folder.is_dir():
        raise ApiError(f"credentials_secret {name!r} is not mounted at {folder}", 400)
    found = {}
    for key in CREDENTIAL_KEYS:  # a mounted Secret holds one file per key; only the keys we use are read
        entry = folder / key
        try:
            if entry.is_file():
                found[key] = entry.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise ApiError(f"credentials_secret {name!r}: key {key!r} cannot be read as text", 400) from None
    return found
