"""Inter-cluster messages between real nodes: six nodes on loopback Reticulum form two
clusters of three; a message sent from one cluster reaches the subscribers of the other
(and nobody else) exactly once, through akita.Client and akitactl; a message to a cluster
whose coordinator was killed is retried, reported undeliverable after a short deadline, and
delivered through the new coordinator when the deadline leaves room for the takeover.

The network is started once for the module (forming two clusters is the slow part); the
test that kills a coordinator runs last.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest
import zmq

from akita import transport
from akita.client import Client
from akita.errors import RequestFailed
from akita.ledger import chain
from akita.subscription import MessageUndeliverable, Subscription
from akita.wire import protocol
from tests.helpers import REPO, Node, NotYet, free_port, net_sections, stop_all, wait_for

NODES = 6
MAX_MESSAGE_BYTES = 32768     # above the TCP link MDU (~16 KB): big payloads go as Resources
PREFIX = "alerts."
STABLE_S = 1.5                # one announce interval and a half


@dataclass
class Net:
    nodes: list[Node]
    ids: list[str]
    target: str               # cluster B: the one without the hub (node 0)
    coordinator: int          # index of B's coordinator
    subscriber: int           # a B member that subscribes
    bystander: int            # a B member that does not
    sender: int               # a node of cluster A (not the hub)
    other_a: int              # another node of cluster A, subscribed to the same prefix


def _node_id(node: Node) -> str:
    return str(node.status()["node"]["id"])


def _clusters(node: Node) -> list[dict[str, Any]]:
    reply = node.request(protocol.ClusterList())
    assert isinstance(reply, protocol.ClusterListReply)
    return reply.clusters


def _agreed(nodes: list[Node], ids: set[str]) -> Any:
    views = [frozenset((c["id"], frozenset(c["members"]), c["coordinator"])
                       for c in _clusters(node)) for node in nodes]
    shape = sorted(len(members) for _c, members, _k in views[0])
    covered = {m for _c, members, _k in views[0] for m in members}
    if len(set(views)) == 1 and shape == [3, 3] and covered == ids:
        return views[0]
    return NotYet({"views": [sorted((c, len(m), k[:8]) for c, m, k in v) for v in views]})


def _settled(nodes: list[Node], ids: set[str]) -> Any:
    """A wait condition: the nodes agree, every cluster has a term, and the view has held
    for STABLE_S (right after the first agreement, seats and terms may still move)."""
    held: dict[str, Any] = {}

    def check() -> Any:
        view = _agreed(nodes, ids)
        terms = [c["term"] for node in nodes for c in _clusters(node)]
        if not view or min(terms) < 1:
            held.clear()
            return NotYet({"view": view, "terms": terms})
        if held.get("view") != view:
            held.update(view=view, since=time.monotonic())
        stable_s = time.monotonic() - held["since"]
        return view if stable_s >= STABLE_S else NotYet({"stable_s": stable_s})

    return check


def _start(root: Path, nodes: list[Node]) -> list[Node]:
    """Start the network into `nodes` (each added as soon as it exists, so the caller's
    cleanup stops it even when a later start fails)."""
    port = free_port()
    for index in range(NODES):
        node = Node(root / f"n{index}", net_sections(
            port, index == 0, f"node{index}",
            cluster={"max_message_bytes": MAX_MESSAGE_BYTES, "message_deadline": 20}))
        nodes.append(node)
        node.start(wait=index == 0)
    for node in nodes[1:]:
        node.wait_running()
    return nodes


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    root = Path(tempfile.mkdtemp(prefix="ak-ic-", dir="/tmp"))
    nodes: list[Node] = []
    try:
        _start(root, nodes)
        ids = [_node_id(node) for node in nodes]
        view = wait_for(_settled(nodes, set(ids)), 45,
                        "six nodes agreeing on two clusters of three, settled")
        (target, members, coordinator), = [c for c in view if ids[0] not in c[1]]
        (_a, a_members, _ak), = [c for c in view if ids[0] in c[1]]
        in_b = [ids.index(m) for m in sorted(members)]
        in_a = [ids.index(m) for m in sorted(a_members) if m != ids[0]]
        c_index = ids.index(coordinator)
        subscriber, bystander = [i for i in in_b if i != c_index]
        yield Net(nodes, ids, target, c_index, subscriber, bystander, in_a[0], in_a[1])
    finally:
        try:
            stop_all(nodes)
        finally:
            if not os.environ.get("AKITA_KEEP_TEST_DIRS"):   # set it to read the nodes' logs
                shutil.rmtree(root, ignore_errors=True)


# --- helpers ----------------------------------------------------------------------------------


def stats(node: Node) -> dict[str, Any]:
    reply = node.request(protocol.PeerStats())
    assert isinstance(reply, protocol.PeerStatsReply)
    return dict(reply.stats["messages"])


def advertised(at: Node, of: str) -> list[str]:
    reply = at.request(protocol.StateGet(node=of))
    assert isinstance(reply, protocol.StateReply)
    return list(reply.data.get("subscriptions") or [])


def wait_advertised(net: Net, index: int, prefix: str) -> None:
    """Until B's coordinator knows that node `index` subscribes to `prefix`."""
    at, of = net.nodes[net.coordinator], net.ids[index]
    wait_for(lambda: prefix in advertised(at, of) or NotYet({"has": advertised(at, of)}), 10,
             f"the coordinator seeing {of[:8]} subscribe to {prefix!r}")


def events(node: Node, kind: str) -> list[dict[str, Any]]:
    return [e.data for e in chain.read_events(chain.db_path(node.config),
                                               kind_prefix=kind)]


class RawBus:
    """A plain SUB on a node's bus: sees whatever its gateway publishes under message.*,
    without advertising anything (a spy on a node that should receive nothing)."""

    def __init__(self, node: Node) -> None:
        self.ctx = zmq.Context()
        self.sock = transport.make_socket(self.ctx, zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"message.")
        self.sock.connect(transport.endpoint(node.run_dir, transport.BUS_OUT))

    def drain(self) -> list[str]:
        topics = []
        while self.sock.poll(0):
            topics.append(self.sock.recv_multipart()[0].decode())
        return topics

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def kill_gateway_first(node: Node) -> None:
    """kill -9 the node's gateway, then everything else of the node. Killing the supervisor
    first would let the gateway see its parent go and shut down cleanly (saying goodbye to
    its peers), which is not the crash this is about."""
    os.kill(int(node.worker("gateway")["pid"]), signal.SIGKILL)
    node.kill_everything()


def receive(sub: Subscription, what: str, timeout_s: float = 10.0) -> dict[str, Any]:
    got = sub.get(timeout_s)
    assert got is not None, f"no message within {timeout_s:g} s: waited for {what}"
    return got


# --- tests ------------------------------------------------------------------------------------


def test_message_reaches_the_other_clusters_subscribers_exactly_once(net: Net) -> None:
    nodes, ids = net.nodes, net.ids
    with RawBus(nodes[net.bystander]) as spy, \
            Client(nodes[net.subscriber].config_path) as member, \
            Client(nodes[net.coordinator].config_path) as coordinator, \
            Client(nodes[net.other_a].config_path) as other_a, \
            Client(nodes[net.sender].config_path) as sender:
        with member.subscribe(PREFIX) as sub, coordinator.subscribe(PREFIX) as coord_sub, \
                other_a.subscribe(PREFIX) as a_sub:
            wait_advertised(net, net.subscriber, PREFIX)
            wait_advertised(net, net.coordinator, PREFIX)
            payload = {"level": "red", "blob": "x" * 20000}   # larger than one link packet
            done = sender.send(net.target, "alerts.fire", payload, deadline_s=20)
            assert sorted(done["delivered"]) == sorted([ids[net.subscriber],
                                                        ids[net.coordinator]])
            assert done["coordinator"] == ids[net.coordinator]
            assert done["cluster"] == net.target

            for follower, where in ((sub, "the subscribed member"),
                                    (coord_sub, "the subscribed coordinator")):
                got = receive(follower, f"alerts.fire at {where}")
                assert got == {"id": done["id"], "from": ids[net.sender],
                               "cluster": _cluster_of(net, net.sender), "topic": "alerts.fire",
                               "payload": payload}

            # The same id again (a resend after a lost reply): acknowledged, not re-published.
            again = sender.send(net.target, "alerts.fire", payload, deadline_s=20,
                                message_id=done["id"])
            assert sorted(again["delivered"]) == sorted(done["delivered"])
            marker = sender.send(net.target, "alerts.marker", 1, deadline_s=20)
            got = receive(sub, "the marker after the resend")
            assert (got["topic"], got["id"]) == ("alerts.marker", marker["id"]), \
                f"a second copy of alerts.fire arrived before the marker: {got}"
            assert a_sub.get(timeout_s=0) is None, "cluster A's subscriber got B's message"

        # Nobody else got anything: not the member of B that does not subscribe, not the
        # subscriber in the sender's own cluster.
        assert stats(nodes[net.bystander])["received"] == 0
        assert spy.drain() == []
        assert a_sub_received(nodes[net.other_a]) == 0
        assert stats(nodes[net.subscriber])["duplicates"] >= 1

    # The ledger: sent and delivered on the sender, received once on the member.
    wanted = {done["id"], again["id"], marker["id"]}

    def delivered_ids() -> Any:
        found = [e["id"] for e in events(nodes[net.sender], "intercluster.delivered")]
        return found if wanted <= set(found) else NotYet({"found": found})

    assert len(wait_for(delivered_ids, 5, "intercluster.delivered in the sender's ledger")) \
        == 3
    assert len(events(nodes[net.sender], "intercluster.sent")) >= 3
    got_ids = [e["id"] for e in events(nodes[net.subscriber], "intercluster.received")]
    assert got_ids.count(done["id"]) == 1 and "payload" not in events(
        nodes[net.subscriber], "intercluster.received")[0]


def attempts_in(reason: str) -> int:
    """The N of "(N attempts)" in an undeliverable reason."""
    match = re.search(r"\((\d+) attempts?\)", reason)
    assert match is not None, reason
    return int(match.group(1))


def a_sub_received(node: Node) -> int:
    return int(stats(node)["received"])


def _cluster_of(net: Net, index: int) -> str:
    for cluster in _clusters(net.nodes[index]):
        if net.ids[index] in cluster["members"]:
            return str(cluster["id"])
    raise AssertionError(f"node {index} is in no cluster")


def test_bad_messages_are_refused_with_a_clear_error(net: Net) -> None:
    with Client(net.nodes[net.sender].config_path) as client:
        with pytest.raises(RequestFailed) as too_big:
            client.send(net.target, "alerts.big", "y" * (MAX_MESSAGE_BYTES + 1))
        assert too_big.value.code == "too_large" and "max_message_bytes" in str(too_big.value)
        with pytest.raises(RequestFailed) as bad_topic:
            client.send(net.target, "has space", 1)
        assert bad_topic.value.code == "bad_request" and "topic" in str(bad_topic.value)

        # A cluster nobody knows: retried with backoff, then reported after the deadline.
        started = time.monotonic()
        with pytest.raises(MessageUndeliverable) as failed:
            client.send("deadbeef", "alerts.lost", 1, deadline_s=1.5)
        took = time.monotonic() - started
        assert "no cluster deadbeef known" in str(failed.value)
        assert attempts_in(str(failed.value)) >= 3, str(failed.value)
        assert 1.5 <= took < 6, took


def test_akitactl_send_and_subscribe(net: Net) -> None:
    nodes = net.nodes
    member = nodes[net.subscriber]
    follow = subprocess.Popen(
        [sys.executable, "-m", "akita.cli", "-c", str(member.config_path), "subscribe",
         "ops.", "--count", "1", "--timeout", "60", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_advertised(net, net.subscriber, "ops.")
        sent = nodes[net.sender].ctl("send", "--cluster", net.target, "ops.deploy",
                                     '{"version": 7}', "--deadline", "20")
        assert sent.returncode == 0, sent.stderr
        assert "delivered" in sent.stdout and "1 subscriber" in sent.stdout
        out, err = follow.communicate(timeout=20)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait(5)
    assert follow.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert json.loads(lines[0]) == {"from": net.ids[net.sender],
                                    "cluster": _cluster_of(net, net.sender),
                                    "topic": "ops.deploy", "payload": {"version": 7}}
    # The subscriber is gone: its prefix is no longer advertised.
    wait_for(lambda: "ops." not in advertised(nodes[net.coordinator], net.ids[net.subscriber]),
             10, "the prefix withdrawn after akitactl subscribe exited")

    failed = nodes[net.sender].ctl("send", "--cluster", "deadbeef", "ops.x", "1",
                                   "--deadline", "1")
    assert failed.returncode == 1 and "undeliverable" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr
    bad = nodes[net.sender].ctl("send", "--cluster", net.target, "ops.x", "{not json")
    assert bad.returncode == 2 and "not JSON" in bad.stderr


def test_a_frozen_subscriber_makes_a_real_partial_delivery(net: Net) -> None:
    """The unit test fakes a coordinator's answer "reached 1 of 2"; here one of the two
    subscribers' gateway is frozen (SIGSTOP) for less than peer_timeout, so it is still a
    member, the coordinator's delivery to it times out, and the sender reports the partial
    delivery after its deadline. Thawed, both receive the next message."""
    nodes, ids = net.nodes, net.ids
    frozen = nodes[net.subscriber].worker("gateway")["pid"]
    with Client(nodes[net.subscriber].config_path) as member, \
            Client(nodes[net.coordinator].config_path) as coordinator, \
            Client(nodes[net.sender].config_path) as sender, \
            member.subscribe(PREFIX) as sub, coordinator.subscribe(PREFIX) as coord_sub:
        wait_advertised(net, net.subscriber, PREFIX)
        wait_advertised(net, net.coordinator, PREFIX)
        os.kill(frozen, signal.SIGSTOP)
        try:
            with pytest.raises(MessageUndeliverable) as partial:
                sender.send(net.target, "alerts.partial", 1, deadline_s=2)
        finally:
            os.kill(frozen, signal.SIGCONT)
        # The last try may have been cut by the deadline while the coordinator still waited
        # on the frozen member: then the reason is the sender's own timeout (the link's, or
        # its timer's on a busy host) instead of the coordinator's partial answer; the
        # coordinator's ledger says what it did with each try.
        reason = str(partial.value)
        assert "within the deadline" in reason and attempts_in(reason) >= 2, reason
        assert any(why in reason for why in ("reached 1 of 2 subscribers", "no response",
                                             "no answer from coordinator")), reason
        got = receive(coord_sub, "alerts.partial at the coordinator")
        assert got["topic"] == "alerts.partial"

        def routed() -> Any:
            found = [(e["delivered"], e["failed"]) for e in
                     events(nodes[net.coordinator], "intercluster.routed")
                     if e["id"] == got["id"]]
            return found or NotYet({"routed": found})

        tries = wait_for(routed, 10, "the coordinator's intercluster.routed for the message")
        assert (1, 1) in tries, f"no try reached exactly one of the two subscribers: {tries}"

        done = sender.send(net.target, "alerts.whole", 2, deadline_s=20)
        assert sorted(done["delivered"]) == sorted([ids[net.subscriber], ids[net.coordinator]])
        # The thawed member may still publish the retried partial message (at least once).
        topics = [receive(sub, "alerts.whole at the thawed member")["topic"]]
        while topics[-1] != "alerts.whole":
            topics.append(receive(sub, "alerts.whole at the thawed member")["topic"])
        assert set(topics) <= {"alerts.partial", "alerts.whole"}, topics
    assert nodes[net.subscriber].worker("gateway")["pid"] == frozen, "the gateway was restarted"


def test_coordinator_killed_retried_then_failed_then_delivered_by_the_next(net: Net) -> None:
    nodes, ids = net.nodes, net.ids
    dead = ids[net.coordinator]
    with Client(nodes[net.subscriber].config_path) as member, \
            Client(nodes[net.sender].config_path) as sender, member.subscribe(PREFIX) as sub:
        wait_advertised(net, net.subscriber, PREFIX)
        kill_gateway_first(nodes[net.coordinator])
        killed_at = time.monotonic()
        # The sender cannot know yet (it drops a silent peer only after peer_timeout):
        # every try goes to the dead coordinator and times out.
        try:
            early = sender.send(net.target, "alerts.during", 1, deadline_s=2)
        except MessageUndeliverable as exc:
            reason = str(exc)
        else:
            raise AssertionError(f"delivered {time.monotonic() - killed_at:.2f} s after "
                                 f"the kill of {dead}: {early}; the sender sees "
                                 f"{_clusters(nodes[net.sender])}")
        assert time.monotonic() - killed_at < 3.5, "too slow to test the dead route"
        assert dead in reason and attempts_in(reason) >= 2, reason

        # With room for the takeover, the next coordinator delivers it.
        done = sender.send(net.target, "alerts.after", 2, deadline_s=40)
        assert done["coordinator"] != dead
        assert done["delivered"] == [ids[net.subscriber]]
        got = receive(sub, "alerts.after through the new coordinator")
        assert (got["topic"], got["payload"]) == ("alerts.after", 2)
    failures = events(nodes[net.sender], "intercluster.failed")
    assert any(dead in e["reason"] for e in failures), failures
