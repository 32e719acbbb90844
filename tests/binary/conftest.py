"""Tests of the built binary (dist/airuntime): they run when AIRUNTIME_BIN names it (`make test-binary`).

Without AIRUNTIME_BIN they skip. With CI=true and AIRUNTIME_BIN set, a missing file is a failure, not a skip.
The rootfs tests also need AIRUNTIME_ROOTFS (made by `make rootfs`) and root, for chroot and mount.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _in_ci() -> bool:
    return os.environ.get("CI") == "true"


@pytest.fixture(scope="session")
def binary() -> Path:
    value = os.environ.get("AIRUNTIME_BIN")
    if not value:
        pytest.skip("AIRUNTIME_BIN not set (make test-binary sets it to dist/airuntime)")
    path = Path(value).resolve()
    if not (path.is_file() and os.access(path, os.X_OK)):
        message = f"AIRUNTIME_BIN={value} is not an executable file (run `make binary`)"
        if _in_ci():
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def rootfs(binary: Path) -> Path:
    value = os.environ.get("AIRUNTIME_ROOTFS")
    if not value:
        pytest.skip("AIRUNTIME_ROOTFS not set (make test-binary sets it to build/out/rootfs)")
    path = Path(value).resolve()
    if not (path / ".complete").is_file():
        message = f"AIRUNTIME_ROOTFS={value} is not a finished rootfs (run `make rootfs`)"
        if _in_ci():
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    if os.geteuid() != 0:
        pytest.skip("the rootfs tests need root (chroot, mount namespaces)")
    return path


@pytest.fixture(scope="session")
def standalone(binary: Path) -> Path:
    """The standalone folder of the same build (dist/airuntime.dist, what the image ships): AIRUNTIME_DIST."""
    value = os.environ.get("AIRUNTIME_DIST")
    if not value:
        pytest.skip("AIRUNTIME_DIST not set (make test-binary sets it to dist/airuntime.dist)")
    path = Path(value).resolve()
    if not os.access(path / "airuntime", os.X_OK):
        message = f"AIRUNTIME_DIST={value} has no program `airuntime` (run `make binary`)"
        if _in_ci():
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return path


def peer_missing(message: str) -> None:
    """A real peer is not installed: a failure in CI (which runs `make peers` first), else a skip."""
    if _in_ci():
        pytest.fail(f"CI=true and {message} (make peers installs it)", pytrace=False)
    pytest.skip(f"{message} (make peers installs it)")
