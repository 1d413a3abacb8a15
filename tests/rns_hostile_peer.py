"""A hand-made hostile Reticulum peer for tests: performs one attack, in its own process.

Never imported by the test process (RNS stays out of pytest); run as
``python tests/rns_hostile_peer.py --dir D --connect 127.0.0.1:PORT ATTACK [options]``.
It prints ``READY`` once its interface is up, then what it did, then ``DONE``, and idles.

Attacks (every announce is valid and correctly signed, by identities of its own):
- flood --count N: N fresh identities announce once each.
- seats --cluster ID --count K --for-s T: K identities claim seat 0 of cluster ID, the
  highest term the wire allows, and to coordinate; re-announced for T seconds.
- name [--interval S]: one identity announces, twice, a name full of terminal escapes and
  an announce interval of S seconds (default 60), then goes silent.
- request --to NODE --path P --bytes B [--abort]: open a Link to NODE, identify, send a
  request of B bytes for P; with --abort, tear the link down once the first 1 MiB segment
  is through. Prints ``RESPONSE``, ``FAILED <seconds>`` or ``ABORTED``.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from akita.mesh.cluster import MAX_SEAT, MAX_TERM, PeerView, Seat
from akita.wire import mesh
from tests import rns_boot

SPACING_S = 1.2
EVIL_NAME = "\x1b[2J\x1b[31mEVIL\x07\r"


def app_data(node_id: str, seq: int, name: str = "hostile", seat: Seat | None = None,
             term: int = 0, coordinator: bool = False, interval_s: float = 60.0) -> bytes:
    report = PeerView(node_id, 1, seq, seat, term, coordinator)
    return mesh.encode_announce(mesh.Announce(
        name=name, generation=1, seq=seq, report=report, load=mesh.Load(), state_version=0,
        digest=bytes(8), interval_s=interval_s, id_tag=bytes.fromhex(node_id)))


def new_destination(RNS: Any, channel: str) -> tuple[Any, Any]:
    identity = RNS.Identity()
    app, *aspects = channel.split(".")
    return identity, RNS.Destination(identity, RNS.Destination.IN, RNS.Destination.SINGLE,
                                     app, *aspects)


def flood(RNS: Any, channel: str, count: int) -> None:
    for index in range(count):
        identity, destination = new_destination(RNS, channel)
        destination.announce(app_data=app_data(identity.hash.hex(), 1, f"flood{index}"))
        time.sleep(0.02)
    rns_boot.say(f"SENT {count}")


def seats(RNS: Any, channel: str, cluster: str, count: int, for_s: float) -> None:
    made = [new_destination(RNS, channel) for _ in range(count)]
    seq, until = 0, time.monotonic() + for_s
    while time.monotonic() < until:
        seq += 1
        for identity, destination in made:
            destination.announce(app_data=app_data(
                identity.hash.hex(), seq, seat=Seat(cluster, 0, MAX_SEAT), term=MAX_TERM,
                coordinator=True))
        time.sleep(SPACING_S)
    rns_boot.say(f"CLAIMED {seq}")


def name(RNS: Any, channel: str, interval_s: float) -> None:
    identity, destination = new_destination(RNS, channel)
    for seq in (1, 2):
        destination.announce(app_data=app_data(identity.hash.hex(), seq, EVIL_NAME,
                                               interval_s=interval_s))
        time.sleep(SPACING_S)
    rns_boot.say(f"NAMED {identity.hash.hex()}")



# A request Reticulum neither accepts nor refuses (its advertisement or the refusal lost)
# fails only at the timeout; the attacker then opens a new link and asks again.
REQUEST_TIMEOUT_S = 12
REQUEST_ATTEMPTS = 4

def request(RNS: Any, channel: str, node_id: str, path: str, size: int,
            abort_at: bool) -> None:
    node_identity = rns_boot.heard_identity(RNS, channel, node_id, 20)
    if node_identity is None:
        return
    identity, _ = new_destination(RNS, channel + ".unused")
    app, *aspects = channel.split(".")
    target = RNS.Destination(node_identity, RNS.Destination.OUT, RNS.Destination.SINGLE, app,
                             *aspects)
    answers: queue.Queue[str] = queue.Queue()
    started = time.monotonic()

    def abort_when_due(link: Any, receipt: Any) -> None:
        # A request over 1 MiB goes in segments, each written to the receiver's storage
        # when complete: tear down once the first is, so a partial file is left behind.
        while abort_at and receipt.resource is not None:
            if receipt.resource.status >= RNS.Resource.COMPLETE:
                link.teardown()
                answers.put("ABORTED after the first segment")
                return
            time.sleep(0.001)

    def failed(receipt: Any) -> None:
        resource = getattr(receipt, "resource", None)
        if abort_at or (resource is not None and resource.status == RNS.Resource.REJECTED):
            answers.put(f"FAILED {time.monotonic() - started:.2f}")
        else:  # not refused, only unanswered (a lost packet): a real peer would try again
            answers.put("RETRY")

    def established(link: Any) -> None:
        link.identify(identity)
        receipt = link.request(path, os.urandom(size),
                               response_callback=lambda r: answers.put("RESPONSE"),
                               failed_callback=failed, timeout=REQUEST_TIMEOUT_S)
        threading.Thread(target=abort_when_due, args=(link, receipt), daemon=True).start()

    for attempt in range(1, REQUEST_ATTEMPTS + 1):
        RNS.Link(target, established_callback=established)
        try:
            answer = answers.get(timeout=REQUEST_TIMEOUT_S + 10)
        except queue.Empty:
            answer = "RETRY"
        if answer != "RETRY":
            rns_boot.say(str(answer))
            return
        rns_boot.say(f"UNANSWERED attempt {attempt}")
    rns_boot.say("NO-ANSWER")


def main() -> int:
    parser = argparse.ArgumentParser()
    rns_boot.add_arguments(parser)
    parser.add_argument("--channel", default="akita.state")
    parser.add_argument("attack", choices=("flood", "seats", "name", "request"))
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--cluster", default="")
    parser.add_argument("--for-s", type=float, default=8.0)
    parser.add_argument("--to", default="")
    parser.add_argument("--path", default="akita.state/pull")
    parser.add_argument("--bytes", type=int, default=1 << 20)
    parser.add_argument("--abort", action="store_true")
    parser.add_argument("--interval", type=float, default=60.0)
    args = parser.parse_args()
    RNS = rns_boot.start(args)
    if not rns_boot.online(RNS):
        rns_boot.say("FAILED interface did not come up")
        return 1
    rns_boot.say("READY")
    if args.attack == "flood":
        flood(RNS, args.channel, args.count)
    elif args.attack == "seats":
        seats(RNS, args.channel, args.cluster, args.count, args.for_s)
    elif args.attack == "name":
        name(RNS, args.channel, args.interval)
    else:
        request(RNS, args.channel, args.to, args.path, args.bytes, args.abort)
    rns_boot.say("DONE")
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
