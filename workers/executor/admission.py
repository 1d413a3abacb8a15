"""One admission path for a task, wherever it comes from: a client's `task.submit` or a
peer's `task.run_for` (workers/executor/delegation.py).

The rules, in the order they are checked (the first that fails is the refusal):
the spec is well formed, its type is declared here and its args fit the type's signature
(`TaskTable.parse`); for a peer, this node declares every capability the task requires and
the spec names a valid attempt and timeout; an id already known is a resend, taken only for
the same task (and, for a peer, the same origin); the args fit ``[tasks]
max_payload_bytes``; the queue has room. A local task requiring a capability this node lacks
is admitted: it waits for a peer that declares it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from akita.config import TasksConfig
from akita.tasks.queue import Foreign, TaskBook, TaskRecord
from akita.tasks.registry import Refusal, Submission, TaskTable
from akita.tasks.sizes import too_large
from akita.wire import events


class AdmissionOwner(Protocol):
    """What admission asks of the executor that owns the book (`ExecutorWorker`)."""

    @property
    def table(self) -> TaskTable: ...

    @property
    def book(self) -> TaskBook: ...

    @property
    def settings(self) -> TasksConfig: ...

    def queue_full(self) -> Refusal | None: ...

    def append(self, event: events.Event,
               on_durable: Callable[[int], None] | None = None) -> None: ...

    def submitted(self, record: TaskRecord) -> None: ...


def admit(owner: AdmissionOwner, spec: Any, now: float, origin: str | None = None
          ) -> TaskRecord | Refusal:
    """One task of a submit (`origin` None) or of a run_for from `origin`: its record (new,
    or the one a resend names already), or why it is refused. A new record is appended as
    ``task.submitted``; `owner.submitted(record)` is called once that is durable."""
    task = owner.table.parse(spec)
    if isinstance(task, Refusal):
        return task
    foreign: Foreign | None = None
    if origin is not None:
        checked = _foreign(owner.book, task, spec, origin)
        if isinstance(checked, Refusal):
            return checked
        foreign = checked
    existing = owner.book.get(task.id)
    if existing is not None:
        return _resent(existing, task, foreign)
    refusal = too_large(task.args, owner.settings.max_payload_bytes) or owner.queue_full()
    if refusal is not None:
        return refusal
    record = owner.book.create(task.id, task.name, task.args, task.priority, now,
                               requires=task.requires, foreign=foreign)
    owner.append(_submitted_event(task, foreign), lambda _seq: owner.submitted(record))
    return record


def _foreign(book: TaskBook, task: Submission, spec: Any, origin: str) -> Foreign | Refusal:
    """What a peer's spec adds to a task: checked against this node's capabilities."""
    missing = sorted(set(task.requires) - book.capabilities)
    if missing:
        return Refusal("missing_capability", f"{task.name} requires {', '.join(missing)}, "
                                             "which this node does not declare")
    attempt, timeout_s = spec.get("attempt"), spec.get("timeout")
    if not origin or type(attempt) is not int or attempt < 1 or not (
            timeout_s is None or (isinstance(timeout_s, (int, float)) and timeout_s > 0)):
        return Refusal("bad_request", "a task run for a peer needs the origin, its attempt "
                                      "(1 or more) and a positive timeout or none")
    return Foreign(origin, attempt, None if timeout_s is None else float(timeout_s))


def _resent(existing: TaskRecord, task: Submission, foreign: Foreign | None
            ) -> TaskRecord | Refusal:
    """A task whose id is known already: the first copy stands, if it is the same task."""
    if foreign is None:
        if existing.name != task.name:
            return Refusal("bad_request", f"task id {task.id} is taken by another task")
        return existing
    if existing.foreign is None or existing.foreign.origin != foreign.origin or \
            existing.name != task.name:
        return Refusal("bad_request", f"task id {task.id} is taken by another task")
    existing.foreign = foreign  # the origin handed it out again: answer that attempt
    return existing


def _submitted_event(task: Submission, foreign: Foreign | None) -> events.TaskSubmitted:
    requires = list(task.requires) if task.requires else None
    if foreign is None:
        return events.TaskSubmitted(id=task.id, name=task.name, args=task.args,
                                    priority=task.priority, requires=requires)
    return events.TaskSubmitted(id=task.id, name=task.name, args=task.args,
                                priority=task.priority, origin=foreign.origin,
                                origin_attempt=foreign.attempt, requires=requires,
                                timeout=foreign.timeout_s)
