"""The models downloaded under a directory, for AIBrix's `GET /v1/model/list`: a bounded walk for manifests.

A model root is a directory holding `.airuntime/manifest.json` (written by every finished download); the walk never
follows symlinks, stops at `MAX_DEPTH` below the root and after `MAX_DIRS` directories, so listing `/` cannot walk
a whole filesystem. It does blocking I/O: call it in a thread.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from runtime.download.layout import META_DIR, meta_dir
from runtime.download.manifest import MANIFEST_NAME

MAX_DEPTH = 4  # ROOT/org/name/.airuntime/manifest.json is depth 3
MAX_DIRS = 10_000


def find_models(root: Path) -> list[tuple[Path, str]]:
    """(model root, source) for every downloaded model under `root`, sorted."""
    found: list[tuple[Path, str]] = []
    pending = [(root, 0)]
    visited = 0
    while pending and visited < MAX_DIRS:
        directory, depth = pending.pop()
        visited += 1
        manifest = meta_dir(directory) / MANIFEST_NAME
        if _is_file(manifest):
            found.append((directory, _source_of(manifest)))
            continue
        if depth < MAX_DEPTH:
            pending.extend((child, depth + 1) for child in _subdirectories(directory))
    return sorted(found)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long, a folder we may not read: nothing listed there
        return False


def _source_of(manifest: Path) -> str:
    try:
        return str(orjson.loads(manifest.read_bytes()).get("source", ""))
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return ""


def _subdirectories(directory: Path) -> list[Path]:
    try:
        with os.scandir(directory) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False) and e.name != META_DIR]
    except OSError:
        return []
