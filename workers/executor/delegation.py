"""Delegation in the executor: tasks this node hands to peers, and tasks it runs for them.

The gateway carries tasks between nodes and decides nothing about them: it is a client of
each executor's socket like any other (messages in `akita.wire.protocol`, executor section).

Origin side. `task.take` hands a peer the queued tasks it may run (its types, its
capabilities) that the local pool will not start soon (`akita.tasks.offer.offer`), each
marked delegated in the ledger (``task.delegated {id, attempt, peer, lease_s, term?}``).
A delegation is named by (id, attempt): every hand-out is a new attempt, so an outcome or a
renewal for an earlier one is recognised as stale and ignored. The executor keeps each
delegation's lease: `task.renew` (the peer still holds it) extends it by its lease_s; one
that lapses re-queues the task with attempt + 1, or fails it once ``[tasks] max_attempts``
are spent, as does `task.requeue` (the gateway saw the link break, or the peer refused).
Keeping the lease clock here means a restarted gateway strands nothing. After an executor
restart, delegated tasks keep their delegation with a fresh lease (the peer may still hold
them and renew); one replayed without a known lease is re-queued. Either way, at least once.
`task.delegated_result` records the peer's outcome like a local one, with ran_on = the peer.

Peer side. `task.run_for` admits tasks for an origin only if this node declares the type
and every capability they require — a peer can never make a node run anything else — and
records them as ``task.submitted`` with the origin (the admission path a local submit takes
too: `workers.executor.admission`). They run in the local pool like any task
and are never offered on; each outcome is pushed to the gateway connection that handed the
task in (or that last asked `task.held`), with the origin's attempt. `task.held` lists the
unfinished ones for the gateway's renewals; `task.drop` cancels one the origin gave up.

Args larger than ``[tasks] max_payload_bytes`` are refused at submit and at run_for; a
result larger is recorded as a ResultTooLarge error, wherever the task ran.

What this asks of the executor is stated in `DelegationOwner`: the executor imports this
module, never the other way round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from akita.config import TasksConfig
from akita.tasks.offer import offer
from akita.tasks.queue import TERMINAL, TaskBook, TaskRecord, TaskState
from akita.tasks.registry import Refusal, TaskTable
from akita.tasks.sizes import cap_error, payload_bytes, result_limit, result_too_large
from akita.wire import events, protocol
from workers.base import Request
from workers.executor.pool import TaskPool
from workers.executor.replies import DeferredReply, Watchers

log = logging.getLogger(__name__)

LEASE_CHECK_S = 0.2      # how often leases are looked at: bounds how late a lapse is noticed
MAX_TAKE = 1000          # tasks handed out per task.take at most
_OUTCOMES = {"succeeded": TaskState.SUCCEEDED, "failed": TaskState.FAILED,
             "timed_out": TaskState.TIMED_OUT}


def _pairs(items: list[Any]) -> list[tuple[str, int]]:
    """[id, attempt] entries of a request, the malformed ones left out."""
    return [(item[0], item[1]) for item in items
            if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
            and type(item[1]) is int]


class DelegationOwner(Protocol):
    """What delegation asks of the executor that owns the book and the pool
    (`workers.executor.worker.ExecutorWorker`): its state to read, and the steps of a task's
    life it already knows how to take, so both paths record them alike."""

    @property
    def node_id(self) -> str | None: ...

    @property
    def book(self) -> TaskBook: ...

    @property
    def pool(self) -> TaskPool: ...

    @property
    def settings(self) -> TasksConfig: ...

    @property
    def watchers(self) -> Watchers: ...

    def timeout_of(self, record: TaskRecord) -> float: ...

    def admit(self, spec: Any, now: float, origin: str | None = None
              ) -> TaskRecord | Refusal: ...

    def accept_when_durable(self, record: TaskRecord, index: int, ids: list[str | None],
                            deferred: DeferredReply) -> None: ...

    def append(self, event: events.Event,
               on_durable: Callable[[int], None] | None = None) -> None: ...

    def conclude(self, record: TaskRecord, state: TaskState, *, result: Any = None,
                 error: dict[str, Any] | None = None, duration_s: float | None = None,
                 size: int = 64, then: Callable[[int], None] | None = None) -> None: ...

    def retry_or_fail(self, record: TaskRecord, reason: str, kind: str = "ProcessLost"
                      ) -> bool: ...

    def cancel(self, record: TaskRecord | None, deferred: DeferredReply) -> str: ...


class Delegation:
    """The executor's delegation state: leases of tasks out on peers, tasks held for peers."""

    def __init__(self, executor: DelegationOwner) -> None:
        self.ex = executor
        self.leases: dict[str, float] = {}   # task id → when its lease lapses (monotonic)
        self.held: set[str] = set()          # ids of tasks run for peers, maybe unfinished
        self.stale_results = 0
        self.leases_lapsed = 0
        self._next_check = 0.0

    def recovered(self) -> None:
        """After replay: leases start afresh; tasks held for peers are known again."""
        now = time.monotonic()
        for record in self.ex.book.records.values():
            if record.state is TaskState.DELEGATED:
                self.leases[record.id] = now + record.lease_s
            elif record.foreign is not None and record.state not in TERMINAL:
                self.held.add(record.id)

    def totals(self) -> dict[str, int]:
        return {"stale_results": self.stale_results, "leases_lapsed": self.leases_lapsed}

    def load(self, counts: dict[str, int], table: TaskTable) -> dict[str, Any]:
        """The compact load summary of `task.stats_reply` (see its docstring)."""
        book, pool = self.ex.book, self.ex.pool
        idle = sum(1 for proc in pool.processes.values() if not proc.in_flight)
        return {"queued": len(book.queue), "waiting": len(book.for_peers),
                "running": counts.get("running", 0), "delegated": counts.get("delegated", 0),
                "held": sum(1 for i in self.held if (r := book.get(i)) is not None
                            and r.state not in TERMINAL),
                "pool": pool.size, "free": max(0, idle - len(book.queue)),
                "types": sorted(table.types), "caps": sorted(book.capabilities)}

    # --- origin side ------------------------------------------------------------------------

    def _current(self, record: TaskRecord | None, attempt: int, peer: str | None = None
                 ) -> bool:
        """`record` is out on a peer (`peer`, when given) at `attempt`, its outcome unknown."""
        return (record is not None and record.state is TaskState.DELEGATED
                and not record.finishing and record.attempts == attempt
                and (peer is None or record.ran_on == peer))

    def on_take(self, request: Request) -> protocol.Message | None:
        msg = request.message
        assert isinstance(msg, protocol.TaskTake)
        if not msg.peer or msg.peer == self.ex.node_id or not msg.lease_s > 0:
            return protocol.Error(code="bad_request", message="task.take needs another node's "
                                  "id as peer and a positive lease_s")
        ex, now = self.ex, time.time()
        chosen = offer(ex.book, types=msg.types, capabilities=msg.capabilities,
                       max_tasks=max(0, min(msg.max_tasks, MAX_TAKE)), pool_size=ex.pool.size,
                       keep_s=ex.settings.delegate_after, estimate=ex.pool.estimate)
        specs: list[dict[str, Any]] = []
        deferred = DeferredReply(request, lambda: protocol.TaskTakeReply(tasks=specs))
        deadline = time.monotonic() + msg.lease_s
        for record in chosen:
            ex.book.delegate(record, now, msg.peer, msg.lease_s)
            self.leases[record.id] = deadline
            deferred.hold()
            ex.append(events.TaskDelegated(id=record.id, attempt=record.attempts,
                                            peer=msg.peer, lease_s=msg.lease_s,
                                            term=msg.term or None), deferred.release)
            specs.append({"id": record.id, "name": record.name, "args": record.args,
                          "priority": record.priority, "attempt": record.attempts,
                          "requires": list(record.requires), "timeout": ex.timeout_of(record)})
        deferred.seal()
        return None

    def on_renew(self, request: Request) -> protocol.Message:
        msg = request.message
        assert isinstance(msg, protocol.TaskRenew)
        now, renewed, stale = time.monotonic(), 0, []
        for task_id, attempt in _pairs(msg.tasks):
            record = self.ex.book.get(task_id)
            if self._current(record, attempt, msg.peer):
                assert record is not None
                self.leases[task_id] = now + record.lease_s
                renewed += 1
            else:
                stale.append([task_id, attempt])
        return protocol.TaskRenewReply(renewed=renewed, stale=stale)

    def on_result(self, request: Request) -> protocol.Message | None:
        msg = request.message
        assert isinstance(msg, protocol.TaskDelegatedResult)
        accepted: list[str] = []
        stale: list[str] = []
        deferred = DeferredReply(request, lambda: protocol.TaskDelegatedResultReply(
            accepted=accepted, stale=stale))
        for entry in msg.results:
            task_id = entry.get("id") if isinstance(entry, dict) else None
            attempt = entry.get("attempt") if isinstance(entry, dict) else None
            record = self.ex.book.get(task_id) if isinstance(task_id, str) else None
            state = entry.get("state") if isinstance(entry, dict) else None
            if type(attempt) is not int or not self._current(record, attempt, msg.peer) or \
                    state not in (*_OUTCOMES, "cancelled"):
                self.stale_results += 1
                stale.append(str(task_id))
                log.info("ignored an outcome of task %s attempt %s from %s: not its current "
                         "delegation", task_id, attempt, msg.peer[:12])
                continue
            assert record is not None and isinstance(entry, dict)
            accepted.append(record.id)
            self.leases.pop(record.id, None)
            if state == "cancelled":
                self.ex.retry_or_fail(record, f"{msg.peer} gave it up", "PeerGaveUp")
                continue
            deferred.hold()
            self._record_outcome(record, _OUTCOMES[state], entry, deferred)
        deferred.seal()
        return None

    def _record_outcome(self, record: TaskRecord, state: TaskState, entry: dict[str, Any],
                        deferred: DeferredReply) -> None:
        settings = self.ex.settings
        if state is TaskState.SUCCEEDED:
            result = entry.get("result")
            size = payload_bytes(result)
            limit, name = result_limit(settings.max_payload_bytes, settings.max_result_bytes)
            if size <= limit:
                self.ex.conclude(record, state, result=result, size=size,
                                  then=deferred.release)
                return
            state, error = TaskState.FAILED, result_too_large(size, limit, name)
        else:
            raw = entry.get("error")
            raw = raw if isinstance(raw, dict) else {}
            error = cap_error({key: str(raw.get(key, "")) for key in
                               ("type", "message", "traceback")}, settings.max_result_bytes)
        self.ex.conclude(record, state, error=error, then=deferred.release)

    def on_requeue(self, request: Request) -> protocol.Message:
        msg = request.message
        assert isinstance(msg, protocol.TaskRequeue)
        outcomes: dict[str, str] = {}
        for task_id, attempt in _pairs(msg.tasks):
            record = self.ex.book.get(task_id)
            if not self._current(record, attempt):
                outcomes[task_id] = "stale"
                continue
            assert record is not None
            self.leases.pop(task_id, None)
            requeued = self.ex.retry_or_fail(record, msg.reason or "the gateway gave it back",
                                              "DelegationLost")
            outcomes[task_id] = "requeued" if requeued else "failed"
        return protocol.TaskRequeueReply(outcomes=outcomes)

    def tick(self, now: float) -> None:
        """Re-queue (or fail) the delegations whose lease has lapsed."""
        if now < self._next_check or not self.leases:
            return
        self._next_check = now + LEASE_CHECK_S
        for task_id, deadline in list(self.leases.items()):
            record = self.ex.book.get(task_id)
            if record is None or record.state is not TaskState.DELEGATED:
                del self.leases[task_id]  # finished or cancelled meanwhile
            elif deadline <= now and not record.finishing:
                del self.leases[task_id]
                self.leases_lapsed += 1
                log.info("task %s: its lease on %s lapsed (attempt %d)", task_id,
                         (record.ran_on or "?")[:12], record.attempts)
                self.ex.retry_or_fail(record, f"its lease on {record.ran_on} lapsed",
                                       "LeaseLapsed")

    # --- peer side --------------------------------------------------------------------------

    def on_run_for(self, request: Request) -> protocol.Message | None:
        msg = request.message
        assert isinstance(msg, protocol.TaskRunFor)
        ids: list[str | None] = [None] * len(msg.tasks)
        errors: list[list[Any]] = []
        deferred = DeferredReply(request, lambda: protocol.TaskAccepted(ids=ids, errors=errors))
        now = time.time()
        for index, spec in enumerate(msg.tasks):
            admitted = self.ex.admit(spec, now, msg.origin)
            if isinstance(admitted, Refusal):
                errors.append([index, *admitted])
                continue
            self.held.add(admitted.id)
            self.ex.accept_when_durable(admitted, index, ids, deferred)
            self.ex.watchers.watch(admitted.id, request)
            if admitted.state in TERMINAL:
                self.ex.watchers.deliver(admitted)  # ran here before: its outcome again
        deferred.seal()
        return None

    def on_held(self, request: Request) -> protocol.Message:
        held: list[dict[str, Any]] = []
        for task_id in list(self.held):
            record = self.ex.book.get(task_id)
            if record is None or record.foreign is None or record.state in TERMINAL:
                self.held.discard(task_id)
                continue
            held.append({"id": task_id, "origin": record.foreign.origin,
                         "attempt": record.foreign.attempt})
            self.ex.watchers.watch(task_id, request)
        return protocol.TaskHeldReply(tasks=held)

    def on_drop(self, request: Request) -> protocol.Message | None:
        msg = request.message
        assert isinstance(msg, protocol.TaskDrop)
        outcomes: dict[str, str] = {}
        deferred = DeferredReply(request, lambda: protocol.TaskCancelReply(outcomes=outcomes))
        for task_id, attempt in _pairs(msg.tasks):
            record = self.ex.book.get(task_id)
            foreign = record.foreign if record is not None else None
            if foreign is None or (foreign.origin, foreign.attempt) != (msg.origin, attempt):
                outcomes[task_id] = "stale"
            else:
                outcomes[task_id] = self.ex.cancel(record, deferred)
        deferred.seal()
        return None
