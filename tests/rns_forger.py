"""A hand-made cluster mate that serves a forged feed, for the replication tests.

Never imported by the test process (RNS stays out of pytest); run as
``python tests/rns_forger.py --dir D --connect 127.0.0.1:PORT --forge signature``.

It has a valid Reticulum identity and behaves like a node as far as discovery goes: it
announces valid app_data every second and answers probes (its destination proves every
packet), so the nodes place it in their cluster and ask it for its ledger heads. It then
serves its own feed, forged:

- signature: five well-chained events whose checkpoint is signed by another key;
- chain: five events and a checkpoint its own key signed, but one event altered after
  signing, so the events no longer hash to the signed head;
- fork: an honest feed of five events first; once a node has pulled it, a second history
  of eight events, as well chained and signed, whose third event differs (its author
  signed two different entries at seq 3: a fork, arriving over the network).

With ``--flood N --flood-at NODE_ID`` it also floods: once the file GO appears in --dir
(the test creates it when the node has placed the forger in its cluster), it opens one Link
to that node, identifies, sends N range requests for the node's feed at once and prints
``FLOOD served=S refused=R failed=F reasons=[...]`` when all have been answered.

It prints ``READY <node_id>`` once its interface is up, ``SERVED <path> <peer>`` for each
request it answers, and idles until killed.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from akita.identity import NodeIdentity
from akita.ledger import bundles, chain
from tests import golden, rns_boot

EVENTS = 5
ANNOUNCE_EVERY_S = 1.0


def forged_feed(author: NodeIdentity, forge: str) -> tuple[bytes, bundles.Head]:
    """The bundle served for the feed of `author` (all of it) and the head announced."""
    events = [(1000.0 + i, "forged.event", chain.pack_data({"i": i})) for i in range(EVENTS)]
    _rows, _seq, head = chain.Chain(author.node_id, 0).extend(events, 0, chain.GENESIS_HASH)
    signer = NodeIdentity.generate() if forge == "signature" else author
    signature = signer.sign(chain.checkpoint_message(author.node_id, EVENTS, head))
    if forge == "chain":
        events[2] = (events[2][0], events[2][1], chain.pack_data({"i": "altered"}))
    elif forge != "signature":
        raise SystemExit(f"unknown forgery {forge!r}")
    bundle = golden.bundle(author.node_id, author.public_key, 0, chain.GENESIS_HASH, events,
                           [(EVENTS, 2000.0, head, signature)])
    return bundle, bundles.Head(EVENTS, head)


def signed_history(author: NodeIdentity, count: int, variant: str
                   ) -> tuple[bytes, bundles.Head]:
    """`count` well-chained events from the start of the feed, checkpoint signed by its
    author; `variant` changes the third event, so two variants fork at seq 3."""
    events = [(1000.0 + i, "forked.event", chain.pack_data({"i": i, "v": variant if i == 2
                                                             else ""}))
              for i in range(count)]
    _rows, _seq, head = chain.Chain(author.node_id, 0).extend(events, 0, chain.GENESIS_HASH)
    signature = author.sign(chain.checkpoint_message(author.node_id, count, head))
    return (golden.bundle(author.node_id, author.public_key, 0, chain.GENESIS_HASH, events,
                          [(count, 2000.0, head, signature)]), bundles.Head(count, head))


class Histories:
    """What the forger serves: one (bundle, head), or for `fork` the first to each peer
    until that peer has been served it, then the second."""

    def __init__(self, first: tuple[bytes, bundles.Head],
                 second: tuple[bytes, bundles.Head] | None = None) -> None:
        self.first, self.second = first, second
        self.served_first: set[str] = set()
        self.lock = threading.Lock()

    def current(self, peer: str) -> tuple[bytes, bundles.Head]:
        with self.lock:
            if self.second is not None and peer in self.served_first:
                return self.second
            return self.first

    def served(self, peer: str, bundle: bytes) -> None:
        with self.lock:
            if bundle == self.first[0]:
                self.served_first.add(peer)


def app_data(node_id: str, seq: int) -> bytes:
    return golden.announce_app_data(node_id, "forger", 1, seq, interval_s=ANNOUNCE_EVERY_S)


def main() -> int:
    parser = argparse.ArgumentParser()
    rns_boot.add_arguments(parser)
    parser.add_argument("--forge", required=True, choices=("signature", "chain", "fork"))
    parser.add_argument("--channel", default="akita.state")
    parser.add_argument("--ledger-channel", default="akita.ledger")
    parser.add_argument("--flood", type=int, default=0, metavar="N")
    parser.add_argument("--flood-at", default="", metavar="NODE_ID")
    args = parser.parse_args()
    RNS = rns_boot.start(args)
    rns_identity = RNS.Identity()
    author = NodeIdentity.from_private_bytes(rns_identity.get_private_key())
    if args.forge == "fork":
        histories = Histories(signed_history(author, EVENTS, "a"),
                              signed_history(author, EVENTS + 3, "b"))
    else:
        histories = Histories(forged_feed(author, args.forge))
    app, *aspects = args.channel.split(".")
    destination = RNS.Destination(rns_identity, RNS.Destination.IN, RNS.Destination.SINGLE,
                                  app, *aspects)
    destination.set_proof_strategy(RNS.Destination.PROVE_ALL)  # answers the nodes' probes
    serve(RNS, destination, args.ledger_channel, histories, author.node_id)
    if not rns_boot.online(RNS):
        rns_boot.say("FAILED interface did not come up")
        return 1
    rns_boot.say(f"READY {author.node_id}")
    if args.flood:
        flood = Flood(RNS, rns_identity, args, args.dir / "GO")
        RNS.Transport.register_announce_handler(flood)
        threading.Thread(target=flood.run, daemon=True).start()
    seq = 0
    while True:
        seq += 1
        destination.announce(app_data=app_data(author.node_id, seq))
        time.sleep(ANNOUNCE_EVERY_S)


class Flood:
    """N range requests at once over one identified Link to the node `--flood-at`."""

    def __init__(self, RNS: Any, identity: Any, args: argparse.Namespace, go: Path) -> None:
        self.RNS, self.identity, self.args, self.go = RNS, identity, args, go
        self.aspect_filter = args.channel
        self.node_identity: Any = None

    def received_announce(self, destination_hash: bytes, announced_identity: Any,
                          app_data: bytes | None) -> None:
        if announced_identity.hash.hex() == self.args.flood_at:
            self.node_identity = announced_identity

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while not (self.go.exists() and self.node_identity is not None):
            if time.monotonic() > deadline:
                rns_boot.say("FAILED no GO or no announce from the node within 60 s")
                return
            time.sleep(0.05)
        RNS, args = self.RNS, self.args
        app, *aspects = args.channel.split(".")
        out = RNS.Destination(self.node_identity, RNS.Destination.OUT,
                              RNS.Destination.SINGLE, app, *aspects)
        ready: queue.Queue[Any] = queue.Queue()
        RNS.Link(out, established_callback=ready.put)
        link = ready.get(timeout=10)
        link.identify(self.identity)
        answers: queue.Queue[Any] = queue.Queue()
        body = golden.range_request(args.flood_at, 0, True)
        for _ in range(args.flood):
            link.request(f"{args.ledger_channel}/range", body, timeout=20,
                         response_callback=lambda r: answers.put(list(r.response)),
                         failed_callback=lambda r: answers.put(None))
        got = [answers.get(timeout=30) for _ in range(args.flood)]
        served = sum(1 for a in got if a is not None and a[0] == 0)
        refused = [a[1] for a in got if a is not None and a[0] != 0]
        rns_boot.say(f"FLOOD served={served} refused={len(refused)} "
                     f"failed={got.count(None)} reasons={sorted(set(map(str, refused)))}")


def _peer(remote: Any) -> str:
    return remote.hash.hex() if remote is not None else "anonymous"


def serve(RNS: Any, destination: Any, channel: str, histories: Histories, feed: str) -> None:
    """Answer heads and range requests the way `workers.gateway.links` wraps responses."""
    lock = threading.Lock()

    def served(path: str, remote: Any) -> None:
        with lock:
            rns_boot.say(f"SERVED {path} {_peer(remote)}")

    def heads(path: str, data: Any, request_id: bytes, link_id: bytes, remote: Any,
              requested_at: float) -> list[Any]:
        served(path, remote)
        _bundle, head = histories.current(_peer(remote))
        return [0, golden.heads([(feed, head.seq, head.hash)])]

    def ranges(path: str, data: Any, request_id: bytes, link_id: bytes, remote: Any,
               requested_at: float) -> list[Any]:
        served(path, remote)
        bundle, head = histories.current(_peer(remote))
        histories.served(_peer(remote), bundle)
        return [0, golden.range_response(bundle, head.seq)]

    for verb, generator in (("heads", heads), ("range", ranges)):
        destination.register_request_handler(f"{channel}/{verb}", response_generator=generator,
                                             allow=RNS.Destination.ALLOW_ALL)


if __name__ == "__main__":
    sys.exit(main())
