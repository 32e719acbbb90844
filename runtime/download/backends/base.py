"""What every backend provides: the files it lists and the byte ranges it reads (errors: runtime/errors.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    from obstore import Bytes

# What a backend yields: any object with the buffer protocol, written to disk as it is (obstore's Bytes included).
Chunk: TypeAlias = "bytes | bytearray | memoryview | Bytes"


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative, `/`-separated, already checked to stay inside the target directory
    size: int
    etag: str | None = None  # the source's version tag: S3 ETag, git blob id, HTTP ETag
    sha256: str | None = None  # content checksum when the source publishes one (HF LFS files)
    md5: str | None = None  # content MD5 when known (S3 ETag of a single-part upload)
    git_sha1: str | None = None  # git blob id of a small HF file: sha1(b"blob <size>\0" + content)
    ranged: bool = True  # False: the source ignores Range for this file (fetched as one stream, never in parts)


class Backend(Protocol):
    def describe(self) -> str:
        """The source, for logs and job status: never a credential."""
        ...

    async def list_files(self) -> list[RemoteFile]:
        """Every file of the model, or DownloadError (never an empty list: that is an error too)."""
        ...

    def read_range(self, file: RemoteFile, start: int, end: int) -> AsyncIterator[Chunk]:
        """Bytes [start, end) of `file`, in chunks (any buffer). Raises RetryableError for transient failures."""
        ...

    async def close(self) -> None: ...


# Optional, looked up by the transfer engine: `read_range_blocking(file, start, end) -> Iterator[Chunk]`, the same
# bytes for a thread of its own (no event loop; see runtime/download/part_thread.py). A backend may set it to None
# when that path does not apply (the HTTP backends do when a proxy is configured).
