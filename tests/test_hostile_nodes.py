"""A hostile mesh against real nodes on loopback Reticulum: a hand-made peer process
(tests/rns_hostile_peer.py, real RNS, its own identities) performs each attack, and each
test asserts the defence: no member displaced, no term out of range, bytes refused before
they arrive, no partial file left, bounded peer table, escaped output, counters raised."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from akita import identity as ident
from akita import keyring
from akita.client import Client
from akita.ledger import chain
from akita.mesh.cluster import MAX_TERM
from akita.wire import protocol
from tests.helpers import (
    NET_CLUSTER,
    REPO,
    Node,
    NotYet,
    PeerProcess,
    free_port,
    net_sections,
    start_network,
    wait_for,
)
from tests.test_cluster_nodes import agreed, clusters, node_id
from tests.test_delegation_nodes import TASKS as DELEGATION_TASKS
from tests.test_delegation_nodes import WORKERS as DELEGATION_WORKERS
from tests.test_delegation_nodes import ready_to_delegate, takes_work
from workers.ledger.store import Append, LedgerStore, open_writer, parse_events

HOSTILE_PEER = REPO / "tests" / "rns_hostile_peer.py"
POISONED_TERM = 2**63 + 5   # what an older version adopted from one hostile announce
MiB = 1 << 20


class HostilePeer(PeerProcess):
    """tests/rns_hostile_peer.py in its own process, making one `attack`."""

    def __init__(self, root: Path, hub_port: int, attack: str, *options: str) -> None:
        super().__init__(HOSTILE_PEER, root, hub_port, attack, *options, what="hostile peer")


@pytest.fixture
def hostile(short_tmp: Path) -> Iterator[Callable[..., HostilePeer]]:
    peers: list[HostilePeer] = []

    def start(hub_port: int, attack: str, *options: str) -> HostilePeer:
        peer = HostilePeer(short_tmp / f"hostile{len(peers)}", hub_port, attack, *options)
        peers.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in peers:
            peer.stop()


def hub_port(node: Node) -> int:
    listen = node.config.reticulum.tcp_listen
    assert listen is not None
    return listen[1]


def stats(node: Node) -> dict[str, Any]:
    reply = node.request(protocol.PeerStats())
    assert isinstance(reply, protocol.PeerStatsReply)
    return reply.stats


def refused(node: Node, reason: str) -> int:
    return int(stats(node)["security"]["refused"][reason])


def gateway_rss(node: Node) -> int:
    return int(node.worker("gateway")["rss_bytes"] or 0)


def resource_files(node: Node) -> list[str]:
    found = list((node.data_dir / "reticulum").rglob("storage/resources/*"))
    return sorted(p.name for p in found if p.is_file())


def write_event(node: Node, kind: str, data: object) -> None:
    """Append an event to a stopped node's own feed with its own key (as its ledger would)."""
    conn = open_writer(chain.db_path(node.config))
    try:
        store = LedgerStore(conn, ident.load(node.data_dir))
        store.commit([Append("test", 1, 1, parse_events([{"kind": kind, "ts": 1.0,
                                                           "data": data}]), True)],
                     checkpoint_events=1)
        store.checkpoint()
    finally:
        conn.close()


def small_terms(nodes: list[Node], ids: set[str] | None = None) -> Callable[[], Any]:
    """Every cluster holding one of `ids` (default: any) shows a small term on every node."""

    def check() -> Any:
        terms = [c["term"] for node in nodes for c in clusters(node)
                 if ids is None or ids & set(c["members"])]
        return terms if terms and all(0 < t < 1000 for t in terms) else NotYet({"t": terms})

    return check


# --- claims -------------------------------------------------------------------------------


def test_a_poisoned_saved_term_heals_at_start_and_the_cluster_reforms(
        make_node: Callable[..., Node]) -> None:
    nodes = start_network(make_node, 3)
    ids = [node_id(node) for node in nodes]
    ((cluster_id, _members, _coordinator),) = wait_for(
        agreed(nodes, set(ids), [3]), 20, "three nodes agreeing on one cluster")
    victim = nodes[1]
    victim.stop()
    write_event(victim, "cluster.seat", {"seat": [bytes.fromhex(cluster_id), 0, 2],
                                         "term": POISONED_TERM, "mates": []})
    victim.start()
    wait_for(agreed(nodes, set(ids), [3]), 20, "the cluster re-formed with the restarted node")
    terms = wait_for(small_terms(nodes), 10, "every node holding a small term")
    assert max(terms) <= MAX_TERM
    log = (victim.log_dir / "gateway.log").read_text(errors="replace")
    assert "healing the saved term" in log


def test_intruders_claiming_seat_zero_and_a_huge_term_move_nobody(
        make_node: Callable[..., Node], hostile: Callable[..., HostilePeer]) -> None:
    nodes = start_network(make_node, 3)
    ids = [node_id(node) for node in nodes]
    before = wait_for(agreed(nodes, set(ids), [3]), 20, "three nodes agreeing on one cluster")
    ((cluster_id, _members, _coordinator),) = before
    wait_for(small_terms(nodes), 10, "the cluster's first term")
    # Members are protected once they have been members for the settling period (two grace
    # periods of peer_timeout + discovery_interval): an attack comes later than that.
    agreed_since = time.monotonic()
    settle_s = 2 * (NET_CLUSTER["peer_timeout"] + NET_CLUSTER["discovery_interval"]) + 1
    wait_for(lambda: agreed(nodes, set(ids), [3])()
             and time.monotonic() - agreed_since >= settle_s,
             settle_s + 10, "the cluster agreed through the settling period")
    attacker = hostile(hub_port(nodes[0]), "seats", "--cluster", cluster_id, "--count", "3",
                       "--for-s", "8")
    attacker.wait_line("CLAIMED", 30)
    for node in nodes:
        own = [c for c in clusters(node) if c["id"] == cluster_id]
        assert own and set(own[0]["members"]) == set(ids), f"members moved: {own}"
    wait_for(small_terms(nodes, set(ids)), 5, "our cluster's term staying small")
    assert all(refused(node, "claim_refused") > 0 for node in nodes)
    shown = nodes[0].ctl_json("status")
    assert shown["security"]["refused"]["claim_refused"] > 0


# --- quotas ------------------------------------------------------------------------------


def test_an_oversized_request_is_refused_before_its_data_arrives(
        make_node: Callable[..., Node], hostile: Callable[..., HostilePeer]) -> None:
    (node,) = start_network(make_node, 1)
    me = node_id(node)
    rss_before = gateway_rss(node)
    rx_before = stats(node)["link_traffic"].get("rx_bytes", 0)
    attacker = hostile(hub_port(node), "request", "--to", me, "--path", "akita.state/pull",
                       "--bytes", str(24 * MiB))
    answer = attacker.wait_line("FAILED", 90)
    assert float(answer.split()[1]) < 30
    wait_for(lambda: refused(node, "over_quota") >= 1, 5, "the refusal counted")
    traffic = stats(node)["link_traffic"]
    cost = traffic.get("rx_bytes", 0) - rx_before
    assert cost < 64 << 10, f"the node took {cost} bytes of a refused request"
    assert gateway_rss(node) - rss_before < 32 * MiB
    assert resource_files(node) == []


def test_a_transfer_torn_down_half_way_leaves_no_file(
        make_node: Callable[..., Node], hostile: Callable[..., HostilePeer]) -> None:
    (node,) = start_network(make_node, 1, security={"max_request_bytes": 16 * MiB})
    me = node_id(node)
    attacker = hostile(hub_port(node), "request", "--to", me, "--path", "akita.state/pull",
                       "--bytes", str(6 * MiB), "--abort")
    attacker.wait_line("ABORTED", 90)
    wait_for(lambda: resource_files(node) == [], 15,
             "the partial transfer file removed from storage/resources")


def test_a_flood_of_identities_is_bounded(make_node: Callable[..., Node],
                                          hostile: Callable[..., HostilePeer]) -> None:
    (node,) = start_network(make_node, 1, security={"max_peers": 50,
                                                    "max_new_peers_per_minute": 10})
    attacker = hostile(hub_port(node), "flood", "--count", "40")
    attacker.wait_line("SENT", 30)
    wait_for(lambda: refused(node, "over_quota") >= 10, 15, "the flood refused and counted")
    assert stats(node)["peers"] <= 10
    shown = node.ctl("security")
    assert shown.returncode == 0 and "over_quota" in shown.stdout, shown.stderr
    assert "IDENTITY" in shown.stdout, "the top offenders are listed"
    with Client(node.config_path) as client:
        assert client.security()["refused"]["over_quota"] >= 10


def test_a_peer_claiming_a_huge_announce_interval_is_not_kept_for_it(
        make_node: Callable[..., Node], hostile: Callable[..., HostilePeer]) -> None:
    # cluster_size 1: the peer is no mate, so no probe drops it; only its announces count.
    (node,) = start_network(make_node, 1, security={"max_peer_interval": 2},
                            cluster={"cluster_size": 1})
    attacker = hostile(hub_port(node), "name", "--interval", "9999999")
    silent = attacker.wait_line("NAMED", 30).split()[1]
    wait_for(lambda: silent in {p["id"] for p in node.ctl_json("peers")["peers"]}, 15,
             "the peer known")
    # Silent after two announces: dropped after max(peer_timeout, 2.5 x 2 s), not 289 days.
    wait_for(lambda: silent not in {p["id"] for p in node.ctl_json("peers")["peers"]}, 20,
             "the silent peer dropped")


# --- output -------------------------------------------------------------------------------


def test_peer_names_are_escaped_in_human_output_and_logs(
        make_node: Callable[..., Node], hostile: Callable[..., HostilePeer]) -> None:
    (node,) = start_network(make_node, 1)
    attacker = hostile(hub_port(node), "name")
    evil_id = attacker.wait_line("NAMED", 30).split()[1]
    wait_for(lambda: evil_id in {p["id"] for p in node.ctl_json("peers")["peers"]}, 15,
             "the peer with the hostile name known")
    shown = node.ctl("peers")
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "\\x1b[2J" in shown.stdout
    peers = json.loads(node.ctl("peers", "--json").stdout)["peers"]
    assert any(p["name"] == "\x1b[2J\x1b[31mEVIL\x07\r" for p in peers), "JSON stays exact"
    listed = node.ctl("clusters")
    assert "\x1b" not in listed.stdout
    log = (node.log_dir / "gateway.log").read_bytes()
    assert b"\x1b" not in log and b"\x07" not in log


# --- network key -----------------------------------------------------------------------------


def test_a_network_key_admits_holders_and_rotates_without_a_flag_day(
        make_node: Callable[..., Node], hostile: Callable[..., HostilePeer]) -> None:
    old, new, other = keyring.generate(), keyring.generate(), keyring.generate()
    port = free_port()
    # Mid-rotation: node 0 still signs with the old key, node 1 already with the new one;
    # each accepts both. Node 2 holds an unrelated key.
    keys = [f"{old}, {new}", f"{new}, {old}", other]
    nodes = []
    for index, key in enumerate(keys):
        node = make_node(net_sections(port, index == 0, f"node{index}",
                                      security={"admission": "key", "network_key": key}),
                         name=f"n{index}")
        node.start(wait=index == 0)
        nodes.append(node)
    for node in nodes[1:]:
        node.wait_running()
    ids = [node_id(node) for node in nodes]
    wait_for(agreed(nodes[:2], set(ids[:2]), [2]), 20,
             "the two key holders agreeing on one cluster")
    wait_for(lambda: refused(nodes[0], "bad_key") > 0 and refused(nodes[2], "bad_key") > 0,
             10, "announces without a valid tag refused and counted")
    assert ids[2] not in {p["id"] for p in nodes[0].ctl_json("peers")["peers"]}
    assert {p["id"] for p in nodes[2].ctl_json("peers")["peers"]} == set()
    # A peer without the key cannot even ask for state: its request goes unanswered.
    hostile(port, "request", "--to", ids[0], "--path", "akita.state/pull", "--bytes", "16")
    wait_for(lambda: refused(nodes[0], "not_admitted") >= 1, 40,
             "a request from an identity without the key refused and counted")


# --- work ---------------------------------------------------------------------------------


def test_no_work_goes_to_a_peer_before_it_has_held_its_seat_for_the_settling_period(
        make_node: Callable[..., Node]) -> None:
    # Node 1 stands for a newcomer that just took the free seat in node 0's cluster: under
    # the default delegate_to = members it gets no task, and sees no task's arguments,
    # until it has held its seat for settle_time (long here).
    port = free_port()
    nodes = []
    for index in range(2):
        node = make_node(net_sections(
            port, index == 0, f"node{index}", supervisor=dict(DELEGATION_WORKERS),
            tasks={**DELEGATION_TASKS, "pool_size": 1},
            security={"settle_time": 600} if index == 0 else {}), name=f"n{index}")
        node.start(wait=index == 0)
        nodes.append(node)
    nodes[1].wait_running()
    ids = [node_id(node) for node in nodes]
    wait_for(lambda: ready_to_delegate(nodes, ids, [[0, 1]], settled=False), 30,
             "one cluster whose members know each other's task types and load", 0.3)
    assert ids[1] not in takes_work(nodes[0])
    with Client(nodes[0].config_path) as client:
        tasks = [client.submit("akita.sleep", [0.2]) for _ in range(8)]
        for task_id in tasks:
            client.wait(task_id, timeout=30)
    events = chain.read_events(chain.db_path(nodes[0].config), kind_prefix="task.delegated")
    assert [e.data for e in events if e.kind == "task.delegated"] == []
    on_peer = chain.read_events(chain.db_path(nodes[1].config), kind_prefix="task.submitted")
    assert [e for e in on_peer if e.kind == "task.submitted"] == []
