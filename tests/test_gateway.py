"""One or two real nodes and a hand-made Reticulum peer: what the gateway ignores, whom it
admits, and how it survives a taken port and a kill -9."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from akita import identity as ident
from akita.ledger import chain
from akita.wire import protocol
from tests.helpers import (
    REPO,
    Node,
    NotYet,
    PeerProcess,
    free_port,
    net_sections,
    start_network,
    wait_for,
)

RNS_PEER = REPO / "tests" / "rns_peer.py"


class HandmadePeer(PeerProcess):
    """tests/rns_peer.py in its own process, following `plan`."""

    def __init__(self, root: Path, hub_port: int, plan: str, request: tuple[str, str] | None
                 ) -> None:
        super().__init__(RNS_PEER, root, hub_port, "--plan", plan,
                         *(["--request", request[0], "--to", request[1]] if request else []))


@pytest.fixture
def handmade(short_tmp: Path) -> Iterator[Callable[..., HandmadePeer]]:
    peers: list[HandmadePeer] = []

    def start(hub_port: int, plan: str, request: tuple[str, str] | None = None
              ) -> HandmadePeer:
        peer = HandmadePeer(short_tmp / f"peer{len(peers)}", hub_port, plan, request)
        peers.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in peers:
            peer.stop()


def stats(node: Node) -> dict[str, Any]:
    reply = node.request(protocol.PeerStats())
    assert isinstance(reply, protocol.PeerStatsReply)
    return reply.stats


def peers(node: Node) -> dict[str, dict[str, Any]]:
    reply = node.request(protocol.PeerList())
    assert isinstance(reply, protocol.PeerListReply)
    return {peer["id"]: peer for peer in reply.peers}


def hub(make_node: Callable[..., Node], **overrides: Any) -> tuple[Node, int]:
    port = free_port()
    node = make_node(net_sections(port, True, "hub", **overrides), name="hub")
    node.start()
    return node, port


def test_garbage_and_impersonating_announces_are_ignored_and_counted(
        make_node: Callable[..., Node], handmade: Callable[..., HandmadePeer]) -> None:
    node, port = hub(make_node, cluster={"services": "web, mail"})
    gateway_pid = node.worker("gateway")["pid"]
    node_id = str(node.status()["node"]["id"])
    peer = handmade(port, "garbage", request=("akita.services/list", node_id))
    peer_id = peer.wait_line("READY", 15).split()[1]
    peer.wait_line("DONE", 20)
    sent = [line.split()[1] for line in peer.lines() if line.startswith("SENT")]
    # Every one was sent: the oversized one is over the node's limit, not Reticulum's.
    assert sent == ["random", "list", "wrong-types", "oversized", "impersonating", "valid"], \
        peer.lines()
    # The valid announce came last: once it is taken, everything before it was heard.
    wait_for(lambda: peer_id in peers(node), 10, "the hand-made peer's valid announce")
    counters = stats(node)["announces"]
    assert counters["garbage"] >= 3, counters
    assert counters["impersonating"] >= 1, counters
    assert counters["oversized"] >= 1, counters
    listed = peers(node)
    assert listed[peer_id]["name"] == "handmade" and len(listed) == 1
    gateway = node.worker("gateway")
    assert gateway["pid"] == gateway_pid and gateway["restarts"] == 0
    assert stats(node)["callback_errors"] == 0
    # An open node answers an identified stranger on service_channel: what it offers.
    answer = peer.wait_line("RESPONSE", 20).split()[1]
    status, offered = msgpack.unpackb(bytes.fromhex(answer))
    assert status == 0 and msgpack.unpackb(offered)["services"] == ["mail", "web"]


def test_a_replayed_old_announce_never_rolls_a_peer_back(
        make_node: Callable[..., Node], handmade: Callable[..., HandmadePeer]) -> None:
    node, port = hub(make_node)
    peer = handmade(port, "replay")
    peer_id = peer.wait_line("READY", 15).split()[1]
    peer.wait_line("DONE", 20)
    wait_for(lambda: peer_id in peers(node), 10, "the hand-made peer")
    wait_for(lambda: stats(node)["peer_table"]["stale"] >= 1, 5, "the old announce counted")
    assert peers(node)[peer_id]["name"] == "fresh"


def test_allowlist_keeps_an_unknown_identity_out(make_node: Callable[..., Node],
                                                  handmade: Callable[..., HandmadePeer],
                                                  short_tmp: Path) -> None:
    # Node B's identity exists before it starts, so A's allowlist can name it.
    port = free_port()
    b_sections = net_sections(port, False, "b")
    node_b = make_node(b_sections, name="b")
    b_id = ident.load_or_create(node_b.data_dir).node_id
    node_a = make_node(net_sections(port, True, "a", security={
        "admission": "allowlist", "allowed_identities": b_id}), name="a")
    a_id = ident.load_or_create(node_a.data_dir).node_id
    node_a.start()
    node_b.start()
    peer = handmade(port, "valid", request=("akita.state/pull", a_id))
    peer_id = peer.wait_line("READY", 15).split()[1]
    wait_for(lambda: peer_id in peers(node_b), 10, "B (open) hearing the hand-made peer")
    wait_for(lambda: b_id in peers(node_a), 10, "A admitting B")
    # Its pull request over an identified Link is ignored too (no response, counted).
    assert peer.wait_line("NO-", 20) == "NO-RESPONSE"
    a_stats = stats(node_a)
    assert set(peers(node_a)) == {b_id}
    assert a_stats["announces"]["not_admitted"] >= 1
    assert a_stats["links"]["refused"] >= 1


def test_a_taken_listen_port_is_reported_then_recovered(make_node: Callable[..., Node]) -> None:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    try:
        node = make_node(net_sections(port, True, "busy", **{
            "worker:gateway": {"backoff_max": 0.5, "max_restarts": 1000}}), name="busy")
        node.start(wait=False)

        def reported() -> Any:
            gateway = node.worker("gateway")
            return gateway if gateway["exit_code"] == 3 else NotYet(gateway)

        gateway = wait_for(reported, 20, "the gateway to exit with status 3")
        assert "code 3" in gateway["last_error"]
        log_text = (node.log_dir / "gateway.log").read_text()
        assert f"could not start: TCP listen address 127.0.0.1:{port}: already in use" in log_text
        assert "Traceback" not in log_text
        events = wait_for(lambda: list(chain.read_events(
            chain.db_path(node.config), kind_prefix="gateway.interface_failed")), 10,
            "the failure in the ledger")
        assert str(port) in events[0].data["error"]
    finally:
        held.close()
    node.wait_running(timeout_s=20)  # the restart policy brings it back once the port is free
    assert stats(node)["interfaces"][0]["online"]


def test_gateway_kill_9_is_restarted_and_recovers_its_view(
        make_node: Callable[..., Node]) -> None:
    nodes = start_network(make_node, 2, supervisor={"workers": "ledger, executor, gateway"})
    first, second = nodes
    second_id = str(second.status()["node"]["id"])
    first_id = str(first.status()["node"]["id"])
    wait_for(lambda: first_id in peers(second) and second_id in peers(first), 15,
             "the two nodes hearing each other")
    reply = second.request(protocol.StateSet(key="shelf", value=7))
    assert isinstance(reply, protocol.Ok)

    def offered_by_second() -> Any:
        reply = first.request(protocol.ServiceList())
        assert isinstance(reply, protocol.ServiceListReply)
        echo = [s for s in reply.services if s["name"] == "akita.echo"]
        return echo and second_id in echo[0]["nodes"] or NotYet({"services": reply.services})

    # Task types come from the executor, reach the peer through the state.
    wait_for(offered_by_second, 10, "the peer listing the executor's task types")

    def clustered(node: Node) -> Any:
        reply = node.request(protocol.ClusterList())
        assert isinstance(reply, protocol.ClusterListReply)
        ours = [c for c in reply.clusters if second_id in c["members"]]
        return ours[0]["id"] if ours and len(ours[0]["members"]) == 2 else NotYet(
            {"clusters": reply.clusters})

    cluster_id = wait_for(lambda: clustered(second), 15, "one cluster of two")
    old_pid = second.worker("gateway")["pid"]
    os.kill(old_pid, signal.SIGKILL)

    def restarted() -> Any:
        gateway = second.worker("gateway")
        return gateway if gateway["state"] == "running" and gateway["pid"] != old_pid \
            else NotYet(gateway)

    wait_for(restarted, 15, "the supervisor restarting the gateway")
    wait_for(lambda: first_id in peers(second), 8, "the restarted gateway hearing its peer")
    assert wait_for(lambda: clustered(second), 8, "its cluster again") == cluster_id
    state = second.request(protocol.StateGet(node=""))
    assert isinstance(state, protocol.StateReply) and state.data["shelf"] == 7
    assert state.generation == 2

    def first_sees_new_generation() -> Any:
        seen = peers(first).get(second_id)
        return seen if seen and seen["generation"] == 2 else NotYet({"peer": seen})

    wait_for(first_sees_new_generation, 8, "the peer noticing the restart")

    def pulled() -> Any:
        got = first.request(protocol.StateGet(node=second_id))
        assert isinstance(got, protocol.StateReply)
        return got if got.generation == 2 else NotYet({"generation": got.generation})

    assert wait_for(pulled, 8, "the peer pulling the new record").data["shelf"] == 7


def test_interface_access_codes_close_the_network(make_node: Callable[..., Node]) -> None:
    port = free_port()
    ifac = {"network_name": "akita-test", "passphrase": "right"}
    hub_node = make_node(net_sections(port, True, "hub", reticulum=ifac), name="hub")
    hub_node.start()
    member = make_node(net_sections(port, False, "member", reticulum=ifac), name="member")
    stranger = make_node(net_sections(port, False, "stranger", reticulum={
        **ifac, "passphrase": "wrong"}), name="stranger")
    member.start(wait=False)
    stranger.start(wait=False)
    member.wait_running()
    stranger.wait_running()
    hub_id = str(hub_node.status()["node"]["id"])
    member_id = str(member.status()["node"]["id"])
    wait_for(lambda: set(peers(hub_node)) == {member_id} and hub_id in peers(member), 10,
             "the hub and the member with the right passphrase finding each other")
    wait_for(lambda: stats(stranger)["announces"]["sent"] >= 3, 10,
             "the stranger announcing a few times")
    # Its TCP connection is up, its announces went out: none got through, nor came back.
    assert any(i["online"] for i in stats(stranger)["interfaces"])
    assert set(peers(hub_node)) == {member_id} and peers(stranger) == {}
