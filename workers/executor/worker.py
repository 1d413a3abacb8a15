"""The executor worker: durable local tasks.

Submit → ``task.submitted`` appended to the ledger → acknowledged (`task.accepted`) once
durable → queued by priority → run by the pool (workers/taskpool.py) → the outcome appended
to the ledger → pushed to the clients watching it once durable. Every state change is a
ledger event; on start the executor replays the task events of its own feed
(`akita.tasks.queue.TaskBook`) and carries on: no acknowledged task is lost. Delivery is
at-least-once: a task whose process died is run again (up to ``[tasks] max_attempts``), and
its id (`akita.current_task()`) lets a handler make that harmless.

The ledger writes in groups and `LedgerClient` batches appends while its window is full,
so under load thousands of events share one frame and one fsync; the pool batches tasks per
frame both ways; results go back to clients many per message.

Tasks also travel between nodes: the gateway takes queued tasks for peers and hands in tasks
peers send (workers/taskdelegation.py). A task requiring a capability this node does not
declare never runs here: it waits for a peer that declares it.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from akita import catalogue, exits, identity
from akita.errors import AkitaError
from akita.ledger import chain
from akita.ledger.client import LedgerClient
from akita.tasks.queue import TERMINAL, TaskBook, TaskRecord, TaskState
from akita.tasks.registry import Refusal, TaskDefinitionError, TaskTable
from akita.tasks.sizes import result_too_large
from akita.wire import events, protocol
from workers.base import Request, Worker
from workers.executor import admission, snapshot
from workers.executor import recovery as taskrecovery
from workers.executor import replies as taskreplies
from workers.executor.delegation import Delegation
from workers.executor.pacing import SATURATED_LINGER_S, Pacing
from workers.executor.pool import (
    SPAWN_TIMEOUT_S,
    Dispatch,
    PoolProcess,
    TaskPool,
    cpu_count,
    describe_exit,
)
from workers.executor.replies import DeferredReply, Watchers
from workers.zygote import ZygoteError

log = logging.getLogger(__name__)

BUSY_TICK_S = 0.02      # timeouts are checked this often while tasks run
IDLE_TICK_S = 0.1       # while anything waits: the ledger, a lease, a catch-up, a snapshot
QUIET_TICK_S = 1.0      # nothing at all: requests and task processes wake the loop anyway
LEDGER_FLUSH_S = 2.0
LEDGER_WINDOW = 2   # frames in flight to the ledger; what comes meanwhile rides in one frame
GC_THRESHOLDS = (50_000, 20, 100)
CATCH_UP_AFTER_S = 5.0   # past any resend of a previous executor's appends (LedgerClient: 2 s)


class ExecutorWorker(Worker):
    """Priority queue, task process pool and timeouts; the ledger is its memory."""

    name = catalogue.EXECUTOR

    def prefork(self) -> None:
        settings = self.config.tasks
        _extend_module_path([str(path) for path in settings.module_path])
        try:
            self.table = TaskTable.load(settings.modules, self.config.commands)
        except TaskDefinitionError as exc:
            # The operator's mistake, not a bug: one line here and in the supervisor's
            # status, and no restart loop (the same config would fail the same way).
            log.error("cannot start: %s", exc)
            exits.write_reason(self.run_dir, self.name, f"configuration error: {exc}")
            raise SystemExit(exits.EXIT_CONFIG) from None
        size = settings.pool_size or cpu_count()
        self.pool = TaskPool(size, ["workers.executor.taskproc", *settings.modules],
                             {"max_result_bytes": settings.max_result_bytes,
                              "commands": self.table.commands()})
        self.pool.start_zygote()

    def setup(self) -> None:
        assert self.ctx is not None
        self.settings = self.config.tasks
        self.node_id = _node_id(self.config)
        self.ledger = LedgerClient(self.ctx, self.run_dir, "executor", window=LEDGER_WINDOW,
                                   on_refused=self._ledger_refused)
        self.add_reader(self.ledger.sock, self._on_ledger)
        self.pacing = Pacing(self.ledger, self.pool, self._send_all)
        self.book = TaskBook(self.node_id, capabilities=self.settings.capabilities)
        self.delegation: Delegation = Delegation(self)
        self._waiting: dict[str, list[tuple[DeferredReply, list[str | None], int]]] = {}
        self.watchers = Watchers()
        self._dispatch_due = False
        self._stopping_pool = False
        self._replayed_seq = 0
        self._started_ts = time.time()
        self._catch_up_at = time.monotonic() + CATCH_UP_AFTER_S
        self.snapshots = snapshot.Snapshots(chain.db_path(self.config))
        self._recover()
        self.delegation.recovered()
        # Every task allocates a few objects that live until it finishes, and the book keeps
        # many thousands: with the default thresholds the cyclic collector ran every few
        # dozen tasks and rescanned them all, half the executor's CPU. Tasks make no cycles
        # worth collecting promptly, so collect rarely, and never rescan what recovery built.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        assert self.pool.zygote is not None
        self.add_reader(self.pool.zygote.fileno(), self._on_zygote)
        for _ in range(self.pool.size):
            self._add_process()
        self._settle()
        log.info("executor ready: %d task types, pool of %d, %d tasks queued",
                 len(self.table.types), self.pool.size, len(self.book.queue))

    def teardown(self) -> None:
        self._stopping_pool = True
        if self._catch_up_at:
            self._catch_up()  # so that the snapshot below may be taken
        for proc in list(self.pool.processes.values()):
            self.pool.kill(proc, "stop")
            self._lost(proc, "the executor stopped")
        self.pool.close()
        if not self.ledger.flush(LEDGER_FLUSH_S):
            log.warning("%d task events not yet durable at shutdown", self.ledger.pending())
        elif self.snapshots.events and self._quiet():
            self.snapshots.save(self.book, self._durable_seq())
        self.ledger.close()

    def tick(self) -> None:
        self.ledger.tick()
        if self._catch_up_at and time.monotonic() >= self._catch_up_at:
            self._catch_up()
        if self.pool.spawn_late():
            self._replace_zygote(f"it did not fork a task process within {SPAWN_TIMEOUT_S:g} s")
        for proc, dispatch in self.pool.overdue():
            log.info("task %s ran past its timeout of %g s: killing process %d",
                     dispatch.record.id, dispatch.timeout_s, proc.pid)
            self.pool.kill(proc, "timeout", dispatch.record.id)
            self._lost(proc, "")
        self.delegation.tick(time.monotonic())
        if self.snapshots.due() and self._quiet():
            self.snapshots.save(self.book, self._durable_seq())
        busy = bool(self.pool.holder) or self.ledger.pending() > 0
        self.tick_interval_s = BUSY_TICK_S if busy else \
            IDLE_TICK_S if self._tick_needed() else QUIET_TICK_S
        if self.pacing.saturated:  # lingering appends are sent from here
            self.tick_interval_s = SATURATED_LINGER_S
        self._settle()

    # --- recovery ---------------------------------------------------------------------------

    def _recover(self) -> None:
        """Rebuild the book from the task snapshot and the feed after it, then settle what
        was running."""
        db_path = chain.db_path(self.config)
        from_seq = snapshot.load(self.snapshots.path, db_path, self.book)
        count, self._replayed_seq = taskrecovery.replay(
            db_path, self.book, lambda: self._heartbeat(time.monotonic()), from_seq)
        self.snapshots.note(count)
        if from_seq:
            log.info("task snapshot at seq %d: %d records", from_seq, len(self.book.records))
        requeued, failed = self.book.recover(self.settings.max_attempts)
        for record in requeued:
            self.append(events.TaskRequeued(id=record.id, attempts=record.attempts,
                                             reason="the executor restarted while it ran"))
        for record in failed:
            self.conclude(record, TaskState.FAILED, error=_error(
                "TaskLost", f"the task did not finish in {record.attempts} attempts "
                "(the executor stopped while it ran)"))
        if count:
            log.info("replayed %d task events: %d queued, %d requeued, %d failed", count,
                     len(self.book.queue), len(requeued), len(failed))

    def _catch_up(self) -> None:
        """Queue tasks whose submit a previous executor sent but the ledger committed only
        after our replay: never acknowledged, so a client may resend them, but if none
        does they would otherwise wait for the next restart to run."""
        self._catch_up_at = 0.0
        for record in taskrecovery.catch_up(chain.db_path(self.config), self.book,
                                            self._replayed_seq, self._started_ts,
                                            self._started_ts + CATCH_UP_AFTER_S):
            self._dispatch_due = True
            if record.foreign is not None:
                self.delegation.held.add(record.id)

    # --- requests ---------------------------------------------------------------------------

    def handle(self, request: Request) -> protocol.Message | None:
        msg = request.message
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            return super().handle(request)
        reply = handler(self, request)
        self._settle()
        return reply

    def _on_submit(self, request: Request) -> protocol.Message | None:
        msg = request.message
        assert isinstance(msg, protocol.TaskSubmit)
        ids: list[str | None] = [None] * len(msg.tasks)
        errors: list[list[Any]] = []
        deferred = DeferredReply(request, lambda: protocol.TaskAccepted(ids=ids, errors=errors),
                                 errors)
        now = time.time()
        for index, spec in enumerate(msg.tasks):
            admitted = self.admit(spec, now)
            if isinstance(admitted, Refusal):
                errors.append([index, *admitted])
                continue
            self.accept_when_durable(admitted, index, ids, deferred)
            if msg.watch:
                self.watchers.watch(admitted.id, request)
        deferred.seal()
        return None

    def admit(self, spec: Any, now: float, origin: str | None = None) -> TaskRecord | Refusal:
        """Take one task of a submit, or of a run_for from `origin`: its record, or why it
        is refused (the rules: workers/executor/admission.py)."""
        return admission.admit(self, spec, now, origin)

    def _disk_full(self) -> Refusal | None:
        refused = self.ledger.refused
        if refused is None or refused.code != "disk_full":
            return None
        return Refusal(refused.code, refused.message)

    def _ledger_refused(self, error: protocol.Error) -> None:
        """The ledger cannot write (a full disk): answer the submits waiting on it now rather
        than after the client's timeout, and withdraw their tasks (cancelled, in the ledger
        right after their submit, should that be written once space returns)."""
        if error.code != "disk_full":
            return
        waiting, self._waiting = self._waiting, {}
        for task_id, deferreds in waiting.items():
            record = self.book.get(task_id)
            if record is not None and record.state is TaskState.SUBMITTED:
                self.book.cancel(record, time.time())
                self.append(events.TaskCancelled(id=task_id, attempt=record.attempts,
                                                 reason=error.message))
            for deferred, _ids, index in deferreds:
                deferred.refuse(index, error.code, error.message)

    def queue_full(self) -> Refusal | None:
        """The refusal for one more task when the queue is full; None while it has room."""
        refusal = self._disk_full()
        if refusal is not None:
            return refusal
        if self.book.queued() + self.book.pending_submits < self.settings.max_queue:
            return None
        return Refusal("queue_full", f"the queue is full ({self.settings.max_queue} tasks, "
                                     "[tasks] max_queue); try again later")

    def accept_when_durable(self, record: TaskRecord, index: int, ids: list[str | None],
                            deferred: DeferredReply) -> None:
        """`record` was admitted as task `index` of a request: its id goes into `ids`, at
        once if its ``task.submitted`` is durable already, else once it is (`deferred`
        waits)."""
        if record.state is not TaskState.SUBMITTED:
            ids[index] = record.id
            return
        deferred.hold()
        self._waiting.setdefault(record.id, []).append((deferred, ids, index))

    def submitted(self, record: TaskRecord) -> None:
        """Its task.submitted event is durable: acknowledge and queue it."""
        if record.state is TaskState.SUBMITTED:
            self.book.enqueue(record)
            self._dispatch_due = True
        for deferred, ids, index in self._waiting.pop(record.id, ()):
            ids[index] = record.id
            deferred.release()

    def _on_watch(self, request: Request) -> protocol.Message:
        msg = request.message
        assert isinstance(msg, protocol.TaskWatch)
        known: list[dict[str, Any]] = []
        for task_id in msg.ids:
            record = self.book.get(task_id) if isinstance(task_id, str) else None
            if record is None:
                known.append({"id": task_id, "state": "unknown"})
            elif record.state in TERMINAL:
                known.append(record.outcome())
            else:
                self.watchers.watch(task_id, request)
        return protocol.TaskResults(results=known)

    # --- cancel -----------------------------------------------------------------------------

    def _on_cancel(self, request: Request) -> protocol.Message | None:
        msg = request.message
        assert isinstance(msg, protocol.TaskCancel)
        outcomes: dict[str, str] = {}
        deferred = DeferredReply(request, lambda: protocol.TaskCancelReply(outcomes=outcomes))
        for task_id in msg.ids:
            record = self.book.get(task_id) if isinstance(task_id, str) else None
            outcomes[str(task_id)] = self.cancel(record, deferred)
        deferred.seal()
        return None

    def cancel(self, record: TaskRecord | None, deferred: DeferredReply) -> str:
        """Cancel `record` (killing its run if it is running); the outcome word of
        `task.cancel_reply`. `deferred` waits until the cancellation is durable."""
        if record is None:
            return "unknown"
        if record.state in TERMINAL:
            return f"finished:{record.state.value}"
        if record.finishing:
            return "finishing"
        proc = self.pool.holder.get(record.id)
        kill = False
        if proc is not None:
            number, started_ns = proc.running()
            dispatch = proc.in_flight[record.id]
            if dispatch.number < number or (dispatch.number == number and not started_ns):
                return "finishing"  # it ran; its outcome is on its way
            kill = dispatch.number == number
            if not kill:  # not begun: the process drops it when it gets there
                self.pool.finished(proc, record.id)
                self._send_or_lose(proc, "skip", [record.id])
        self.book.cancel(record, time.time())
        deferred.hold()

        def durable(seq: int) -> None:
            self.watchers.deliver(record)
            deferred.release(seq)

        self.append(events.TaskCancelled(id=record.id, attempt=record.attempts), durable)
        if kill:
            assert proc is not None
            self.pool.kill(proc, "cancel", record.id)
            self._lost(proc, "")
        return "cancelled"

    # --- the pool ---------------------------------------------------------------------------

    def _add_process(self) -> None:
        try:
            self.pool.request_process()
        except (ZygoteError, OSError) as exc:
            self._replace_zygote(f"it did not take a request for a task process: {exc}")

    def _watch_process(self, proc: PoolProcess) -> None:
        self.add_reader(proc.fileno(), lambda: self._on_process(proc))
        self._dispatch_due = True
        if self.pacing.saturated:
            self._send_or_lose(proc, "pace", self.pacing.flush_s)

    def _send_all(self, op: str, body: Any) -> None:
        for proc in list(self.pool.processes.values()):
            self._send_or_lose(proc, op, body)

    def _replace_zygote(self, why: str) -> None:
        """The task processes' fork server died or hangs: start a new one and carry on with
        the same book and queue; what its processes held is requeued. Only if the new one
        cannot fork either does the exception end the executor (and the supervisor's
        restart policy take over)."""
        assert self.pool.zygote is not None
        log.error("task fork server (pid %d) lost: %s; starting a new one",
                  self.pool.zygote.pid, why)
        self.remove_reader(self.pool.zygote.fileno())
        stopping, self._stopping_pool = self._stopping_pool, True
        for proc in self.pool.replace_zygote():
            self._lost(proc, "its fork server died")
        self._stopping_pool = stopping
        self.add_reader(self.pool.zygote.fileno(), self._on_zygote)
        while not stopping and len(self.pool.processes) + len(self.pool.starting) < self.pool.size:
            self.pool.request_process()

    def _on_process(self, proc: PoolProcess) -> None:
        outcomes, alive = proc.read()
        for task_id, ok, value, duration_s, size in outcomes:
            dispatch = self.pool.finished(proc, task_id)
            if dispatch is None:
                continue  # skipped after a cancel, but it had already begun
            record = dispatch.record
            self.pool.learn(record.name, duration_s)
            if ok and size > self.settings.max_payload_bytes:
                ok, value = False, result_too_large(size, self.settings.max_payload_bytes)
            if record.state is TaskState.RUNNING:
                if ok:
                    self.conclude(record, TaskState.SUCCEEDED, result=value,
                                   duration_s=duration_s, size=size)
                else:
                    self.conclude(record, TaskState.FAILED, error=value, duration_s=duration_s,
                                   size=size)
        self._dispatch_due = True
        if not alive:
            # It died: the zygote's exit report (which says how) settles what it held.
            self.remove_reader(proc.fileno())
        self._settle()

    def _on_zygote(self) -> None:
        assert self.pool.zygote is not None
        try:
            events = self.pool.zygote.events()
        except ZygoteError as exc:
            self._replace_zygote(str(exc))
            self._settle()
            return
        for started in self.pool.take_started():   # before the exits: one may be of these
            self._watch_process(started)
        for exited in events:
            proc = self.pool.processes.get(exited.pid)
            if proc is not None:
                self._lost(proc, describe_exit(exited.returncode))
        self._settle()

    def _lost(self, proc: PoolProcess, how: str) -> None:
        """`proc` is gone (it died, or we killed it): settle every task it held, replace it."""
        running = proc.dispatch_running()
        held = self.pool.remove(proc)
        self.remove_reader(proc.fileno())  # before close: a closed fd's number is reused
        proc.close()
        if not proc.kill_reason:
            log.warning("task process %d died (%s)", proc.pid, how)
        for dispatch in held:
            self._settle_lost(dispatch, proc, running is dispatch, how)
        if not self._stopping_pool:
            self._add_process()

    def _settle_lost(self, dispatch: Dispatch, proc: PoolProcess, was_running: bool,
                     how: str) -> None:
        record = dispatch.record
        if record.state is not TaskState.RUNNING or record.finishing:
            return
        if proc.kill_reason == "timeout" and record.id == proc.kill_target:
            self.pool.learn(record.name, dispatch.timeout_s)
            self.conclude(record, TaskState.TIMED_OUT, error=_error(
                "TimedOut", f"the task ran past its timeout of {dispatch.timeout_s:g} s "
                "and was killed"))
        elif was_running and not proc.kill_reason:
            self.retry_or_fail(record, f"its task process died ({how})")
        else:
            reason = proc.kill_reason == "stop" and "the executor stopped" or \
                "its task process was replaced before the task ran to the end"
            self.book.requeue(record, counted=False)
            self.append(events.TaskRequeued(id=record.id, attempts=record.attempts,
                                             reason=reason))
            self._dispatch_due = True

    def retry_or_fail(self, record: TaskRecord, reason: str, kind: str = "ProcessLost"
                      ) -> bool:
        """A run (or delegation) of `record` was lost: queue it again, or fail it once it has
        had max_attempts. True if it was queued again."""
        if record.attempts >= self.settings.max_attempts:
            self.conclude(record, TaskState.FAILED, error=_error(
                kind, f"{reason} on attempt {record.attempts} of "
                f"{self.settings.max_attempts}"))
            return False
        self.book.requeue(record, counted=True)
        self.append(events.TaskRequeued(id=record.id, attempts=record.attempts, reason=reason))
        self._dispatch_due = True
        return True

    def _start(self, record: TaskRecord, pid: int) -> float:
        """The pool hands `record` to process `pid`: it is running. Returns its timeout."""
        record.start(time.time(), self.node_id)
        self.append(events.TaskStarted(id=record.id, attempt=record.attempts, pid=pid))
        return self.timeout_of(record)

    def timeout_of(self, record: TaskRecord) -> float:
        """The type's timeout here; for a task run for a peer, the origin's if shorter."""
        task_type = self.table.get(record.name)
        timeout_s = (task_type and task_type.timeout_s) or self.settings.task_timeout
        if record.foreign is not None and record.foreign.timeout_s:
            return min(timeout_s, record.foreign.timeout_s)
        return timeout_s

    def _send_or_lose(self, proc: PoolProcess, op: str, body: Any) -> None:
        try:
            proc.send(op, body)
        except OSError:
            self.pool.kill(proc, "broken")
            self.pool.broken.append(proc)

    # --- outcomes ---------------------------------------------------------------------------

    def conclude(self, record: TaskRecord, state: TaskState, *, result: Any = None,
                 error: dict[str, Any] | None = None, duration_s: float | None = None,
                 size: int = 64, then: Callable[[int], None] | None = None) -> None:
        """Record a run's outcome; it becomes visible (and is pushed) once durable, and
        then `then(seq)` is called."""
        record.finishing = True
        event = events.task_outcome(
            state.value, id=record.id, attempt=record.attempts,
            ran_on=record.ran_on if record.state is TaskState.DELEGATED else None,
            result=result, error=error, duration_s=duration_s)

        def durable(seq: int) -> None:
            if record.state not in TERMINAL:  # else it was cancelled meanwhile
                record.finish(state, time.time(), result=result, error=error)
                record.size = size
                self.book.finished(record)
                self.watchers.deliver(record)
            if then is not None:
                then(seq)

        self.append(event, durable)

    # --- plumbing ---------------------------------------------------------------------------

    def append(self, event: events.Event,
               on_durable: Callable[[int], None] | None = None) -> None:
        """Append one task event to this node's feed; `on_durable(seq)` once it is durable."""
        self.ledger.record(event, on_durable=on_durable)
        self.snapshots.note()

    def _tick_needed(self) -> bool:
        """Something the tick looks after is pending: appends not yet sent, a delegation's
        lease, the catch-up after start, a snapshot, queued tasks, task processes asked for."""
        return bool(self.ledger.due_in() is not None or self.delegation.leases
                    or self._catch_up_at or self.snapshots.due() or self.book.queue
                    or self.pool.starting)

    def _quiet(self) -> bool:
        """The book is exactly the projection of the durable feed: a snapshot may be taken
        (everything appended is durable, and a previous executor's late submits are in)."""
        return (not self._catch_up_at and self.ledger.pending() == 0
                and not self.book.pending_submits)

    def _durable_seq(self) -> int:
        return max(self.ledger.last_seq, self._replayed_seq)

    def _on_ledger(self) -> None:
        self.ledger.on_readable()
        self._settle()

    def _settle(self) -> None:
        """After any event: hand out work if something changed, send results gathered."""
        self._replace_broken()
        if self._dispatch_due and self.book.queue:
            self._dispatch_due = False
            self.pool.fill(self.book.queue, self._start)
            self._replace_broken()
        # Tasks left queued: every process holds all it may, the pool is the bottleneck.
        self.pacing.update(bool(self.book.queue))
        if self.watchers:
            self.watchers.flush()

    def _replace_broken(self) -> None:
        while self.pool.broken:
            proc = self.pool.broken.pop()
            if proc.pid in self.pool.processes:
                self._lost(proc, "it stopped taking input")


_HANDLERS: dict[type, Callable[[ExecutorWorker, Request], protocol.Message | None]] = {
    protocol.TaskSubmit: ExecutorWorker._on_submit,
    protocol.TaskWatch: ExecutorWorker._on_watch,
    protocol.TaskStatus: taskreplies.on_status,
    protocol.TaskList: taskreplies.on_list,
    protocol.TaskCancel: ExecutorWorker._on_cancel,
    protocol.TaskTypes: taskreplies.on_types,
    protocol.TaskStats: taskreplies.on_stats,
    protocol.TaskTake: lambda ex, request: ex.delegation.on_take(request),
    protocol.TaskRenew: lambda ex, request: ex.delegation.on_renew(request),
    protocol.TaskDelegatedResult: lambda ex, request: ex.delegation.on_result(request),
    protocol.TaskRequeue: lambda ex, request: ex.delegation.on_requeue(request),
    protocol.TaskRunFor: lambda ex, request: ex.delegation.on_run_for(request),
    protocol.TaskHeld: lambda ex, request: ex.delegation.on_held(request),
    protocol.TaskDrop: lambda ex, request: ex.delegation.on_drop(request),
}


def _extend_module_path(paths: list[str]) -> None:
    """Make [tasks] modules importable here and in the task processes' zygote (which gets
    them through PYTHONPATH). Without module_path: the directory the node was started from,
    as `python -m` would have it; a console script's sys.path lacks it."""
    import os
    import sys

    if not paths:
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.append(cwd)
        return
    sys.path[:0] = [p for p in paths if p not in sys.path]
    inherited = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([inherited] if inherited else []))


def _error(kind: str, message: str) -> dict[str, str]:
    return {"type": kind, "message": message, "traceback": ""}


def _node_id(config: Any) -> str | None:
    try:
        return identity.load(config.node.data_dir).node_id
    except AkitaError as exc:
        log.warning("node id unknown (%s): ran_on stays empty", exc)
        return None
