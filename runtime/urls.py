"""URLs and secrets as they may be shown: in logs, errors, answers and the printed configuration."""

from __future__ import annotations

from urllib.parse import urlsplit

from yarl import URL


def public_url(url: str) -> str:
    """The URL as it may appear in logs, errors and /ready: no user or password."""
    try:
        parsed = URL(url)
    except ValueError:
        return "<unparseable URL>"
    if parsed.user is None and parsed.password is None:
        return url
    return str(parsed.with_user(None).with_password(None))


def mask_secret(secret: str) -> str:
    return "****" if secret else ""


def shown_url(url: str) -> str:
    """A URL as it may appear in logs, answers and errors: no user, password, query or fragment (a signed URL's
    signature is in its query). Never raises."""
    if "://" not in url:
        return url.rpartition("@")[2].split("?", 1)[0].split("#", 1)[0]  # a bare host[:port][/path]
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"
