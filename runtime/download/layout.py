"""Where things live in a target directory: model files, their partial downloads, and airuntime's metadata.

DIR/config.json                                     a finished file (renamed into place once complete and verified)
DIR/sub/.model.safetensors.airuntime-partial-RUN    bytes of an unfinished download by run RUN (beside the file)
DIR/sub/.model.safetensors.airuntime-partial-RUN.json  which parts of it are done, for which remote version
DIR/.airuntime/manifest.json            what was downloaded: size, version tag, checksum, mtime of each file
DIR/.airuntime/lock                     flocked while a download writes into DIR (an optimisation, see lease.py)
DIR/.airuntime/runs/RUN                 the lease of run RUN: renewed while it runs, removed when it ends

Partial files carry their run's id, so two runs that write one file at once (on a volume where flock silently
succeeds) never write into the same file; a partial of an earlier run is taken over only once its run is over.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path, PurePosixPath

from runtime.errors import DownloadError

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


def partial_path(root: Path, relative: str, run: str) -> Path:
    target = root / relative
    return target.with_name(f".{target.name}{PARTIAL_SUFFIX}-{run}")


def record_path(partial: Path) -> Path:
    """The resume record beside a partial file."""
    return partial.with_name(partial.name + ".json")


def partials_of(root: Path, relative: str) -> list[tuple[str, Path]]:
    """(run id, partial file) of every partial download of `relative` on disk, of any run; "" is the run of a
    partial named before runs had ids (kept by older releases: resumable too)."""
    target = root / relative
    prefix = f".{target.name}{PARTIAL_SUFFIX}"
    found = []
    try:
        with os.scandir(target.parent) as entries:
            for entry in entries:
                name = entry.name
                if not name.startswith(prefix) or name.endswith(".json"):
                    continue
                rest = name[len(prefix) :]
                if rest == "" or (rest.startswith("-") and rest[1:].isalnum()):
                    found.append((rest[1:], Path(entry.path)))
    except OSError:
        return []
    return found


def meta_dir(root: Path) -> Path:
    return root / META_DIR


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader sees the old or the new content, never a mix."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")  # unique across hosts too
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a full disk, say: leave the old content and no stray temporary file
        raise
