"""Idle mesh traffic over loopback TCP: what 3 idle nodes of one cluster send, against what
their configured announce and probe intervals alone require.

    python bench/idle_mesh.py [--window-s 240] [--intervals 10/30,60/180]

For each ANNOUNCE/PEER_TIMEOUT pair, three nodes (a TCP hub and two that dial it; ledger,
executor and gateway each) form a cluster; once every node holds every ledger feed (start-up
catch-up is work, not upkeep), each node's own traffic accounting (`akitactl status --json`
"traffic") is read over --window-s seconds. Required, per node and minute, with
m = cluster_size − 1 mates and probe_interval = peer_timeout / 5:

    required = 60 / announce_interval · ANNOUNCE_BYTES
             + m · 60 / probe_interval · (PROBE_BYTES + PROOF_BYTES)

(sizes from akita.mesh.budget; a probe and its proof per mate and probe interval at most,
since mates heard from lately are not probed). The hub also forwards the other nodes'
announces: + (n − 1)(n − 2) · 60 / announce_interval · ANNOUNCE_BYTES. Targets: sent ≤ 1.5 ×
required, and 6× the intervals → at least 4× fewer bytes.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import Any

from node_fixture import BenchNode

import akita
from akita.errors import AkitaError
from akita.mesh import budget

NODES = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sections(index: int, port: int, announce_s: float, timeout_s: float) -> dict[str, Any]:
    net = {"tcp_listen": f"127.0.0.1:{port}"} if index == 0 else \
        {"tcp_connect": f"127.0.0.1:{port}"}
    return {"node": {"name": f"i{index}"},
            "supervisor": {"workers": "ledger, executor, gateway"},
            "cluster": {"cluster_size": NODES, "announce_interval": announce_s,
                        "peer_timeout": timeout_s},
            "tasks": {"pool_size": 1},
            "reticulum": {"auto_interface": "no", **net}}


def wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
            if last is True:
                return
        except AkitaError as exc:
            last = exc
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout_s:g} s waiting for {what}; last saw {last!r}")


def settled(clients: list[akita.Client]) -> Any:
    views = {frozenset(frozenset(c["members"]) for c in client.clusters()) for client in clients}
    feeds = [client.mesh()["feeds"] for client in clients]
    one_cluster = len(views) == 1 and len(next(iter(views))) == 1
    return (one_cluster and all(f == feeds[0] for f in feeds) and len(feeds[0] or {}) == NODES
            or {"views": len(views), "feeds": feeds})


def sent(client: akita.Client) -> tuple[int, dict[str, int]]:
    traffic = client.mesh()["traffic"]
    total = sum(i["tx_bytes"] for i in traffic["interfaces"])
    return total, {k: c["tx_bytes"] for k, c in traffic["by_kind"].items()}


def required_per_min(announce_s: float, timeout_s: float, hub: bool) -> float:
    mates = NODES - 1
    probe_s = timeout_s / 5
    need = 60 / announce_s * budget.ANNOUNCE_BYTES \
        + mates * 60 / probe_s * (budget.PROBE_BYTES + budget.PROOF_BYTES)
    if hub:
        need += (NODES - 1) * (NODES - 2) * 60 / announce_s * budget.ANNOUNCE_BYTES
    return need


class Cluster:
    def __init__(self, announce_s: float, timeout_s: float) -> None:
        self.announce_s, self.timeout_s = announce_s, timeout_s
        port = free_port()
        self.nodes = [BenchNode(sections(i, port, announce_s, timeout_s))
                      for i in range(NODES)]
        self.clients: list[akita.Client] = []

    def start(self) -> None:
        for node in self.nodes:      # the hub first: a client dialling too early waits ~5 s
            node.start(["ledger", "executor", "gateway"], timeout_s=60)
        self.clients = [akita.Client(node.config_path) for node in self.nodes]

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        for node in self.nodes:
            node.stop()


def measure(clusters: list[Cluster], window_s: float) -> dict[float, list[float]]:
    before = {id(c): [sent(client) for client in c.clients] for c in clusters}
    started = time.monotonic()
    time.sleep(window_s)  # the measurement window
    minutes = (time.monotonic() - started) / 60
    rates: dict[float, list[float]] = {}
    for c in clusters:
        per_node = []
        print(f"announce_interval {c.announce_s:g} s / peer_timeout {c.timeout_s:g} s "
              f"(probe_interval {c.timeout_s / 5:g} s), {minutes * 60:.0f} s window:")
        for index, (client, (was, kinds_was)) in enumerate(zip(c.clients, before[id(c)],
                                                              strict=True)):
            now, kinds = sent(client)
            rate = (now - was) / minutes
            need = required_per_min(c.announce_s, c.timeout_s, hub=index == 0)
            per_node.append(rate)
            by_kind = ", ".join(f"{k} {(v - kinds_was.get(k, 0)) / minutes:.0f}"
                                for k, v in kinds.items() if v - kinds_was.get(k, 0))
            print(f"  i{index}{' (hub)' if index == 0 else ''}: sent {rate:.0f} B/min, "
                  f"required {need:.0f} B/min, ratio {rate / need:.2f} (target ≤ 1.5); "
                  f"B/min by kind: {by_kind}")
        rates[c.announce_s] = per_node
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window-s", type=float, default=240.0)
    parser.add_argument("--intervals", default="10/30,60/180",
                        help="comma-separated ANNOUNCE/PEER_TIMEOUT pairs, in seconds")
    args = parser.parse_args()
    pairs = [tuple(float(x) for x in pair.split("/")) for pair in args.intervals.split(",")]
    clusters = [Cluster(a, t) for a, t in pairs]
    try:
        for cluster in clusters:
            cluster.start()
        for cluster in clusters:
            wait(lambda c=cluster: settled(c.clients), 300, "one cluster holding every feed")
        print(f"formula, bytes per node and minute: 60/announce_interval · "
              f"{budget.ANNOUNCE_BYTES} + {NODES - 1} mates · 60/probe_interval · "
              f"({budget.PROBE_BYTES} + {budget.PROOF_BYTES}); hub + "
              f"{(NODES - 1) * (NODES - 2)} forwarded announces per interval")
        rates = measure(clusters, args.window_s)
        if len(pairs) == 2:
            (fast, _), (slow, _) = pairs
            ratio = sum(rates[fast]) / max(1.0, sum(rates[slow]))
            print(f"{slow / fast:g}× the intervals: {ratio:.1f}× fewer bytes (target ≥ 4)")
    finally:
        for cluster in clusters:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
