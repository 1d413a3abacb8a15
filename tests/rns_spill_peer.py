"""A hand-made node of another cluster for spill-over tests: it announces itself without a
seat (the nodes place it in a cluster of its own), then asks a cluster's member and its
coordinator to run tasks as spill-over.

Never imported by the test process (RNS stays out of pytest); run as
``python tests/rns_spill_peer.py --dir D --connect 127.0.0.1:PORT --member ID --head ID``.
It prints one line per step (``KEY json``), then ``DONE``, then idles until killed:

- ``MEMBER [status, answer]``: a spill-over /run to the member that does not coordinate,
  once the member knows us;
- ``HEAD [status, answer]``: a spill-over /run to the coordinator (sample.add 1 + 2), once
  it knows us;
- ``PLAIN [status, answer]``: then a /run to the coordinator without the spill mark;
- ``RESULT {...}``: an outcome the coordinator sent home to us (served on /result).

status 0: the answer is the decoded body; 1: the node refused, the answer is its reason;
null: no answer.
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

from tests import golden, rns_boot
from tests.rns_delegate_peer import SPACING_S, Mate, say, spec

KNOWN_WAIT_S = 25.0


class FarNode(Mate):
    """`Mate`, heard by two nodes and linked to each; it announces itself with no seat."""

    def __init__(self, rns: Any, channel: str, task_channel: str, targets: list[str]) -> None:
        super().__init__(rns, channel, task_channel, targets[0])
        self.targets = targets
        self.identities: dict[str, Any] = {}
        self.links: dict[str, Any] = {}

    def received_announce(self, destination_hash: bytes, announced_identity: Any,
                          app_data: bytes | None) -> None:
        node = announced_identity.hash.hex()
        if node in self.targets and node not in self.identities:
            self.identities[node] = announced_identity
            self.heard.put(node)

    def announce_plain(self) -> None:
        seq = 0
        while True:
            seq += 1
            self.destination.announce(app_data=golden.announce_app_data(
                self.node_id, "handmade-far", 1, seq, version=seq, interval_s=SPACING_S))
            time.sleep(SPACING_S)

    def ask_node(self, node: str, path: str, body: bytes) -> list[Any]:
        if node not in self.links:
            self.connect(self.identities[node])
            self.links[node] = self.link
        self.link = self.links[node]
        return self.ask(path, body)


def run(far: FarNode, member: str, head: str, task_channel: str) -> None:
    while len(far.identities) < 2:
        far.heard.get(timeout=20)
    threading.Thread(target=far.announce_plain, daemon=True).start()
    run_path = f"{task_channel}/run"
    deadline = time.monotonic() + KNOWN_WAIT_S
    answer: list[Any] = [None, "not tried"]
    while time.monotonic() < deadline:
        answer = far.ask_node(member, run_path, golden.run_request(
            0, 30.0, [spec("bb00000000000001", "sample.add", [1, 2])], spill=True))
        if not (answer[0] == 1 and "nor a known peer" in str(answer[1])):
            break
        time.sleep(0.5)
    say("MEMBER", answer)
    deadline = time.monotonic() + KNOWN_WAIT_S
    while time.monotonic() < deadline:
        answer = far.ask_node(head, run_path, golden.run_request(
            0, 30.0, [spec("bb00000000000003", "sample.add", [1, 2])], spill=True))
        # Until the coordinator knows us, or has read its own load, it refuses.
        if not (answer[0] == 1 and ("nor a known peer" in str(answer[1]) or
                                    "no room" in str(answer[1]))):
            break
        time.sleep(0.5)
    say("HEAD", answer)
    say("PLAIN", far.ask_node(head, run_path, golden.run_request(
        0, 30.0, [spec("bb00000000000002", "sample.add", [1, 2])])))


def main() -> int:
    parser = argparse.ArgumentParser()
    rns_boot.add_arguments(parser)
    parser.add_argument("--member", required=True, metavar="NODE_ID")
    parser.add_argument("--head", required=True, metavar="NODE_ID")
    parser.add_argument("--channel", default="akita.state")
    parser.add_argument("--task-channel", default="akita.tasks")
    args = parser.parse_args()
    RNS = rns_boot.start(args)
    far = FarNode(RNS, args.channel, args.task_channel, [args.member, args.head])
    far.aspect_filter = args.channel  # type: ignore[attr-defined]
    RNS.Transport.register_announce_handler(far)
    if not rns_boot.online(RNS):
        rns_boot.say("FAILED interface did not come up")
        return 1
    rns_boot.say(f"READY {far.node_id}")
    try:
        run(far, args.member, args.head, args.task_channel)
    except (queue.Empty, AssertionError, KeyError) as exc:
        rns_boot.say(f"FAILED {type(exc).__name__}: {exc}")
        return 1
    rns_boot.say("DONE")
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
