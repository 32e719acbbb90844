"""The record of finished files beside the model (`.airuntime/manifest.json`): what makes a re-run cheap.

A file counts as complete when the manifest holds it with the remote's current size and version tag and the file
on disk still has the recorded size and modification time. A file changed on disk since (even at the same size)
is checked again against its checksum, or fetched again when the source gives none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from runtime.download.backends.base import RemoteFile
from runtime.download.layout import meta_dir, write_atomically

MANIFEST_NAME = "manifest.json"


@dataclass
class ManifestEntry:
    size: int
    etag: str | None
    sha256: str | None
    md5: str | None
    git_sha1: str | None
    mtime_ns: int
    completed_at: float


class Manifest:
    def __init__(self, root: Path, source: str, entries: dict[str, ManifestEntry]) -> None:
        self.root = root
        self.source = source
        self.entries = entries

    @classmethod
    def load(cls, root: Path, source: str) -> Manifest:
        path = meta_dir(root) / MANIFEST_NAME
        try:
            document = orjson.loads(path.read_bytes())
            entries = {name: ManifestEntry(**entry) for name, entry in document.get("files", {}).items()}
        except (OSError, orjson.JSONDecodeError, TypeError, AttributeError):
            entries = {}  # no manifest, or an unreadable one: every file is checked again
        return cls(root, source, entries)

    def matches_remote(self, remote: RemoteFile) -> ManifestEntry | None:
        entry = self.entries.get(remote.path)
        if entry is None or entry.size != remote.size or entry.etag != remote.etag:
            return None
        return entry

    def unchanged_on_disk(self, entry: ManifestEntry, path: Path) -> bool:
        try:
            stat = path.stat()
        except OSError:
            return False
        return stat.st_size == entry.size and stat.st_mtime_ns == entry.mtime_ns

    def record(self, remote: RemoteFile, path: Path, completed_at: float) -> None:
        stat = path.stat()
        self.entries[remote.path] = ManifestEntry(
            size=remote.size,
            etag=remote.etag,
            sha256=remote.sha256,
            md5=remote.md5,
            git_sha1=remote.git_sha1,
            mtime_ns=stat.st_mtime_ns,
            completed_at=completed_at,
        )

    def serialize(self) -> bytes:
        """The manifest's bytes as of now (on the event loop); `write` can then run in a thread."""
        document = {
            "source": self.source,
            "files": {name: asdict(entry) for name, entry in sorted(self.entries.items())},
        }
        return orjson.dumps(document, option=orjson.OPT_INDENT_2)

    def write(self, data: bytes) -> None:
        directory = meta_dir(self.root)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(directory / MANIFEST_NAME, data)
