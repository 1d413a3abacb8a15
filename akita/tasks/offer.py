"""Which queued tasks a peer may take now: the delegation rule, as a pure function.

The executor asks this when the gateway offers a peer's capacity (`task.take`); see `offer`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from akita.tasks.queue import TaskBook, TaskRecord

KEEP_PER_PROCESS = 2    # queued tasks per task process always kept for this node
UNSEEN_TYPE_S = 1.0     # what a task of a type this node has not timed yet is taken to cost
OFFER_SCAN_LIMIT = 20_000   # queued tasks looked at per offer, whatever the peer matches


def offer(book: TaskBook, *, types: Iterable[str], capabilities: Iterable[str], max_tasks: int,
          pool_size: int, keep_s: float, estimate: Callable[[str], float | None]
          ) -> list[TaskRecord]:
    """The queued tasks a peer that runs `types` and declares `capabilities` may take now,
    highest priority first (FIFO within a priority), at most `max_tasks`. Nothing is taken
    from the book: the caller delegates what it hands out.

    The rule: walking the queue in the order the pool would start it, the first
    ``KEEP_PER_PROCESS × pool_size`` tasks stay here, and so do those that follow while the
    work ahead of them (by the pool's running estimate of each type's duration;
    `UNSEEN_TYPE_S` for a type not timed yet) is under `keep_s` per task process: the pool
    starts those soon. Everything after is offered, and so is every task that only a peer can
    run (`TaskBook.for_peers`). A task run here for a peer is never offered on.
    """
    wanted = frozenset(types)
    declared = frozenset(capabilities)
    keep_tasks = KEEP_PER_PROCESS * max(1, pool_size)
    keep_work_s = keep_s * max(1, pool_size)
    ahead, work_ahead_s = 0, 0.0
    chosen: list[TaskRecord] = []
    walk = heapq.merge(book.queue.ordered(), book.for_peers.ordered(), key=_rank)
    for scanned, record in enumerate(walk):
        if len(chosen) >= max_tasks or scanned >= OFFER_SCAN_LIMIT:
            break
        if book.runs_here(record):
            kept = ahead < keep_tasks or work_ahead_s < keep_work_s
            ahead += 1
            cost = estimate(record.name)
            work_ahead_s += UNSEEN_TYPE_S if cost is None else cost
            if kept or record.foreign is not None:
                continue
        if record.name in wanted and declared.issuperset(record.requires):
            chosen.append(record)
    return chosen


def _rank(record: TaskRecord) -> tuple[int, int]:
    return -record.priority, record.order
