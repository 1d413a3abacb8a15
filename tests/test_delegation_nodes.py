"""Task delegation between real nodes (ledger, executor, gateway each) over loopback
Reticulum: tasks submitted at one node run across its cluster and come home once each; a
task needing a capability runs where it is declared; a killed peer's tasks complete
elsewhere; a cluster mate cannot make a node run a type it does not declare.

Six nodes in two clusters serve the module, as the issue asks: nodes 0-2 start first and
fill one cluster, then nodes 3-5 join and found the second (a join never moves a member).
Node 2 alone declares ``gpu``. The test that kills a node runs last. The hand-made cluster
mate gets a network of its own.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import akita
from akita.ledger import chain
from akita.wire import protocol
from tests.helpers import REPO, Node, NotYet, free_port, net_sections, stop_all, wait_for

WORKERS = {"workers": "ledger, executor, gateway"}
TASKS: dict[str, Any] = {"modules": "tests.sample_tasks", "module_path": str(REPO),
                         "pool_size": 1, "max_attempts": 3, "delegate_after": 0,
                         "task_timeout": 20}
SPIN = "tests.sample_tasks.spin"
HANDMADE = REPO / "tests" / "rns_delegate_peer.py"


def node_sections(port: int, index: int, **tasks: Any) -> dict[str, Any]:
    return net_sections(port, index == 0, f"node{index}", supervisor=dict(WORKERS),
                        tasks={**TASKS, **tasks})


def start_nodes(root: Path, sections: list[dict[str, Any]], first: int = 0,
                into: list[Node] | None = None) -> list[Node]:
    """Start nodes `first`, `first` + 1… in order (node 0 is the hub) and wait until all run.
    Each node is added to `into` as soon as it exists, so the caller's cleanup stops it even
    when a later start fails."""
    started: list[Node] = []
    for index, node_config in enumerate(sections, start=first):
        node = Node(root / f"n{index}", node_config)
        started.append(node)
        if into is not None:
            into.append(node)
        node.start(wait=index == 0, timeout_s=30)
    for node in started:
        node.wait_running(30)
    return started


def stop_nodes(nodes: list[Node]) -> None:
    stop_all(nodes)


def node_id(node: Node) -> str:
    return str(node.status()["node"]["id"])


def state_of(node: Node, of: str) -> dict[str, Any]:
    reply = node.request(protocol.StateGet(node=of))
    return reply.data if isinstance(reply, protocol.StateReply) else {}


def takes_work(node: Node) -> set[str]:
    """The peers `node` would hand tasks now (seated for `settle_time`, alive)."""
    reply = node.request(protocol.PeerList())
    assert isinstance(reply, protocol.PeerListReply)
    return {peer["id"] for peer in reply.peers if peer["takes_work"]}


def ready_to_delegate(nodes: list[Node], ids: list[str], groups: list[list[int]],
                      settled: bool = True) -> Any:
    """Every node sees the clusters `groups` (indexes into `nodes`), knows each mate's task
    types and load, and (if `settled`) would hand each mate work."""
    expected = sorted(sorted(ids[i] for i in group) for group in groups)
    seen: dict[str, Any] = {}
    for node, own in zip(nodes, ids):
        reply = node.request(protocol.ClusterList())
        assert isinstance(reply, protocol.ClusterListReply)
        members = sorted(sorted(c["members"]) for c in reply.clusters)
        mates = next((c for c in expected if own in c), [])
        working = takes_work(node) if settled else set(mates)
        known = [bool(state_of(node, m).get("task_types")) and
                 "task_load" in state_of(node, m) and m in working for m in mates if m != own]
        seen[own[:8]] = {"clusters": [[m[:8] for m in c] for c in members],
                         "mates_known": known}
        if members != expected or not all(known):
            return NotYet(seen)
    return seen


def delegation_stats(node: Node) -> dict[str, Any]:
    reply = node.request(protocol.PeerStats())
    assert isinstance(reply, protocol.PeerStatsReply)
    return dict(reply.stats["delegation"])


def spill_heads(node: Node, own: str) -> set[str]:
    """The coordinators of the clusters `own` is not in: where its tasks may spill over to
    when its whole cluster is saturated (`workers.gateway.spillover`)."""
    reply = node.request(protocol.ClusterList())
    assert isinstance(reply, protocol.ClusterListReply)
    return {c["coordinator"] for c in reply.clusters if own not in c["members"]}


def succeeded_counts(node: Node) -> collections.Counter[str]:
    """How many task.succeeded events each task id has in the node's own ledger."""
    events = chain.read_events(chain.db_path(node.config), kind_prefix="task.succeeded")
    return collections.Counter(e.data["id"] for e in events if e.kind == "task.succeeded")


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[list[Node], list[str]]]:
    root = Path(tempfile.mkdtemp(prefix="ak-", dir="/tmp"))
    port = free_port()
    first = [node_sections(port, 0), node_sections(port, 1),
             node_sections(port, 2, capabilities="gpu")]
    nodes: list[Node] = []
    try:
        start_nodes(root, first, into=nodes)
        ids = [node_id(node) for node in nodes]
        wait_for(lambda: ready_to_delegate(nodes, ids, [[0, 1, 2]]), 40,
                 "one full cluster of nodes 0-2", 0.3)
        start_nodes(root, [node_sections(port, i) for i in (3, 4, 5)], first=3, into=nodes)
        ids += [node_id(node) for node in nodes[3:]]
        wait_for(lambda: ready_to_delegate(nodes, ids, [[0, 1, 2], [3, 4, 5]]), 60,
                 "two clusters, 0-2 and 3-5, whose members know each other's task types "
                 "and load", 0.3)
        yield nodes, ids
    finally:
        stop_nodes(nodes)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def client(cluster: tuple[list[Node], list[str]]) -> Iterator[akita.Client]:
    with akita.Client(cluster[0][0].config_path, timeout_s=15) as c:
        yield c


def test_two_hundred_tasks_run_across_the_cluster_once_each(
        cluster: tuple[list[Node], list[str]], client: akita.Client) -> None:
    nodes, ids = cluster
    task_ids = client.submit_many([(SPIN, [20]) for _ in range(200)])
    results = client.wait_many(task_ids, timeout=120)
    assert len(results) == 200 and all(isinstance(r, int) for r in results)
    ran_on = collections.Counter(client.status(t)["ran_on"] for t in task_ids)
    allowed = set(ids[:3]) | spill_heads(nodes[0], ids[0])
    assert set(ran_on) <= allowed, f"ran outside its cluster (nor spilled over): {ran_on}"
    assert len(ran_on) >= 2, f"every task ran on one node: {ran_on}"
    counts = succeeded_counts(nodes[0])
    assert {t: counts[t] for t in task_ids} == {t: 1 for t in task_ids}
    # What ran elsewhere is in the peer's own ledger too, with this node as its origin.
    for peer, peer_id in zip(nodes[1:3], ids[1:3]):
        if ran_on[peer_id]:
            events = chain.read_events(chain.db_path(peer.config), kind_prefix="task.")
            origins = {e.data.get("origin") for e in events if e.kind == "task.submitted"}
            assert ids[0] in origins


def test_a_task_needing_a_capability_runs_where_it_is_declared(
        cluster: tuple[list[Node], list[str]], client: akita.Client) -> None:
    _nodes, ids = cluster
    task_ids = [client.submit("sample.whoami", [], requires=["gpu"]) for _ in range(3)]
    outcomes = client.wait_many(task_ids, timeout=30)
    assert [o["id"] for o in outcomes] == task_ids
    for task_id in task_ids:
        view = client.status(task_id)
        assert (view["state"], view["ran_on"], view["attempts"]) == ("succeeded", ids[2], 1)
    # Args and result far larger than a link packet travel as Resources, both ways.
    big = "x" * 60_000
    task_id = client.submit("akita.echo", [big], requires=["gpu"])
    assert client.wait(task_id, timeout=30) == big
    assert client.status(task_id)["ran_on"] == ids[2]


def test_a_restarted_peer_gateway_loses_no_task(
        cluster: tuple[list[Node], list[str]], client: akita.Client) -> None:
    nodes, ids = cluster
    peer = nodes[2]
    task_ids = [client.submit("akita.sleep", [1.5], requires=["gpu"]) for _ in range(3)]
    wait_for(lambda: all(client.status(t)["state"] == "delegated" for t in task_ids), 20,
             "the gpu tasks delegated to node 2", 0.1)
    old_pid = peer.worker("gateway")["pid"]
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: (w := peer.worker("gateway"))["pid"] != old_pid and
             w["state"] == "running", 20, "node 2's gateway restarted", 0.1)
    # The new gateway asks its executor what it holds (re-attaching the outcomes) and renews;
    # an outcome pushed while it was down is lost, its lease lapses and it runs again.
    assert client.wait_many(task_ids, timeout=60) == [1.5] * 3
    assert {client.status(t)["ran_on"] for t in task_ids} == {ids[2]}
    counts = succeeded_counts(nodes[0])
    assert {t: counts[t] for t in task_ids} == {t: 1 for t in task_ids}


def test_a_killed_peers_tasks_complete_elsewhere(
        cluster: tuple[list[Node], list[str]], client: akita.Client) -> None:
    nodes, ids = cluster
    victim, victim_id = nodes[1], ids[1]
    task_ids = client.submit_many([("akita.sleep", [1.0]) for _ in range(12)])

    def held_by_victim() -> Any:
        held = [t for t in task_ids if (v := client.status(t))["state"] == "delegated"
                and v["ran_on"] == victim_id]
        return held or NotYet({"outstanding": delegation_stats(nodes[0])["outstanding"]})

    held = wait_for(held_by_victim, 20, "tasks delegated to node 1", 0.1)
    victim.kill_everything()   # SIGKILL: supervisor, workers, task processes
    results = client.wait_many(task_ids, timeout=60)
    assert results == [1.0] * 12
    finished_on = {t: client.status(t)["ran_on"] for t in held}
    elsewhere = [t for t, where in finished_on.items() if where != victim_id]
    assert elsewhere, f"tasks held by the killed node: {finished_on}"
    for task_id in elsewhere:
        view = client.status(task_id)
        assert view["attempts"] >= 2
        assert view["ran_on"] in {ids[0], ids[2]} | spill_heads(nodes[0], ids[0])
    counts = succeeded_counts(nodes[0])
    assert {t: counts[t] for t in task_ids} == {t: 1 for t in task_ids}


# --- a hand-made cluster mate ------------------------------------------------------------------


class HandmadeMate:
    """tests/rns_delegate_peer.py in its own process; its stdout lines go to a file."""

    def __init__(self, root: Path, hub_port: int, target: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.out = root / "mate.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(HANDMADE), "--dir", str(root), "--connect",
                 f"127.0.0.1:{hub_port}", "--to", target],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)

    def lines(self) -> list[str]:
        return self.out.read_text(errors="replace").splitlines()

    def said(self, key: str, timeout_s: float) -> Any:
        """The value of the first ``KEY json`` line (waits for it)."""
        def found() -> Any:
            for line in self.lines():
                if line.startswith(key + " "):
                    return [json.loads(line[len(key) + 1:])]
                if line.startswith("FAILED") or self.proc.poll() is not None:
                    raise AssertionError(f"hand-made mate failed: {self.lines()[-20:]}")
            return NotYet({"lines": self.lines()[-6:]})

        return wait_for(found, timeout_s, f"the hand-made mate to say {key}", 0.1)[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)


def test_a_mate_cannot_make_a_node_run_what_it_does_not_declare(short_tmp: Path) -> None:
    port = free_port()
    sections = node_sections(port, 0)
    sections["cluster"]["cluster_size"] = 2
    node = Node(short_tmp / "n0", sections)
    mate: HandmadeMate | None = None
    try:
        node.start(timeout_s=30)
        target = node_id(node)
        mate = HandmadeMate(short_tmp / "mate", port, target)
        stranger = mate.said("STRANGER", 40)
        assert stranger[0] == 1 and "is not a member of this node's cluster" in stranger[1]
        member = mate.said("MEMBER", 40)
        assert member[0] == 0, member
        assert member[1]["ids"] == [None]
        assert member[1]["errors"][0][:2] == [0, "unknown_task"]
        assert "evil.wipe_disk" in member[1]["errors"][0][2]
        # The node coordinates its cluster, so its term is 1 or more: an older one is refused.
        assert mate.said("HEARD", 5)["term"] >= 1
        old = mate.said("OLDTERM", 5)
        assert old[0] == 1 and "is older than this cluster's term" in old[1]
        status, answer = mate.said("RUN", 20)
        assert status == 0 and answer["ids"] == [None, "aa00000000000005"], answer
        assert [e[:2] for e in answer["errors"]] == [[0, "unknown_task"]]
        assert answer["load"]["pool"] == 1
        result = mate.said("RESULT", 20)
        assert result == {"id": "aa00000000000005", "state": "succeeded", "result": 3,
                          "attempt": 1}
        # An outcome for a task the node never handed out is stale, and changes nothing.
        status, answer = mate.said("INJECT", 20)
        assert status == 0 and answer == {"accepted": [], "stale": ["aa00000000000006"]}
        events = list(chain.read_events(chain.db_path(node.config), kind_prefix="task."))
        submitted = [e.data["id"] for e in events if e.kind == "task.submitted"]
        assert submitted == ["aa00000000000005"]
        assert not [e for e in events if e.data.get("id") == "aa00000000000006"]
        counters = delegation_stats(node)["peer"]
        assert counters["runs_refused"] >= 1 and counters["tasks_refused"] >= 2
    finally:
        if mate is not None:
            mate.stop()
        stop_nodes([node])
