"""The airtime budget over the emulated LoRa channel (SF7/500 kHz, so it stays quick): with
`auto` timers, three nodes form a cluster, share state, delegate a task, then spend at
most their budget on air while idle, as the channel itself measures it, and write nothing
to their ledgers; a killed node is dropped within the derived peer_timeout; no frame
exceeds the MTU."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import akita
from akita.ledger import chain
from akita.mesh.airtime import profile
from akita.wire import protocol
from supervisor.radio import query_stats
from tests.helpers import Node, NotYet, wait_for
from tests.test_radio import one_cluster_of, start_channel

BUDGET_PERCENT = 3.0
CAPABILITY = "radio-test"


def budget_node(make_node: Callable[..., Node], sock: str, name: str, **tasks: str) -> Node:
    """A node on the channel with every timer `auto` (the defaults) and a 3 % budget."""
    return make_node({
        "node": {"name": name}, "supervisor": {"workers": "ledger, executor, gateway"},
        "cluster": {"cluster_size": 3, "airtime_budget": BUDGET_PERCENT,
                    "discovery_interval": 0.5},
        "tasks": {"pool_size": 1, **tasks},
        "reticulum": {"auto_interface": "no",
                      "pipe": f"{sys.executable} -m supervisor.radio attach --socket {sock} "
                              f"--node {name}",
                      "pipe_bitrate": str(int(profile("SF7-500").bitrate))}},
        name=name)


def airtime_over(sock: str, window_s: float) -> dict[str, float]:
    """Each node's share of time on air (percent) over the next `window_s`, as the channel
    accounts it."""
    before = query_stats(sock)
    time.sleep(window_s)  # the measurement window itself, not a wait for an event
    after = query_stats(sock)
    elapsed = after["elapsed_s"] - before["elapsed_s"]
    return {name: 100 * (fig["airtime_s"] - before["nodes"][name]["airtime_s"]) / elapsed
            for name, fig in after["nodes"].items()}


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_auto_timers_keep_an_idle_cluster_within_its_airtime_budget(
        make_node: Callable[..., Node], short_tmp: Path, request: pytest.FixtureRequest
        ) -> None:
    sock = str(short_tmp / "radio.sock")
    channel = start_channel(sock)
    clients: list[akita.Client] = []
    try:
        nodes = [budget_node(make_node, sock, "a"),
                 budget_node(make_node, sock, "b", capabilities=CAPABILITY),
                 budget_node(make_node, sock, "c")]
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_running()
        status = nodes[0].ctl_json("status", "--json")
        timers = status["budget"]
        assert status["pacing"]["binding"], "reactions should be paced by the budget here"
        assert timers["source"] == "auto" and timers["airtime_budget_percent"] == BUDGET_PERCENT
        interval, peer_timeout = timers["announce_interval_s"], timers["peer_timeout_s"]
        assert interval > 10.0, "the budget, not the LAN floor, should set the interval"
        shown = nodes[0].ctl("status").stdout
        assert "airtime budget 3 %" in shown and f"announce every {interval:.0f} s" in shown
        wait_for(one_cluster_of(nodes), 3 * interval + 20, "one cluster within 3 intervals")
        clients.extend(akita.Client(node.config_path) for node in nodes)
        state_reaches_every_mate(clients, 2 * interval)
        a_burst_of_state_sets_is_pushed_once_or_twice(nodes[0], clients, 3 * interval)
        task_id = clients[0].submit("akita.echo", ["x" * 100], requires=[CAPABILITY])
        # Work goes only to a mate seated for the settling period ([security] settle_time,
        # by default peer_timeout + discovery_interval, here derived from the budget).
        assert clients[0].wait(task_id, timeout=peer_timeout + 30) == "x" * 100
        # Idle, once every node holds every feed (catching up after start and after the
        # task is work, not upkeep): over one state refresh (every periodic upkeep falls in
        # it: announces, the ledger heads refresh, state refreshes), each node's own share
        # of the air; and nothing is written to any ledger, so replication has nothing to
        # carry.
        wait_for(feeds_agree(nodes), 12 * interval, "ledger replication to settle")
        before = [idle_figures(node) for node in nodes]
        shares = airtime_over(sock, max(4 * interval, timers["state_refresh_s"]))
        idle = [idle_figures(node, since) for node, since in zip(nodes, before)]
        # Kept with the report (e.g. --junitxml), to follow the figure from run to run.
        request.node.user_properties.append(
            ("idle_airtime_percent", {n: round(v, 2) for n, v in shares.items()}))
        assert all(share <= BUDGET_PERCENT for share in shares.values()), {
            "airtime %": shares, "while idle": idle}
        assert not any(figures["events"] for figures in idle), idle
        stats = query_stats(sock)
        assert stats["largest_frame"] <= 500, "a frame over the LoRa MTU reached the channel"
        failed_node_is_dropped(nodes, clients, peer_timeout)
    finally:
        for client in clients:
            client.close()
        channel.terminate()
        channel.wait(10)


def feeds_agree(nodes: list[Node]) -> Callable[[], Any]:
    """Every node's ledger file holds every node's feed as far as its author's does (read
    from the files: the gateways' own figures lag by up to a round)."""
    def check() -> Any:
        held = [{head.feed: head.seq for head in chain.heads(chain.db_path(node.config))}
                for node in nodes]
        return (len(held[0]) == len(nodes) and all(h == held[0] for h in held)
                ) or NotYet({"heads": held})

    return check


def idle_figures(node: Node, since: dict[str, Any] | None = None) -> dict[str, Any]:
    """What explains a node's airtime: its own feed's head and the bytes it sent by kind
    (and, given `since`, the events written and the bytes sent after it)."""
    reply = node.request(protocol.PeerStats())
    assert isinstance(reply, protocol.PeerStatsReply)
    found = chain.head(chain.db_path(node.config))
    figures: dict[str, Any] = {
        "own_seq": found[1] if found else 0,
        "sent": {kind: c["tx_bytes"] for kind, c in reply.stats["traffic"]["by_kind"].items()}}
    if since is None:
        return figures
    return {"events": [e.kind for e in chain.read_events(chain.db_path(node.config),
                                                         after_seq=since["own_seq"])],
            "sent": {kind: sent - since["sent"].get(kind, 0)
                     for kind, sent in figures["sent"].items()}}


def state_reaches_every_mate(clients: list[akita.Client], within_s: float) -> None:
    me = str(clients[0].peers()["self"])
    clients[0].state_set("radio", 1)

    def everywhere() -> Any:
        missing = [c for c in clients[1:] if "radio" not in c.state(me)["data"]]
        return not missing or NotYet({"missing_at": len(missing)})

    wait_for(everywhere, within_s, "the state change at both mates")


def a_burst_of_state_sets_is_pushed_once_or_twice(origin: Node, clients: list[akita.Client],
                                                  within_s: float) -> None:
    """Six `state set`s in a row reach the mates as at most two pushes to each (one at once
    if the airtime bucket allows, one carrying the latest value), not six."""
    def pushes() -> int:
        reply = origin.request(protocol.PeerStats())
        assert isinstance(reply, protocol.PeerStatsReply)
        return int(reply.stats["state"]["pushes"])

    before = pushes()
    me = str(clients[0].peers()["self"])
    for value in range(6):
        clients[0].state_set("burst", value)

    def latest_everywhere() -> Any:
        seen = [c.state(me)["data"].get("burst") for c in clients[1:]]
        return all(v == 5 for v in seen) or NotYet({"seen": seen})

    wait_for(latest_everywhere, within_s, "the last of a burst of state sets at both mates")
    sent = pushes() - before
    assert sent <= 2 * 2, f"{sent} pushes to 2 mates for a burst of 6 state sets"


def failed_node_is_dropped(nodes: list[Node], clients: list[akita.Client],
                           peer_timeout_s: float) -> None:
    victim = str(clients[2].peers()["self"])
    nodes[2].kill_everything()
    killed = time.monotonic()

    def dropped() -> Any:
        holding = [i for i, c in enumerate(clients[:2])
                   if victim in {p["id"] for p in c.peers()["peers"]}]
        return not holding or NotYet({"still_listed_by": holding})

    # peer_timeout after the last sign of life (at most a probe interval before the kill).
    wait_for(dropped, peer_timeout_s + 10, "both survivors dropping the killed node")
    assert time.monotonic() - killed <= peer_timeout_s + 10
