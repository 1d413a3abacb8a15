"""Replication benchmark over the network: a feed of --events events reaching every member of
a cluster of real nodes on loopback Reticulum (TCP through a hub).

    python bench/replication_net.py [--events 10000] [--nodes 3] [--rounds 1]

Each round, node 0 (the hub, workers ledger + gateway) starts alone and its feed gets
`--events` task-sized events; then the other nodes start, form one cluster with it, and pull
the feed (from node 0, or a copy from each other). Figures:

1. Time until every member holds the whole feed: from the moment every gateway runs, from
   the moment the nodes agreed on one cluster (pulls start as soon as a node sees a mate,
   so this may be near zero or even negative), and from the first event of the feed stored
   by any member (the transfer itself).
2. Bytes on the wire per event delivered (the events × the members that pulled them),
   against the event's stored size (the row's columns: seq, ts, kind, data, prev, hash);
   target ≤ 1.5×. Wire bytes are Reticulum's link counters summed over every node's links,
   each packet counted once where it was sent: encrypted payloads and Resource parts, plus
   a 19-byte header per packet. They include everything else the links carried since the
   nodes started (state sync), so they bound replication from above. Also shown: the
   replication request and response bodies alone (the replicator's own accounting).

Every copy is verified (`ledger.verify`) before the round counts. A shared 2-core machine
is noisy: run it twice and read the spread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node_fixture import BenchNode
from replication import fill, stored_sizes

from akita import transport
from akita.errors import AkitaError
from akita.ledger import chain
from akita.wire import protocol
from supervisor.demo import free_port

HEADER_BYTES = 19        # a link packet's header: flags, hops, link id (16), context
POLL_S = 0.05
WORKERS = ["ledger", "gateway"]


def sections(name: str, port: int, hub: bool) -> dict[str, dict[str, Any]]:
    return {
        "node": {"name": name},
        "supervisor": {"workers": ", ".join(WORKERS)},
        "cluster": {"cluster_size": 3, "announce_interval": 1, "discovery_interval": 0.5,
                    "peer_timeout": 4},
        "reticulum": {"auto_interface": "no",
                      "tcp_listen" if hub else "tcp_connect": f"127.0.0.1:{port}"},
    }


def ask(node: BenchNode, msg: protocol.Message) -> Any:
    with transport.Requester(node.run_dir, transport.CONTROL) as req:
        return req.request(msg, 5.0)


def db(node: BenchNode) -> Path:
    return node.root / "data" / chain.DB_FILE


def held_seq(node: BenchNode, feed: str) -> int:
    return next((h.seq for h in chain.heads(db(node)) if h.feed == feed), 0)


def one_cluster(nodes: list[BenchNode]) -> bool:
    try:
        views = [ask(node, protocol.ClusterList()).clusters for node in nodes]
    except AkitaError:
        return False
    return all(len(view) == 1 and len(view[0]["members"]) == len(nodes) for view in views)


@dataclass
class Round:
    from_up_s: float
    from_formed_s: float
    transfer_s: float
    wire_bytes: int
    body_bytes: int
    packets: int
    bundles: int
    stored_bytes: float
    receivers: int


def run_round(args: argparse.Namespace) -> Round:
    port = free_port()
    nodes = [BenchNode(sections("hub", port, True))]
    try:
        nodes[0].start(WORKERS)
        feed = fill(nodes[0].root, args.events)
        head = held_seq(nodes[0], feed)
        stored, _pages = stored_sizes(db(nodes[0]), feed)
        nodes += [BenchNode(sections(f"n{i}", port, False)) for i in range(1, args.nodes)]
        for node in nodes[1:]:
            node.start(WORKERS)
        up = time.monotonic()
        formed = first = done = None
        while done is None:
            now = time.monotonic()
            if now - up > args.timeout_s:
                raise SystemExit(f"the feed did not reach every member within {args.timeout_s}"
                                 f" s: held {[held_seq(n, feed) for n in nodes[1:]]} of {head}")
            if formed is None and one_cluster(nodes):
                formed = now
            seqs = [held_seq(node, feed) for node in nodes[1:]]
            if first is None and any(seqs):
                first = now
            if all(seq >= head for seq in seqs):
                done = now
            time.sleep(POLL_S)
        for node in nodes[1:]:
            results = chain.verify(db(node), feed)
            if not all(result.ok for result in results):
                raise SystemExit(f"a copy does not verify: {results}")
        time.sleep(0.5)  # the last responses' bookkeeping
        return measure(nodes, (up, formed or done, first or done, done), stored)
    finally:
        for node in nodes:
            node.stop()


def measure(nodes: list[BenchNode], times: tuple[float, float, float, float],
            stored: float) -> Round:
    """`times`: gateways up, cluster formed, first event stored, every member done."""
    up, formed, first, done = times
    wire = body = packets = bundles = 0
    for node in nodes:
        stats = ask(node, protocol.PeerStats()).stats
        traffic, replication = stats["link_traffic"], stats["replication"]
        wire += traffic["tx_bytes"] + HEADER_BYTES * traffic["tx_packets"]
        packets += traffic["tx_packets"]
        body += replication["bytes_sent"]
        bundles += replication["bundles_stored"]
    return Round(done - up, done - formed, done - first, wire, body, packets, bundles, stored,
                 len(nodes) - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args()
    rounds = []
    for number in range(1, args.rounds + 1):
        got = run_round(args)
        rounds.append(got)
        delivered = args.events * got.receivers
        print(f"round {number}: every member held the feed {got.from_up_s:.2f} s after every "
              f"gateway ran ({got.from_formed_s:+.2f} s after the cluster formed, "
              f"{got.transfer_s:.2f} s after the first event arrived); "
              f"{got.wire_bytes / delivered:.1f} B/event on the wire "
              f"({got.wire_bytes:,} B in {got.packets:,} packets), "
              f"{got.body_bytes / delivered:.1f} B/event of replication bodies, "
              f"{got.bundles} bundles stored")
    summarize(args, rounds)
    return 0


def summarize(args: argparse.Namespace, rounds: list[Round]) -> None:
    delivered = args.events * rounds[0].receivers
    stored = rounds[0].stored_bytes
    wire = statistics.median(r.wire_bytes for r in rounds) / delivered
    body = statistics.median(r.body_bytes for r in rounds) / delivered
    print()
    print(f"{args.events:,} events to {rounds[0].receivers} members: "
          f"{statistics.median(r.from_up_s for r in rounds):.2f} s from every gateway up, "
          f"{statistics.median(r.from_formed_s for r in rounds):+.2f} s from the cluster formed, "
          f"{statistics.median(r.transfer_s for r in rounds):.2f} s from the first event stored "
          f"(median of {len(rounds)})")
    print(f"wire bytes per event delivered:   {wire:6.1f} B = {wire / stored:.2f} × stored "
          f"({stored:.1f} B)   target ≤ 1.50 ×")
    print(f"replication bodies per event:     {body:6.1f} B = {body / stored:.2f} × stored")


if __name__ == "__main__":
    sys.exit(main())
