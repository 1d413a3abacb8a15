"""The executor in a real node: task types, errors, outcomes, timeouts, crashes, cancels, and
akitactl's task verbs. One node serves the whole module (its tests leave it idle)."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import akita
from akita.ledger import chain
from tests.helpers import Node, pid_alive, stop_all, wait_for

SECTIONS: dict[str, dict[str, Any]] = {
    "supervisor": {"workers": "ledger, executor"},
    "tasks": {"pool_size": 2, "modules": "tests.sample_tasks", "max_attempts": 2,
              "max_result_bytes": 4096, "task_timeout": 20},
    "command:say": {"argv": "echo {0}", "timeout": 5},
}


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    root = Path(tempfile.mkdtemp(prefix="ak-", dir="/tmp"))
    started = Node(root / "n0", SECTIONS)
    try:
        started.start()
        yield started
    finally:
        try:
            stop_all([started])
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def client(node: Node) -> Iterator[akita.Client]:
    with akita.Client(node.config_path, timeout_s=10) as c:
        yield c


def task_events(node: Node, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.kind, e.data) for e in chain.read_events(chain.db_path(node.config),
                                                         kind_prefix="task.")
            if e.data.get("id") == task_id]


def pool_pids(client: akita.Client) -> set[int]:
    return {p["pid"] for p in client.stats()["pool"]}


def runner_of(node: Node, task_id: str, attempt: int = 1) -> int:
    """The pid of the task process given `attempt` of `task_id`, from its task.started event
    (waits for it)."""
    def find() -> Any:
        for kind, data in task_events(node, task_id):
            if kind == "task.started" and data["attempt"] == attempt:
                return data["pid"]
        return None

    return int(wait_for(find, 10, f"attempt {attempt} of task {task_id} started"))


def replaced(client: akita.Client, pid: int) -> bool:
    """The pool is whole again, without `pid`."""
    pids = pool_pids(client)
    return pid not in pids and len(pids) == 2


def test_types_come_from_config_modules_and_commands(client: akita.Client) -> None:
    types = {t["name"]: t for t in client.types()}
    assert {"akita.echo", "akita.sleep", "sample.add", "sample.greet", "say",
            "tests.sample_tasks.spin"} <= set(types)
    assert types["say"]["kind"] == "command" and types["sample.add"]["kind"] == "python"
    assert types["sample.hang"]["timeout_s"] == 0.5
    ids = [client.submit("sample.add", [2, 3]), client.submit("say", ["hi there"]),
           client.submit("sample.greet", {"name": "ak", "punctuation": "?"}),
           client.submit("akita.echo", [{"nested": [1, "x"]}], priority=9)]
    assert client.wait_many(ids, timeout=20) == [5, "hi there\n", "hello ak?",
                                                 {"nested": [1, "x"]}]


def test_unknown_types_and_bad_args_are_refused_at_submit(node: Node,
                                                          client: akita.Client) -> None:
    with pytest.raises(akita.TaskRejected) as refused:
        client.submit("sample.nope", [])
    assert refused.value.code == "unknown_task"
    assert str(refused.value).startswith("unknown task type 'sample.nope' (this node runs: ")
    with pytest.raises(akita.TaskRejected, match=r"^sample.add: argument 'b' expects int, "
                                                 r"got str$") as refused:
        client.submit("sample.add", [1, "2"])
    assert refused.value.code == "bad_args"
    with pytest.raises(akita.TaskRejected, match="priority must be a whole number from 0 to 9"):
        client.submit("akita.echo", [], priority=12)
    with pytest.raises(akita.TaskRejected) as refused:
        client.submit_many([("akita.echo", [1]), ("sample.add", [1]), ("nope", [])])
    assert [e[:2] for e in refused.value.errors] == [(1, "bad_args"), (2, "unknown_task")]
    assert refused.value.ids[0] is not None and refused.value.ids[1:] == [None, None]
    assert client.wait(refused.value.ids[0], timeout=10) == 1

    done = node.ctl("submit", "sample.add", "--args", "[1]")
    assert done.returncode == 1
    assert done.stderr == ("akitactl: sample.add: takes 2 arguments (a, b), got 1\n")
    done = node.ctl("submit", "akita.echo", "--args", "[1,")
    assert done.returncode == 2 and done.stderr.startswith("akitactl: --args is not valid JSON")
    assert "Traceback" not in done.stderr


def test_failure_carries_the_remote_error(node: Node, client: akita.Client) -> None:
    task_id = client.submit("sample.fail", ["the disk is full"])
    with pytest.raises(akita.TaskFailed) as failed:
        client.wait(task_id, timeout=10)
    error = failed.value
    assert (error.task_id, error.state, error.type, error.message) == \
        (task_id, "failed", "ValueError", "the disk is full")
    assert "raise ValueError(message)" in error.traceback
    shown = node.ctl_json("task", task_id)
    assert list(shown) == ["id", "name", "state", "priority", "attempts", "ran_on", "error"]
    assert shown["state"] == "failed" and shown["attempts"] == 1
    assert shown["ran_on"] == node.status()["node"]["id"]
    assert shown["error"]["type"] == "ValueError"


def test_handler_sees_its_own_task_id(client: akita.Client) -> None:
    task_id = client.submit("sample.whoami")
    seen = client.wait(task_id, timeout=10)
    assert seen["id"] == task_id and seen["attempt"] == 1


def test_results_must_be_storable_and_within_the_cap(client: akita.Client) -> None:
    ids = [client.submit("sample.big", [10_000]), client.submit("sample.unstorable")]
    big, unstorable = client.wait_many(ids, timeout=10, return_exceptions=True)
    assert isinstance(big, akita.TaskFailed) and big.type == "ResultTooLarge"
    assert "max_result_bytes is 4096" in big.message
    assert isinstance(unstorable, akita.TaskFailed) and unstorable.type == \
        "ResultNotSerializable"
    assert client.wait(client.submit("sample.big", [1000]), timeout=10) == "x" * 1000


def test_timeout_kills_the_task_and_replaces_its_process(node: Node,
                                                         client: akita.Client) -> None:
    task_id = client.submit("sample.hang", [30])
    pid = runner_of(node, task_id)
    with pytest.raises(akita.TaskFailed) as failed:
        client.wait(task_id, timeout=10)
    assert failed.value.state == "timed_out" and failed.value.type == "TimedOut"
    assert "timeout of 0.5 s" in failed.value.message
    wait_for(lambda: not pid_alive(pid), 5, f"timed-out task process {pid} gone")
    pids = wait_for(lambda: len(pool_pids(client)) == 2 and pool_pids(client), 10,
                    "a pool of 2 again")
    assert pid not in pids
    kinds = [kind for kind, _ in task_events(node, task_id)]
    assert kinds == ["task.submitted", "task.started", "task.timed_out"]
    assert client.wait(client.submit("sample.add", [1, 1]), timeout=10) == 2


def test_killed_task_process_is_retried_then_fails(tmp_path: Path, node: Node,
                                                    client: akita.Client) -> None:
    # A task whose process dies is run again...
    task_id = client.submit("sample.crash_once", [str(tmp_path)])
    assert client.wait(task_id, timeout=20) == "survived"
    assert client.status(task_id)["attempts"] == 2
    kinds = [kind for kind, _ in task_events(node, task_id)]
    assert kinds == ["task.submitted", "task.started", "task.requeued", "task.started",
                     "task.succeeded"]
    # ...up to max_attempts (2 here), then it fails; each dead process is replaced.
    lost_before = client.stats()["totals"]["processes_lost"]
    task_id = client.submit("akita.sleep", [60])
    for attempt in (1, 2):
        pid = runner_of(node, task_id, attempt)
        assert client.status(task_id)["attempts"] == attempt
        os.kill(pid, signal.SIGKILL)
        wait_for(functools.partial(replaced, client, pid), 10, f"task process {pid} replaced")
    with pytest.raises(akita.TaskFailed) as failed:
        client.wait(task_id, timeout=10)
    assert failed.value.type == "ProcessLost"
    assert "killed by signal 9" in failed.value.message and "attempt 2 of 2" in \
        failed.value.message
    assert client.stats()["totals"]["processes_lost"] == lost_before + 2


def test_cancel_a_queued_and_a_running_task(node: Node, client: akita.Client) -> None:
    blockers = [client.submit("akita.sleep", [60]) for _ in range(2)]
    pids = [runner_of(node, task_id) for task_id in blockers]
    queued = client.submit("akita.echo", ["never"])
    assert client.status(queued)["state"] == "queued"
    assert client.cancel(queued) is True
    assert client.cancel(queued) is False  # already cancelled
    with pytest.raises(akita.TaskFailed) as failed:
        client.wait(queued, timeout=5)
    assert failed.value.state == "cancelled"
    assert [kind for kind, _ in task_events(node, queued)] == ["task.submitted",
                                                               "task.cancelled"]
    done = node.ctl("cancel", blockers[0])
    assert done.returncode == 0 and done.stdout == f"cancelled {blockers[0]}\n"
    wait_for(lambda: not pid_alive(pids[0]), 5, f"process {pids[0]} of a cancelled task gone")
    assert client.cancel(blockers[1]) is True
    outcomes = client.wait_many(blockers, timeout=5, return_exceptions=True)
    assert [o.state for o in outcomes] == ["cancelled", "cancelled"]
    wait_for(lambda: len(pool_pids(client) - set(pids)) == 2, 10, "two fresh task processes")
    done = node.ctl("cancel", blockers[0])
    assert done.returncode == 1 and "already finished (cancelled)" in done.stderr


def test_akitactl_task_verbs(node: Node) -> None:
    done = node.ctl("submit", "sample.add", "--args", "[20, 22]", "--priority", "8", "--wait")
    assert done.returncode == 0 and done.stdout == "42\n"
    task_id = node.ctl_json("submit", "akita.echo", "--args", '["x"]')["id"]
    shown = wait_for(lambda: (t := node.ctl_json("task", task_id))["state"] == "succeeded"
                     and t, 10, "the task to succeed")
    assert shown == {"id": task_id, "name": "akita.echo", "state": "succeeded", "priority": 5,
                     "attempts": 1, "ran_on": node.status()["node"]["id"], "result": "x"}
    listed = node.ctl_json("tasks", "--state", "succeeded")
    assert task_id in {t["id"] for t in listed}
    assert all(t["state"] == "succeeded" for t in listed)
    table = node.ctl("tasks", "--state", "succeeded")
    assert table.returncode == 0 and table.stdout.startswith("ID ") and task_id in table.stdout
    failed = node.ctl("submit", "sample.fail", "--args", '["no"]', "--wait")
    assert failed.returncode == 1 and "ValueError: no" in failed.stderr
    slow = node.ctl("submit", "akita.sleep", "--args", "[30]", "--wait", "--timeout", "0.2")
    assert slow.returncode == 1 and "did not finish within 0.2 s" in slow.stderr
    missing = node.ctl("task", "0123456789abcdef")
    assert missing.returncode == 1 and missing.stderr == \
        "akitactl: no task 0123456789abcdef on this node\n"
    for verb in ("submit", "task", "tasks", "cancel"):
        assert node.ctl(verb, "--help").returncode == 0
    # Leave the node idle.
    for t in node.ctl_json("tasks", "--state", "running"):
        node.ctl("cancel", t["id"])
