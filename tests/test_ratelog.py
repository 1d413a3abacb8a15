"""The rate-limited logger: first line at once, then one per interval with a count."""

from __future__ import annotations

import logging

import pytest

from akita.ratelog import LogLimiter


def test_repeats_are_counted_not_logged(caplog: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("akita.ratelog.time.monotonic", lambda: clock[0])
    limiter = LogLimiter(logging.getLogger("t"), interval_s=10.0)
    with caplog.at_level(logging.ERROR, logger="t"):
        for _ in range(1000):
            limiter.log(logging.ERROR, "disk full at %s", "/d")
        clock[0] += 10.0
        limiter.log(logging.ERROR, "disk full at %s", "/d")
    assert [r.getMessage() for r in caplog.records] == [
        "disk full at /d", "disk full at /d (999 more like this suppressed)"]
    assert limiter.total == 1001 and limiter.suppressed == 0
