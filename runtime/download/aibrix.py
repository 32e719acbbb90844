"""AIBrix's download options (`download_extra_config`) as ours: one mapping and one parser for both the CLI
(`airuntime download --download-extra-config JSON`, `aibrix_download`) and the API (`POST /v1/model/download`).

Keys:
    ak, sk, endpoint, region            object-store credentials and endpoint (our config access_key, secret_key, ...)
    hf_endpoint, hf_token, hf_revision  HuggingFace mirror, token, revision
    num_threads                         parallel transfers (default: DOWNLOADER_NUM_THREADS, else ours)
    part_chunksize                      ranged part size in bytes (default: DOWNLOADER_PART_CHUNKSIZE, else ours)
    allow_file_suffix                   list or comma-separated string (default: DOWNLOADER_ALLOW_FILE_SUFFIX)
    force_download                      true or false (default: DOWNLOADER_FORCE_DOWNLOAD)
    max_io_queue, io_chunksize, part_threshold
                                        boto3 tuning of AIBrix's own client: checked to be positive integers,
                                        with no effect here (airuntime's transfer engine has its own pacing)
Any other key is an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.download.env import MAX_PART_SIZE, MAX_WORKERS, MIN_PART_SIZE, DownloaderEnv
from runtime.download.transfer import MIB, FileFilter, TransferSettings
from runtime.download.uri import parse_source
from runtime.errors import ApiError
from runtime.fields import field_bool, field_int, field_str_list

CONFIG_KEYS = {
    "ak": "access_key",
    "sk": "secret_key",
    "endpoint": "endpoint",
    "region": "region",
    "hf_endpoint": "hf_endpoint",
    "hf_token": "hf_token",
    "hf_revision": "hf_revision",
}
IGNORED_TUNING_KEYS = ("max_io_queue", "io_chunksize", "part_threshold")
TUNING_KEYS = ("num_threads", "part_chunksize", "allow_file_suffix", "force_download", *IGNORED_TUNING_KEYS)
DEFAULT_WORKERS = 16
DEFAULT_PART_SIZE = 32 * MIB


@dataclass(frozen=True)
class AibrixOptions:
    config: dict[str, Any] = field(default_factory=dict)
    file_filter: FileFilter = field(default_factory=FileFilter)
    transfer: TransferSettings = field(default_factory=TransferSettings)


def model_name(model_uri: str, given: str | None) -> str:
    """The folder a model lands in under the download root, as AIBrix names it: `org/name` for a Hugging Face repo
    (and a ModelScope one), else the last segment of the URI (`s3://bucket/models/llama` -> `llama`)."""
    if given:
        return given
    spec = parse_source(model_uri)
    if spec.scheme in ("hf", "ms"):
        return spec.location
    tail = (spec.prefix or spec.location).rstrip("/").rsplit("/", 1)[-1]
    return tail.removesuffix(".git") or spec.location


def from_extra_config(raw: Any, env: DownloaderEnv, status: int = 400) -> AibrixOptions:
    """`download_extra_config` (None or an object) with the `DOWNLOADER_*` variables as defaults; ApiError(status)
    names the key at fault."""
    extra = {} if raw is None else raw
    if not isinstance(extra, dict):
        raise ApiError("'download_extra_config' must be an object", status)
    unknown = sorted(set(extra) - set(CONFIG_KEYS) - set(TUNING_KEYS))
    if unknown:
        known = ", ".join([*CONFIG_KEYS, *TUNING_KEYS])
        raise ApiError(f"unknown download_extra_config key(s): {', '.join(unknown)}; known: {known}", status)
    config = {}
    for theirs, ours in CONFIG_KEYS.items():
        value = extra.get(theirs)
        if value is not None and not isinstance(value, str):
            raise ApiError(f"download_extra_config {theirs!r} must be a string", status)
        if value:
            config[ours] = value
    for key in IGNORED_TUNING_KEYS:
        field_int(extra, key, 1, 1, 1 << 40, status)
    workers = field_int(extra, "num_threads", env.num_threads or DEFAULT_WORKERS, 1, MAX_WORKERS, status)
    part_size = field_int(
        extra, "part_chunksize", env.part_chunksize or DEFAULT_PART_SIZE, MIN_PART_SIZE, MAX_PART_SIZE, status
    )
    return AibrixOptions(
        config=config,
        file_filter=FileFilter(
            allow_suffixes=field_str_list(extra, "allow_file_suffix", status) or env.allow_file_suffix
        ),
        transfer=TransferSettings(
            max_workers=workers,
            part_size=part_size,
            force=field_bool(extra, "force_download", env.force_download, status),
        ),
    )
