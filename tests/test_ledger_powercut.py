"""Durability against a power cut, and the pragmas that durability rests on, on a live node.

SIGKILL cannot lose a write the kernel already holds, so the kill -9 tests elsewhere say
nothing about fsync. Here the node's data_dir lives on a disk the test makes (see
tests/powercut.py) and the cut takes the device as it stands: anything acknowledged but
only in the page cache is lost, as it would be when the power goes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import apsw
import pytest
import zmq

from akita.ledger import chain
from akita.ledger.client import LedgerClient
from tests import powercut
from tests.helpers import Node, wait_for

KIND = "test.power"
APPEND_S = 3.0        # appending runs this long before the cut,
ACKED_AT_LEAST = 500  # and until this many events were acknowledged,
ACKED_AT_MOST = 40_000  # or stops here, so a fast (unsynced) writer cannot fill the disk
IN_FLIGHT = 2_000     # events appended but not yet acknowledged, at most


@pytest.fixture
def disk(short_tmp: Path) -> Iterator[powercut.LoopDisk]:
    reason = powercut.available()
    if reason:
        pytest.skip(f"no power-cut disk here: {reason}")
    (short_tmp / "disk").mkdir()
    loop = powercut.LoopDisk(short_tmp / "disk")
    try:
        loop.create()
        yield loop
    finally:
        loop.destroy()


def _append_until_cut(node: Node, cut: Callable[[], Path]) -> tuple[list[int], int, Path]:
    """Append acknowledged events, and cut the power right after an acknowledgement arrives.

    Returns (indices acknowledged before the cut, events sent, the image the cut left).
    """
    ctx = zmq.Context()
    client = LedgerClient(ctx, node.run_dir, "power", resend_after_s=5.0)
    acked: list[int] = []
    sent = 0
    try:
        started = time.monotonic()
        while True:
            assert time.monotonic() - started < 30, f"only {len(acked)} events acked in 30 s"
            while client.pending() < IN_FLIGHT:  # a steady stream the writer can keep up with
                client.append(KIND, {"i": sent}, on_durable=lambda _seq, i=sent: acked.append(i))
                sent += 1
            client.tick()
            if not client.sock.poll(2):
                continue
            before = len(acked)
            client.on_readable()
            if len(acked) > before and len(acked) >= ACKED_AT_LEAST and (
                    time.monotonic() - started >= APPEND_S or len(acked) >= ACKED_AT_MOST):
                # Nothing between the last acknowledgement and the cut: no teardown, no wait.
                image = cut()
                break
        # The cut came while frames were still unacknowledged: mid-stream, not after a lull.
        assert client.pending() > 0, "every event was already acknowledged at the cut"
        return list(acked), sent, image
    finally:
        client.close()
        ctx.term()


def _stored(data_dir: Path) -> list[int]:
    db = data_dir / chain.DB_FILE
    assert db.exists(), f"no ledger at all on the disk after the cut: {sorted(data_dir.iterdir())}"
    # A read-write connection recovers the WAL on its first read, as the restarted ledger
    # worker's would; a database the cut left unreadable is a failure too.
    conn = apsw.Connection(str(db))
    try:
        check = conn.execute("PRAGMA quick_check").fetchall()
    except apsw.Error as exc:
        raise AssertionError(f"the ledger is unreadable after the cut: {exc}") from None
    finally:
        conn.close()
    assert check == [("ok",)], f"the ledger is damaged after the cut: {check[:5]}"
    return [e.data["i"] for e in chain.read_events(db, kind_prefix=KIND)]


def test_power_cut_loses_no_acknowledged_event(make_node: Callable[..., Node],
                                               disk: powercut.LoopDisk) -> None:
    node = make_node({"node": {"data_dir": str(disk.mount_point / "data")},
                      "supervisor": {"workers": "ledger"}})
    node.start()
    acked, sent, image = _append_until_cut(node, disk.cut)
    node.kill_everything()
    with disk.recovered(image) as mnt:
        stored = _stored(mnt / "data")
        verdicts = chain.verify(mnt / "data" / chain.DB_FILE)
    stored_set = set(stored)
    lost = [i for i in acked if i not in stored_set]
    assert not lost, (f"{len(lost)} of {len(acked)} acknowledged events lost by the power cut "
                      f"(first {lost[:5]}); {len(stored)} of {sent} sent survived")
    assert stored == list(range(len(stored))), "the surviving events are not a prefix in order"
    assert all(v.ok for v in verdicts), verdicts


def _ledger_pid(node: Node) -> int:
    return int(node.worker("ledger")["pid"])


def test_live_ledger_runs_wal_and_fsyncs_each_commit(make_node: Callable[..., Node]) -> None:
    """The live database is in WAL mode, and the writer fsyncs the WAL before it acknowledges.

    `synchronous` is a setting of the writer's own connection, invisible from another one,
    so the test watches the writer's main thread with strace: every acknowledged batch must
    cost at least one fsync of the -wal file (the WAL checkpointer's thread is not traced).
    """
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    node = make_node({"supervisor": {"workers": "ledger"}})
    node.start()
    db = node.data_dir / chain.DB_FILE
    wait_for(db.exists, 10, f"the ledger file {db}")
    reader = chain.open_reader(db)
    try:
        mode = reader.execute("PRAGMA journal_mode").fetchall()[0][0]
    finally:
        reader.close()
    assert mode == "wal", f"live ledger journal_mode is {mode!r}, not wal"

    pid = _ledger_pid(node)
    trace = node.root / "ledger.strace"
    said = node.root / "strace.err"
    with open(said, "wb") as err:
        tracer = subprocess.Popen(["strace", "-p", str(pid), "-y", "-e",
                                   "trace=fsync,fdatasync", "-o", str(trace)], stderr=err)
    try:
        wait_for(lambda: tracer.poll() is None and "attached" in said.read_text(), 10,
                 f"strace attached to the ledger worker {pid}")
        ctx = zmq.Context()
        client = LedgerClient(ctx, node.run_dir, "pragma", window=1)
        batches = 5
        for i in range(batches):
            client.append(KIND, {"i": i})
            assert client.flush(10), f"event {i} was not acknowledged within 10 s"
        client.close()
        ctx.term()
    finally:
        tracer.terminate()
        tracer.wait(10)
    syncs = [line for line in trace.read_text().splitlines()
             if re.search(r"f(data)?sync\(\d+<[^>]*-wal>\)", line)]
    assert len(syncs) >= batches, (f"{batches} acknowledged commits but {len(syncs)} fsyncs of "
                                   f"the WAL by the writer:\n{trace.read_text()[-2000:]}")
