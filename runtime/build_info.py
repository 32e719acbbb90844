"""What `airuntime --version` reports: version, git commit, build date and the embedded Python.

A binary build writes `runtime/_build_stamp.py` (COMMIT, BUILD_DATE) before compiling; from a source checkout the
commit is read from git when available.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from runtime import __version__


def _stamp() -> tuple[str, str]:
    try:
        from runtime import _build_stamp  # type: ignore[attr-defined]

        return str(_build_stamp.COMMIT), str(_build_stamp.BUILD_DATE)
    except ImportError:
        pass
    checkout = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return commit or "unknown", "source checkout"


def version_text() -> str:
    commit, built = _stamp()
    return (
        f"airuntime {__version__}\ncommit: {commit}\nbuilt: {built}\n"
        f"python: {platform.python_implementation()} {platform.python_version()}"
    )
