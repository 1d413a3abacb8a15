"""Probes, not announces, keep a cluster's view true when announces are far apart.

Every other multi-node test announces each second against a 4 s peer_timeout, so announces
alone would keep live peers listed and let a killed one age out. Here announces come every
25 s against a 2.5 s peer_timeout: after discovery, nothing but probes can tell a live
member from a dead one. Live members must keep each other through a watch in which nobody
announced, and a killed member must be dropped within peer_timeout. With probes disabled,
the live members time each other out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from akita.wire import protocol
from tests.helpers import Node, NotYet, start_network, wait_for

PEER_TIMEOUT_S = 2.5
# 10 × peer_timeout. (A node forms its cluster only after a quiet announce interval, so a
# longer interval makes the test slower, not stronger: one watch already spans 2 timeouts.)
ANNOUNCE_INTERVAL_S = 25.0
WATCH_S = 2 * PEER_TIMEOUT_S
# A shared 2-core machine: scheduling noise on top of the protocol's own bound.
MARGIN_S = 1.5


def peers(node: Node) -> set[str]:
    reply = node.request(protocol.PeerList())
    assert isinstance(reply, protocol.PeerListReply)
    return {peer["id"] for peer in reply.peers}


def stats(node: Node) -> dict[str, Any]:
    reply = node.request(protocol.PeerStats())
    assert isinstance(reply, protocol.PeerStatsReply)
    return reply.stats


def node_id(node: Node) -> str:
    return str(node.status()["node"]["id"])


def all_know_each_other(nodes: list[Node], ids: list[str]) -> Callable[[], Any]:
    def check() -> Any:
        seen = {n.config.node.name: sorted(peers(n)) for n in nodes}
        ok = all(set(seen[n.config.node.name]) == set(ids) - {i} for n, i in zip(nodes, ids))
        return seen if ok else NotYet(seen)
    return check


def one_cluster(nodes: list[Node], ids: list[str]) -> Callable[[], Any]:
    def check() -> Any:
        views = []
        for node in nodes:
            reply = node.request(protocol.ClusterList())
            assert isinstance(reply, protocol.ClusterListReply)
            views.append(sorted((c["id"], sorted(c["members"])) for c in reply.clusters))
        ok = all(v == views[0] for v in views) and [m for _c, m in views[0]] == [sorted(ids)]
        return views[0] if ok else NotYet({"views": views})
    return check


def watch_live_members(nodes: list[Node], ids: list[str], seconds: float) -> list[str]:
    """Poll every node's peer list for `seconds`; each time a live member was missing."""
    missing: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        for node, own in zip(nodes, ids):
            gone = set(ids) - {own} - peers(node)
            if gone:
                missing.append(f"{node.config.node.name} lost {sorted(gone)} at "
                               f"{time.monotonic() - started:.1f} s")
        time.sleep(0.05)
    return missing


def test_only_probes_drop_a_killed_member_when_announces_are_rare(
        make_node: Callable[..., Node]) -> None:
    nodes = start_network(make_node, 3, cluster={"announce_interval": ANNOUNCE_INTERVAL_S,
                                                 "peer_timeout": PEER_TIMEOUT_S})
    ids = [node_id(node) for node in nodes]
    wait_for(all_know_each_other(nodes, ids), 20, "three nodes listing each other")
    wait_for(one_cluster(nodes, ids), ANNOUNCE_INTERVAL_S + 15,
             "three nodes agreeing on one cluster of three")

    # Live members keep each other through a watch of twice peer_timeout in which nobody
    # announced (the start-up announces may still trickle: such a watch is repeated).
    quiet_watches = 0
    for _attempt in range(4):
        announced = [stats(n)["announces"]["sent"] for n in nodes]
        probed = [stats(n)["probes"]["direct"] for n in nodes]
        missing = watch_live_members(nodes, ids, WATCH_S)
        assert not missing, f"live members dropped each other: {missing[:5]}"
        if [stats(n)["announces"]["sent"] for n in nodes] == announced:
            probes = [stats(n)["probes"]["direct"] - p for n, p in zip(nodes, probed)]
            assert min(probes) >= 2, f"too few probes during {WATCH_S:g} s: {probes}"
            quiet_watches += 1
            break
    assert quiet_watches, f"some node announced in each of 4 watches of {WATCH_S:g} s"

    # A killed member is gone from both others within peer_timeout, by the test's own clock.
    victim_id = ids[2]
    killed_at = time.monotonic()
    nodes[2].kill_everything()
    dropped_after: dict[str, float] = {}
    while len(dropped_after) < 2 and time.monotonic() - killed_at < 3 * PEER_TIMEOUT_S:
        for node in nodes[:2]:
            if victim_id not in peers(node):
                dropped_after.setdefault(node.config.node.name, time.monotonic() - killed_at)
        time.sleep(0.05)
    assert len(dropped_after) == 2, (
        f"the killed member still listed {3 * PEER_TIMEOUT_S:g} s after the kill; dropped by "
        f"{sorted(dropped_after)} only")
    assert max(dropped_after.values()) <= PEER_TIMEOUT_S + MARGIN_S, (
        f"killed member dropped after {dropped_after} s; peer_timeout is {PEER_TIMEOUT_S:g} s")
    assert not watch_live_members(nodes[:2], ids[:2], 0.5), "a survivor dropped the other"
