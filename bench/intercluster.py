"""Inter-cluster message benchmark: 6 local nodes on loopback Reticulum, two clusters of 3.

A node of cluster A sends to cluster B, where one member subscribes (read by this process
through `akita.subscription`, on a thread of its own). Reported:
- end-to-end latency, send → acknowledgement (the target coordinator confirmed the
  subscriber got it), and send → the subscriber's bus delivering it, for small payloads
  and for payloads larger than a link packet (they travel as Resources);
- throughput: acknowledged messages per second, one at a time and with --window in flight;
- failover: kill -9 B's coordinator, then send with a long deadline: seconds from the kill
  until the message is delivered through the next coordinator (bounded below by
  peer_timeout, which is when the others drop the dead one).

Run by hand: python bench/intercluster.py [--messages 200] [--window 16] [--big-bytes 30000]
A shared 2-core machine is noisy: run it twice and read the spread.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from akita import config as config_mod
from akita import transport
from akita.subscription import Subscription
from akita.subscription import send as send_message
from akita.wire import protocol
from bench.node_fixture import percentile
from supervisor import demo

NODES = 6
CLUSTER_SIZE = 3


def run_dir(node: demo.DemoNode) -> Path:
    return config_mod.load(node.config_path).node.run_dir


def wait(condition: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise SystemExit(f"gave up after {timeout_s:g} s waiting for {what}")


def formed(nodes: list[demo.DemoNode]) -> Any:
    views = [demo.query(node) for node in nodes]
    if any(view is None for view in views):
        return None
    shapes = {demo._shape(view) for view in views if view}
    if len(shapes) != 1:
        return None
    (shape,) = shapes
    placed = {m for _c, members, _k in shape for m in members}
    if len(shape) != math.ceil(NODES / CLUSTER_SIZE) or len(placed) != NODES:
        return None
    return views[0], [view["self"] for view in views if view]


class Follower(threading.Thread):
    """Subscribes (its ZeroMQ sockets live and die on this thread) and records when each
    message id arrived."""

    def __init__(self, run_dir: Path, prefix: str) -> None:
        super().__init__(daemon=True)
        self.run_dir = run_dir
        self.prefix = prefix
        self.arrived: queue.SimpleQueue[tuple[str, float]] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        with Subscription(self.run_dir, self.prefix) as sub:
            self.ready.set()
            while not self.stop.is_set():
                got = sub.get(0.2)
                if got is not None:
                    self.arrived.put((got["id"], time.monotonic()))


def sequential(sender: Path, target: str, follower: Follower, count: int, payload: Any
               ) -> dict[str, Any]:
    acked, delivered = [], []
    started = time.monotonic()
    for _ in range(count):
        t0 = time.monotonic()
        done = send_message(sender, target, "bench.seq", payload, deadline_s=30)
        acked.append(time.monotonic() - t0)
        message_id, at = follower.arrived.get(timeout=30)
        assert message_id == done["id"], (message_id, done)
        delivered.append(at - t0)
    elapsed = time.monotonic() - started
    return {"ack": acked, "bus": delivered, "rate": count / elapsed}


def pipelined(sender: Path, target: str, follower: Follower, count: int, window: int
              ) -> float:
    """Messages per second with up to `window` sends in flight on one socket."""
    started = time.monotonic()
    with transport.Requester(sender, "gateway") as requester:
        in_flight: list[int] = []
        sent = 0
        while sent < count or in_flight:
            while sent < count and len(in_flight) < window:
                in_flight.append(requester.send(protocol.MessageSend(
                    cluster=target, topic="bench.pipe", payload=sent, deadline_s=30)))
                sent += 1
            reply = requester.receive(in_flight.pop(0), 40)
            assert isinstance(reply, protocol.MessageDelivered), reply
    elapsed = time.monotonic() - started
    for _ in range(count):
        follower.arrived.get(timeout=30)
    return count / elapsed


def failover(nodes: list[demo.DemoNode], ids: list[str], coordinator: str, sender: Path,
             target: str) -> tuple[float, int]:
    victim = nodes[ids.index(coordinator)]
    status = transport.Requester(run_dir(victim), transport.CONTROL)
    with status:
        reply = status.request(protocol.NodeStatus(), 5)
    assert isinstance(reply, protocol.NodeStatusReply)
    gateway = next(w["pid"] for w in reply.workers if w["name"] == "gateway")
    killed = time.monotonic()
    os.kill(gateway, signal.SIGKILL)   # first, so it cannot say goodbye
    assert victim.proc is not None
    victim.proc.kill()
    done = send_message(sender, target, "bench.failover", 1, deadline_s=60)
    return time.monotonic() - killed, int(done["attempts"])


def show(label: str, values: list[float]) -> None:
    print(f"  {label:34s} median {1000 * statistics.median(values):7.1f} ms   "
          f"p95 {1000 * percentile(values, 0.95):7.1f} ms   "
          f"max {1000 * max(values):7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--big-bytes", type=int, default=30000)
    parser.add_argument("--announce-interval", type=float, default=1.0)
    parser.add_argument("--peer-timeout", type=float, default=4.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="akb-", dir="/tmp"))
    nodes = [demo.DemoNode(i, root / f"n{i}", root / f"n{i}" / "akita.ini")
             for i in range(NODES)]
    settings = argparse.Namespace(workers="ledger, gateway", cluster_size=CLUSTER_SIZE,
                                  announce_interval=args.announce_interval,
                                  peer_timeout=args.peer_timeout)
    port = demo.free_port()
    try:
        for node in nodes:
            demo.write_config(node, port, settings)
        demo.start(nodes[0])
        demo._wait_listening(port, nodes[0])
        for node in nodes[1:]:
            demo.start(node)
        view, ids = wait(lambda: formed(nodes), 120, "two clusters of three")
        (b,) = [c for c in view["clusters"] if ids[0] not in c["members"]]
        (a,) = [c for c in view["clusters"] if ids[0] in c["members"]]
        member = next(m for m in b["members"] if m != b["coordinator"])
        sender = run_dir(nodes[ids.index(next(m for m in a["members"] if m != ids[0]))])
        print(f"6 nodes, 2 clusters of 3; announce_interval {args.announce_interval:g} s, "
              f"peer_timeout {args.peer_timeout:g} s; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        follower = Follower(run_dir(nodes[ids.index(member)]), "bench.")
        follower.start()
        try:
            wait(follower.ready.is_set, 10, "the subscription")
            wait(lambda: "bench." in (demo_state(nodes[ids.index(b["coordinator"])], member)),
                 10, "the subscription to reach the coordinator")
            sequential(sender, b["id"], follower, 5, "warm-up")   # links opened
            small = sequential(sender, b["id"], follower, args.messages, {"n": 1})
            big = sequential(sender, b["id"], follower, max(10, args.messages // 10),
                             "x" * args.big_bytes)
            rate = pipelined(sender, b["id"], follower, args.messages, args.window)
            print(f"\n{args.messages} small messages, one at a time")
            show("send → acknowledged", small["ack"])
            show("send → subscriber's bus", small["bus"])
            print(f"  throughput                         {small['rate']:.0f} msg/s")
            print(f"\n{len(big['ack'])} messages of {args.big_bytes} bytes (as Resources)")
            show("send → acknowledged", big["ack"])
            show("send → subscriber's bus", big["bus"])
            print(f"\n{args.messages} small messages, {args.window} in flight")
            print(f"  throughput                         {rate:.0f} msg/s")
            took, attempts = failover(nodes, ids, b["coordinator"], sender, b["id"])
            print(f"\nB's coordinator killed (-9): delivered through the next one after "
                  f"{took:.2f} s ({attempts} attempts; peer_timeout {args.peer_timeout:g} s)")
        finally:
            follower.stop.set()
            follower.join(5)
    finally:
        demo.stop_all(nodes)
        shutil.rmtree(root, ignore_errors=True)
    return 0


def demo_state(node: demo.DemoNode, of: str) -> list[str]:
    with transport.Requester(run_dir(node), transport.CONTROL) as req:
        reply = req.request(protocol.StateGet(node=of), 5)
    assert isinstance(reply, protocol.StateReply)
    return list(reply.data.get("subscriptions") or [])


if __name__ == "__main__":
    sys.exit(main())
