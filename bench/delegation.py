"""Task delegation benchmark: real nodes (ledger, executor, gateway) on loopback Reticulum.

    python bench/delegation.py [--latency-tasks 200] [--tasks 2000] [--spin-ms 1] [--pool 1]

1. Round-trip latency of a trivial task (`akita.echo`) delegated to a peer: submitted at A
   requiring a capability only B declares (``gpu``), run on B, its result durable at A and
   read back through the client (submit → wait), one task at a time. Target: ≤ 50 ms
   median. Baseline in the same run: the same task without the requirement, run on A.
2. Throughput with delegation on: `--tasks` CPU tasks of `--spin-ms` ms each
   (tests.sample_tasks.spin), all submitted at one node, pipelined (`submit_many`, then
   `wait_many`), first on one node alone, then on a cluster of three (same config per node,
   `--pool` task processes each). Reports tasks/s, the ratio, and where the tasks ran.

Every node runs its own supervisor, ledger, executor and gateway, so three nodes on one
machine also pay three times the node overhead; on a 2-core machine that overhead competes
with the task processes for the same cores. A shared machine is noisy: run it twice and
read the spread.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import akita
from akita import transport
from akita.errors import AkitaError
from akita.wire import protocol
from bench.node_fixture import REPO, BenchNode, percentile
from supervisor.demo import free_port

WORKERS = ["ledger", "executor", "gateway"]
SPIN = "tests.sample_tasks.spin"


def sections(name: str, port: int, hub: bool, args: argparse.Namespace,
             **tasks: Any) -> dict[str, dict[str, Any]]:
    return {
        "node": {"name": name},
        "supervisor": {"workers": ", ".join(WORKERS), "heartbeat_interval": 0.5},
        "cluster": {"cluster_size": 3, "announce_interval": 1, "discovery_interval": 0.5,
                    "peer_timeout": 4},
        "reticulum": {"auto_interface": "no",
                      "tcp_listen" if hub else "tcp_connect": f"127.0.0.1:{port}"},
        "tasks": {"modules": "tests.sample_tasks", "module_path": str(REPO),
                  "pool_size": args.pool, "delegate_after": args.delegate_after, **tasks},
    }


def start(configs: list[dict[str, dict[str, Any]]]) -> list[BenchNode]:
    nodes = [BenchNode(config) for config in configs]
    for node in nodes:
        node.start(WORKERS)
    return nodes


def ask(node: BenchNode, msg: protocol.Message) -> Any:
    with transport.Requester(node.run_dir, transport.CONTROL) as req:
        return req.request(msg, 5.0)


def node_id(node: BenchNode) -> str:
    return str(ask(node, protocol.NodeStatus()).node["id"])


def wait_ready(nodes: list[BenchNode], timeout_s: float = 60.0) -> list[str]:
    """Until every node sees one cluster of all and each mate's task types and load."""
    ids = [node_id(node) for node in nodes]
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = [_ready(node, own, ids) for node, own in zip(nodes, ids)]
        except AkitaError as exc:
            last = exc
        if last is not None and not isinstance(last, AkitaError) and all(last):
            return ids
        time.sleep(0.2)
    raise SystemExit(f"the nodes did not form one cluster in {timeout_s:g} s; saw {last}")


def _ready(node: BenchNode, own: str, ids: list[str]) -> bool:
    clusters = ask(node, protocol.ClusterList()).clusters
    if [sorted(c["members"]) for c in clusters] != [sorted(ids)]:
        return False
    for mate in ids:
        if mate != own:
            data = ask(node, protocol.StateGet(node=mate)).data
            if not data.get("task_types") or "task_load" not in data:
                return False
    return True


# --- latency ----------------------------------------------------------------------------------


def one_at_a_time(client: akita.Client, count: int, requires: list[str]) -> list[float]:
    """Submit → result of `count` echo tasks, one after the other, in ms."""
    times = []
    for i in range(count):
        started = time.perf_counter()
        task_id = client.submit("akita.echo", [i], requires=requires)
        if client.wait(task_id, timeout=30) != i:
            raise SystemExit(f"task {task_id} returned a wrong result")
        times.append((time.perf_counter() - started) * 1000)
    return times


def latency(args: argparse.Namespace) -> None:
    port = free_port()
    nodes = start([sections("a", port, True, args),
                   sections("b", port, False, args, capabilities="gpu")])
    try:
        ids = wait_ready(nodes)
        with akita.Client(nodes[0].config_path, timeout_s=30) as client:
            one_at_a_time(client, 10, ["gpu"])   # warm: links, pools, ledger
            one_at_a_time(client, 10, [])
            delegated = one_at_a_time(client, args.latency_tasks, ["gpu"])
            local = one_at_a_time(client, args.latency_tasks, [])
            probe = client.submit("akita.echo", [0], requires=["gpu"])
            client.wait(probe, timeout=30)
            where = client.status(probe)["ran_on"]
        assert where == ids[1], f"the gpu task ran on {where}, not on B"
        print(f"latency, trivial task, {args.latency_tasks} one at a time (submit → result at A):")
        for label, times in (("delegated A → B", delegated), ("local on A (baseline)", local)):
            print(f"  {label:24} median {statistics.median(times):6.1f} ms   "
                  f"p99 {percentile(times, 0.99):6.1f} ms   min {min(times):5.1f} ms")
        print(f"  delegation adds {statistics.median(delegated) - statistics.median(local):.1f} "
              f"ms at the median (target: ≤ 50 ms round trip)")
    finally:
        for node in nodes:
            node.stop()


# --- throughput ---------------------------------------------------------------------------------


def run_batch(node: BenchNode, args: argparse.Namespace) -> tuple[float, collections.Counter[str]]:
    with akita.Client(node.config_path, timeout_s=60) as client:
        client.wait_many(client.submit_many([(SPIN, [args.spin_ms]) for _ in range(20)]),
                         timeout=60)   # warm
        started = time.perf_counter()
        ids = client.submit_many([(SPIN, [args.spin_ms]) for _ in range(args.tasks)])
        client.wait_many(ids, timeout=600)
        elapsed = time.perf_counter() - started
        where = collections.Counter(client.status(t)["ran_on"] for t in ids[::10])
    return args.tasks / elapsed, where


def throughput(args: argparse.Namespace) -> None:
    print(f"throughput, {args.tasks} tasks of {args.spin_ms:g} ms CPU, pool {args.pool} per "
          f"node, delegate_after {args.delegate_after:g} s, submitted at one node:")
    (single,) = start([sections("solo", free_port(), True, args)])
    try:
        wait_ready([single])
        alone, _ = run_batch(single, args)
    finally:
        single.stop()
    print(f"  1 node : {alone:7.0f} tasks/s")
    port = free_port()
    nodes = start([sections(f"n{i}", port, i == 0, args) for i in range(3)])
    try:
        ids = wait_ready(nodes)
        spread, where = run_batch(nodes[0], args)
    finally:
        for node in nodes:
            node.stop()
    names = {node: f"n{i}" for i, node in enumerate(ids)}
    shares = ", ".join(f"{names.get(k, k)} {v * 10}" for k, v in sorted(where.items(),
                                                                       key=lambda kv: names[kv[0]]))
    print(f"  3 nodes: {spread:7.0f} tasks/s   ({spread / alone:.2f} × one node; ran on, "
          f"sampled: {shares})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-tasks", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--spin-ms", type=float, default=1.0)
    parser.add_argument("--pool", type=int, default=1)
    parser.add_argument("--delegate-after", type=float, default=0.2)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if not args.skip_latency:
        latency(args)
    if not args.skip_throughput:
        throughput(args)


if __name__ == "__main__":
    main()
