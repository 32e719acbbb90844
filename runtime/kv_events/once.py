"""Log a problem the first time it happens, then only count it: a flood of bad frames must not flood the log."""

from __future__ import annotations

import logging

MAX_KEYS = 256  # distinct problems remembered; past it nothing new is logged (counters still count)


class OnceLog:
    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.seen: set[str] = set()

    def warning(self, key: str, message: str, *args: object) -> None:
        if key in self.seen or len(self.seen) >= MAX_KEYS:
            return
        self.seen.add(key)
        self.logger.warning(message + " (logged once)", *args)

    def forget(self, prefix: str) -> None:
        """Log problems starting with `prefix` again next time (e.g. Redis errors once Redis was back)."""
        self.seen = {key for key in self.seen if not key.startswith(prefix)}
