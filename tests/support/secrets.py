"""Test secrets and the suite-wide leak check: no secret a test hands the sidecar may come back in a log line.

Tests take their secrets from here (or `register()` their own); every sidecar subprocess's output (the launcher in
`tests.support.sidecar`) and every log record of in-process servers (`tests/conftest.py`) is kept, and at the end of
the session the suite fails if any registered secret appears in any of it.
"""

from __future__ import annotations

API_TOKEN = "airt-api-token-7Q2xVb9Lk3"
ENGINE_API_KEY = "airt-engine-key-R5tY8uI0pZ"
S3_SECRET_KEY = "airt-s3-secret-Hj4Kl6Mn8B"
HF_TOKEN = "hf_airtHubToken3Zx5Cv7Bn9Mq"
URL_PASSWORD = "airt-url-pass-Wq1Er3Ty5U"
REDIS_PASSWORD = "airt-redis-pass-Lm2Nb4Vc6X"

_registered: set[str] = {API_TOKEN, ENGINE_API_KEY, S3_SECRET_KEY, HF_TOKEN, URL_PASSWORD, REDIS_PASSWORD}
_outputs: list[tuple[str, str]] = []


def register(secret: str) -> str:
    """Add a secret the suite must never see in output; returns it for inline use."""
    if len(secret) >= 8:
        _registered.add(secret)
    return secret


def keep_output(where: str, text: str) -> None:
    _outputs.append((where, text))


def leaks_in(text: str) -> list[str]:
    return sorted(secret for secret in _registered if secret in text)


def suite_leaks() -> list[str]:
    """`where: secret` for every kept output that contains a registered secret."""
    found = []
    for where, text in _outputs:
        for secret in leaks_in(text):
            found.append(f"{where}: contains secret {secret[:6]}…")
    return found
