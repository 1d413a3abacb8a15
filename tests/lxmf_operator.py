"""A real LXMF client for tests, in its own process (RNS and LXMF stay out of pytest):

    python tests/lxmf_operator.py --dir D --connect 127.0.0.1:PORT --to LXMF_ADDRESS
        --commands '["help", "status", {"field": "peers"}]' [--wait 10] [--handshake]

It loads the identity in D/identity (made by the test with akita.identity), runs an
LXMF router on its own Reticulum instance, announces its delivery destination, finds the
node's, and sends each command as an opportunistic message ({"field": TEXT} sends TEXT in
Sideband's FIELD_COMMANDS instead of the content). For each it prints one JSON line:
{"command", "hash" (the message hash, hex), "reply" (text, or null if none came within
--wait seconds), "rtt_s"}. With --handshake it first repeats `help` until a reply arrives
(the node may not have heard its announce yet), giving up after --wait seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from akita.identity import IDENTITY_FILE
from tests import rns_boot

FIELD_COMMANDS = 0x09


def main() -> int:
    parser = argparse.ArgumentParser()
    rns_boot.add_arguments(parser)
    parser.add_argument("--to", required=True)
    parser.add_argument("--commands", required=True)
    parser.add_argument("--wait", type=float, default=10.0)
    parser.add_argument("--handshake", action="store_true")
    args = parser.parse_args()
    import LXMF

    RNS = rns_boot.start(args)
    if not rns_boot.online(RNS):
        rns_boot.say_json(error="interface did not come up")
        return 1
    identity = RNS.Identity.from_file(str(args.dir / IDENTITY_FILE))
    router = LXMF.LXMRouter(identity=identity, storagepath=str(args.dir / "lxmf"),
                            autopeer=False)
    source = router.register_delivery_identity(identity, display_name="test operator")
    replies: queue.Queue[Any] = queue.Queue()
    router.register_delivery_callback(replies.put)
    router.announce(source.hash)

    target_hash = bytes.fromhex(args.to)
    RNS.Transport.request_path(target_hash)
    deadline = time.monotonic() + 15
    while not RNS.Transport.has_path(target_hash):
        if time.monotonic() > deadline:
            rns_boot.say_json(error="no path to the node's LXMF address")
            return 1
        time.sleep(0.05)
    target = RNS.Destination(RNS.Identity.recall(target_hash), RNS.Destination.OUT,
                             RNS.Destination.SINGLE, "lxmf", "delivery")

    def send(command: Any, wait_s: float) -> dict[str, Any]:
        content, fields = command, None
        if isinstance(command, dict):
            content, fields = "", {FIELD_COMMANDS: [command["field"]]}
        message = LXMF.LXMessage(target, source, content, fields=fields,
                                 desired_method=LXMF.LXMessage.OPPORTUNISTIC)
        while not replies.empty():  # a late answer to an earlier command
            replies.get_nowait()
        started = time.monotonic()
        router.handle_outbound(message)
        try:
            reply = replies.get(timeout=wait_s)
            text, rtt = reply.content_as_string(), time.monotonic() - started
        except queue.Empty:
            text, rtt = None, None
        return {"command": command, "hash": message.hash.hex() if message.hash else None,
                "reply": text, "rtt_s": rtt}

    if args.handshake:
        deadline = time.monotonic() + args.wait
        while True:
            if send("help", 2.0)["reply"] is not None:
                break
            if time.monotonic() > deadline:
                rns_boot.say_json(error="no answer to help")
                return 1
            router.announce(source.hash)
    for command in json.loads(args.commands):
        rns_boot.say_json(**send(command, args.wait))
    rns_boot.say_json(done=True)
    sys.stdout.flush()
    os._exit(0)  # LXMF's and Reticulum's threads and exit hooks are not ours to wait for


if __name__ == "__main__":
    sys.exit(main())
