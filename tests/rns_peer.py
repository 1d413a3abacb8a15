"""A hand-made Reticulum peer for tests: announces what a test tells it to, in its own process.

Never imported by the test process (RNS stays out of pytest); run as
``python tests/rns_peer.py --dir D --connect 127.0.0.1:PORT --plan garbage``.
It prints ``READY <node_id>`` once its interface is up, then one ``SENT <label>`` line per
announce (spaced so receivers take each one), then idles until killed.

Plans:
- garbage: random bytes, a msgpack list, a map with wrong types, app_data above the 200-byte
  limit, app_data carrying another node's identity tag; then one valid announce (a control:
  it proves the others reached the node and were ignored, not lost).
- replay: a valid announce at seq 10 named "fresh", then one at seq 5 named "stale" (an
  old announce replayed): the node must keep "fresh".
- valid: one valid announce (for admission tests).

With --request PATH --to NODE_ID, the peer then waits for that node's announce, opens a Link,
identifies and sends a request for PATH (e.g. akita.state/pull); it prints
``RESPONSE <hex of the response>`` or ``NO-RESPONSE``.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack

from tests import golden, rns_boot

SPACING_S = 1.2  # receivers take one announce of a destination per second


def valid_app_data(node_id: str, name: str, seq: int, generation: int = 1) -> bytes:
    return golden.announce_app_data(node_id, name, generation, seq, interval_s=60.0)


def oversized_app_data(node_id: str) -> bytes:
    """A valid announce padded one byte past the 200-byte limit (through the digest): big
    enough to be refused by the node, far below what Reticulum itself refuses (~318)."""
    base = len(golden.announce_app_data(node_id, "oversized", 1, 1))
    # The digest is bin 8 up to 255 bytes; growing it by k grows the app_data by k.
    extra = golden.MAX_APP_DATA_BYTES + 1 - base
    data = golden.announce_app_data(node_id, "oversized", 1, 1, digest=bytes(8 + extra))
    assert len(data) == golden.MAX_APP_DATA_BYTES + 1, len(data)
    return data


def plan(kind: str, node_id: str) -> list[tuple[str, bytes]]:
    if kind == "garbage":
        other = bytes(16).hex()
        body = msgpack.unpackb(valid_app_data(node_id, "garbage", 1))
        body["g"] = "not a number"
        return [
            ("random", os.urandom(40)),
            ("list", msgpack.packb([1, 2, 3])),
            ("wrong-types", golden.mp(body)),
            ("oversized", oversized_app_data(node_id)),
            ("impersonating", valid_app_data(other, "look-alike", 1)),
            ("valid", valid_app_data(node_id, "handmade", 2)),
        ]
    if kind == "replay":
        return [("fresh", valid_app_data(node_id, "fresh", 10)),
                ("stale", valid_app_data(node_id, "stale", 5))]
    if kind == "valid":
        return [("valid", valid_app_data(node_id, "handmade", 1))]
    raise SystemExit(f"unknown plan {kind!r}")


def main() -> int:
    parser = argparse.ArgumentParser()
    rns_boot.add_arguments(parser)
    parser.add_argument("--channel", default="akita.state")
    parser.add_argument("--plan", default="garbage")
    parser.add_argument("--request", metavar="PATH")
    parser.add_argument("--to", metavar="NODE_ID", help="the node to send --request to")
    args = parser.parse_args()
    RNS = rns_boot.start(args)
    identity = RNS.Identity()
    app, *aspects = args.channel.split(".")
    destination = RNS.Destination(identity, RNS.Destination.IN, RNS.Destination.SINGLE, app,
                                  *aspects)
    if not rns_boot.online(RNS):
        rns_boot.say("FAILED interface did not come up")
        return 1
    node_id = identity.hash.hex()
    rns_boot.say(f"READY {node_id}")
    for label, app_data in plan(args.plan, node_id):
        time.sleep(SPACING_S)
        try:
            destination.announce(app_data=app_data)
        except (ValueError, OSError) as exc:  # oversized app_data may be refused locally
            rns_boot.say(f"REFUSED {label} {exc}")
            continue
        rns_boot.say(f"SENT {label} {len(app_data)}")
    if args.request:
        request_once(RNS, identity, args.channel, args.request, args.to)
    rns_boot.say("DONE")
    while True:
        time.sleep(1)


def request_once(RNS: Any, identity: Any, channel: str, path: str, node_id: str) -> None:
    """Wait for `node_id`'s announce, then send it a request over an identified Link."""
    node_identity = rns_boot.heard_identity(RNS, channel, node_id, 15)
    if node_identity is None:
        return
    app, *aspects = channel.split(".")
    target = RNS.Destination(node_identity, RNS.Destination.OUT, RNS.Destination.SINGLE, app,
                             *aspects)
    answers: queue.Queue[str] = queue.Queue()

    def established(link: Any) -> None:
        link.identify(identity)
        link.request(path, b"\x90",
                     response_callback=lambda r: answers.put(f"RESPONSE {_hex(r.response)}"),
                     failed_callback=lambda r: answers.put("NO-RESPONSE"), timeout=4)

    RNS.Link(target, established_callback=established)
    try:
        rns_boot.say(str(answers.get(timeout=10)))
    except queue.Empty:
        rns_boot.say("NO-RESPONSE")


def _hex(response: Any) -> str:
    return msgpack.packb(response, use_bin_type=True).hex()


if __name__ == "__main__":
    sys.exit(main())
