"""akita.Client against a real node: pipelining, waiting, resends, and the errors it raises."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import akita
from akita import transport
from akita.errors import NodeNotRunning
from akita.ledger import chain
from akita.wire import protocol
from tests.helpers import Node, render_config, wait_for


def test_no_node_running_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "akita.ini"
    path.write_text(render_config({"node": {"data_dir": "d", "run_dir": "r", "log_dir": "l"}}))
    with akita.Client(path, timeout_s=2) as client:
        with pytest.raises(NodeNotRunning, match="no node is running with an executor"):
            client.submit("akita.echo", [1])
        with pytest.raises(NodeNotRunning):
            client.status("0123456789abcdef")


def test_client_pipelines_waits_and_finds(make_node: Callable[..., Node]) -> None:
    node = make_node({"supervisor": {"workers": "ledger, executor"},
                      "tasks": {"pool_size": 2}})
    node.start()
    with akita.Client(node.config_path, timeout_s=20) as client, \
            akita.Client(node.config_path, timeout_s=20) as other:
        # Many frames in flight; results arrive before anyone waits, in any order.
        ids = client.submit_many([("akita.echo", [i]) for i in range(5000)], chunk=100,
                                 window=4)
        assert len(set(ids)) == 5000
        assert client.wait_many(ids[::-1], timeout=60) == list(range(5000))[::-1]
        # A task submitted elsewhere is watched on demand; one already done answers at once.
        done = client.submit("akita.echo", ["early"])
        wait_for(lambda: other.status(done)["state"] == "succeeded", 10, "task done")
        assert other.wait(done, timeout=5) == "early"
        # Waiting past the timeout raises TimeoutError; the task goes on and is collected later.
        slow = client.submit("akita.sleep", [0.5])
        with pytest.raises(TimeoutError, match="not finished within 0.05 s"):
            client.wait(slow, timeout=0.05)
        # `finished` reads what arrived without waiting for everything.
        quick = client.submit("akita.echo", ["quick"])
        assert client.finished([slow, quick], timeout=0.0) in ([], [quick])
        wait_for(lambda: client.finished([slow, quick], timeout=0.05) == [quick], 5,
                 "the quick task finished while the slow one runs")
        assert client.wait(quick, timeout=0) == "quick"
        assert client.wait(slow, timeout=10) == 0.5
        with pytest.raises(akita.TaskNotFound, match="no task 0123456789abcdef on this node"):
            client.wait("0123456789abcdef", timeout=5)
        with pytest.raises(akita.TaskNotFound):
            client.cancel("0123456789abcdef")
        listed = client.tasks("succeeded", limit=10)
        assert len(listed) == 10 and all(t["state"] == "succeeded" for t in listed)


def test_a_resent_submit_is_not_queued_twice(make_node: Callable[..., Node]) -> None:
    node = make_node({"supervisor": {"workers": "ledger, executor"},
                      "tasks": {"pool_size": 1}})
    node.start()
    submit = protocol.TaskSubmit(tasks=[{"id": "feedfacecafebeef", "name": "akita.echo",
                                         "args": [7], "priority": 3}])
    # Once straight to the executor, once through the supervisor's control socket.
    with transport.Requester(node.run_dir, "executor") as executor, \
            transport.Requester(node.run_dir, transport.CONTROL) as control:
        first = executor.request(submit, 10)
        second = control.request(submit, 10)
        clash = executor.request(protocol.TaskSubmit(tasks=[{
            "id": "feedfacecafebeef", "name": "akita.sleep", "args": [1]}]), 10)
    assert isinstance(first, protocol.TaskAccepted) and first.ids == ["feedfacecafebeef"]
    assert isinstance(second, protocol.TaskAccepted) and second.ids == ["feedfacecafebeef"]
    assert isinstance(clash, protocol.TaskAccepted) and clash.ids == [None]
    assert clash.errors == [[0, "bad_request",
                             "task id feedfacecafebeef is taken by another task"]]
    with akita.Client(node.config_path) as client:
        assert client.wait("feedfacecafebeef", timeout=10) == 7
    submitted = [e for e in chain.read_events(chain.db_path(node.config),
                                               kind_prefix="task.submitted")]
    assert [e.data["id"] for e in submitted] == ["feedfacecafebeef"]


def test_results_the_executor_forgot_come_from_the_ledger(
        make_node: Callable[..., Node]) -> None:
    node = make_node({"supervisor": {"workers": "ledger, executor"},
                      "tasks": {"pool_size": 2}})
    node.start()
    with akita.Client(node.config_path, timeout_s=30) as client:
        first = client.submit("akita.echo", ["kept in the ledger"])
        ids = client.submit_many([("akita.echo", [i]) for i in range(11_000)])
        assert client.wait_many(ids, timeout=60)[-1] == 10_999
    with akita.Client(node.config_path, timeout_s=30) as other:
        with transport.Requester(node.run_dir, "executor") as executor:
            reply = executor.request(protocol.TaskStatus(ids=[first]), 10)
        assert isinstance(reply, protocol.TaskStatusReply) and reply.tasks == [None]
        assert other.wait(first, timeout=10) == "kept in the ledger"
        view = other.status(first)
        assert view["state"] == "succeeded" and view["attempts"] == 1
        assert view["ran_on"] == node.status()["node"]["id"]
    shown = node.ctl_json("task", first)
    assert shown["result"] == "kept in the ledger"
