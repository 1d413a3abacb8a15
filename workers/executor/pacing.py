"""How eagerly the executor and its task processes send, by how loaded the pool is.

While every task process holds all the work it may (`TaskPool.fill` left tasks queued), the
node's own work competes with the tasks for the same cores, and nobody gains from an outcome
sent a few milliseconds sooner: the tasks behind it wait for the pool anyway. So, saturated,

- task processes gather outcomes for up to `SATURATED_FLUSH_S` (not `taskproc.FLUSH_S`)
  before sending them, so the executor wakes less often and handles more per wake-up; each
  may hold `SATURATED_PREFETCH_S` of work (not `pool.PREFETCH_S`), so it never runs dry
  while its outcomes wait and the executor's answer travels;
- the executor's ledger appends linger up to `SATURATED_LINGER_S` (`LedgerClient.linger_s`),
  so the ledger commits and fsyncs larger groups, and its committed events reach the bus and
  the clients in fewer, larger messages.

A burst that leaves tasks queued for a moment does not count: the queue must stay non-empty
for `SATURATED_AFTER_S` first, so latency under moderate load is left alone. As soon as the
queue is empty again both go back to sending at once (lowest latency). What
changes is only when things are sent: a submit is still acknowledged only once its
task.submitted is durable, and an outcome reported only once it is durable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from workers.executor.pool import PREFETCH_S
from workers.executor.taskproc import FLUSH_S

SATURATED_FLUSH_S = 0.02
SATURATED_LINGER_S = 0.02
SATURATED_PREFETCH_S = 2 * SATURATED_FLUSH_S
SATURATED_AFTER_S = 0.02


class Lingering(Protocol):
    """What pacing sets on the executor's `LedgerClient`."""

    linger_s: float

    def tick(self) -> None: ...


class Prefetching(Protocol):
    """What pacing sets on the executor's `TaskPool`."""

    prefetch_s: float


class Pacing:
    """The executor's current pace; `update(saturated)` after every fill of the pool."""

    def __init__(self, ledger: Lingering, pool: Prefetching,
                 send_all: Callable[[str, Any], None]) -> None:
        self.ledger = ledger
        self.pool = pool
        self.send_all = send_all  # (op, body) to every task process
        self.saturated = False
        self.changes = 0
        self._backlog_since = 0.0  # monotonic time the queue was last seen to fill; 0: empty

    @property
    def flush_s(self) -> float:
        """How long a task process may hold an outcome behind short tasks, now."""
        return SATURATED_FLUSH_S if self.saturated else FLUSH_S

    def update(self, backlog: bool, now: float | None = None) -> None:
        """After a fill: `backlog` if tasks were left queued (every process holds all it may)."""
        if not backlog:
            self._backlog_since = 0.0
            self._set(False)
            return
        now = time.monotonic() if now is None else now
        if not self._backlog_since:
            self._backlog_since = now
        elif now - self._backlog_since >= SATURATED_AFTER_S:
            self._set(True)

    def _set(self, saturated: bool) -> None:
        if saturated is self.saturated:
            return
        self.saturated = saturated
        self.changes += 1
        self.ledger.linger_s = SATURATED_LINGER_S if saturated else 0.0
        self.pool.prefetch_s = SATURATED_PREFETCH_S if saturated else PREFETCH_S
        if not saturated:
            self.ledger.tick()  # what lingered goes now
        self.send_all("pace", self.flush_s)
