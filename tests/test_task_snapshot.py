"""Task-history snapshots: a book rebuilt from a snapshot and the feed after it equals the
one rebuilt from the whole feed, queue order included; a stale snapshot is not used."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import akita
from akita.identity import NodeIdentity
from akita.tasks.queue import TaskBook
from tests.helpers import wait_for
from workers.executor import recovery, snapshot
from workers.ledger import store
from workers.ledger.store import Append, LedgerStore, parse_events


class Feed:
    """A node's ledger written with the ledger worker's own store, many events a commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = store.open_writer(path)
        self.store = LedgerStore(self.conn, NodeIdentity.generate())
        self.ref = 0
        self.ts = 1000.0

    def write(self, events: list[tuple[str, dict[str, Any]]]) -> int:
        self.ref += 1
        self.ts += 1
        parsed = parse_events([{"kind": k, "ts": self.ts, "data": d} for k, d in events])
        self.store.commit([Append("test", self.ref, 1, parsed, True)], checkpoint_events=10**9)
        return self.store.chain.seq

    def close(self) -> None:
        self.conn.close()


def history(rng: random.Random, first: int, count: int) -> list[tuple[str, dict[str, Any]]]:
    """Tasks submitted with random priorities; some finish, some run, some are requeued."""
    events: list[tuple[str, dict[str, Any]]] = []
    for n in range(first, first + count):
        task_id = f"task{n:06d}"
        events.append(("task.submitted", {"id": task_id, "name": "t", "args": [n],
                                          "priority": rng.randrange(10)}))
        fate = rng.random()
        if fate < 0.6:
            events.append(("task.started", {"id": task_id, "attempt": 1, "pid": 1}))
            events.append(("task.succeeded", {"id": task_id, "attempt": 1, "result": n}))
        elif fate < 0.7:
            events.append(("task.started", {"id": task_id, "attempt": 1, "pid": 1}))
        elif fate < 0.8:
            events.append(("task.started", {"id": task_id, "attempt": 1, "pid": 1}))
            events.append(("task.requeued", {"id": task_id, "attempts": 1, "reason": "x"}))
    return events


def rebuilt(path: Path, use_snapshot: bool) -> tuple[TaskBook, int]:
    book = TaskBook("node", retain_finished=300)
    from_seq = snapshot.load(snapshot.path_for(path), path, book) if use_snapshot else 0
    recovery.replay(path, book, lambda: None, from_seq)
    book.recover(max_attempts=3)
    return book, from_seq


def shape(book: TaskBook) -> dict[str, Any]:
    return {"queue": [(r.id, r.priority) for r in book.queue.ordered()],
            "records": {r.id: (r.state.value, r.attempts, r.result, r.order)
                        for r in book.records.values()},
            "finished": book.finished_ids()}


def test_snapshot_plus_tail_equals_the_whole_replay(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    feed = Feed(path)
    rng = random.Random(7)
    feed.write([("worker.started", {"name": "executor"})])
    for chunk in range(10):
        feed.write(history(rng, chunk * 100, 100))
    at_snapshot, _ = rebuilt(path, use_snapshot=False)
    seq = feed.store.chain.seq
    saver = snapshot.Snapshots(path)
    # The executor snapshots its book as replayed, before it settles running tasks.
    book = TaskBook("node", retain_finished=300)
    recovery.replay(path, book, lambda: None)
    saver.save(book, seq)
    assert saver.written == 1
    for chunk in range(10, 13):
        feed.write(history(rng, chunk * 100, 100))
    feed.write([("task.succeeded", {"id": r.id, "attempt": 1, "result": "late"})
                for r in list(at_snapshot.queue.ordered())[:5]])
    feed.close()
    whole, _ = rebuilt(path, use_snapshot=False)
    fast, from_seq = rebuilt(path, use_snapshot=True)
    assert from_seq == seq
    assert shape(fast) == shape(whole)
    assert len(whole.queue) > 100
    # New tasks rank after every adopted one.
    assert fast.create("new", "t", [], 5, 0.0).order > max(r.order for r in whole.records.values())


def test_a_snapshot_of_another_ledger_is_not_used(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "ledger.db", tmp_path / "b" / "ledger.db"
    for path in (first, second):
        feed = Feed(path)
        feed.write(history(random.Random(1), 0, 50))
        feed.close()
    book = TaskBook("node")
    recovery.replay(first, book, lambda: None)
    snapshot.Snapshots(first).save(book, 10)
    snapshot.path_for(first).rename(snapshot.path_for(second))
    fresh = TaskBook("node")
    assert snapshot.load(snapshot.path_for(second), second, fresh) == 0
    assert not fresh.records
    snapshot.path_for(second).write_bytes(b"\x93garbage")
    assert snapshot.load(snapshot.path_for(second), second, fresh) == 0


def test_an_executor_restart_starts_from_its_snapshot(make_node: Any) -> None:
    node = make_node({"supervisor": {"workers": "ledger, executor"},
                      "tasks": {"pool_size": 1, "modules": "tests.sample_tasks"}})
    node.start()
    with akita.Client(node.config_path, timeout_s=10) as client:
        done = [client.submit("sample.add", [n, 1]) for n in range(30)]
        assert client.wait_many(done, timeout=20) == [n + 1 for n in range(30)]
        waiting = [client.submit("sample.add", [n, 2], requires=["elsewhere"])
                   for n in range(20)]
    pid = node.worker("executor")["pid"]
    assert node.ctl("restart", "executor").returncode == 0
    wait_for(lambda: (w := node.worker("executor"))["state"] == "running" and w["pid"] != pid,
             10, "executor restarted")
    log_text = (node.log_dir / "executor.log").read_text()
    assert "task snapshot at seq" in log_text.split("executor worker stopped")[-1]
    with akita.Client(node.config_path, timeout_s=10) as client:
        queued = client.tasks(state="queued")
        assert [t["id"] for t in queued] == waiting
        assert len(client.tasks(state="succeeded")) == 30
