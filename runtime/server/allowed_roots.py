"""`--allowed-root`: every filesystem path an API caller names must resolve inside one of the configured roots.

Checked paths: download targets (`output_dir`, `local_dir`, AIBrix's model root), local sources (`pvc://`,
`file://`, absolute paths), LoRA `lora_path`/`output_dir` and `/v1/model/list?local_dir=`. Resolution follows
symlinks in every existing component (`os.path.realpath`), so a link inside a root that points outside is refused,
and `..` cannot climb out. With no roots configured every path is allowed (the AIBrix/Kthena behaviour).
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.download.service import DownloadRequest
from runtime.download.uri import parse_source
from runtime.errors import ApiError, SourceError


class AllowedRoots:
    def __init__(self, roots: tuple[str, ...]) -> None:
        self._roots = roots  # already absolute and symlink-resolved (runtime/config.py normalize_roots)

    def allows(self, path: str | Path) -> bool:
        if not self._roots:
            return True
        try:
            resolved = os.path.realpath(path)
        except (ValueError, OSError):  # a NUL byte, a path too long: never inside a root
            return False
        return any(resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep) for root in self._roots)

    def check(self, path: str | Path, what: str) -> None:
        """403 unless PATH resolves inside an allowed root; the message names the field, never other paths."""
        if not self.allows(path):
            raise ApiError(f"{what} {str(path)!r} is outside the allowed roots of this sidecar", 403, "forbidden")

    def check_download(self, download: DownloadRequest, what: str = "output_dir") -> None:
        self.check(download.local_dir, what)
        if not self._roots:
            return
        try:
            spec = parse_source(download.source, download.revision)
        except SourceError:
            return  # the download itself reports the malformed source with a 400
        if spec.scheme == "local":
            self.check(spec.location, "source")
