"""Every error the sidecar reports on purpose: one hierarchy, each carrying its message, HTTP status and reason.

`SidecarError` is the base; the HTTP layer turns any of them into a JSON answer with its status, the CLI into one
line on stderr and a non-zero exit. Subclasses say where the error comes from, not how it is shown:

    SidecarError
    ├── ConfigError      a setting (flag, variable, file) the sidecar cannot use      -> exit 2 at start
    │   └── RulesError   a rules table, rules file or profile is malformed
    ├── ApiError         a request the API refuses (bad field, forbidden path, unknown job, draining)
    ├── EngineError      the engine refused, failed or could not be reached
    ├── DownloadError    a download failed; `reason` labels it for metrics (not_found, disk, checksum, ...)
    │   ├── SourceError      the source cannot be understood (400)
    │   └── RetryableError   a transient failure: the same request may succeed when repeated
    └── LoraError        an adapter operation failed

`reason` is a short machine label (metrics, job answers); `message` is the one line a user reads: it names the
setting, field or path at fault and never holds a secret.
"""

from __future__ import annotations

from typing import ClassVar, Self


class SidecarError(Exception):
    """Base of every error the sidecar reports on purpose."""

    default_status: ClassVar[int] = 500
    default_reason: ClassVar[str] = "error"

    def __init_subclass__(cls, status: int | None = None, reason: str | None = None) -> None:
        """`class X(SidecarError, status=400, reason="x")` sets X's defaults."""
        super().__init_subclass__()
        if status is not None:
            cls.default_status = status
        if reason is not None:
            cls.default_reason = reason

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status if status is not None else self.default_status
        self.reason = reason if reason is not None else self.default_reason

    def with_status(self, status: int) -> Self:
        """The same error answered with another status (AIBrix's endpoints say 422 where ours say 400)."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        Exception.__init__(clone, self.message)
        clone.status = status
        return clone


class ConfigError(SidecarError, status=400, reason="config"):
    """A setting has a value the sidecar cannot use; the message names the setting."""


class RulesError(ConfigError):
    """A rules table, rules file or profile is malformed or names something unknown; the message names the file
    and the key."""


class ApiError(SidecarError, status=400, reason="bad_request"):
    """A request the API refuses: the status says why (400 malformed, 403 outside the allowed roots, 404 unknown,
    409 conflict, 413 too large, 501 unsupported, 503 draining)."""


class EngineError(SidecarError, status=502, reason="engine"):
    """The engine refused (its status passed through), failed (502) or did not answer in time (504)."""


class DownloadError(SidecarError, status=502, reason="other"):
    """A download failed for a reason the user can act on."""


class SourceError(DownloadError, status=400, reason="bad_source"):
    """The source cannot be understood; the message says which form was expected."""


class RetryableError(DownloadError):
    """A transient failure (connection cut, 5xx, timeout): the same request may succeed when repeated.

    `throttled` marks the source asking to slow down (429, S3's 503 SlowDown): the retry waits longer.
    `retry_after` is the source's Retry-After in seconds when it sent one (honoured up to a cap).
    """

    def __init__(
        self, message: str, *, throttled: bool = False, retry_after: float | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message, 502, reason or ("throttled" if throttled else "transient"))
        self.throttled = throttled
        self.retry_after = retry_after


class LoraError(SidecarError, status=400, reason="lora"):
    """An adapter operation failed: a bad name or path (400), a conflict (409), the engine's refusal."""
