"""Partial network views caused for real, then healed.

The simulation (tests/test_cluster_sim.py) drops announces at random to give nodes partial
views. Here the Reticulum topology does it: two transport hubs that do not know each other,
a node on each side, and one node dialled into both (it is no transport node, so it
forwards nothing). Each side sees only itself and the bridge; the bridge sees everyone.
The rules must keep every node in exactly one cluster of its own view and never over
cluster_size. Then a transport node joins both hubs, every view becomes whole, and all
six nodes must agree on two full clusters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from akita.wire import protocol
from tests.helpers import NET_CLUSTER, Node, NotYet, free_port, wait_for

CLUSTER_SIZE = 3


def sections(name: str, listen: int | None = None, connect: tuple[int, ...] = ()
             ) -> dict[str, Any]:
    ret: dict[str, Any] = {"auto_interface": "no"}
    if listen is not None:
        ret["tcp_listen"] = f"127.0.0.1:{listen}"
    if connect:
        ret["tcp_connect"] = ", ".join(f"127.0.0.1:{port}" for port in connect)
    return {"node": {"name": name}, "supervisor": {"workers": "ledger, gateway"},
            "cluster": dict(NET_CLUSTER, cluster_size=CLUSTER_SIZE), "reticulum": ret}


def node_id(node: Node) -> str:
    return str(node.status()["node"]["id"])


def peers(node: Node) -> set[str]:
    reply = node.request(protocol.PeerList())
    assert isinstance(reply, protocol.PeerListReply)
    return {peer["id"] for peer in reply.peers}


def view(node: Node) -> frozenset[tuple[str, frozenset[str]]]:
    reply = node.request(protocol.ClusterList())
    assert isinstance(reply, protocol.ClusterListReply)
    return frozenset((c["id"], frozenset(c["members"])) for c in reply.clusters)


def check_own_view(node: Node, own: str) -> None:
    """In its own view, the node is in exactly one cluster, and none is over size."""
    clusters = view(node)
    mine = [cid for cid, members in clusters if own in members]
    assert len(mine) == 1, f"{node.config.node.name} is in clusters {mine} of its own view"
    over = [(cid, len(m)) for cid, m in clusters if len(m) > CLUSTER_SIZE]
    assert not over, f"{node.config.node.name} sees clusters over size: {over}"


def test_partial_views_keep_the_rules_and_heal_into_full_clusters(
        make_node: Callable[..., Node]) -> None:
    hub1_port, hub2_port = free_port(), free_port()
    hub1 = make_node(sections("h1", listen=hub1_port), name="h1")
    hub2 = make_node(sections("h2", listen=hub2_port), name="h2")
    bridge = make_node(sections("m", connect=(hub1_port, hub2_port)), name="m")
    left = make_node(sections("a", connect=(hub1_port,)), name="a")
    right = make_node(sections("b", connect=(hub2_port,)), name="b")
    nodes = [hub1, hub2, bridge, left, right]
    for node in nodes:
        node.start(wait=node in (hub1, hub2))
    for node in nodes:
        node.wait_running()
    ids = {node.config.node.name: node_id(node) for node in nodes}
    everyone = set(ids.values())
    expected = {"h1": {ids["a"], ids["m"]}, "a": {ids["h1"], ids["m"]},
                "h2": {ids["b"], ids["m"]}, "b": {ids["h2"], ids["m"]},
                "m": everyone - {ids["m"]}}

    def partial_views() -> Any:
        seen = {n.config.node.name: peers(n) for n in nodes}
        return seen if all(seen[k] == v for k, v in expected.items()) else NotYet(seen)

    wait_for(partial_views, 20, "each side seeing itself and the bridge, the bridge all")

    def placed() -> Any:
        where = {n.config.node.name: sorted(c for c, m in view(n) if ids[n.config.node.name] in m)
                 for n in nodes}
        return where if all(where.values()) else NotYet(where)

    wait_for(placed, 20, "every node placing itself in a cluster of its view")
    # Let formation run on these views for several rounds, checking throughout.
    for _round in range(5):
        for node in nodes:
            check_own_view(node, ids[node.config.node.name])
        assert partial_views(), "the views changed while partial"
        time.sleep(1)  # an observation interval: the checks above run on each round

    # Heal: a transport node dialled into both hubs forwards between them.
    healer = make_node(sections("t", listen=free_port(), connect=(hub1_port, hub2_port)),
                       name="t")
    healer.start()
    nodes.append(healer)
    ids["t"] = node_id(healer)
    everyone.add(ids["t"])

    def agreed() -> Any:
        views = [view(n) for n in nodes]
        shape = sorted(len(m) for _c, m in views[0])
        covered = {m for _c, members in views[0] for m in members}
        if len(set(views)) == 1 and shape == [3, 3] and covered == everyone:
            return views[0]
        return NotYet({n.config.node.name: sorted((c, len(m)) for c, m in v)
                       for n, v in zip(nodes, views)})

    wait_for(agreed, 60, "six nodes agreeing on two clusters of three after the healing")
    for node in nodes:
        check_own_view(node, ids[node.config.node.name])
