"""Logging that cannot flood: one line per interval for a repeating error, with a count.

A full disk or a dead peer makes the same error repeat many times a second; the first is
logged at once, the rest at most once per `interval_s`, each line saying how many were
suppressed since the one before.
"""

from __future__ import annotations

import logging
import time
from typing import Any


class LogLimiter:
    """Rate-limits one kind of log line."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.suppressed = 0
        self.total = 0
        self._last = float("-inf")

    def log(self, level: int, msg: str, *args: Any) -> bool:
        """Log `msg % args` unless one was logged within the interval; True if logged."""
        self.total += 1
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self.suppressed += 1
            return False
        if self.suppressed:
            msg += " (%d more like this suppressed)"
            args = (*args, self.suppressed)
        self.logger.log(level, msg, *args)
        self._last = now
        self.suppressed = 0
        return True
