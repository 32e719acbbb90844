"""Where things live in a target directory: model files, their partial downloads, and airuntime's metadata.

DIR/config.json                         a finished file (renamed into place only once complete and verified)
DIR/sub/.model.safetensors.airuntime-partial       bytes of an unfinished download (same directory as the file)
DIR/sub/.model.safetensors.airuntime-partial.json  which parts of it are done, and for which remote version
DIR/.airuntime/manifest.json            what was downloaded: size, version tag, checksum, mtime of each file
DIR/.airuntime/lock                     held while a download writes into DIR
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from runtime.download.backends.base import DownloadError

META_DIR = ".airuntime"
PARTIAL_SUFFIX = ".airuntime-partial"


def safe_relative_path(key: str) -> str:
    """`key` as a relative path that stays inside the target directory, or DownloadError."""
    if not key or "\\" in key or "\x00" in key:
        raise DownloadError(
            f"refusing object name {key!r}: not a plain relative path", reason="unsafe_path", status=400
        )
    path = PurePosixPath(key)
    if path.is_absolute() or any(part in ("..", "") for part in key.split("/")) or path.parts[0] == META_DIR:
        raise DownloadError(
            f"refusing object name {key!r}: it would escape the target directory", reason="unsafe_path", status=400
        )
    return str(path)


def final_path(root: Path, relative: str) -> Path:
    return root / relative


def partial_path(root: Path, relative: str) -> Path:
    target = root / relative
    return target.with_name("." + target.name + PARTIAL_SUFFIX)


def meta_dir(root: Path) -> Path:
    return root / META_DIR


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader sees the old or the new content, never a mix."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a full disk, say: leave the old content and no stray temporary file
        raise
