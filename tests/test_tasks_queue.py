"""The queue at scale in a real node: priority order with a full queue, and no acknowledged
task lost when the executor is killed."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

import akita
from akita import transport
from akita.ledger import chain
from akita.wire import protocol
from tests.helpers import Node, pid_alive, wait_for


def started_order(node: Node) -> list[str]:
    """Task ids in the order of their task.started events in the ledger."""
    return [e.data["id"] for e in chain.read_events(chain.db_path(node.config),
                                                     kind_prefix="task.started")]


def outcomes_in_ledger(node: Node) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for event in chain.read_events(chain.db_path(node.config), kind_prefix="task."):
        if event.kind in ("task.succeeded", "task.failed", "task.timed_out", "task.cancelled"):
            seen.setdefault(event.data["id"], []).append(event.kind)
    return seen


def test_higher_priorities_start_first_and_a_full_queue_refuses(
        make_node: Callable[..., Node]) -> None:
    node = make_node({"supervisor": {"workers": "ledger, executor"},
                      "tasks": {"pool_size": 1, "max_queue": 1000}})
    node.start()
    with akita.Client(node.config_path, timeout_s=20) as client:
        blocker = client.submit("akita.sleep", [60], priority=9)
        wait_for(lambda: client.status(blocker)["state"] == "running", 10, "blocker running")
        rng = random.Random(7)
        priorities = [rng.randrange(10) for _ in range(1000)]
        ids = client.submit_many([("akita.echo", [i], p) for i, p in enumerate(priorities)])
        # The queue holds 1000 now (the running blocker is not queued): one more is refused.
        with pytest.raises(akita.TaskRejected) as refused:
            client.submit("akita.echo", ["one too many"])
        assert refused.value.code == "queue_full"
        assert "the queue is full (1000 tasks, [tasks] max_queue)" in str(refused.value)
        done = node.ctl("submit", "akita.echo")
        assert done.returncode == 1 and "queue is full" in done.stderr
        assert client.stats()["totals"]["queued"] == 1000
        assert client.cancel(blocker) is True  # frees the only process: the queue drains
        assert client.wait_many(ids, timeout=60) == list(range(1000))
    rank = {task_id: (-priority, index)
            for index, (task_id, priority) in enumerate(zip(ids, priorities))}
    order = [task_id for task_id in started_order(node) if task_id in rank]
    assert len(order) == 1000
    assert order == sorted(order, key=rank.__getitem__), "tasks started out of priority order"


def test_killed_executor_loses_no_acknowledged_task(make_node: Callable[..., Node]) -> None:
    node = make_node({"supervisor": {"workers": "ledger, executor"},
                      "worker:executor": {"backoff_initial": 0.05},
                      "tasks": {"pool_size": 2}})
    node.start()
    with akita.Client(node.config_path, timeout_s=30) as client:
        # Both processes busy with low-priority work, so the 500 stay queued.
        blockers = [client.submit("akita.sleep", [60], priority=0) for _ in range(2)]
        wait_for(lambda: all(client.status(b)["state"] == "running" for b in blockers), 10,
                 "both blockers running")
        ids = client.submit_many([("akita.echo", [i]) for i in range(500)])
        assert client.stats()["totals"]["queued"] == 500
        old_pool = [p["pid"] for p in client.stats()["pool"]]
        old_pid = node.worker("executor")["pid"]
        os.kill(old_pid, signal.SIGKILL)
        # Its task processes (and their zygote) die with it: nothing is left running.
        wait_for(lambda: not any(pid_alive(pid) for pid in old_pool), 5,
                 f"old task processes {old_pool} gone")

        def restarted() -> Any:
            worker = node.worker("executor")
            return worker["state"] == "running" and worker["pid"] != old_pid and worker

        wait_for(restarted, 20, "the executor restarted")
        # The client's watches died with the executor; it asks again by itself.
        assert client.wait_many(ids, timeout=60) == list(range(500))
        for blocker in blockers:
            client.cancel(blocker)
    outcomes = outcomes_in_ledger(node)
    assert all(outcomes.get(task_id) == ["task.succeeded"] for task_id in ids), \
        [task_id for task_id in ids if outcomes.get(task_id) != ["task.succeeded"]][:5]
    requeued = [e.data for e in chain.read_events(chain.db_path(node.config),
                                                   kind_prefix="task.requeued")]
    assert {r["id"] for r in requeued} == set(blockers)
    assert all(r["reason"] == "the executor restarted while it ran" for r in requeued)


def test_stopped_executor_resumes_a_running_task(make_node: Callable[..., Node]) -> None:
    node = make_node({"supervisor": {"workers": "ledger, executor"},
                      "tasks": {"pool_size": 1}})
    node.start()
    with akita.Client(node.config_path, timeout_s=20) as client:
        task_id = client.submit("akita.sleep", [1.0])
        wait_for(lambda: client.status(task_id)["state"] == "running", 10, "task running")
        done = node.ctl("restart", "executor")
        assert done.returncode == 0, done.stderr
        assert client.wait(task_id, timeout=30) == 1.0
        # Stopped by us, not by a fault: the cut-short run does not count as an attempt.
        assert client.status(task_id)["attempts"] == 1
    kinds = [(e.kind, e.data.get("reason")) for e in
             chain.read_events(chain.db_path(node.config), kind_prefix="task.")
             if e.data["id"] == task_id]
    assert kinds == [("task.submitted", None), ("task.started", None),
                     ("task.requeued", "the executor stopped"), ("task.started", None),
                     ("task.succeeded", None)]


def test_a_task_module_that_cannot_be_imported_is_one_clear_line(
        make_node: Callable[..., Node]) -> None:
    node = make_node({"supervisor": {"workers": "ledger, executor"},
                      "worker:executor": {"max_restarts": 1},
                      "tasks": {"modules": "no_such_module_xyz"}})
    node.start(wait=False)
    log_path = node.log_dir / "executor.log"
    line = wait_for(lambda: log_path.exists() and "cannot start" in log_path.read_text()
                    and log_path.read_text(), 20, "the executor's error in its log")
    assert "cannot start: [tasks] modules: cannot import 'no_such_module_xyz': No module " \
           "named 'no_such_module_xyz'" in line
    assert "Traceback" not in line
    wait_for(lambda: node.worker("executor")["state"] == "fatal", 20, "executor fatal")


def test_a_submit_committed_after_the_replay_still_runs(
        make_node: Callable[..., Node]) -> None:
    """A previous executor's last submit may reach the ledger after its successor replayed
    the feed; the successor picks it up a few seconds after starting."""
    node = make_node({"supervisor": {"workers": "ledger, executor"},
                      "tasks": {"pool_size": 1}})
    before = time.time()
    node.start()
    # Sent as the previous executor would have: stamped before this executor started.
    straggler = {"kind": "task.submitted", "ts": before,
                 "data": {"id": "5eed5eed5eed5eed", "name": "akita.echo", "args": [42],
                          "priority": 5}}
    with transport.Requester(node.run_dir, "ledger") as sender:
        acked = sender.request(protocol.LedgerAppend(source="executor-old", ref=1,
                                                     events=[straggler]), 10)
    assert isinstance(acked, protocol.LedgerAcked)
    with akita.Client(node.config_path, timeout_s=20) as client:
        # Its own submits, stamped after it started, are never taken for stragglers, even
        # those it ran and forgot (past its in-memory retention) before it looked.
        ids = client.submit_many([("akita.echo", [i]) for i in range(11_000)])
        assert client.wait_many(ids, timeout=60) == list(range(11_000))
        wait_for(lambda: client.status("5eed5eed5eed5eed"), 20, "the executor to find the task")
        assert client.wait("5eed5eed5eed5eed", timeout=20) == 42
    submitted = [e.data["id"] for e in chain.read_events(chain.db_path(node.config),
                                                          kind_prefix="task.submitted")]
    succeeded = [e.data["id"] for e in chain.read_events(chain.db_path(node.config),
                                                          kind_prefix="task.succeeded")]
    assert sorted(succeeded) == sorted(submitted)


def test_task_modules_load_from_module_path(make_node: Callable[..., Node]) -> None:
    node = make_node({"supervisor": {"workers": "ledger, executor"},
                      "tasks": {"pool_size": 1, "modules": "akita_test_local_tasks",
                                "module_path": "."}})
    (node.root / "akita_test_local_tasks.py").write_text(
        "import akita\n\n@akita.task('local.double')\ndef double(x: int) -> int:\n"
        "    return 2 * x\n")
    node.start()
    with akita.Client(node.config_path, timeout_s=20) as client:
        assert client.wait(client.submit("local.double", [21]), timeout=10) == 42
