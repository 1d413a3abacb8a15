"""The task process: runs the tasks the executor hands it, and sends back their outcomes.

A task process is forked by the executor's zygote with the config's task modules already
imported. It talks to the executor over one end of a stream socketpair (fd 3) in msgpack
frames, and uses nothing else: no ZeroMQ, no database.

    executor → process   ["run", [[id, name, args, attempt], …]]   tasks, in the order to run
                         ["skip", [id, …]]                          drop these if not yet run
                         ["pace", flush_s]                          how long outcomes may wait
    process → executor   ["done", [[id, ok, value, duration_s, size], …]]
                         value: the result when ok, else {"type", "message", "traceback"};
                         size: about how many bytes it encodes to

Many tasks travel per frame both ways: outcomes are flushed when the process runs out of
work, every `FLUSH_S` behind short tasks (longer while the executor says the pool is
saturated, `workers.executor.pacing`), and at once around a slow one (`SLOW_S`), so
trivial tasks cost a fraction of a frame each and no outcome waits behind a long task. The
executor enforces timeouts by killing the whole process, which is why a task never runs in
a thread here.

Which task is running, and since when, the process writes into a 16-byte shared memory slot
(fd 4) before and after each task: the task's number in the order received and its start
time (CLOCK_MONOTONIC ns, 0 when none is running). The executor reads it to time tasks out
and, when a process dies, to know which task was running — exact, whatever the batching.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import time
import traceback
from collections import deque
from typing import Any

import msgpack

from akita.tasks import registry as tasks
from akita.tasks.sizes import RESULT_LIMIT, cap_error, result_too_large

TASK_FD = 3
SLOT_FD = 4
SLOT_BYTES = 16
_U64 = struct.Struct("<Q")
FLUSH_S = 0.002   # longest an outcome waits in the process (behind short tasks) to be sent
MAX_FLUSH_S = 0.1  # the most a "pace" frame may ask for
SLOW_S = 0.01     # a task this long has its outcome sent at once, and what is done before it
CHECK_S = 0.001   # how often, between tasks, the process looks for new frames (skips)
_RECV_BYTES = 1 << 18
_SMALL_INT = (-(1 << 63), 1 << 64)


class TaskProcess:
    """The loop of one task process."""

    def __init__(self, sock: socket.socket, slot: mmap.mmap | bytearray, max_result_bytes: int,
                 commands: dict[str, list[str]]) -> None:
        self.sock = sock
        self.slot = slot
        self.number = 0  # of the last task taken, counting skipped ones as the executor does
        self.last_duration: dict[str, float] = {}
        self.max_result_bytes = max_result_bytes
        self.commands = commands
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 30)
        self.pending: deque[list[Any]] = deque()
        self.skipped: set[str] = set()
        self.outcomes: list[list[Any]] = []
        self.flush_s = FLUSH_S
        self.last_flush = self.last_check = time.monotonic()

    def serve(self) -> int:
        """Run until the executor closes its end; returns the exit code."""
        while True:
            if not self.pending:
                self._flush()
                if not self._receive(block=True):
                    return 0
            elif time.monotonic() - self.last_check >= CHECK_S:
                self._receive(block=False)
            if self.pending:
                self._run(self.pending.popleft())

    def _receive(self, block: bool) -> bool:
        """Read what has arrived (waiting for something if `block`); False at end of input."""
        self.last_check = time.monotonic()
        try:
            data = self.sock.recv(_RECV_BYTES, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        if not data:
            return False
        self.unpacker.feed(data)
        for op, body in self.unpacker:
            if op == "run":
                self.pending.extend(body)
            elif op == "skip":
                self.skipped.update(body)
            elif op == "pace" and isinstance(body, float | int):
                self.flush_s = min(max(float(body), 0.0), MAX_FLUSH_S)
        return True

    def _run(self, entry: list[Any]) -> None:
        task_id, name, args, attempt = entry
        self.number += 1
        if task_id in self.skipped:
            self.skipped.discard(task_id)
            return
        previous = self.last_duration.get(name)
        if self.outcomes and (previous is None or previous >= SLOW_S):
            self._flush()  # this one may take a while: do not hold back what is done
        # Start time before number: a reader that catches the two writes apart sees the
        # previous task starting a moment later, never a task starting earlier than it did.
        _U64.pack_into(self.slot, 8, time.monotonic_ns())
        _U64.pack_into(self.slot, 0, self.number)
        started = time.perf_counter()
        ok, value, size = self._call(task_id, name, args, attempt)
        duration = time.perf_counter() - started
        _U64.pack_into(self.slot, 8, 0)
        self.last_duration[name] = duration
        self.outcomes.append([task_id, ok, value, duration, size])
        if not self.pending or duration >= SLOW_S or \
                time.monotonic() - self.last_flush >= self.flush_s:
            self._flush()

    def _flush(self) -> None:
        if self.outcomes:
            self.sock.sendall(msgpack.packb(["done", self.outcomes], use_bin_type=True))
            self.outcomes = []
        self.last_flush = time.monotonic()

    def _call(self, task_id: str, name: str, args: Any, attempt: int
              ) -> tuple[bool, Any, int]:
        """(True, result, size) or (False, error, size) for one task."""
        argv = self.commands.get(name)
        if argv is not None:
            return run_command(argv, args, self.max_result_bytes)
        task_type = tasks.registered(name)
        if task_type is None or task_type.fn is None:
            return _failed(cap_error({"type": "UnknownTaskType", "message":
                                      f"this task process has no task type {name!r}",
                                      "traceback": ""}, self.max_result_bytes))
        tasks._set_current(tasks.TaskContext(task_id, name, attempt))
        try:
            value = task_type.fn(*args) if isinstance(args, list) else task_type.fn(**args)
        # A task is user code: whatever it raises (SystemExit included) is its outcome, and
        # this process stays up for the next one.
        except BaseException as exc:  # noqa: BLE001
            return _failed(error_of(exc, self.max_result_bytes))
        finally:
            tasks._set_current(None)
        return check_result(value, self.max_result_bytes)


def check_result(value: Any, max_bytes: int) -> tuple[bool, Any, int]:
    """(True, value, size) when `value` can be stored; else (False, the error, its size)."""
    kind = type(value)
    if value is None or kind is bool or kind is float or (
            kind is int and _SMALL_INT[0] <= value < _SMALL_INT[1]):
        return True, value, 9
    if (kind is str or kind is bytes) and len(value) * 4 + 8 <= max_bytes:
        return True, value, len(value) + 5
    try:
        size = len(msgpack.packb(value, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        return _failed(cap_error({"type": "ResultNotSerializable", "message":
                                  f"the task returned a {kind.__name__} that cannot be stored "
                                  f"({exc}); return str, int, float, bool, None, bytes, "
                                  "list or dict", "traceback": ""}, max_bytes))
    if size > max_bytes:
        return _failed(cap_error(result_too_large(size, max_bytes, RESULT_LIMIT), max_bytes))
    return True, value, size


def _failed(error: dict[str, str]) -> tuple[bool, dict[str, str], int]:
    return False, error, sum(len(text) for text in error.values()) + 32


def error_of(exc: BaseException, max_bytes: int) -> dict[str, str]:
    """{type, message, traceback} of an exception a task raised, capped to `max_bytes`."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"
    text = "".join(traceback.format_exception(exc))
    return cap_error({"type": name, "message": str(exc), "traceback": text}, max_bytes)


def run_command(template: list[str], args: list[Any], max_bytes: int
                ) -> tuple[bool, Any, int]:
    """Run a command task: argv with its placeholders filled, no shell. Its stdout is the
    result; a non-zero exit is an error carrying the end of its stderr."""
    import subprocess

    argv = tasks.command_argv(template, args)
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              preexec_fn=_die_with_us, check=False)
    except OSError as exc:
        return _failed(cap_error({"type": type(exc).__name__,
                                  "message": f"cannot run {argv[0]!r}: {exc.strerror or exc}",
                                  "traceback": ""}, max_bytes))
    stderr = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        how = f"exited with status {done.returncode}" if done.returncode > 0 else \
            f"was killed by signal {-done.returncode}"
        last = stderr.strip().splitlines()[-1:] or [""]
        message = f"{argv[0]} {how}" + (f": {last[0]}" if last[0] else "")
        return _failed(cap_error({"type": "CommandFailed", "message": message,
                                  "traceback": stderr}, max_bytes))
    return check_result(done.stdout.decode(errors="replace"), max_bytes)


def _die_with_us() -> None:
    # A timeout kills the task process with SIGKILL; its command must not outlive it.
    from workers.zygote import die_with_parent

    die_with_parent()


def main(args: dict[str, Any]) -> int:
    """Entry point in a task process forked by the executor's zygote."""
    sock = socket.socket(fileno=TASK_FD)
    slot = mmap.mmap(SLOT_FD, SLOT_BYTES)
    os.close(SLOT_FD)
    return TaskProcess(sock, slot, args["max_result_bytes"], args["commands"]).serve()
