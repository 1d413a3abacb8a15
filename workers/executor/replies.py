"""The executor's answers: to queries (status, list, types, stats), and those it sends later
than the request: acknowledgements held until the ledger has made something durable, and
outcomes pushed to the clients watching tasks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from akita.tasks.queue import TaskBook, TaskRecord, TaskState
from akita.tasks.registry import TaskTable
from akita.wire import protocol
from workers.base import Request
from workers.executor.pool import TaskPool

RESULTS_PER_MESSAGE = 1000


class DeferredReply:
    """A reply sent once every ledger event it waits for is durable: `hold()` per event,
    `release()` as each becomes durable, `seal()` once no more will be held."""

    __slots__ = ("build", "errors", "request", "sealed", "waiting")

    def __init__(self, request: Request, build: Callable[[], protocol.Message],
                 errors: list[list[Any]] | None = None) -> None:
        self.request, self.build, self.waiting, self.sealed = request, build, 0, False
        self.errors = errors  # where `refuse` notes [index, code, message], if anywhere

    def hold(self) -> None:
        self.waiting += 1

    def release(self, _seq: int = 0) -> None:
        self.waiting -= 1
        if self.sealed and self.waiting == 0:
            self.request.reply(self.build())

    def refuse(self, index: int, code: str, message: str) -> None:
        """What item `index` waited for will not become durable (soon): say why, release."""
        if self.errors is not None:
            self.errors.append([index, code, message])
        self.release()

    def seal(self) -> None:
        self.sealed = True
        if self.waiting == 0:
            self.request.reply(self.build())


class Watchers:
    """Who waits for which task's outcome; outcomes gathered per client and sent together
    (`flush`), many per message, with the rid of that client's watching request."""

    def __init__(self) -> None:
        self._by_task: dict[str, list[Request]] = {}
        self._outbox: dict[bytes, tuple[Request, list[dict[str, Any]]]] = {}

    def watch(self, task_id: str, request: Request) -> None:
        watchers = self._by_task.get(task_id)
        if watchers is None:
            self._by_task[task_id] = [request]
        elif all(w.peer != request.peer for w in watchers):
            watchers.append(request)

    def deliver(self, record: TaskRecord) -> None:
        """`record` has its outcome: queue it for everyone watching."""
        watchers = self._by_task.pop(record.id, None)
        if not watchers:
            return
        outcome = record.outcome()
        for request in watchers:
            entry = self._outbox.get(request.peer)
            if entry is None:
                self._outbox[request.peer] = (request, [outcome])
            else:
                entry[1].append(outcome)

    def flush(self) -> None:
        for request, outcomes in self._outbox.values():
            for start in range(0, len(outcomes), RESULTS_PER_MESSAGE):
                request.reply(protocol.TaskResults(
                    results=outcomes[start:start + RESULTS_PER_MESSAGE]))
        self._outbox.clear()

    def __bool__(self) -> bool:
        """True while outcomes wait to be sent."""
        return bool(self._outbox)


# --- queries --------------------------------------------------------------------------------


class DelegationFigures(Protocol):
    """What `task.stats` reads of the executor's delegation (`delegation.Delegation`)."""

    def totals(self) -> dict[str, int]: ...

    def load(self, counts: dict[str, int], table: TaskTable) -> dict[str, Any]: ...


class PacingState(Protocol):
    """What `task.stats` reads of the executor's pacing (`pacing.Pacing`)."""

    @property
    def saturated(self) -> bool: ...

    @property
    def changes(self) -> int: ...


class QueryOwner(Protocol):
    """What the query answers read of the executor (`worker.ExecutorWorker`); they change
    nothing."""

    @property
    def book(self) -> TaskBook: ...

    @property
    def table(self) -> TaskTable: ...

    @property
    def pool(self) -> TaskPool: ...

    @property
    def delegation(self) -> DelegationFigures: ...

    @property
    def pacing(self) -> PacingState: ...


def on_status(ex: QueryOwner, request: Request) -> protocol.Message:
    msg = request.message
    assert isinstance(msg, protocol.TaskStatus)
    views: list[dict[str, Any] | None] = []
    for task_id in msg.ids:
        record = ex.book.get(task_id) if isinstance(task_id, str) else None
        view = None if record is None else record.view()
        reason = record and ex.book.waiting_for(record)
        if view is not None and reason:
            view["waiting_for"] = reason
        views.append(view)
    return protocol.TaskStatusReply(tasks=views)


def on_list(ex: QueryOwner, request: Request) -> protocol.Message:
    msg = request.message
    assert isinstance(msg, protocol.TaskList)
    try:
        state = TaskState(msg.state) if msg.state else None
    except ValueError:
        return protocol.Error(code="bad_request", message=f"unknown state {msg.state!r}; "
                              "one of: " + ", ".join(s.value for s in TaskState))
    records = list(ex.book.in_state(state))
    shown = [r.summary() for r in records[max(0, len(records) - msg.limit):]]
    return protocol.TaskListReply(tasks=shown, total=len(records))


def on_types(ex: QueryOwner, request: Request) -> protocol.Message:
    return protocol.TaskTypesReply(types=[t.describe() for _, t in
                                          sorted(ex.table.types.items())])


def on_stats(ex: QueryOwner, request: Request) -> protocol.Message:
    counts = ex.book.counts()
    return protocol.TaskStatsReply(counts=counts, pool=ex.pool.describe(),
                                   totals={"processes_started": ex.pool.started,
                                           "processes_lost": ex.pool.lost,
                                           # asked of the fork server, not forked yet
                                           "processes_starting": len(ex.pool.starting),
                                           "queued": ex.book.queued(),
                                           # 1 while the pool is saturated (paced sending)
                                           "saturated": int(ex.pacing.saturated),
                                           "pacing_changes": ex.pacing.changes,
                                           **ex.delegation.totals()},
                                   load=ex.delegation.load(counts, ex.table),
                                   by_priority=_by_priority(ex))


def _by_priority(ex: QueryOwner) -> dict[str, int]:
    merged: dict[str, int] = {}
    for queue in (ex.book.queue, ex.book.for_peers):
        for priority, count in queue.by_priority.items():
            merged[str(priority)] = merged.get(str(priority), 0) + count
    return merged
