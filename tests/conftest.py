"""Suite-wide checks: every log record of in-process servers and every sidecar subprocess's output is kept, and
the session fails if any test secret (tests/support/secrets.py) shows up in any of it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from runtime.logs import JsonFormatter
from tests.support import secrets


class _KeepRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            secrets.keep_output(f"log record {record.name}", self.format(record))
        except Exception:  # a record that cannot be formatted is the test's problem, not the scan's
            self.handleError(record)


@pytest.fixture(scope="session", autouse=True)
def keep_every_log_record() -> Iterator[None]:
    handler = _KeepRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(min(previous, logging.DEBUG) if previous else logging.DEBUG)
    yield
    root.removeHandler(handler)
    root.setLevel(previous)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = secrets.suite_leaks()
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"SECRET LEAK CHECK FAILED ({len(leaks)}):", red=True)
            for leak in leaks[:50]:
                reporter.write_line(f"  {leak}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
