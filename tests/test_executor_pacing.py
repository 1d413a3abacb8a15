"""Pacing under a saturated pool: task processes gather outcomes longer, and the executor's
ledger appends linger, so the node wakes and commits less often; nothing is reported before
it is durable. A real task process over its socket, and a real ledger worker."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

import akita
from akita.ledger import chain
from akita.ledger.client import LedgerClient
from tests.helpers import Node, wait_for
from tests.test_ledger_worker import LedgerProcess, ctx, ledger_worker  # noqa: F401
from workers.executor import pacing, pool, taskproc


def _frames_for(tasks: int, pace_s: float | None) -> int:
    """How many "done" frames a task process sends for `tasks` tasks of 2 ms each."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = taskproc.TaskProcess(theirs, bytearray(taskproc.SLOT_BYTES), 4096, {})
    server = threading.Thread(target=proc.serve, daemon=True)
    server.start()
    try:
        if pace_s is not None:
            ours.sendall(msgpack.packb(["pace", pace_s]))
        ours.sendall(msgpack.packb(["run", [[f"t{i}", "akita.sleep", [0.002], 1]
                                            for i in range(tasks)]]))
        unpacker = msgpack.Unpacker(raw=False)
        frames = outcomes = 0
        ours.settimeout(10)
        while outcomes < tasks:
            data = ours.recv(1 << 16)
            assert data, f"the task process closed its channel after {outcomes} outcomes"
            unpacker.feed(data)
            for op, body in unpacker:
                assert op == "done"
                frames += 1
                outcomes += len(body)
        assert outcomes == tasks
        return frames
    finally:
        ours.close()  # end of input: serve() returns
        server.join(5)
        theirs.close()


def test_a_paced_task_process_sends_outcomes_in_fewer_frames() -> None:
    eager = _frames_for(40, None)
    paced = _frames_for(40, 0.05)   # 40 x 2 ms: about 80 ms of work, so two or three frames
    assert eager >= 20, f"unpaced, 2 ms tasks went {eager} frames for 40 outcomes"
    assert paced <= 10, f"paced at 50 ms, 40 outcomes took {paced} frames"


def test_a_pace_out_of_bounds_is_clamped() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = taskproc.TaskProcess(theirs, bytearray(taskproc.SLOT_BYTES), 4096, {})
    try:
        # Not a number: ignored, the pace stays as it was (0 after the -1).
        for asked, kept in ((3600, taskproc.MAX_FLUSH_S), (-1, 0.0), ("soon", 0.0)):
            ours.sendall(msgpack.packb(["pace", asked]))
            assert proc._receive(block=True)
            assert proc.flush_s == kept, f"pace {asked!r} gave {proc.flush_s}"
    finally:
        ours.close()
        theirs.close()


class _Pool:
    prefetch_s = pool.PREFETCH_S


class _Ledger:
    """What `Pacing` sets on the ledger client; counts the ticks that send lingering events."""

    def __init__(self) -> None:
        self.linger_s = 0.0
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1


def test_pacing_follows_saturation_and_tells_every_process() -> None:
    ledger = _Ledger()
    sent: list[tuple[str, Any]] = []
    procs = _Pool()
    pace = pacing.Pacing(ledger, procs, lambda op, body: sent.append((op, body)))
    pace.update(False, now=1.0)
    assert sent == [] and ledger.linger_s == 0.0
    pace.update(True, now=2.0)
    pace.update(True, now=2.0 + pacing.SATURATED_AFTER_S / 2)
    assert sent == [] and not pace.saturated, "a momentary backlog counted as saturation"
    pace.update(True, now=2.0 + pacing.SATURATED_AFTER_S)
    pace.update(True, now=3.0)
    assert sent == [("pace", pacing.SATURATED_FLUSH_S)]
    assert ledger.linger_s == pacing.SATURATED_LINGER_S
    assert procs.prefetch_s == pacing.SATURATED_PREFETCH_S > pacing.SATURATED_FLUSH_S
    pace.update(False, now=3.0)
    assert sent[-1] == ("pace", taskproc.FLUSH_S)
    assert ledger.linger_s == 0.0 and ledger.ticks == 1, "what lingered was not sent at once"
    assert procs.prefetch_s == pool.PREFETCH_S
    assert pace.changes == 2
    pace.update(True, now=4.0)   # the backlog clock started again when the queue emptied
    assert not pace.saturated


def _durable_within(client: LedgerClient, durable: list[int], count: int, timeout_s: float
                    ) -> bool:
    """Drive `client` until `count` callbacks came or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while len(durable) < count and time.monotonic() < deadline:
        if client.sock.poll(10, zmq.POLLIN):
            client.on_readable()
        client.tick()
    return len(durable) >= count


def test_lingering_appends_wait_then_go_together(
        ledger_worker: Callable[..., LedgerProcess], ctx: zmq.Context) -> None:  # noqa: F811
    worker = ledger_worker()
    client = LedgerClient(ctx, worker.run_dir, "linger", window=2)
    try:
        client.linger_s = 0.5
        durable: list[int] = []
        for i in range(5):
            client.append("test.linger", {"i": i}, on_durable=durable.append)
        due = client.due_in()
        assert due is not None and 0.3 < due <= 0.5, f"due in {due}"
        assert not _durable_within(client, durable, 1, 0.25), "lingering events went early"
        assert list(chain.read_events(worker.db, kind_prefix="test.linger")) == []
        assert _durable_within(client, durable, 5, 10), f"only {durable} durable after linger"
        assert durable == [1, 2, 3, 4, 5]
        assert client.due_in() is None and client.pending() == 0
        # Lingering ends at once when the owner says so, and flush() never waits for it.
        client.append("test.linger", {"i": 5}, on_durable=durable.append)
        client.linger_s = 0.0
        assert _durable_within(client, durable, 6, 0.2 + 5), "linger 0 did not send at once"
        client.linger_s = 30.0
        client.append("test.linger", {"i": 6}, on_durable=durable.append)
        assert client.flush(5), "flush waited for the linger"
        assert durable == [1, 2, 3, 4, 5, 6, 7]
    finally:
        client.close()


def test_a_saturated_node_paces_and_reports_only_durable_outcomes(
        make_node: Callable[..., Node]) -> None:
    node = make_node({"supervisor": {"workers": "ledger, executor"},
                      "tasks": {"pool_size": 1}})
    node.start()
    db = chain.db_path(node.config)
    with akita.Client(node.config_path, timeout_s=20) as client:
        # About 3 s of work for one process: the queue stays backed up, so pacing starts.
        ids = client.submit_many([("akita.sleep", [0.005])] * 600)
        wait_for(lambda: client.stats()["totals"]["saturated"] == 1, 10,
                 "the executor to say its pool is saturated")
        # A cancel is answered once durable: lingering delays it by milliseconds, not more.
        started = time.monotonic()
        assert client.cancel(ids[-1])
        assert time.monotonic() - started < 1, "a cancel waited long behind paced appends"
        assert client.status(ids[-1])["state"] == "cancelled"
        durable: set[str] = set()
        seen_seq = 0
        pending = set(ids[:-1])
        deadline = time.monotonic() + 60
        while pending:
            assert time.monotonic() < deadline, f"{len(pending)} outcomes never came"
            done = client.finished(pending, timeout=0.05)
            if not done:
                continue
            # Every outcome the client holds must be in the ledger already.
            for event in chain.read_events(db, kind_prefix="task.succeeded",
                                           after_seq=seen_seq):
                durable.add(event.data["id"])
                seen_seq = max(seen_seq, event.seq)
            early = set(done) - durable
            assert not early, f"{len(early)} outcomes reported before they were durable"
            assert client.wait_many(done, timeout=0) == [0.005] * len(done)
            pending.difference_update(done)
        wait_for(lambda: client.stats()["totals"]["saturated"] == 0, 10,
                 "pacing to end once the queue emptied")
        assert client.stats()["totals"]["pacing_changes"] >= 2
