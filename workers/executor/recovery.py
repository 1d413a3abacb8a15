"""Reading the executor's memory back from the ledger after a restart.

The ledger is the system of record for tasks: every state change is an event of this
node's feed. `replay` rebuilds a `TaskBook` from all of them; `stragglers` finds the submits
a previous executor sent that the ledger committed only after the replay had read the feed,
and `catch_up` queues them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from akita.errors import ProtocolError
from akita.ledger import chain
from akita.tasks.queue import TaskBook, TaskRecord
from akita.wire import events

log = logging.getLogger(__name__)

TASK_PREFIX = "task."  # every task event's kind starts so (akita.wire.events)
REPLAY_CHUNK = 5_000  # events read at once: bounds memory, and how long between heartbeats


def replay(path: Path, book: TaskBook, heartbeat: Callable[[], None], after_seq: int = 0
           ) -> tuple[int, int]:
    """Apply every ``task.*`` event of the node's own feed after `after_seq` (a snapshot's)
    to `book`, oldest first, calling `heartbeat` between chunks (a long history must not
    look like a hung worker). Returns (events applied, seq of the last event read)."""
    count = 0
    last_seq = after_seq
    # The whole feed is read through the kind index; the tail after a snapshot by seq (the
    # kind index would walk every task event ever written to find the few after it).
    prefix = None if after_seq else TASK_PREFIX
    try:
        while True:
            chunk = list(chain.read_events(path, kind_prefix=prefix, after_seq=last_seq,
                                            limit=REPLAY_CHUNK))
            for event in chunk:
                if event.kind.startswith(TASK_PREFIX):
                    book.apply(event.kind, event.data, event.ts)
                    count += 1
            if chunk:
                last_seq = chunk[-1].seq
            if len(chunk) < REPLAY_CHUNK:
                break
            heartbeat()
    except chain.LedgerNotFound:
        pass
    if book.unreadable:
        log.warning("skipped %d task events whose data did not decode; the last: %s",
                    book.unreadable, book.last_unreadable)
    return count, last_seq


def stragglers(path: Path, after_seq: int, started_ts: float, horizon_ts: float
               ) -> list[chain.Event]:
    """``task.submitted`` events after `after_seq` that a previous executor stamped before
    this one started (`started_ts`), except for ids this one appended itself since (a
    client's resend). Reads up to events stamped `horizon_ts`."""
    ours: set[str] = set()
    found: list[tuple[chain.Event, str]] = []
    try:
        for event in chain.read_events(path, kind_prefix=events.TaskSubmitted.KIND,
                                        after_seq=after_seq, limit=REPLAY_CHUNK):
            if event.ts > horizon_ts or event.kind != events.TaskSubmitted.KIND:
                continue
            try:
                task_id = events.TaskSubmitted.from_data(event.data).id
            except ProtocolError as exc:
                log.warning("skipping unreadable event %d: %s", event.seq, exc)
                continue
            if event.ts >= started_ts:
                ours.add(task_id)
            else:
                found.append((event, task_id))
    except chain.LedgerNotFound:
        return []
    return [event for event, task_id in found if task_id not in ours]


def catch_up(path: Path, book: TaskBook, after_seq: int, started_ts: float, horizon_ts: float
             ) -> list[TaskRecord]:
    """Queue the `stragglers` the book does not know; returns their records."""
    queued = []
    for event in stragglers(path, after_seq, started_ts, horizon_ts):
        task_id = event.data["id"]  # stragglers() returns only events that decode
        if task_id not in book:
            book.apply(event.kind, event.data, event.ts)
            record = book.get(task_id)
            if record is not None:
                book.push(record)
                queued.append(record)
                log.info("queued task %s, submitted before the restart", task_id)
    return queued
