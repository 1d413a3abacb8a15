"""The figures the observer keeps, shared by the observer thread and the HTTP threads.

Everything sits in one `Observations` object behind one lock; readers take a consistent
`view()` (plain dicts and lists, copied under the lock) and never hold the lock while they
format a page.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

# The ledger event kinds that end a task, and the state each names.
FINAL_STATES = {"task.succeeded": "succeeded", "task.failed": "failed",
                "task.timed_out": "timed_out", "task.cancelled": "cancelled"}
RUN_TIME_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
LAST_EVENTS = 50
MAX_COUNTER_KEYS = 512  # most gateway counters exported: a peer cannot grow the page


class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus histograms have them."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)   # the first bound >= value
        if index < len(self.counts):
            self.counts[index] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """[(le, cumulative count)], ending with +Inf."""
        out, total = [], 0
        for bound, count in zip(self.bounds, self.counts):
            total += count
            out.append((repr(float(bound)), float(total)))
        out.append(("+Inf", float(self.count)))
        return out


class Observations:
    """The node as last observed; every field is guarded by `lock`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.steps = 0
        self.node: dict[str, Any] = {}
        self.workers: list[dict[str, Any]] = []
        self.processes: dict[str, dict[str, Any]] = {}
        self.uss: dict[int, int | None] = {}
        self.executor: Any = None       # the last task.stats_reply, None if it did not answer
        self.gateway: dict[str, Any] = {}  # stats / peers / clusters replies (None: no answer)
        self.ledger: dict[str, Any] = {}
        self.submitted: dict[str, int] = {}
        self.finished: dict[tuple[str, str], int] = {}
        self.delegated = 0
        self.received = 0
        self.events_by_kind: dict[str, int] = {}
        self.run_time = Histogram(RUN_TIME_BUCKETS_S)
        self.commit_latency = Histogram(LATENCY_BUCKETS_S)
        self.last_events: deque[dict[str, Any]] = deque(maxlen=LAST_EVENTS)
        self.history: deque[dict[str, Any]] = deque(maxlen=721)
        self.bad_requests: dict[str, int] = {}

    def count_bad_request(self, reason: str) -> None:
        with self.lock:
            self.bad_requests[reason] = self.bad_requests.get(reason, 0) + 1


def flatten_counters(stats: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, float]]:
    """(dotted key, number) for every numeric leaf of nested dicts: how the gateway's
    counters reach /metrics, so a counter added there appears without a change here."""
    if not isinstance(stats, dict) or depth > 4:
        return
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if isinstance(value, (bool, int, float)):
            yield name, float(value)
        elif isinstance(value, dict):
            yield from flatten_counters(value, name + ".", depth + 1)
