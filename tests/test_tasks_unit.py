"""Task types, argument checks, the queue and the replay of task events: pure logic, plus one
real task process driven over its socket."""

from __future__ import annotations

import mmap
import os
import select
import socket
import struct
import sys
import time
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from akita import config as config_mod
from akita.tasks import registry as tasks
from akita.tasks.queue import InvalidTransition, TaskBook, TaskQueue, TaskRecord, TaskState
from workers.executor import taskproc
from workers.zygote import Zygote

# --- argument checks ------------------------------------------------------------------------


def _spec(fn: Any) -> tasks.ArgSpec:
    return tasks.spec_of(fn)


def _why(spec: tasks.ArgSpec, args: Any) -> str:
    """The refusal `check_args` gives (which must be one)."""
    problem = tasks.check_args(spec, args)
    assert problem is not None, f"{args!r} was accepted"
    return problem


def _ids(queue: TaskQueue) -> list[str]:
    """Every id left in the queue, in the order they pop."""
    out = []
    while (popped := queue.pop()) is not None:
        out.append(popped.id)
    return out


def test_positional_counts_and_types_are_checked() -> None:
    def resize(path: str, width: int, quality: float = 0.9) -> None: ...

    spec = _spec(resize)
    assert tasks.check_args(spec, ["a.png", 640]) is None
    assert tasks.check_args(spec, ["a.png", 640, 1]) is None  # an int is a fine float
    assert "takes 2 to 3 arguments (path, width, quality=…), got 1" in _why(spec, ["a.png"])
    assert tasks.check_args(spec, ["a.png", "640"]) == "argument 'width' expects int, got str"
    assert tasks.check_args(spec, ["a.png", True]) == "argument 'width' expects int, got bool"
    assert "got 4" in _why(spec, ["a", 1, 0.5, 9])


def test_keyword_args_are_checked_by_name() -> None:
    def greet(name: str, *, punctuation: str = "!", times: int | None = None) -> None: ...

    spec = _spec(greet)
    assert tasks.check_args(spec, {"name": "x", "times": None}) is None
    assert tasks.check_args(spec, {"name": "x", "times": 3}) is None
    assert tasks.check_args(spec, {"name": "x", "colour": 1}) == \
        "unexpected argument 'colour'; takes (name, punctuation=…, times=…)"
    assert _why(spec, {"punctuation": "?"}).startswith("missing argument 'name'")
    assert _why(spec, ["x", "?"]).startswith("takes 1 argument")
    assert tasks.check_args(spec, "x") == \
        "args must be a list (positional) or a map (keywords), got str"


def test_var_args_and_unresolvable_annotations() -> None:
    def anything(*args: int, **kwargs: Any) -> None: ...

    def odd(thing: NoSuchType) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    assert tasks.check_args(_spec(anything), [1, 2, 3]) is None
    assert tasks.check_args(_spec(anything), {"whatever": 1}) is None
    assert tasks.check_args(_spec(odd), [object()]) is None  # only the count is checked
    assert "got 0" in _why(_spec(odd), [])


def test_string_annotations_resolve() -> None:
    from tests import sample_tasks

    spec = tasks.spec_of(sample_tasks.add)
    assert [p.types for p in spec.params] == [("int",), ("int",)]
    assert tasks.check_args(spec, [1, "2"]) == "argument 'b' expects int, got str"


# --- registration ---------------------------------------------------------------------------


def test_decorator_refuses_bad_names_and_double_declarations() -> None:
    with pytest.raises(tasks.TaskDefinitionError, match="use 1-64 letters"):
        tasks.task("has space")(lambda: None)
    with pytest.raises(tasks.TaskDefinitionError, match="timeout must be positive"):
        tasks.task("unit.zero", timeout=0)(lambda: None)

    def first() -> None: ...

    def second() -> None: ...

    tasks.task("unit.twice")(first)
    with pytest.raises(tasks.TaskDefinitionError, match="declared twice"):
        tasks.task("unit.twice")(second)


def test_table_loads_builtins_modules_and_commands(tmp_path: Any) -> None:
    ini = tmp_path / "a.ini"
    ini.write_text("[node]\ndata_dir = d\nrun_dir = r\nlog_dir = l\n"
                   "[command:shout]\nargv = echo {1} --name={0}\ntimeout = 3\n")
    config = config_mod.load(ini)
    table = tasks.TaskTable.load(["tests.sample_tasks"], config.commands)
    assert {"akita.echo", "akita.sleep", "sample.add", "shout",
            "tests.sample_tasks.spin"} <= set(table.types)
    assert "unit.twice" not in table.types  # registered, but by no configured module
    shout = table.get("shout")
    assert shout is not None and shout.kind == "command" and shout.timeout_s == 3
    assert table.check("shout", ["a", "b"]) is None
    assert table.check("shout", ["a"]) == "shout: takes 2 arguments (arg0, arg1), got 1"
    assert table.check("shout", ["a", ["b"]]) == \
        "shout: argument 'arg1' expects str or int or float, got list"
    assert str(table.check("nope", [])).startswith("unknown task type 'nope' (this node runs: ")
    assert tasks.command_argv(shout.argv or (), ["x", 2]) == ["echo", "2", "--name=x"]
    hang = table.get("sample.hang")
    assert hang is not None and hang.timeout_s == 0.5


def test_table_errors_name_the_problem(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(tasks.TaskDefinitionError, match="cannot import 'no_such_module_xyz'"):
        tasks.TaskTable.load(["no_such_module_xyz"])
    (tmp_path / "akita_unit_broken.py").write_text("x = 1\nraise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(tasks.TaskDefinitionError) as broken:
        tasks.TaskTable.load(["akita_unit_broken"])
    assert str(broken.value) == ("[tasks] modules: importing 'akita_unit_broken' failed: "
                                 f"RuntimeError: boom (at {tmp_path}/akita_unit_broken.py:2)")
    ini = tmp_path / "a.ini"
    ini.write_text("[node]\ndata_dir = d\nrun_dir = r\nlog_dir = l\n"
                   "[command:akita.echo]\nargv = echo\n")
    with pytest.raises(tasks.TaskDefinitionError, match=r"\[command:akita.echo\] names a task"):
        tasks.TaskTable.load([], config_mod.load(ini).commands)


def test_current_task_outside_a_task_says_so() -> None:
    with pytest.raises(RuntimeError, match="outside a running task"):
        tasks.current_task()


# --- the queue ------------------------------------------------------------------------------


def _record(book: TaskBook, task_id: str, priority: int) -> TaskRecord:
    record = book.create(task_id, "akita.echo", [], priority, 0.0)
    book.enqueue(record)
    return record


def test_queue_orders_by_priority_then_fifo_and_cancels_lazily() -> None:
    book = TaskBook("node")
    for i, priority in enumerate([1, 5, 9, 5, 1, 9]):
        _record(book, f"t{i}", priority)
    book.cancel(book.records["t3"], 1.0)
    assert len(book.queue) == 5
    assert _ids(book.queue) == ["t2", "t5", "t1", "t0", "t4"]
    assert len(book.queue) == 0


def test_requeued_task_keeps_its_place() -> None:
    book = TaskBook("node")
    first, second = _record(book, "a1", 5), _record(book, "a2", 5)
    popped = book.queue.pop()
    assert popped is first
    first.start(1.0, "node")
    book.requeue(first, counted=False)
    assert first.attempts == 0
    assert [book.queue.pop(), book.queue.pop()] == [first, second]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.booleans()), min_size=1, max_size=60))
def test_queue_pops_in_priority_fifo_order(entries: list[tuple[int, bool]]) -> None:
    book = TaskBook("node")
    kept = []
    for i, (priority, cancel) in enumerate(entries):
        record = _record(book, f"p{i}", priority)
        if cancel:
            book.cancel(record, 0.0)
        else:
            kept.append((-priority, i, record.id))
    assert _ids(book.queue) == [task_id for _, _, task_id in sorted(kept)]


def test_transitions_check_where_they_start() -> None:
    record = TaskRecord("x1", "akita.echo", [], 5, 1, 0.0)
    with pytest.raises(InvalidTransition, match="cannot start a submitted task"):
        record.start(0.0, None)
    record.queue()
    record.start(1.0, "n")
    record.finish(TaskState.SUCCEEDED, 2.0, result=3)
    with pytest.raises(InvalidTransition, match="cannot cancel a succeeded task"):
        record.cancel(3.0)
    with pytest.raises(InvalidTransition, match="not an outcome"):
        record.finish(TaskState.CANCELLED, 3.0)
    assert record.outcome() == {"id": "x1", "state": "succeeded", "result": 3}


# --- replay ---------------------------------------------------------------------------------


def test_replay_rebuilds_every_state_and_recovers_running_tasks() -> None:
    events = [
        ("task.submitted", {"id": "done", "name": "n", "args": [1], "priority": 2}),
        ("task.submitted", {"id": "queued", "name": "n", "args": [], "priority": 7}),
        ("task.submitted", {"id": "running", "name": "n", "args": [], "priority": 5}),
        ("task.submitted", {"id": "spent", "name": "n", "args": [], "priority": 5}),
        ("task.submitted", {"id": "gone", "name": "n", "args": [], "priority": 5}),
        ("task.started", {"id": "done", "attempt": 1}),
        ("task.succeeded", {"id": "done", "attempt": 1, "result": "ok"}),
        ("task.started", {"id": "running", "attempt": 1}),
        ("task.started", {"id": "spent", "attempt": 1}),
        ("task.requeued", {"id": "spent", "attempts": 1, "reason": "died"}),
        ("task.started", {"id": "spent", "attempt": 2}),
        ("task.cancelled", {"id": "gone"}),
        ("task.succeeded", {"id": "unknown-id", "result": 1}),   # ignored
        ("task.future_kind", {"id": "queued"}),                 # ignored
    ]
    book = TaskBook("me")
    for kind, data in events:
        book.apply(kind, data, 100.0)
    requeued, failed = book.recover(max_attempts=2)
    assert [r.id for r in requeued] == ["running"] and [r.id for r in failed] == ["spent"]
    states = {task_id: r.state for task_id, r in book.records.items()}
    assert states == {"done": TaskState.SUCCEEDED, "queued": TaskState.QUEUED,
                      "running": TaskState.QUEUED, "spent": TaskState.RUNNING,
                      "gone": TaskState.CANCELLED}
    assert book.records["done"].result == "ok" and book.records["done"].ran_on == "me"
    assert book.records["running"].attempts == 1
    assert _ids(book.queue) == ["queued", "running"]


def test_finished_tasks_beyond_retention_are_forgotten() -> None:
    book = TaskBook("me", retain_finished=3, retain_bytes=1000)
    for i in range(5):
        record = _record(book, f"f{i}", 5)
        book.cancel(record, 0.0)
    assert sorted(book.records) == ["f2", "f3", "f4"]
    for name in ("big1", "big2"):
        big = _record(book, name, 5)
        book.queue.pop()
        big.start(0.0, "me")
        big.finish(TaskState.SUCCEEDED, 1.0, result="x" * 900)
        big.size = 900
        book.finished(big)
    assert sorted(book.records) == ["big2"]  # 1,800 bytes > 1,000: the oldest went first


# --- results and errors in the task process ------------------------------------------------


def test_results_are_checked_for_size_and_type() -> None:
    assert taskproc.check_result({"a": [1, 2]}, 100) == (True, {"a": [1, 2]}, 6)
    ok, error, _size = taskproc.check_result("x" * 2000, 1000)
    assert not ok and error["type"] == "ResultTooLarge" and "max_result_bytes is 1000" in \
        error["message"]
    ok, error, _size = taskproc.check_result("x" * 200, 100)
    assert not ok and len(msgpack.packb(error)) <= 100
    ok, error, _size = taskproc.check_result({1, 2}, 1000)
    assert not ok and error["type"] == "ResultNotSerializable"
    assert taskproc.check_result(1 << 70, 1000)[0] is False  # beyond msgpack's integers


def test_errors_keep_their_end_within_the_cap() -> None:
    try:
        raise KeyError("k" * 10_000)
    except KeyError as exc:
        error = taskproc.error_of(exc, 1000)
    assert error["type"] == "KeyError"
    assert len(msgpack.packb(error)) <= 1000
    assert error["message"].startswith("'kkk") and len(error["message"]) < 300
    assert error["traceback"].startswith("…") and error["traceback"].endswith("k'\n")


def test_command_outcomes() -> None:
    assert taskproc.run_command(["echo", "hi {0}"], ["there"], 1000)[:2] == (True, "hi there\n")
    script = "import sys; print('bad thing', file=sys.stderr); sys.exit(3)"
    ok, error, _size = taskproc.run_command([sys.executable, "-c", script], [], 1000)
    assert not ok and error["type"] == "CommandFailed"
    assert error["message"].endswith("exited with status 3: bad thing")
    ok, error, _size = taskproc.run_command(["/no/such/binary"], [], 1000)
    assert not ok and error["type"] == "FileNotFoundError" and "/no/such/binary" in \
        error["message"]


# --- one real task process ------------------------------------------------------------------


def _read_frames(sock: socket.socket, count: int, timeout_s: float) -> list[Any]:
    unpacker = msgpack.Unpacker(raw=False)
    outcomes: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(outcomes) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"task process sent {len(outcomes)} of {count} outcomes"
        if select.select([sock], [], [], remaining)[0]:
            data = sock.recv(1 << 16)
            assert data, "task process closed its channel"
            unpacker.feed(data)
            for op, body in unpacker:
                assert op == "done"
                outcomes.extend(body)
    return outcomes


def test_task_process_runs_batches_skips_and_reports_its_slot() -> None:
    zygote = Zygote.start(["workers.executor.taskproc", "tests.sample_tasks"], title="unit-zygote")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    memfd = os.memfd_create("unit-slot")
    os.ftruncate(memfd, taskproc.SLOT_BYTES)
    slot = mmap.mmap(memfd, taskproc.SLOT_BYTES)
    try:
        pid = zygote.spawn("workers.executor.taskproc:main", {"max_result_bytes": 4096,
                                                   "commands": {"say": ["echo", "{0}"]}},
                           fds={taskproc.TASK_FD: theirs.fileno(), taskproc.SLOT_FD: memfd})
        theirs.close()
        os.close(memfd)
        batch = [["t1", "sample.add", [2, 3], 1], ["t2", "sample.fail", ["boom"], 1],
                 ["t3", "sample.whoami", [], 2], ["t4", "akita.echo", [], 1],
                 ["t5", "say", ["hi"], 1]]
        ours.sendall(msgpack.packb(["skip", ["t4"]]) + msgpack.packb(["run", batch]))
        outcomes = {o[0]: o for o in _read_frames(ours, 4, 10)}
        assert outcomes["t1"][1:3] == [True, 5]
        assert outcomes["t2"][1] is False and outcomes["t2"][2]["type"] == "ValueError"
        assert "boom" in outcomes["t2"][2]["traceback"]
        assert outcomes["t3"][2] == {"id": "t3", "attempt": 2, "pid": pid}
        assert outcomes["t5"][2] == "hi\n"
        assert "t4" not in outcomes
        assert struct.unpack_from("<QQ", slot) == (5, 0)  # t4 counted, none running now
        ours.sendall(msgpack.packb(["run", [["t6", "akita.sleep", [5], 1]]]))
        deadline = time.monotonic() + 5
        while struct.unpack_from("<QQ", slot)[1] == 0:
            assert time.monotonic() < deadline, "the slot never showed t6 running"
            time.sleep(0.005)
        assert struct.unpack_from("<QQ", slot)[0] == 6
    finally:
        ours.close()  # end of input: an idle process exits; this one is killed below
        slot.close()
        zygote.close()
