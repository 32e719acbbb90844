"""Tests of the built binary (dist/airuntime): they run when AIRUNTIME_BIN names it (`make test-binary`).

Without AIRUNTIME_BIN they skip. With CI=true and AIRUNTIME_BIN set, a missing file is a failure, not a skip.
The rootfs tests also need AIRUNTIME_ROOTFS (made by `make rootfs`) and root, for chroot and mount.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _in_ci() -> bool:
    return os.environ.get("CI") == "true"


def _required(variable: str, default_hint: str, usable: Callable[[Path], bool], problem: str) -> Path:
    """The path in `variable`: skipped when unset; when unusable a skip, or a failure under CI=true."""
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} not set (make test-binary sets it to {default_hint})")
    path = Path(value).resolve()
    if not usable(path):
        message = f"{variable}={value} {problem}"
        if _in_ci():
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def binary() -> Path:
    return _required(
        "AIRUNTIME_BIN",
        "dist/airuntime",
        lambda p: p.is_file() and os.access(p, os.X_OK),
        "is not an executable file (run `make binary`)",
    )


@pytest.fixture(scope="session")
def rootfs(binary: Path) -> Path:
    path = _required(
        "AIRUNTIME_ROOTFS",
        "build/out/rootfs",
        lambda p: (p / ".complete").is_file(),
        "is not a finished rootfs (run `make rootfs`)",
    )
    if os.geteuid() != 0:
        pytest.skip("the rootfs tests need root (chroot, mount namespaces)")
    return path


@pytest.fixture(scope="session")
def standalone(binary: Path) -> Path:
    """The standalone folder of the same build (dist/airuntime.dist, what the image ships): AIRUNTIME_DIST."""
    return _required(
        "AIRUNTIME_DIST",
        "dist/airuntime.dist",
        lambda p: os.access(p / "airuntime", os.X_OK),
        "has no program `airuntime` (run `make binary`)",
    )


def peer_missing(message: str) -> None:
    """A real peer is not installed: a failure in CI (which runs `make peers` first), else a skip."""
    if _in_ci():
        pytest.fail(f"CI=true and {message} (make peers installs it)", pytrace=False)
    pytest.skip(f"{message} (make peers installs it)")
