"""Cross-cluster spill-over benchmark: six real nodes (ledger, executor, gateway) on loopback
Reticulum, ``cluster_size`` 3, so two clusters of three; a burst submitted at one node of
cluster A while cluster B is idle.

    python bench/spillover.py [--tasks 120] [--task-s 0.2] [--pool 1]

Tasks are `akita.sleep` of `--task-s` seconds (they wait rather than spin, so a shared
2-core machine measures scheduling, not CPU contention). Reports the wall time from the first
submit to the last result, tasks/s, where the tasks ran (cluster A's members, cluster B's
coordinator, anywhere else), and two references: cluster A alone at full use (tasks × task_s
/ A's processes) and A plus B's coordinator at full use. Spill-over wins when the measured
time falls below the first reference.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import akita
from akita.errors import AkitaError
from akita.wire import protocol
from bench.delegation import ask, node_id, sections, start, wait_ready
from bench.node_fixture import BenchNode
from supervisor.demo import free_port


def wait_two_clusters(nodes: list[BenchNode], timeout_s: float = 90.0) -> tuple[list[str], str]:
    """Until node 0 sees clusters A (nodes 0-2) and B (3-5), knows its mates' and B's
    coordinator's task types and load; returns the ids and B's coordinator."""
    ids = [node_id(node) for node in nodes]
    want = sorted([sorted(ids[:3]), sorted(ids[3:])])
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            clusters = ask(nodes[0], protocol.ClusterList()).clusters
            last = [sorted(c["members"]) for c in clusters]
            head = next((c["coordinator"] for c in clusters
                         if sorted(c["members"]) == sorted(ids[3:])), "")
            if sorted(last) == want and head and all(
                    _known(nodes[0], other) for other in (*ids[1:3], head)):
                return ids, head
        except AkitaError as exc:
            last = exc
        time.sleep(0.3)
    raise SystemExit(f"the nodes did not form clusters 0-2 and 3-5 in {timeout_s:g} s; "
                     f"saw {last}")


def _known(node: BenchNode, other: str) -> bool:
    data = ask(node, protocol.StateGet(node=other)).data
    return bool(data.get("task_types")) and "task_load" in data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=120)
    parser.add_argument("--task-s", type=float, default=0.2)
    parser.add_argument("--pool", type=int, default=1)
    args = parser.parse_args()
    args.delegate_after = 0.0
    port = free_port()
    nodes = start([sections(f"n{i}", port, i == 0, args) for i in range(3)])
    try:
        wait_ready(nodes)   # cluster A forms first: a join never moves a member
        nodes += start([sections(f"n{i}", port, False, args) for i in range(3, 6)])
        ids, head = wait_two_clusters(nodes)
        with akita.Client(nodes[0].config_path, timeout_s=60) as client:
            started = time.perf_counter()
            task_ids = client.submit_many([("akita.sleep", [args.task_s])
                                           for _ in range(args.tasks)])
            client.wait_many(task_ids, timeout=600)
            elapsed = time.perf_counter() - started
            where = collections.Counter(client.status(t)["ran_on"] for t in task_ids)
    finally:
        for node in nodes:
            node.stop()
    in_a = sum(where[i] for i in ids[:3])
    work_s = args.tasks * args.task_s
    print(f"spill-over, {args.tasks} tasks of {args.task_s:g} s, pool {args.pool} per node, "
          f"6 nodes in 2 clusters, submitted at one node of cluster A:")
    print(f"  wall {elapsed:6.2f} s   {args.tasks / elapsed:6.1f} tasks/s")
    print(f"  ran on: cluster A {in_a}, cluster B's coordinator {where[head]}, "
          f"elsewhere {args.tasks - in_a - where[head]}")
    names = {node: f"n{i}" for i, node in enumerate(ids)}
    print("  per node: " + ", ".join(f"{names.get(k, k)}{'*' if k == head else ''} {v}"
                                     for k, v in sorted(where.items(), key=lambda kv:
                                                        names.get(kv[0], kv[0]))))
    print(f"  references: cluster A alone at full use {work_s / (3 * args.pool):6.2f} s; "
          f"A + B's coordinator at full use {work_s / (4 * args.pool):6.2f} s")


if __name__ == "__main__":
    main()
