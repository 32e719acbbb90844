"""Parse a model source into a `SourceSpec`: which backend, and where inside it.

Accepted forms: `org/repo` and `hf://org/repo[@revision]` (HuggingFace), `ms://owner/name` (Kthena) and
`modelscope://owner/name[:revision]` (KServe) for ModelScope (either scheme takes the `:revision`), `s3://`,
`tos://`, `obs://`, `gs://`, `az://container/prefix` (object stores), `pvc://path` (`/path`, as Kthena mounts a
claim), `file:///path` or an absolute path (mounted volumes), and `https://host/path/file` (one file over HTTPS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from runtime.errors import SourceError
from runtime.urls import shown_url

OBJECT_STORE_SCHEMES = ("s3", "tos", "obs", "gs", "az")
MODELSCOPE_SCHEMES = ("ms", "modelscope")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class SourceSpec:
    scheme: str  # hf, ms, s3, tos, obs, gs, az, local, https
    location: str  # repo id, bucket, directory, or URL
    prefix: str = ""  # key prefix inside a bucket
    revision: str | None = None

    def describe(self) -> str:
        if self.scheme == "hf":
            return f"hf://{self.location}" + (f"@{self.revision}" if self.revision else "")
        if self.scheme == "ms":
            return f"ms://{self.location}" + (f":{self.revision}" if self.revision else "")
        if self.scheme in OBJECT_STORE_SCHEMES:
            return f"{self.scheme}://{self.location}/{self.prefix}".rstrip("/")
        if self.scheme == "https":
            return shown_url(self.location)
        return self.location


def parse_source(raw: str, revision: str | None = None) -> SourceSpec:
    text = raw.strip()
    if not text:
        raise SourceError("the source is empty")
    lowered = text.lower()
    if lowered.startswith("hf://"):
        return _huggingface(text[5:], revision, raw)
    scheme, sep, rest = text.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme in MODELSCOPE_SCHEMES:
            return _modelscope(rest, revision, raw)
        if scheme in OBJECT_STORE_SCHEMES:
            bucket, _, prefix = rest.partition("/")
            if not bucket:
                raise SourceError(f"{raw!r}: expected {scheme}://BUCKET[/PREFIX]")
            return SourceSpec(scheme=scheme, location=bucket, prefix=prefix.strip("/"))
        if scheme in ("pvc", "file"):
            if not rest.strip("/"):
                raise SourceError(f"{raw!r}: expected {scheme}://PATH")
            return SourceSpec(scheme="local", location="/" + rest.lstrip("/"))  # pvc://models is /models, as Kthena
        if scheme in ("https", "http"):
            parts = urlsplit(text)
            try:
                parts.port  # noqa: B018 - raises ValueError for a port that is no number from 0 to 65535
            except ValueError:
                raise SourceError(f"{shown_url(text)!r}: the port is not a number from 1 to 65535") from None
            if not parts.hostname:
                raise SourceError(f"{shown_url(text)!r}: expected https://HOST/PATH")
            return SourceSpec(scheme="https", location=text)
        raise SourceError(
            f"{raw!r}: unknown scheme {scheme!r}; use org/repo, hf://, ms://, modelscope://, s3://, tos://, obs://, "
            "gs://, az://, pvc://, file:// or https://"
        )
    if text.startswith("/"):
        return SourceSpec(scheme="local", location=text)
    return _huggingface(text, revision, raw)


def _huggingface(text: str, revision: str | None, raw: str) -> SourceSpec:
    repo, _, inline_revision = text.partition("@")
    repo = repo.strip("/")
    if not _REPO_ID.fullmatch(repo):
        raise SourceError(f"{raw!r}: expected a HuggingFace repo id ORG/NAME (or a URI such as s3://BUCKET/PREFIX)")
    return SourceSpec(scheme="hf", location=repo, revision=revision or inline_revision or None)


def _modelscope(text: str, revision: str | None, raw: str) -> SourceSpec:
    repo, _, inline_revision = text.partition(":")
    repo = repo.strip("/")
    if not _REPO_ID.fullmatch(repo):
        raise SourceError(
            f"{raw!r}: expected a ModelScope model id, ms://OWNER/NAME or modelscope://OWNER/NAME[:REVISION]"
        )
    return SourceSpec(scheme="ms", location=repo, revision=revision or inline_revision.strip() or None)
