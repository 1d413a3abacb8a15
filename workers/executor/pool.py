"""The executor's pool of task processes: forking them, feeding them, reading them.

Task processes are forked by a zygote of the executor's own (started by fork+exec with the
config's task modules imported), so replacing a killed process costs a fork, not a fresh
interpreter. Each process gets one end of a stream socketpair (its task channel, fd 3) and a
16-byte shared memory slot (fd 4) where it notes which task it is running and since when;
see `workers.executor.taskproc` for both.

Feeding: a process takes tasks in batches, but only as much work as it will finish within
`PREFETCH_S` (more while the pool is saturated: `TaskPool.prefetch_s`, set by
`workers.executor.pacing`) by the executor's running estimate of each type's duration. A type not seen
yet, or a slow one, goes only to an idle process and nothing queues behind it, so priorities
hold and a cancel or timeout never strands work behind a long task.
"""

from __future__ import annotations

import logging
import mmap
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from akita.tasks.queue import TaskQueue, TaskRecord
from workers.executor.taskproc import SLOT_BYTES, SLOT_FD, TASK_FD
from workers.zygote import Zygote

log = logging.getLogger(__name__)

PREFETCH_S = 0.02        # work (by estimate) a busy process may hold beyond its current task
DOUBLE_BUFFER_S = 0.05   # tasks up to this long always have the next one waiting in the process
MAX_IN_FLIGHT = 512      # tasks a process may hold at once
SPAWN_TIMEOUT_S = 2.0    # a fork server that does not fork within this is replaced
SEND_TIMEOUT_S = 5.0     # a process that does not take a frame within this is broken
# A type's duration estimate falls fast and rises slowly: a run stretched by a busy machine
# (a task descheduled for a time slice) must not collapse the prefetch of a short type, while
# a type that really got slower is learnt within a few dozen runs.
WEIGHT_DOWN, WEIGHT_UP = 0.5, 0.05
_RECV_BYTES = 1 << 20
_SLOT = struct.Struct("<QQ")


@dataclass(slots=True)
class Dispatch:
    """A task handed to a process: its place in that process's order, and its limits."""

    record: TaskRecord
    number: int
    estimate_s: float | None
    timeout_s: float


class PoolProcess:
    """One task process as the executor sees it."""

    def __init__(self, pid: int, sock: socket.socket, slot: mmap.mmap) -> None:
        self.pid = pid
        self.sock = sock
        self.fd = sock.fileno()
        self.slot = slot
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 31)
        self.in_flight: dict[str, Dispatch] = {}   # in the order sent
        self.numbers = 0
        self.backlog_s = 0.0    # estimated work in flight, for types with an estimate
        self.unknown = 0        # tasks in flight without an estimate
        self.kill_reason = ""   # "timeout", "cancel", "stop" when we killed it
        self.kill_target = ""

    def fileno(self) -> int:
        return self.fd

    def running(self) -> tuple[int, int]:
        """(number of the task running now, its start in CLOCK_MONOTONIC ns); 0 when idle."""
        number, started_ns = _SLOT.unpack_from(self.slot, 0)
        return number, started_ns

    def can_take(self, estimate_s: float | None, prefetch_s: float = PREFETCH_S) -> bool:
        if not self.in_flight:
            return True
        if self.unknown or estimate_s is None or len(self.in_flight) >= MAX_IN_FLIGHT:
            return False
        if self.backlog_s + estimate_s <= prefetch_s:
            return True
        # One task waiting behind a short running one, so the process never idles while its
        # outcome travels to the executor and the next task travels back.
        return len(self.in_flight) == 1 and max(self.backlog_s, estimate_s) <= DOUBLE_BUFFER_S

    def add(self, record: TaskRecord, estimate_s: float | None, timeout_s: float) -> None:
        self.numbers += 1
        self.in_flight[record.id] = Dispatch(record, self.numbers, estimate_s, timeout_s)
        if estimate_s is None:
            self.unknown += 1
        else:
            self.backlog_s += estimate_s

    def take(self, task_id: str) -> Dispatch | None:
        """Remove the dispatch of `task_id` (it finished, or was skipped)."""
        dispatch = self.in_flight.pop(task_id, None)
        if dispatch is not None:
            if dispatch.estimate_s is None:
                self.unknown -= 1
            else:
                self.backlog_s = max(0.0, self.backlog_s - dispatch.estimate_s)
        return dispatch

    def dispatch_running(self) -> Dispatch | None:
        """The dispatch the process is running right now, if it is running one of ours."""
        number, started_ns = self.running()
        if not started_ns:
            return None
        for dispatch in self.in_flight.values():
            if dispatch.number == number:
                return dispatch
            if dispatch.number > number:
                break
        return None

    def send(self, op: str, body: Any) -> None:
        """Send one frame; raises OSError (TimeoutError if the process does not take it)."""
        data = memoryview(msgpack.packb([op, body], use_bin_type=True))
        deadline = 0.0
        while data:
            try:
                data = data[self.sock.send(data):]
            except BlockingIOError:
                deadline = deadline or time.monotonic() + SEND_TIMEOUT_S
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"task process {self.pid} took no input for "
                                       f"{SEND_TIMEOUT_S:g} s") from None
                select.select([], [self.sock], [], remaining)

    def read(self) -> tuple[list[list[Any]], bool]:
        """Outcomes that arrived ([id, ok, value, duration_s] each), and False once the
        process has closed its end (it is gone)."""
        outcomes: list[list[Any]] = []
        alive = True
        while True:
            try:
                data = self.sock.recv(_RECV_BYTES)
            except BlockingIOError:
                break
            except ConnectionError:
                alive = False
                break
            if not data:
                alive = False
                break
            self.unpacker.feed(data)
            for op, body in self.unpacker:
                if op == "done":
                    outcomes.extend(body)
        return outcomes, alive

    def close(self) -> None:
        self.sock.close()
        self.slot.close()


class TaskPool:
    """`size` task processes, replaced as they die; feeds them from a `TaskQueue`."""

    def __init__(self, size: int, preload: list[str], spawn_args: dict[str, Any]) -> None:
        self.size = size
        self.preload = preload
        self.spawn_args = spawn_args
        self.zygote: Zygote | None = None
        self.zygotes_started = 0
        self.processes: dict[int, PoolProcess] = {}
        # Asked of the zygote, not yet forked: request ref → our end of its channel, slot.
        self.starting: dict[int, tuple[socket.socket, mmap.mmap]] = {}
        self.holder: dict[str, PoolProcess] = {}   # task id → the process it was sent to
        self.estimates: dict[str, float] = {}
        self.prefetch_s = PREFETCH_S
        self.started = 0
        self.lost = 0
        self.broken: list[PoolProcess] = []   # killed by `fill`: the owner handles their loss

    def start_zygote(self) -> None:
        self.zygote = Zygote.start(self.preload, child_death_signal=signal.SIGKILL,
                                   title="akita-tasks")
        self.zygotes_started += 1

    def replace_zygote(self) -> list[PoolProcess]:
        """The fork server died (or stopped answering): kill what is left of it, start a new
        one, and return the task processes it took with it (each marked killed by us, so
        their tasks are requeued without spending an attempt)."""
        if self.zygote is not None:
            self.zygote.kill()
        self._drop_starting()
        self.start_zygote()
        orphans = list(self.processes.values())
        for proc in orphans:
            self.kill(proc, "zygote")
        return orphans

    def request_process(self) -> None:
        """Ask the zygote for one more task process without waiting for it (a zygote just
        started takes ~50 ms to import the task modules, and the executor serves
        meanwhile): it joins `processes` from `take_started` once the zygote answers."""
        assert self.zygote is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        memfd = os.memfd_create("akita-task-slot")
        slot: mmap.mmap | None = None
        try:
            os.ftruncate(memfd, SLOT_BYTES)
            slot = mmap.mmap(memfd, SLOT_BYTES)
            ref = self.zygote.request("workers.executor.taskproc:main", self.spawn_args,
                                      fds={TASK_FD: theirs.fileno(), SLOT_FD: memfd})
        except BaseException:
            ours.close()
            if slot is not None:
                slot.close()
            raise
        finally:
            theirs.close()
            os.close(memfd)
        ours.setblocking(False)
        self.starting[ref] = (ours, slot)

    def take_started(self) -> list[PoolProcess]:
        """The processes the zygote has forked since the last call."""
        assert self.zygote is not None
        started = []
        for spawned in self.zygote.take_spawned():
            ours, slot = self.starting.pop(spawned.ref)
            proc = PoolProcess(spawned.pid, ours, slot)
            self.processes[spawned.pid] = proc
            self.started += 1
            started.append(proc)
        return started

    def spawn_late(self) -> bool:
        """A process asked for has not come within `SPAWN_TIMEOUT_S`: the zygote hangs."""
        return self.zygote is not None and self.zygote.late(SPAWN_TIMEOUT_S)

    def _drop_starting(self) -> None:
        for ours, slot in self.starting.values():
            ours.close()
            slot.close()
        self.starting.clear()

    def estimate(self, name: str) -> float | None:
        return self.estimates.get(name)

    def learn(self, name: str, duration_s: float) -> None:
        old = self.estimates.get(name)
        if old is None:
            self.estimates[name] = duration_s
        else:
            weight = WEIGHT_DOWN if duration_s < old else WEIGHT_UP
            self.estimates[name] = old + weight * (duration_s - old)

    def fill(self, queue: TaskQueue, start: Callable[[TaskRecord, int], float]) -> int:
        """Hand queued tasks to processes that can take them; `start(record, pid)` marks each
        started and returns its timeout. Returns how many were handed out."""
        sent = 0
        for proc in sorted(self.processes.values(), key=lambda p: (p.unknown, p.backlog_s)):
            batch: list[list[Any]] = []
            while True:
                record = queue.peek()
                if record is None:
                    break
                estimate_s = self.estimates.get(record.name)
                if not proc.can_take(estimate_s, self.prefetch_s):
                    break
                queue.pop()
                timeout_s = start(record, proc.pid)
                proc.add(record, estimate_s, timeout_s)
                self.holder[record.id] = proc
                batch.append([record.id, record.name, record.args, record.attempts])
            if batch:
                try:
                    proc.send("run", batch)
                except OSError as exc:
                    log.warning("task process %d cannot take work (%s): replacing it",
                                proc.pid, exc)
                    self.kill(proc, "broken")
                    self.broken.append(proc)
                    continue
                sent += len(batch)
            if not queue:
                break
        return sent

    def finished(self, proc: PoolProcess, task_id: str) -> Dispatch | None:
        dispatch = proc.take(task_id)
        if dispatch is not None:
            self.holder.pop(task_id, None)
        return dispatch

    def overdue(self) -> list[tuple[PoolProcess, Dispatch]]:
        """Processes whose current task has run past its timeout."""
        now_ns = time.monotonic_ns()
        late = []
        for proc in self.processes.values():
            if not proc.in_flight:
                continue
            dispatch = proc.dispatch_running()
            if dispatch is not None:
                _number, started_ns = proc.running()
                if started_ns and now_ns - started_ns > dispatch.timeout_s * 1e9:
                    late.append((proc, dispatch))
        return late

    def kill(self, proc: PoolProcess, reason: str, target: str = "") -> None:
        proc.kill_reason, proc.kill_target = reason, target
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def remove(self, proc: PoolProcess) -> list[Dispatch]:
        """Forget a dead (or killed) process; returns what it held, in order."""
        if self.processes.pop(proc.pid, None) is None:
            return []
        if not proc.kill_reason:
            self.lost += 1
        held = list(proc.in_flight.values())
        for dispatch in held:
            self.holder.pop(dispatch.record.id, None)
        return held

    def describe(self) -> list[dict[str, Any]]:
        """One {pid, in_flight, running (task id or None)} per process."""
        out = []
        for proc in self.processes.values():
            running = proc.dispatch_running()
            out.append({"pid": proc.pid, "in_flight": len(proc.in_flight),
                        "running": running.record.id if running else None})
        return out

    def close(self) -> None:
        """Kill every process and stop the zygote."""
        for proc in list(self.processes.values()):
            self.kill(proc, "stop")
            proc.close()
        self.processes.clear()
        self._drop_starting()
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None


def describe_exit(returncode: int) -> str:
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"


def cpu_count() -> int:
    """CPUs this process may run on (the default pool size)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
