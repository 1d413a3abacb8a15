"""A real Reticulum client that fetches a NomadNet page, as NomadNet or MeshChat would, in
its own process (RNS stays out of pytest):

    python tests/nomadnet_fetch.py --dir D --connect 127.0.0.1:PORT --to DEST_HASH
        [--identify] [--path /page/index.mu ...]

It finds the node's `nomadnetwork.node` destination, opens a Link, identifies with the
identity in D/identity when asked, and requests each path in turn. It prints one JSON line
per path: {"path", "page" (the text, or null if no answer came), "rtt_s"}, then
{"done": true}.
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

from akita.identity import IDENTITY_FILE
from tests import rns_boot


def main() -> int:
    parser = argparse.ArgumentParser()
    rns_boot.add_arguments(parser)
    parser.add_argument("--to", required=True)
    parser.add_argument("--identify", action="store_true")
    parser.add_argument("--path", action="append", default=[])
    args = parser.parse_args()
    RNS = rns_boot.start(args)
    target_hash = bytes.fromhex(args.to)
    deadline = time.monotonic() + 15
    RNS.Transport.request_path(target_hash)
    while not RNS.Transport.has_path(target_hash):
        if time.monotonic() > deadline:
            rns_boot.say_json(error="no path to the page's destination")
            return 1
        time.sleep(0.05)
    target = RNS.Destination(RNS.Identity.recall(target_hash), RNS.Destination.OUT,
                             RNS.Destination.SINGLE, "nomadnetwork", "node")
    ready: queue.Queue[Any] = queue.Queue()
    link = RNS.Link(target, established_callback=ready.put)
    try:
        ready.get(timeout=10)
    except queue.Empty:
        rns_boot.say_json(error="the link was not established")
        return 1
    if args.identify:
        link.identify(RNS.Identity.from_file(str(args.dir / IDENTITY_FILE)))
    for path in args.path or ["/page/index.mu"]:
        answers: queue.Queue[Any] = queue.Queue()
        started = time.monotonic()
        link.request(path, None,
                     response_callback=lambda r, answers=answers: answers.put(r.response),
                     failed_callback=lambda _r, answers=answers: answers.put(None), timeout=5)
        try:
            response = answers.get(timeout=8)
        except queue.Empty:
            response = None
        text = response.decode("utf-8") if isinstance(response, bytes) else None
        rns_boot.say_json(path=path, page=text, rtt_s=time.monotonic() - started if text else None)
    link.teardown()
    rns_boot.say_json(done=True)
    os._exit(0)  # Reticulum's threads are not ours to wait for


if __name__ == "__main__":
    sys.exit(main())
