"""A hand-made cluster mate for delegation tests: it joins a node's cluster by announcing a
seat in it, then tries to make the node run what it does not declare.

Never imported by the test process (RNS stays out of pytest); run as
``python tests/rns_delegate_peer.py --dir D --connect 127.0.0.1:PORT --to NODE_ID``.
It prints one line per step (``KEY json``), then ``DONE``, then idles until killed:

- ``READY node_id``, ``HEARD {"cluster", "term"}`` (the node's announce);
- ``STRANGER [status, answer]``: a /run before it announced itself (not a member yet);
- ``MEMBER [status, answer]``: its first /run the node took as from a member, asking for an
  undeclared type only;
- ``OLDTERM [status, answer]``: a /run from an older term (when the node's term is above 0);
- ``RUN [status, answer]``: an undeclared type and a declared one (sample.add 1 + 2);
- ``RESULT {...}``: an outcome the node sent home to us (served on /result);
- ``INJECT [status, answer]``: a /result for a task the node never gave us.

status 0: the answer is the decoded body; 1: the node refused, the answer is its reason;
null: no answer.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack

from akita.mesh import delegation as plan
from akita.mesh.cluster import PeerView, Seat
from akita.wire import mesh
from tests import golden, rns_boot

SPACING_S = 1.2        # receivers take one announce of a destination per second
MEMBER_WAIT_S = 25.0


def say(key: str, value: Any) -> None:
    rns_boot.say(f"{key} {json.dumps(value, default=repr)}")


def spec(task_id: str, name: str, args: list[Any]) -> dict[str, Any]:
    return {"id": task_id, "name": name, "args": args, "priority": 5, "attempt": 1,
            "requires": [], "timeout": 10.0}


class Mate:
    """The hand-made node: its identity, destination, announces and one Link to the node."""

    def __init__(self, rns: Any, channel: str, task_channel: str, target: str) -> None:
        self.RNS = rns
        self.channel = channel
        self.target = target
        self.identity = rns.Identity()
        app, *aspects = channel.split(".")
        self.destination = rns.Destination(self.identity, rns.Destination.IN,
                                           rns.Destination.SINGLE, app, *aspects)
        self.destination.set_proof_strategy(rns.Destination.PROVE_ALL)  # answer probes
        self.destination.register_request_handler(f"{task_channel}/result", self._result,
                                                  allow=rns.Destination.ALLOW_ALL)
        self.destination.register_request_handler(f"{task_channel}/renew", self._renew,
                                                  allow=rns.Destination.ALLOW_ALL)
        self.node_id = self.identity.hash.hex()
        self.heard: queue.Queue[Any] = queue.Queue()
        self.report: PeerView | None = None
        self.link: Any = None

    # --- what the node sends us ---------------------------------------------------------------

    def _result(self, path: str, data: Any, request_id: bytes, link_id: bytes,
                remote_identity: Any, requested_at: float) -> list[Any]:
        body = msgpack.unpackb(data, raw=False)
        for entry in body["results"]:
            say("RESULT", entry)
        ids = [entry["id"] for entry in body["results"]]
        return [0, golden.outcome("accepted", ids, [])]

    def _renew(self, path: str, data: Any, request_id: bytes, link_id: bytes,
               remote_identity: Any, requested_at: float) -> list[Any]:
        return [0, golden.outcome("renewed", len(plan.decode_pairs(data)), [])]

    # --- announces ----------------------------------------------------------------------------

    def received_announce(self, destination_hash: bytes, announced_identity: Any,
                          app_data: bytes | None) -> None:
        identity = announced_identity
        if identity.hash.hex() != self.target:
            return
        try:
            info = mesh.decode_announce(self.target, app_data)
        except mesh.WireError:
            return
        if info.report.seat is not None:   # the node has placed itself
            self.report = info.report
            self.heard.put(identity)

    def announce_forever(self, seat: Seat) -> None:
        seq = 0
        while True:
            seq += 1
            term = self.report.term if self.report is not None else 0
            self.destination.announce(app_data=golden.announce_app_data(
                self.node_id, "handmade-mate", 1, seq, version=seq,
                seat=(seat.cluster, seat.number, seat.high), term=term, interval_s=SPACING_S))
            time.sleep(SPACING_S)

    # --- requests -------------------------------------------------------------------------------

    def connect(self, node_identity: Any) -> None:
        app, *aspects = self.channel.split(".")
        out = self.RNS.Destination(node_identity, self.RNS.Destination.OUT,
                                   self.RNS.Destination.SINGLE, app, *aspects)
        ready: queue.Queue[Any] = queue.Queue()
        self.RNS.Link(out, established_callback=ready.put)
        self.link = ready.get(timeout=10)
        self.link.identify(self.identity)

    def ask(self, path: str, body: bytes) -> list[Any]:
        """[0, decoded answer], [1, refusal text] or [None, why not]."""
        answers: queue.Queue[list[Any]] = queue.Queue()
        self.link.request(path, body,
                          response_callback=lambda r: answers.put(list(r.response)),
                          failed_callback=lambda r: answers.put([None, "no response"]),
                          timeout=8)
        try:
            status, answer = answers.get(timeout=10)
        except queue.Empty:
            return [None, "no callback"]
        if status == 0:
            return [0, msgpack.unpackb(answer, raw=False)]
        return [status, answer]


def run(mate: Mate, task_channel: str) -> None:
    node_identity = mate.heard.get(timeout=20)
    assert mate.report is not None and mate.report.seat is not None
    seat = mate.report.seat
    say("HEARD", {"cluster": seat.cluster, "term": mate.report.term})
    mate.connect(node_identity)
    run_path = f"{task_channel}/run"

    def run_body(*specs: dict[str, Any]) -> bytes:
        term = mate.report.term if mate.report is not None else 0
        return golden.run_request(term, 30.0, list(specs))

    say("STRANGER", mate.ask(run_path, run_body(spec("aa00000000000001", "sample.add", [1, 2]))))
    claim = Seat(seat.cluster, seat.high + 1, seat.high + 1)
    threading.Thread(target=mate.announce_forever, args=(claim,), daemon=True).start()
    deadline = time.monotonic() + MEMBER_WAIT_S
    answer = [None, "not tried"]
    while time.monotonic() < deadline:
        answer = mate.ask(run_path, run_body(spec("aa00000000000002", "evil.wipe_disk", ["/"])))
        if not (answer[0] == 1 and "not a member" in str(answer[1])):
            break
        time.sleep(0.5)
    say("MEMBER", answer)
    term = mate.report.term if mate.report is not None else 0
    if term > 0:
        say("OLDTERM", mate.ask(run_path, golden.run_request(term - 1, 30.0, [
            spec("aa00000000000003", "sample.add", [1, 2])])))
    say("RUN", mate.ask(run_path, run_body(spec("aa00000000000004", "evil.exfiltrate", []),
                                           spec("aa00000000000005", "sample.add", [1, 2]))))
    say("INJECT", mate.ask(f"{task_channel}/result", golden.results_request(
        [{"id": "aa00000000000006", "attempt": 1, "state": "succeeded", "result": 42}], None)))


def main() -> int:
    parser = argparse.ArgumentParser()
    rns_boot.add_arguments(parser)
    parser.add_argument("--to", required=True, metavar="NODE_ID")
    parser.add_argument("--channel", default="akita.state")
    parser.add_argument("--task-channel", default="akita.tasks")
    args = parser.parse_args()
    RNS = rns_boot.start(args)
    mate = Mate(RNS, args.channel, args.task_channel, args.to)
    mate.aspect_filter = args.channel  # type: ignore[attr-defined]
    RNS.Transport.register_announce_handler(mate)
    if not rns_boot.online(RNS):
        rns_boot.say("FAILED interface did not come up")
        return 1
    rns_boot.say(f"READY {mate.node_id}")
    # Our plain announce (no seat) would let the node place us; a stranger stays silent.
    try:
        run(mate, args.task_channel)
    except (queue.Empty, AssertionError) as exc:
        rns_boot.say(f"FAILED {type(exc).__name__}: {exc}")
        return 1
    rns_boot.say("DONE")
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
