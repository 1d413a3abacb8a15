"""Delegation in the executor: the offer rule and replay as pure logic, then two real nodes'
executors driven by the test playing both gateways (a DEALER on each executor socket).

Node A (the origin) declares no capability and has one task process; node B (the peer)
declares ``gpu``. Tasks travel: take on A → run_for on B → outcome pushed by B →
delegated_result on A.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

import akita
from akita import transport
from akita.ledger import chain
from akita.tasks.offer import offer
from akita.tasks.queue import Foreign, TaskBook, TaskState
from akita.tasks.registry import Submission, TaskTable
from akita.wire import protocol
from tests.helpers import Node, stop_all, wait_for

# --- pure logic -------------------------------------------------------------------------------


def _book(*specs: tuple[str, str, int, tuple[str, ...]], capabilities: tuple[str, ...] = ()
          ) -> TaskBook:
    """A book with queued tasks (id, name, priority, requires), in submit order."""
    book = TaskBook("me", capabilities=capabilities)
    for task_id, name, priority, requires in specs:
        book.enqueue(book.create(task_id, name, [], priority, 0.0, requires=requires))
    return book


def _offer(book: TaskBook, **overrides: Any) -> list[str]:
    options: dict[str, Any] = {"types": ["t"], "capabilities": [], "max_tasks": 100,
                               "pool_size": 1, "keep_s": 0.0, "estimate": lambda name: 0.01}
    options.update(overrides)
    return [record.id for record in offer(book, **options)]


def test_offer_keeps_what_the_pool_starts_soon_and_offers_the_rest_by_priority() -> None:
    book = _book(("a", "t", 5, ()), ("b", "t", 9, ()), ("c", "t", 1, ()), ("d", "t", 5, ()),
                 ("e", "other", 3, ()), ("f", "t", 3, ()))
    # Pool order: b, a, d, e, f, c. Two per process stay here (b, a); "other" is not wanted.
    assert _offer(book) == ["d", "f", "c"]
    assert _offer(book, max_tasks=2) == ["d", "f"]
    assert _offer(book, pool_size=2) == ["f", "c"]
    # By work: 0.5 s per process is kept, each task estimated at 0.2 s (b, a, d kept).
    assert _offer(book, keep_s=0.5, estimate=lambda name: 0.2) == ["f", "c"]
    # A type not timed yet counts as UNSEEN_TYPE_S (1 s): only c has 4.5 s of work ahead.
    assert _offer(book, keep_s=4.5, estimate=lambda name: None) == ["c"]
    assert _offer(book, types=["nothing"]) == []


def test_tasks_needing_a_missing_capability_wait_for_a_capable_peer() -> None:
    book = _book(("g1", "t", 1, ("gpu",)), ("l1", "t", 5, ()), ("g2", "t", 7, ("fast", "gpu")),
                 capabilities=("fast",))
    assert len(book.queue) == 1 and len(book.for_peers) == 2
    assert book.queue.peek() is book.records["l1"]   # the pool never sees g1, g2
    assert "requires gpu, which this node does not declare" in str(
        book.waiting_for(book.records["g2"]))
    assert book.waiting_for(book.records["l1"]) is None
    # Offered regardless of the keep rule, only to a peer that declares all they require.
    assert _offer(book, capabilities=["gpu"]) == ["g1"]
    assert _offer(book, capabilities=["gpu", "fast"]) == ["g2", "g1"]
    book.delegate(book.records["g2"], 1.0, "peer", 5.0)
    assert len(book.for_peers) == 1 and book.records["g2"].ran_on == "peer"
    book.cancel(book.records["g1"], 2.0)
    assert len(book.for_peers) == 0 and len(book.queue) == 1


def test_a_task_run_for_a_peer_is_never_offered_on() -> None:
    book = TaskBook("me")
    for i in range(5):
        book.enqueue(book.create(f"f{i}", "t", [], 5, 0.0, foreign=Foreign("origin", 1)))
    assert _offer(book) == []
    record = book.records["f4"]
    assert record.outcome() == {"id": "f4", "state": "queued", "origin": "origin", "attempt": 1}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.booleans()), min_size=0, max_size=80))
def test_ordered_walks_the_queue_in_pop_order(entries: list[tuple[int, bool]]) -> None:
    book = TaskBook("me")
    for i, (priority, cancel) in enumerate(entries):
        record = book.create(f"o{i}", "t", [], priority, 0.0)
        book.enqueue(record)
        if cancel:
            book.cancel(record, 0.0)
    walked = [record.id for record in book.queue.ordered()]
    popped = []
    while (next_one := book.queue.pop()) is not None:
        popped.append(next_one.id)
    assert walked == popped


def test_replay_keeps_delegations_with_a_lease_and_requeues_the_rest() -> None:
    events = [
        ("task.submitted", {"id": "leased", "name": "t", "args": [], "priority": 5,
                            "requires": ["gpu"]}),
        ("task.submitted", {"id": "unknown", "name": "t", "args": [], "priority": 5}),
        ("task.submitted", {"id": "mine", "name": "t", "args": [2], "priority": 5,
                            "origin": "o1", "origin_attempt": 3, "timeout": 7.5}),
        ("task.submitted", {"id": "home", "name": "t", "args": [], "priority": 5}),
        ("task.delegated", {"id": "leased", "attempt": 1, "peer": "p1", "lease_s": 5.0}),
        ("task.delegated", {"id": "unknown", "attempt": 1, "peer": "p2"}),
        ("task.delegated", {"id": "home", "attempt": 1, "peer": "p2", "lease_s": 5.0}),
        ("task.succeeded", {"id": "home", "attempt": 1, "result": 4, "ran_on": "p2"}),
    ]
    book = TaskBook("me")
    for kind, data in events:
        book.apply(kind, data, 100.0)
    requeued, failed = book.recover(max_attempts=3)
    assert [r.id for r in requeued] == ["unknown"] and failed == []
    leased = book.records["leased"]
    assert (leased.state, leased.ran_on, leased.lease_s, leased.requires) == \
        (TaskState.DELEGATED, "p1", 5.0, ("gpu",))
    assert book.records["mine"].foreign == Foreign("o1", 3, 7.5)
    assert book.records["home"].ran_on == "p2" and book.records["home"].result == 4
    assert [r.id for r in book.queue.ordered()] == ["unknown", "mine"]


def test_requires_are_checked_at_submit() -> None:
    table = TaskTable.load([])
    ok = table.parse({"id": "r0000001", "name": "akita.echo", "args": [], "priority": 5,
                      "requires": ["gpu", "fast", "gpu"]})
    assert isinstance(ok, Submission) and ok.requires == ("fast", "gpu")
    bad = table.parse({"id": "r0000002", "name": "akita.echo", "args": [], "priority": 5,
                       "requires": "gpu"})
    assert bad[0] == "bad_request" and "requires must be a list" in bad[1]


# --- two nodes --------------------------------------------------------------------------------

TASKS: dict[str, Any] = {"modules": "tests.sample_tasks", "max_attempts": 2, "delegate_after": 0,
         "max_payload_bytes": 2048, "task_timeout": 20}
ORIGIN: dict[str, dict[str, Any]] = {"supervisor": {"workers": "ledger, executor"},
          "worker:executor": {"backoff_initial": 0.05},
          "tasks": {**TASKS, "pool_size": 1}}
PEER: dict[str, dict[str, Any]] = {"supervisor": {"workers": "ledger, executor"},
        "tasks": {**TASKS, "pool_size": 2, "capabilities": "gpu"}}


class Gateway:
    """What a gateway is to one executor: a DEALER on its socket. Replies are matched by rid;
    outcomes pushed as task.results are kept by task id."""

    _rids = itertools.count(1)

    def __init__(self, node: Node) -> None:
        self.node = node
        self.ctx = zmq.Context()
        self.sock = transport.make_socket(self.ctx, zmq.DEALER)
        self.sock.connect(transport.endpoint(node.run_dir, "executor"))
        self.pushed: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()

    def request(self, msg: protocol.Message, timeout_s: float = 10.0) -> Any:
        rid = next(self._rids)
        self.sock.send(protocol.encode(msg, rid=rid))
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._receive(deadline, f"a reply to {msg.KIND}")
            if reply is not None and reply[0] == rid:
                return reply[1]

    def _receive(self, deadline: float, what: str) -> tuple[int | None, protocol.Message] | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self.sock.poll(int(remaining * 1000) + 1):
            raise AssertionError(f"no {what} within the deadline; pushed so far: "
                                 f"{sorted(self.pushed)}")
        rid, msg = protocol.decode_frame(self.sock.recv())
        if isinstance(msg, protocol.TaskResults):
            self.pushed.update({o["id"]: o for o in msg.results})
            return None
        return rid, msg

    def outcome(self, task_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """The outcome pushed for `task_id` (waits for it)."""
        deadline = time.monotonic() + timeout_s
        while task_id not in self.pushed:
            self._receive(deadline, f"outcome of {task_id}")
        return self.pushed.pop(task_id)

    def take(self, peer: str, *, types: list[str], capabilities: Sequence[str] = (),
             max_tasks: int = 10, lease_s: float = 30.0) -> list[dict[str, Any]]:
        reply = self.request(protocol.TaskTake(peer=peer, types=types,
                                               capabilities=list(capabilities),
                                               max_tasks=max_tasks, lease_s=lease_s, term=4))
        assert isinstance(reply, protocol.TaskTakeReply), reply
        return reply.tasks


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[Node, Node]]:
    root = Path(tempfile.mkdtemp(prefix="ak-", dir="/tmp"))
    started = [Node(root / "a", ORIGIN), Node(root / "b", PEER)]
    try:
        for node in started:
            node.start(wait=False)
        for node in started:
            node.wait_running()
        yield started[0], started[1]
    finally:
        try:
            stop_all(started)
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def origin(nodes: tuple[Node, Node]) -> Iterator[Gateway]:
    gateway = Gateway(nodes[0])
    try:
        yield gateway
    finally:
        gateway.close()


@pytest.fixture
def peer(nodes: tuple[Node, Node]) -> Iterator[Gateway]:
    gateway = Gateway(nodes[1])
    try:
        yield gateway
    finally:
        gateway.close()


@pytest.fixture
def client(nodes: tuple[Node, Node]) -> Iterator[akita.Client]:
    with akita.Client(nodes[0].config_path, timeout_s=10) as c:
        yield c


def node_id(node: Node) -> str:
    return str(node.status()["node"]["id"])


def events_of(node: Node, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.kind, e.data) for e in chain.read_events(chain.db_path(node.config),
                                                         kind_prefix="task.")
            if e.data.get("id") == task_id]


def run_on_peer(peer: Gateway, origin_id: str, specs: list[dict[str, Any]]) -> list[Any]:
    """Hand `specs` to the peer; returns its outcomes, as a gateway would send them back."""
    accepted = peer.request(protocol.TaskRunFor(origin=origin_id, tasks=specs))
    assert isinstance(accepted, protocol.TaskAccepted) and not accepted.errors, accepted
    outcomes = [peer.outcome(spec["id"]) for spec in specs]
    assert all(o["origin"] == origin_id for o in outcomes)
    return outcomes


def deliver(origin: Gateway, peer_id: str, outcomes: list[dict[str, Any]]
            ) -> protocol.TaskDelegatedResultReply:
    reply = origin.request(protocol.TaskDelegatedResult(peer=peer_id, results=outcomes))
    assert isinstance(reply, protocol.TaskDelegatedResultReply), reply
    return reply


def test_a_task_travels_to_a_capable_peer_and_its_result_comes_home(
        nodes: tuple[Node, Node], origin: Gateway, peer: Gateway, client: akita.Client) -> None:
    a, b = nodes
    a_id, b_id = node_id(a), node_id(b)
    task_id = client.submit("sample.add", [2, 3], requires=["gpu"])
    time.sleep(0.3)
    view = client.status(task_id)
    assert view["state"] == "queued" and view["requires"] == ["gpu"]
    assert "requires gpu, which this node does not declare" in view["waiting_for"]
    shown = a.ctl("task", task_id)
    assert "waiting_for:" in shown.stdout and "gpu" in shown.stdout
    # Only to a peer that declares gpu, and that runs the type.
    assert origin.take(b_id, types=["sample.add"]) == []
    assert origin.take(b_id, types=["sample.greet"], capabilities=["gpu"]) == []
    specs = origin.take(b_id, types=["sample.add"], capabilities=["gpu"])
    assert specs == [{"id": task_id, "name": "sample.add", "args": [2, 3], "priority": 5,
                      "attempt": 1, "requires": ["gpu"], "timeout": 20.0}]
    assert client.status(task_id)["state"] == "delegated"
    load = peer.request(protocol.TaskStats()).load
    assert load["caps"] == ["gpu"] and load["pool"] == 2 and "sample.add" in load["types"]

    outcomes = run_on_peer(peer, a_id, specs)
    assert outcomes == [{"id": task_id, "state": "succeeded", "result": 5, "origin": a_id,
                         "attempt": 1}]
    assert deliver(origin, b_id, outcomes).accepted == [task_id]
    assert client.wait(task_id, timeout=10) == 5
    shown = a.ctl_json("task", task_id)
    assert list(shown) == ["id", "name", "state", "priority", "attempts", "ran_on", "result"]
    assert (shown["state"], shown["ran_on"], shown["attempts"]) == ("succeeded", b_id, 1)
    kinds = [(kind, data.get("peer") or data.get("ran_on")) for kind, data in events_of(a, task_id)]
    assert kinds == [("task.submitted", None), ("task.delegated", b_id),
                     ("task.succeeded", b_id)]
    assert events_of(a, task_id)[1][1]["term"] == 4
    on_b = events_of(b, task_id)
    assert on_b[0][0] == "task.submitted" and on_b[0][1]["origin"] == a_id
    assert on_b[-1][0] == "task.succeeded"
    # The same outcome again, or one from another peer, is stale: ignored and counted.
    before = client.stats()["totals"]["stale_results"]
    assert deliver(origin, b_id, outcomes).stale == [task_id]
    assert client.stats()["totals"]["stale_results"] == before + 1
    assert peer.request(protocol.TaskHeld()).tasks == []


def test_leases_lapse_renewals_hold_and_max_attempts_end_it(
        nodes: tuple[Node, Node], origin: Gateway, peer: Gateway, client: akita.Client) -> None:
    a, b = nodes
    b_id = node_id(b)
    lapsing, renewed = (client.submit("sample.greet", [name], requires=["gpu"])
                        for name in ("x", "y"))
    specs = origin.take(b_id, types=["sample.greet"], capabilities=["gpu"], lease_s=0.6)
    assert [s["id"] for s in specs] == [lapsing, renewed]
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        reply = origin.request(protocol.TaskRenew(peer=b_id, tasks=[[renewed, 1],
                                                                    [renewed, 7]]))
        assert (reply.renewed, reply.stale) == (1, [[renewed, 7]])
        time.sleep(0.2)
    assert client.status(renewed)["state"] == "delegated"
    view = client.status(lapsing)
    assert (view["state"], view["attempts"]) == ("queued", 1)
    assert any(kind == "task.requeued" and "lease on" in data["reason"] and "lapsed" in
               data["reason"] for kind, data in events_of(a, lapsing))
    # Handed out again, as attempt 2; the renewed one's attempt 1 is still the current one.
    again = origin.take(b_id, types=["sample.greet"], capabilities=["gpu"])
    assert [(s["id"], s["attempt"]) for s in again] == [(lapsing, 2)]
    # The peer refuses it: that costs the last attempt, and the task fails.
    reply = origin.request(protocol.TaskRequeue(tasks=[[lapsing, 2], [renewed, 9]],
                                                reason="the peer refused it"))
    assert reply.outcomes == {lapsing: "failed", renewed: "stale"}
    with pytest.raises(akita.TaskFailed) as failed:
        client.wait(lapsing, timeout=10)
    assert failed.value.type == "DelegationLost"
    assert "the peer refused it on attempt 2 of 2" in failed.value.message
    # The renewed one, given back because the link broke, is queued with attempt + 1 next.
    reply = origin.request(protocol.TaskRequeue(tasks=[[renewed, 1]], reason="link closed"))
    assert reply.outcomes == {renewed: "requeued"}
    specs = origin.take(b_id, types=["sample.greet"], capabilities=["gpu"])
    assert [(s["id"], s["attempt"]) for s in specs] == [(renewed, 2)]
    assert deliver(origin, b_id, run_on_peer(peer, node_id(a), specs)).accepted == [renewed]
    assert client.wait(renewed, timeout=10) == "hello y!"


def test_a_requeued_task_runs_again_here_with_the_next_attempt(
        nodes: tuple[Node, Node], origin: Gateway, client: akita.Client) -> None:
    a, b = nodes
    blocker = client.submit("akita.sleep", [30], priority=9)
    wait_for(lambda: client.status(blocker)["state"] == "running", 10, "blocker running")
    ids = [client.submit("sample.whoami", [], priority=p) for p in (7, 6, 5)]
    # One process: two queued tasks stay here, the third may go.
    specs = origin.take(node_id(b), types=["sample.whoami"], lease_s=0.3)
    assert [s["id"] for s in specs] == [ids[2]]
    wait_for(lambda: client.status(ids[2])["state"] == "queued", 5, "the lease lapsed")
    assert client.cancel(blocker)
    results = client.wait_many(ids, timeout=15)
    assert [r["attempt"] for r in results] == [1, 1, 2]
    view = client.status(ids[2])
    assert (view["attempts"], view["ran_on"]) == (2, node_id(a))


def test_a_peer_runs_only_what_it_declares_and_what_fits(
        nodes: tuple[Node, Node], origin: Gateway, peer: Gateway, client: akita.Client) -> None:
    a, b = nodes
    a_id = node_id(a)

    def spec(task_id: str, name: str, args: Any, **extra: Any) -> dict[str, Any]:
        return {"id": task_id, "name": name, "args": args, "priority": 5, "attempt": 1,
                "requires": [], "timeout": 10, **extra}

    reply = peer.request(protocol.TaskRunFor(origin=a_id, tasks=[
        spec("u0000001", "sample.nope", []),
        spec("u0000002", "sample.add", [1, 2], requires=["tpu"]),
        spec("u0000003", "akita.echo", ["x" * 3000]),
        spec("u0000004", "sample.add", [1, 2], attempt=0),
        spec("u0000005", "sample.add", [1, "2"]),
    ]))
    assert reply.ids == [None] * 5
    codes = {index: (code, text) for index, code, text in reply.errors}
    assert codes[0][0] == "unknown_task" and "unknown task type 'sample.nope'" in codes[0][1]
    assert codes[1] == ("missing_capability",
                        "sample.add requires tpu, which this node does not declare")
    assert codes[2] == ("too_large", "the args are 3004 bytes; [tasks] max_payload_bytes is 2048")
    assert [codes[3][0], codes[4][0]] == ["bad_request", "bad_args"]
    # The origin, which declares no gpu, refuses a task that requires it.
    reply = origin.request(protocol.TaskRunFor(origin=node_id(b), tasks=[
        spec("u0000006", "sample.add", [1, 2], requires=["gpu"])]))
    assert reply.errors[0][1] == "missing_capability"

    # A result over max_payload_bytes is an error, on the peer and so at the origin.
    task_id = client.submit("sample.big", [3000], requires=["gpu"])
    specs = origin.take(node_id(b), types=["sample.big"], capabilities=["gpu"])
    outcome = run_on_peer(peer, a_id, specs)
    deliver(origin, node_id(b), outcome)
    with pytest.raises(akita.TaskFailed) as failed:
        client.wait(task_id, timeout=10)
    assert failed.value.type == "ResultTooLarge"
    assert "[tasks] max_payload_bytes is 2048" in failed.value.message
    # Held until finished; a drop from the origin cancels it, and the peer gives it up.
    long_id = client.submit("akita.sleep", [20], requires=["gpu"])
    specs = origin.take(node_id(b), types=["akita.sleep"], capabilities=["gpu"])
    accepted = peer.request(protocol.TaskRunFor(origin=a_id, tasks=specs))
    assert accepted.ids == [long_id]
    held = peer.request(protocol.TaskHeld()).tasks
    assert held == [{"id": long_id, "origin": a_id, "attempt": 1}]
    dropped = peer.request(protocol.TaskDrop(origin=a_id, tasks=[[long_id, 1]]))
    assert dropped.outcomes == {long_id: "cancelled"}
    given_up = peer.outcome(long_id)
    assert given_up["state"] == "cancelled"
    deliver(origin, node_id(b), [given_up])
    view = client.status(long_id)
    assert (view["state"], view["attempts"]) == ("queued", 1)
    assert client.cancel(long_id)


def test_payload_limit_at_submit(nodes: tuple[Node, Node], origin: Gateway,
                                 client: akita.Client) -> None:
    a, _b = nodes
    with pytest.raises(akita.TaskRejected, match=r"^the args are 3004 bytes; \[tasks\] "
                                                 r"max_payload_bytes is 2048$") as refused:
        client.submit("akita.echo", ["x" * 3000])
    assert refused.value.code == "too_large"
    # The node checks too, whoever submits.
    reply = origin.request(protocol.TaskSubmit(tasks=[{
        "id": "big0000000000001", "name": "akita.echo", "args": ["x" * 3000], "priority": 5}]))
    assert reply.errors == [[0, "too_large",
                             "the args are 3004 bytes; [tasks] max_payload_bytes is 2048"]]
    done = a.ctl("submit", "akita.echo", "--args", '["' + "x" * 3000 + '"]')
    assert done.returncode == 1 and "max_payload_bytes is 2048" in done.stderr
    with pytest.raises(akita.TaskFailed, match=r"max_payload_bytes is 2048") as failed:
        client.wait(client.submit("sample.big", [3000]), timeout=10)
    assert failed.value.type == "ResultTooLarge"
    done = a.ctl("submit", "akita.echo", "--args", "[1]", "--requires", "gpu,fast", "--json")
    task_id = json.loads(done.stdout)["id"]
    assert client.status(task_id)["requires"] == ["fast", "gpu"]
    assert client.cancel(task_id)


def test_killed_origin_executor_loses_no_delegated_task(
        nodes: tuple[Node, Node], origin: Gateway, peer: Gateway, client: akita.Client) -> None:
    a, b = nodes
    a_id, b_id = node_id(a), node_id(b)
    ids = client.submit_many([("sample.add", [i, 1]) for i in range(3)], requires=["gpu"])
    specs = origin.take(b_id, types=["sample.add"], capabilities=["gpu"], lease_s=2.0)
    assert [s["id"] for s in specs] == ids
    old_pid = a.worker("executor")["pid"]
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: a.worker("executor")["pid"] != old_pid and
             a.worker("executor")["state"] == "running", 20, "the executor restarted")
    # Still delegated after the restart; the peer renews the first, the others lapse.
    assert {client.status(i)["state"] for i in ids} == {"delegated"}
    kept = specs[0]
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        assert origin.request(protocol.TaskRenew(peer=b_id, tasks=[[kept["id"], 1]])).renewed
        time.sleep(0.3)
    assert [client.status(i)["state"] for i in ids] == ["delegated", "queued", "queued"]
    again = origin.take(b_id, types=["sample.add"], capabilities=["gpu"])
    assert [(s["id"], s["attempt"]) for s in again] == [(ids[1], 2), (ids[2], 2)]
    outcomes = run_on_peer(peer, a_id, [kept, *again])
    assert sorted(deliver(origin, b_id, outcomes).accepted) == sorted(ids)
    assert client.wait_many(ids, timeout=10) == [1, 2, 3]
    for task_id in ids:
        finished = [kind for kind, _ in events_of(a, task_id) if kind == "task.succeeded"]
        assert finished == ["task.succeeded"]
