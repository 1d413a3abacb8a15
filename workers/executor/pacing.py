"""How eagerly the executor and its task processes send, by how loaded the pool is.

While every task process holds all the work it may (`TaskPool.fill` left tasks queued), the
node's own work competes with the tasks for the same cores, and nobody gains from an outcome
sent a few milliseconds sooner: the tasks behind it wait for the pool anyway. So, saturated,

- task processes gather outcomes for up to `SATURATED_FLUSH_S` (not `taskproc.FLUSH_S`)
  before sending them, so the executor wakes less often and handles more per wake-up;
- the executor's ledger appends linger up to `SATURATED_LINGER_S` (`LedgerClient.linger_s`),
  so the ledger commits and fsyncs larger groups, and its committed events reach the bus and
  the clients in fewer, larger messages.

As soon as the queue is empty again both go back to sending at once (lowest latency). What
changes is only when things are sent: a submit is still acknowledged only once its
task.submitted is durable, and an outcome reported only once it is durable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from workers.executor.taskproc import FLUSH_S

SATURATED_FLUSH_S = 0.01
SATURATED_LINGER_S = 0.01


class Lingering(Protocol):
    """What pacing sets on the executor's `LedgerClient`."""

    linger_s: float

    def tick(self) -> None: ...


class Pacing:
    """The executor's current pace; `update(saturated)` after every fill of the pool."""

    def __init__(self, ledger: Lingering, send_all: Callable[[str, Any], None]) -> None:
        self.ledger = ledger
        self.send_all = send_all  # (op, body) to every task process
        self.saturated = False
        self.changes = 0

    @property
    def flush_s(self) -> float:
        """How long a task process may hold an outcome behind short tasks, now."""
        return SATURATED_FLUSH_S if self.saturated else FLUSH_S

    def update(self, saturated: bool) -> None:
        if saturated is self.saturated:
            return
        self.saturated = saturated
        self.changes += 1
        self.ledger.linger_s = SATURATED_LINGER_S if saturated else 0.0
        if not saturated:
            self.ledger.tick()  # what lingered goes now
        self.send_all("pace", self.flush_s)
