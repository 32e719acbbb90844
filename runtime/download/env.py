"""AIBrix's downloader variables (`DOWNLOADER_*`), read once, with one parser each, for the CLI and the API alike.

    DOWNLOADER_NUM_THREADS        parallel transfers, a whole number from 1 to 256
    DOWNLOADER_ALLOW_FILE_SUFFIX  only files ending with one of these (comma-separated), e.g. json,safetensors
    DOWNLOADER_FORCE_DOWNLOAD     fetch every file again: 1, true, yes or on (any case); 0, false, no, off or empty
    DOWNLOADER_PART_CHUNKSIZE     ranged part size in bytes (1 MiB to 16 GiB)

(`DOWNLOADER_LOCAL_DIR` is a plain setting: `--models-dir` of `serve`, `--local-dir` of `download`.)
A value that cannot be used is a ConfigError that names the variable and says what it must be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from runtime.errors import ConfigError
from runtime.fields import split_list

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")
MAX_WORKERS = 256
MIN_PART_SIZE = 1024 * 1024
MAX_PART_SIZE = 1 << 34


def env_int(environ: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdecimal()) or not low <= int(text) <= high:
        raise ConfigError(f"{name}={raw!r}: must be a whole number from {low} to {high}")
    return int(text)


def env_flag(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name)
    if raw is None:
        return False
    text = raw.strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}={raw!r}: must be one of {', '.join(TRUE_WORDS)} or {', '.join(FALSE_WORDS[1:])}")


@dataclass(frozen=True)
class DownloaderEnv:
    num_threads: int | None = None
    allow_file_suffix: tuple[str, ...] = ()
    force_download: bool = False
    part_chunksize: int | None = None

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> DownloaderEnv:
        return cls(
            num_threads=env_int(environ, "DOWNLOADER_NUM_THREADS", 1, MAX_WORKERS),
            allow_file_suffix=split_list(environ.get("DOWNLOADER_ALLOW_FILE_SUFFIX")),
            force_download=env_flag(environ, "DOWNLOADER_FORCE_DOWNLOAD"),
            part_chunksize=env_int(environ, "DOWNLOADER_PART_CHUNKSIZE", MIN_PART_SIZE, MAX_PART_SIZE),
        )
