"""Answers the executor sends later than the request: acknowledgements held until the ledger
has made something durable, and outcomes pushed to the clients watching tasks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from akita import protocol
from akita.taskqueue import TaskRecord
from workers.base import Request

RESULTS_PER_MESSAGE = 1000


class DeferredReply:
    """A reply sent once every ledger event it waits for is durable: `hold()` per event,
    `release()` as each becomes durable, `seal()` once no more will be held."""

    __slots__ = ("build", "request", "sealed", "waiting")

    def __init__(self, request: Request, build: Callable[[], protocol.Message]) -> None:
        self.request, self.build, self.waiting, self.sealed = request, build, 0, False

    def hold(self) -> None:
        self.waiting += 1

    def release(self, _seq: int = 0) -> None:
        self.waiting -= 1
        if self.sealed and self.waiting == 0:
            self.request.reply(self.build())

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
