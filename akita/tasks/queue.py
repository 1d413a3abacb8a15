"""Task records, their state machine, the priority queue, and the book rebuilt from events.

Pure logic, no I/O: the executor (workers/executor.py) wires it to sockets and the ledger.

A task's life, each arrow a ledger event of the same name (``task.<state>``):

    submitted → queued → running → succeeded | failed | timed_out
                  ↑  ↖_____|        (requeued: its process died, or the executor restarted)
                  └──→ delegated → succeeded | failed | timed_out   (a peer ran it)
                       (requeued: its lease lapsed, the peer refused or gave it up)
    submitted | queued | running | delegated → cancelled

``submitted`` is the moment between receiving a submit and its ``task.submitted`` event
being durable; only then is the task acknowledged and queued. `TaskBook.apply` replays the
events of a feed to rebuild every record after a restart: the ledger is the system of
record, this module's state only a projection of it.

Two queues: `TaskBook.queue` holds what this node's pool may run; `TaskBook.for_peers` holds
tasks that require a capability this node does not declare, which only a peer may take.
A *foreign* task (`TaskRecord.foreign`) is one a peer asked this node to run: it always
runs here and is never offered on. `akita.tasks.offer` picks the queued tasks a peer may take.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from typing import Any, NamedTuple

from akita.errors import ProtocolError
from akita.tasks.registry import DEFAULT_PRIORITY
from akita.wire import events


class TaskState(str, Enum):
    SUBMITTED = "submitted"
    QUEUED = "queued"
    RUNNING = "running"
    DELEGATED = "delegated"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.TIMED_OUT,
                      TaskState.CANCELLED})
ACTIVE = frozenset({TaskState.RUNNING, TaskState.DELEGATED})


class InvalidTransition(Exception):
    """A transition asked of a task in a state it cannot leave that way: a bug."""


class Foreign(NamedTuple):
    """Where a task run for a peer came from: the origin node, the origin's attempt (sent
    back with the outcome, so the origin can tell it from a stale one), and the origin's
    timeout for it (None: this node's own)."""

    origin: str
    attempt: int
    timeout_s: float | None = None


class TaskRecord:
    """One task: what to run, where it stands, and its outcome once it has one."""

    __slots__ = (
        "args",
        "attempts",
        "error",
        "finished_ts",
        "finishing",
        "foreign",
        "id",
        "lease_s",
        "name",
        "order",
        "priority",
        "ran_on",
        "requires",
        "result",
        "size",
        "started_ts",
        "state",
        "submitted_ts",
        "token",
    )

    def __init__(self, task_id: str, name: str, args: Any, priority: int, order: int,
                 submitted_ts: float, state: TaskState = TaskState.SUBMITTED) -> None:
        self.id = task_id
        self.name = name
        self.args = args
        self.priority = priority
        self.order = order          # FIFO rank within a priority
        self.state = state
        self.attempts = 0           # runs begun (a run cut short by our own doing is undone)
        self.ran_on: str | None = None
        self.result: Any = None
        self.error: dict[str, Any] | None = None
        self.submitted_ts = submitted_ts
        self.started_ts: float | None = None
        self.finished_ts: float | None = None
        self.token = 0              # matches the record's one live queue entry
        self.finishing = False      # outcome known, its event not yet durable
        self.size = 0               # bytes of its result or error (bounds what the book keeps)
        self.requires: tuple[str, ...] = ()   # capabilities a node needs to run it
        self.foreign: Foreign | None = None   # set when it runs here for a peer
        self.lease_s = 0.0          # while delegated: its lease (0: unknown, from old events)

    def _expect(self, action: str, *states: TaskState) -> None:
        if self.state not in states:
            raise InvalidTransition(f"task {self.id}: cannot {action} a {self.state.value} task")

    # --- transitions -------------------------------------------------------------------------

    def queue(self) -> None:
        """Its submit is durable (or it is requeued): ready to run."""
        self._expect("queue", TaskState.SUBMITTED, TaskState.RUNNING, TaskState.DELEGATED)
        self.state = TaskState.QUEUED
        self.finishing = False

    def start(self, ts: float, ran_on: str | None) -> None:
        self._expect("start", TaskState.QUEUED)
        self.state = TaskState.RUNNING
        self.attempts += 1
        self.started_ts = ts
        self.ran_on = ran_on

    def delegate(self, ts: float, peer: str, lease_s: float) -> None:
        """A peer takes it: a new attempt, whose number fences off any earlier one."""
        self._expect("delegate", TaskState.QUEUED)
        if self.foreign is not None:
            raise InvalidTransition(f"task {self.id}: a task run for a peer is never "
                                    "delegated again")
        self.state = TaskState.DELEGATED
        self.attempts += 1
        self.started_ts = ts
        self.ran_on = peer
        self.lease_s = lease_s

    def requeue(self, counted: bool) -> None:
        """Back to the queue; `counted` False undoes the attempt (it never really ran, or we
        cut it short ourselves)."""
        self._expect("requeue", TaskState.RUNNING, TaskState.DELEGATED)
        if not counted:
            self.attempts = max(0, self.attempts - 1)
        self.queue()

    def finish(self, state: TaskState, ts: float, *, result: Any = None,
               error: dict[str, Any] | None = None) -> None:
        """A terminal outcome of a run (`state` is succeeded, failed or timed_out)."""
        if state not in TERMINAL or state is TaskState.CANCELLED:
            raise InvalidTransition(f"task {self.id}: {state.value} is not an outcome")
        # A queued task fails without running when recovery finds it has no attempts left.
        self._expect(f"record {state.value} for", TaskState.RUNNING, TaskState.DELEGATED,
                     TaskState.QUEUED)
        self.state = state
        self.result = result
        self.error = error
        self.finished_ts = ts
        self.finishing = False

    def cancel(self, ts: float) -> None:
        self._expect("cancel", TaskState.SUBMITTED, TaskState.QUEUED, TaskState.RUNNING,
                     TaskState.DELEGATED)
        self.state = TaskState.CANCELLED
        self.finished_ts = ts
        self.finishing = False

    # --- views -------------------------------------------------------------------------------

    def outcome(self) -> dict[str, Any]:
        """{id, state, result | error}: what a waiting client receives; a task run for a
        peer adds {origin, attempt} (the origin's attempt), for the gateway to send back."""
        out: dict[str, Any] = {"id": self.id, "state": self.state.value}
        if self.state is TaskState.SUCCEEDED:
            out["result"] = self.result
        elif self.state in TERMINAL:
            out["error"] = self.error or {"type": "Cancelled", "message": "the task was "
                                          "cancelled", "traceback": ""}
        if self.foreign is not None:
            out["origin"], out["attempt"] = self.foreign.origin, self.foreign.attempt
        return out

    def summary(self) -> dict[str, Any]:
        """The task in one line of `akitactl tasks`."""
        return {"id": self.id, "name": self.name, "state": self.state.value,
                "priority": self.priority, "attempts": self.attempts, "ran_on": self.ran_on,
                "submitted_ts": self.submitted_ts}

    def view(self) -> dict[str, Any]:
        """Everything an operator sees of the task (`akitactl task ID`)."""
        out: dict[str, Any] = {"id": self.id, "name": self.name, "state": self.state.value,
                               "priority": self.priority, "attempts": self.attempts,
                               "ran_on": self.ran_on, "args": self.args,
                               "submitted_ts": self.submitted_ts, "started_ts": self.started_ts,
                               "finished_ts": self.finished_ts}
        if self.requires:
            out["requires"] = list(self.requires)
        if self.foreign is not None:
            out["origin"] = self.foreign.origin
        if self.state in TERMINAL:
            outcome = self.outcome()
            out.update({k: v for k, v in outcome.items() if k in ("result", "error")})
        return out


class TaskQueue:
    """Queued records by priority (higher first), FIFO within a priority.

    Entries are removed lazily: `discard` only forgets a record, and `pop` skips entries
    whose record has moved on (its token no longer matches), so cancelling is O(1).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, TaskRecord]] = []
        self._tokens = itertools.count(1)
        self.count = 0
        self.by_priority: dict[int, int] = {}  # queued records per priority, for metrics

    def __len__(self) -> int:
        return self.count

    def push(self, record: TaskRecord) -> None:
        if record.state is not TaskState.QUEUED:
            raise InvalidTransition(f"task {record.id}: only a queued task joins the queue")
        record.token = next(self._tokens)
        heapq.heappush(self._heap, (-record.priority, record.order, record.token, record))
        self.count += 1
        self.by_priority[record.priority] = self.by_priority.get(record.priority, 0) + 1

    def discard(self, record: TaskRecord) -> None:
        """Forget a queued record (it was cancelled, or leaves some other way)."""
        if record.token:
            record.token = 0
            self.count -= 1
            self._left(record.priority)

    def _left(self, priority: int) -> None:
        left = self.by_priority.get(priority, 0) - 1
        if left > 0:
            self.by_priority[priority] = left
        else:
            self.by_priority.pop(priority, None)

    def peek(self) -> TaskRecord | None:
        heap = self._heap
        while heap:
            record = heap[0][3]
            if record.token == heap[0][2] and record.state is TaskState.QUEUED:
                return record
            heapq.heappop(heap)
        return None

    def pop(self) -> TaskRecord | None:
        record = self.peek()
        if record is not None:
            heapq.heappop(self._heap)
            record.token = 0
            self.count -= 1
            self._left(record.priority)
        return record

    def ordered(self) -> Iterator[TaskRecord]:
        """The queued records in the order `pop` would give them, without taking any: a
        walk of the heap from its root, smallest open entry first (k records cost
        O(k log k)). `discard` is allowed meanwhile; `push` and `pop` are not."""
        heap = self._heap
        frontier = [(heap[0][:3], 0)] if heap else []
        while frontier:
            _key, index = heapq.heappop(frontier)
            _priority, _order, token, record = heap[index]
            if record.token == token and record.state is TaskState.QUEUED:
                yield record
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child][:3], child))


class TaskBook:
    """Every task this executor knows, the queue, and the replay of task events.

    Finished records are kept for the latest `retain_finished` tasks, and while their results
    and errors add up to no more than `retain_bytes` (oldest forgotten first): status and
    results stay answerable here for a while, and the ledger holds them for good.
    """

    def __init__(self, node_id: str | None, retain_finished: int = 10_000,
                 retain_bytes: int = 32 << 20, capabilities: Iterable[str] = ()) -> None:
        self.node_id = node_id
        self.capabilities = frozenset(capabilities)
        self.records: dict[str, TaskRecord] = {}
        self.queue = TaskQueue()        # what this node's pool runs
        self.for_peers = TaskQueue()    # what only a peer can run (see `runs_here`)
        self.retain_finished = retain_finished
        self.retain_bytes = retain_bytes
        self._finished: deque[str] = deque()
        self._finished_bytes = 0
        self._orders = itertools.count(1)
        self.pending_submits = 0   # records in SUBMITTED
        self.unreadable = 0        # replayed events skipped: their data did not decode
        self.last_unreadable = ""  # why the last one was skipped

    def __contains__(self, task_id: str) -> bool:
        return task_id in self.records

    def get(self, task_id: str) -> TaskRecord | None:
        return self.records.get(task_id)

    def create(self, task_id: str, name: str, args: Any, priority: int, ts: float,
               state: TaskState = TaskState.SUBMITTED, requires: tuple[str, ...] = (),
               foreign: Foreign | None = None) -> TaskRecord:
        record = TaskRecord(task_id, name, args, priority, next(self._orders), ts, state)
        record.requires = requires
        record.foreign = foreign
        self.records[task_id] = record
        if state is TaskState.SUBMITTED:
            self.pending_submits += 1
        return record

    # --- the two queues ----------------------------------------------------------------------

    def runs_here(self, record: TaskRecord) -> bool:
        """Whether this node's pool may run `record`: it declares every capability the task
        requires. A task run for a peer always runs here (it was admitted on that ground)."""
        return record.foreign is not None or self.capabilities.issuperset(record.requires)

    def queue_of(self, record: TaskRecord) -> TaskQueue:
        return self.queue if self.runs_here(record) else self.for_peers

    def queued(self) -> int:
        """Tasks waiting in either queue."""
        return len(self.queue) + len(self.for_peers)

    def waiting_for(self, record: TaskRecord) -> str | None:
        """Why a queued task does not run here, for an operator; None when it may."""
        if record.state is not TaskState.QUEUED or self.runs_here(record):
            return None
        missing = ", ".join(sorted(set(record.requires) - self.capabilities))
        return f"requires {missing}, which this node does not declare: waits for a peer that does"

    def push(self, record: TaskRecord) -> None:
        """Put a queued record in its queue."""
        self.queue_of(record).push(record)

    def enqueue(self, record: TaskRecord) -> None:
        """submitted|running|delegated → queued, and into its queue."""
        if record.state is TaskState.SUBMITTED:
            self.pending_submits -= 1
        record.queue()
        self.push(record)

    def requeue(self, record: TaskRecord, counted: bool) -> None:
        record.requeue(counted)
        self.push(record)

    def delegate(self, record: TaskRecord, ts: float, peer: str, lease_s: float) -> None:
        """A queued record leaves its queue for `peer`."""
        self.queue_of(record).discard(record)
        record.delegate(ts, peer, lease_s)

    def finished(self, record: TaskRecord) -> None:
        """Note that `record` reached a terminal state; forget the oldest beyond retention."""
        self._finished.append(record.id)
        self._finished_bytes += record.size
        self.finished_trim()

    def cancel(self, record: TaskRecord, ts: float) -> None:
        if record.state is TaskState.QUEUED:
            self.queue_of(record).discard(record)
        elif record.state is TaskState.SUBMITTED:
            self.pending_submits -= 1
        record.cancel(ts)
        self.finished(record)

    def counts(self) -> dict[str, int]:
        """How many tasks the book holds in each state."""
        counts = {state.value: 0 for state in TaskState}
        for record in self.records.values():
            counts[record.state.value] += 1
        return counts

    def in_state(self, state: TaskState | None) -> Iterator[TaskRecord]:
        for record in self.records.values():
            if state is None or record.state is state:
                yield record

    # --- replay ------------------------------------------------------------------------------

    def apply(self, kind: str, data: Any, ts: float) -> None:
        """Apply one ``task.*`` event from the feed (in feed order). Unknown kinds and events
        about unknown tasks are skipped: the feed may hold kinds this version does not know.
        An event whose data does not decode is skipped and counted (`unreadable`)."""
        if kind not in _REPLAY:
            return
        try:
            event = events.decode(kind, data)
        except ProtocolError as exc:
            self.unreadable += 1
            self.last_unreadable = str(exc)
            return
        replay = _REPLAY[kind]
        if replay is None:
            assert isinstance(event, events.TaskSubmitted)
            _replay_submitted(self, event, ts)
            return
        record = self.records.get(getattr(event, "id", ""))
        if record is not None and record.state not in TERMINAL:
            replay(self, record, event, ts)

    def recover(self, max_attempts: int) -> tuple[list[TaskRecord], list[TaskRecord]]:
        """After replay: queue what is queued, and decide about tasks that were running when
        the executor stopped. Returns (requeued, failed): running tasks that go back to the
        queue (their run counts as an attempt) and those out of attempts; the caller records
        both in the ledger. A delegated task whose lease is known stays delegated: its peer
        may still hold it, and its lease, started afresh by the caller, lapses if not."""
        requeued: list[TaskRecord] = []
        failed: list[TaskRecord] = []
        for record in sorted(self.records.values(), key=lambda r: r.order):
            if record.state is TaskState.QUEUED:
                self.push(record)
            elif record.state is TaskState.DELEGATED and record.lease_s > 0:
                continue
            elif record.state in ACTIVE:
                if record.attempts >= max_attempts:
                    failed.append(record)
                else:
                    self.requeue(record, counted=True)
                    requeued.append(record)
        return requeued, failed

    # --- snapshots (workers/executor/snapshot.py) ---------------------------------------------

    def finished_ids(self) -> list[str]:
        """Ids of the finished records kept, oldest first (the order they are forgotten in)."""
        return list(self._finished)

    def adopt(self, records: list[TaskRecord], finished_ids: list[str]) -> None:
        """Take the records of a snapshot (an empty book only); queues are filled by
        `recover`, and new records are ranked after every adopted one."""
        assert not self.records, "adopt() fills an empty book"
        for record in records:
            self.records[record.id] = record
        self._finished.extend(task_id for task_id in finished_ids if task_id in self.records)
        self._finished_bytes = sum(self.records[task_id].size for task_id in self._finished)
        self._orders = itertools.count(max((r.order for r in records), default=0) + 1)

    def finished_trim(self) -> None:
        while self._finished and (len(self._finished) > self.retain_finished
                                  or self._finished_bytes > self.retain_bytes):
            old = self.records.get(self._finished.popleft())
            if old is not None and old.state in TERMINAL:
                del self.records[old.id]
                self._finished_bytes -= old.size


def _replay_submitted(book: TaskBook, event: events.TaskSubmitted, ts: float) -> None:
    if event.id not in book.records:
        book.create(event.id, str(event.name), [] if event.args is None else event.args,
                    DEFAULT_PRIORITY if event.priority is None else event.priority, ts,
                    TaskState.QUEUED, tuple(event.requires or ()), _foreign_of(event))


def _replay_started(book: TaskBook, record: TaskRecord, event: Any, ts: float) -> None:
    assert isinstance(event, events.TaskStarted)
    record.state = TaskState.RUNNING
    record.attempts = record.attempts + 1 if event.attempt is None else event.attempt
    record.started_ts = ts
    record.ran_on = book.node_id


def _replay_delegated(book: TaskBook, record: TaskRecord, event: Any, ts: float) -> None:
    assert isinstance(event, events.TaskDelegated)
    record.state = TaskState.DELEGATED
    record.attempts = record.attempts + 1 if event.attempt is None else event.attempt
    record.started_ts = ts
    record.ran_on = event.peer
    record.lease_s = 0.0 if event.lease_s is None else float(event.lease_s)


def _foreign_of(event: events.TaskSubmitted) -> Foreign | None:
    if event.origin is None:
        return None
    return Foreign(event.origin, 1 if event.origin_attempt is None else event.origin_attempt,
                   None if event.timeout is None else float(event.timeout))


def _replay_requeued(book: TaskBook, record: TaskRecord, event: Any, ts: float) -> None:
    assert isinstance(event, events.TaskRequeued)
    record.state = TaskState.QUEUED
    if event.attempts is not None:
        record.attempts = event.attempts


def _replay_outcome(state: TaskState) -> Any:
    def replay(book: TaskBook, record: TaskRecord, event: Any, ts: float) -> None:
        record.state = state
        if isinstance(event, events.TaskSucceeded):
            record.result, record.error = event.result, None
        else:
            record.result, record.error = None, event.error
        record.finished_ts = ts
        record.size = _rough_size(record.result if state is TaskState.SUCCEEDED
                                  else record.error)
        if event.ran_on is not None:
            record.ran_on = event.ran_on
        book.finished(record)  # trims as it goes: a long history never sits in memory

    return replay


def _rough_size(value: Any, depth: int = 0) -> int:
    """About how many bytes `value` holds, without encoding it (replay is hot)."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if depth > 4:
        return 64
    if isinstance(value, dict):
        return 16 + sum(_rough_size(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return 16 + sum(_rough_size(v, depth + 1) for v in value)
    return 9


_Replay = Callable[[TaskBook, TaskRecord, Any, float], None]
# What each task event does to its record in a replay; task.submitted creates the record.
_REPLAY: dict[str, _Replay | None] = {
    events.TaskSubmitted.KIND: None,
    events.TaskStarted.KIND: _replay_started,
    events.TaskDelegated.KIND: _replay_delegated,
    events.TaskRequeued.KIND: _replay_requeued,
    events.TaskSucceeded.KIND: _replay_outcome(TaskState.SUCCEEDED),
    events.TaskFailed.KIND: _replay_outcome(TaskState.FAILED),
    events.TaskTimedOut.KIND: _replay_outcome(TaskState.TIMED_OUT),
    events.TaskCancelled.KIND: _replay_outcome(TaskState.CANCELLED),
}
