"""Executor recovery: restart with a long task history in the ledger → serving again.

    python bench/recovery.py [--finished 1000000] [--queued 10000] [--kills 3]

Writes a node's ledger directly with the ledger worker's own store: `--finished` tasks that
ran (submitted, started, succeeded: three events each) and `--queued` tasks waiting, with
random priorities, that require a capability the node does not declare (so they stay
queued). Starts the node (ledger, executor): that first start replays the whole feed, as
every start did before task snapshots, and is timed. Once the executor has written its
snapshot, SIGKILLs it `--kills` times and times each restart until the new executor answers
a task.stats request. Then checks that the queue was rebuilt exactly: the live executor's
queued tasks (ids, priorities) and, through the executor's own recovery code, the queue
order against the order the tasks were written in (priority, then FIFO).

Target: restart → serving ≤ 1 s with 1,000,000 finished and 10,000 queued.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from node_fixture import BenchNode

from akita import identity, transport
from akita.errors import AkitaError
from akita.ledger import chain
from akita.tasks.queue import TaskBook
from akita.wire import protocol
from workers.executor import recovery, snapshot
from workers.ledger.store import Append, LedgerStore, open_writer, parse_events

BATCH = 20_000
GIVE_UP_S = 600.0


def write_history(data_dir: Path, finished: int, queued: int) -> list[tuple[str, int]]:
    """Write the feed; returns the queued tasks' (id, priority) in submit order."""
    conn = open_writer(data_dir / chain.DB_FILE)
    store = LedgerStore(conn, identity.load_or_create(data_dir))
    ref = 0
    events: list[dict[str, Any]] = []
    ts = time.time() - 3600

    def add(kind: str, data: dict[str, Any]) -> None:
        nonlocal ref
        events.append({"kind": kind, "ts": ts, "data": data})
        if len(events) >= BATCH:
            ref += 1
            store.commit([Append("bench", ref, 1, parse_events(events), True)],
                         checkpoint_events=10**9)
            events.clear()

    for n in range(finished):
        task_id = f"done{n:08d}"
        add("task.submitted", {"id": task_id, "name": "akita.echo", "args": [n], "priority": 5})
        add("task.started", {"id": task_id, "attempt": 1, "pid": 1})
        add("task.succeeded", {"id": task_id, "attempt": 1, "result": n, "duration_s": 0.001})
    rng = random.Random(1)
    waiting = []
    for n in range(queued):
        task_id, priority = f"wait{n:08d}", rng.randrange(10)
        add("task.submitted", {"id": task_id, "name": "akita.echo", "args": [n],
                               "priority": priority, "requires": ["bench.elsewhere"]})
        waiting.append((task_id, priority))
    ref += 1
    store.commit([Append("bench", ref, 1, parse_events(events), True)], checkpoint_events=1)
    conn.close()
    return waiting


def stats(node: BenchNode) -> protocol.Message:
    with transport.Requester(node.run_dir, "executor") as req:
        return req.request(protocol.TaskStats(), 1.0)


def wait_serving(node: BenchNode, old_pid: int | None) -> float:
    """Seconds until an executor other than `old_pid` answers task.stats."""
    start = time.perf_counter()
    while time.perf_counter() - start < GIVE_UP_S:
        entry = node.status()["executor"]
        if entry["pid"] not in (None, old_pid):
            try:
                if isinstance(stats(node), protocol.TaskStatsReply):
                    return time.perf_counter() - start
            except AkitaError:
                pass  # still starting: not bound yet, or replaying
        time.sleep(0.005)
    raise SystemExit(f"the executor did not serve within {GIVE_UP_S:g} s")


def wait_snapshot(node: BenchNode) -> None:
    log_path = node.root / "log" / "executor.log"
    deadline = time.monotonic() + GIVE_UP_S
    while "task snapshot at seq" not in log_path.read_text():
        if time.monotonic() > deadline:
            raise SystemExit("the executor wrote no task snapshot")
        time.sleep(0.1)


def check_queue(node: BenchNode, waiting: list[tuple[str, int]]) -> str:
    """Compare the rebuilt queue with what was written; returns a verdict line."""
    from akita.client import Client

    with Client(node.config_path, timeout_s=30) as client:
        live = client.tasks(state="queued", limit=len(waiting) + 10)
    live_pairs = [(t["id"], t["priority"]) for t in live]
    db = node.root / "data" / chain.DB_FILE
    book = TaskBook(None, capabilities=())
    from_seq = snapshot.load(snapshot.path_for(db), db, book)
    recovery.replay(db, book, lambda: None, from_seq)
    book.recover(max_attempts=3)
    order = [(r.id, r.priority) for r in book.for_peers.ordered()]
    expected = sorted(waiting, key=lambda pair: -pair[1])  # stable: FIFO within a priority
    same_set = sorted(live_pairs) == sorted(waiting)
    same_order = order == expected
    return (f"queue rebuilt: {len(live_pairs)} queued in the live executor, same ids and "
            f"priorities: {same_set}; order from snapshot seq {from_seq} + tail matches "
            f"priority/FIFO: {same_order}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()
    node = BenchNode({"supervisor": {"workers": "ledger, executor"},
                      "tasks": {"pool_size": 1, "max_queue": args.queued + 1000},
                      "worker:executor": {"heartbeat_timeout": 60, "max_restarts": 100}})
    try:
        started = time.perf_counter()
        waiting = write_history(node.root / "data", args.finished, args.queued)
        print(f"ledger written: {args.finished} finished + {args.queued} queued tasks "
              f"({3 * args.finished + args.queued} events) in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        node.start(["ledger"], timeout_s=60)
        wait_serving(node, None)
        print(f"first start (whole feed replayed, no snapshot): executor serving after "
              f"{time.perf_counter() - started:.2f} s")
        wait_snapshot(node)
        samples = []
        for _ in range(args.kills):
            pid = node.status()["executor"]["pid"]
            while node.status()["executor"]["uptime_s"] < 1.2:
                time.sleep(0.05)  # a stable run: the supervisor restarts it at once
            os.kill(pid, signal.SIGKILL)
            samples.append(wait_serving(node, pid))
        print(f"restart after SIGKILL → serving, {len(samples)} kills: median "
              f"{statistics.median(samples) * 1000:.0f} ms, max {max(samples) * 1000:.0f} ms "
              f"(target ≤ 1000 ms: {'met' if max(samples) <= 1.0 else 'NOT met'})")
        print(check_queue(node, waiting))
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
