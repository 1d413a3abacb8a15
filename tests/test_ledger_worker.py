"""The ledger worker as a real process on a real ipc socket, writing a real SQLite file.

The worker is started directly (`workers.base.main` in a fresh interpreter), as the
supervisor would start it, so these tests do not depend on the supervisor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from akita import transport
from akita.ledger import chain
from akita.ledger.client import LedgerClient
from akita.wire import protocol
from tests.helpers import REPO, TEST_DEFAULTS, merge_sections, render_config, wait_for


class LedgerProcess:
    """One ledger worker process for a node rooted at `root`; killed by its fixture."""

    def __init__(self, root: Path, ledger_settings: dict[str, Any] | None = None) -> None:
        self.root = root
        sections = merge_sections(TEST_DEFAULTS, {"ledger": ledger_settings or {}})
        self.config_path = root / "akita.ini"
        self.config_path.write_text(render_config(sections))
        self.run_dir = root / "run"
        self.data_dir = root / "data"
        transport.ensure_private_dir(self.run_dir)
        self.db = self.data_dir / chain.DB_FILE
        self.log_path = root / "ledger.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = {"name": "ledger", "config_path": str(self.config_path),
                "config_text": self.config_path.read_text()}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c",
                 f"import sys; from workers.base import main; sys.exit(main({args!r}))"],
                stderr=log, cwd=REPO)
        wait_for(self._answers_ping, 15, f"the ledger worker answering a ping\n{self.log()}")

    def _answers_ping(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"ledger worker exited {self.proc.returncode}:\n{self.log()}")
        if not transport.socket_path(self.run_dir, "ledger").exists():
            return False
        with transport.Requester(self.run_dir, "ledger") as req:
            return isinstance(req.request(protocol.Ping(), timeout_s=1.0), protocol.Pong)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""


@pytest.fixture
def ledger_worker(short_tmp: Path) -> Iterator[Callable[..., LedgerProcess]]:
    """ledger_worker(settings=None, name="n0") → a started LedgerProcess; killed at teardown."""
    started: list[LedgerProcess] = []

    def make(settings: dict[str, Any] | None = None, name: str = "n0") -> LedgerProcess:
        (short_tmp / name).mkdir(exist_ok=True)
        worker = LedgerProcess(short_tmp / name, settings)
        started.append(worker)
        worker.start()
        return worker

    try:
        yield make
    finally:
        for worker in started:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait(10)


class RawSender:
    """A DEALER that speaks ledger.append frame by frame, for tests of the writer's rules."""

    def __init__(self, ctx: zmq.Context, run_dir: Path) -> None:
        self.sock = transport.make_socket(ctx, zmq.DEALER)
        self.sock.connect(transport.endpoint(run_dir, "ledger"))

    def send_raw(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def append(self, source: str, ref: int, base: int, n: int = 1, *, rid: int | None = None,
               ack: bool = True) -> None:
        events = [{"kind": "test.raw", "ts": time.time(), "data": {"ref": ref, "n": i}}
                  for i in range(n)]
        body = {"v": 1, "kind": "ledger.append", "source": source, "ref": ref, "base": base,
                "events": events, "ack": ack, "rid": ref if rid is None else rid}
        self.sock.send(msgpack.packb(body))

    def reply(self, timeout_s: float = 5.0) -> protocol.Message:
        assert self.sock.poll(int(timeout_s * 1000)), f"no reply within {timeout_s} s"
        return protocol.decode(self.sock.recv())

    def acked(self, timeout_s: float = 5.0) -> tuple[int, int]:
        reply = self.reply(timeout_s)
        assert isinstance(reply, protocol.LedgerAcked), reply
        return reply.ref, reply.last_seq


def stored_refs(db: Path) -> list[int]:
    return [e.data["ref"] for e in chain.read_events(db, kind_prefix="test.raw")]


class TestContext(zmq.Context):
    """A context that closes, at teardown, every socket a test opened on it."""

    __test__ = False
    opened: list[zmq.Socket] | None = None  # declared here so zmq's option setter leaves it be

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[zmq.Socket] = []

    def socket(self, *args: Any, **kwargs: Any) -> zmq.Socket:  # type: ignore[override]
        sock = super().socket(*args, **kwargs)
        assert self.opened is not None
        self.opened.append(sock)
        return sock


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = TestContext()
    try:
        yield context
    finally:
        for sock in context.opened or ():
            sock.close(linger=0)
        context.term()


# --- the writer's rules ---------------------------------------------------------------------


def test_resend_is_acknowledged_but_not_written_twice(ledger_worker: Callable[..., LedgerProcess],
                                                      ctx: zmq.Context) -> None:
    worker = ledger_worker()
    sender = RawSender(ctx, worker.run_dir)
    sender.append("s1", 1, 1, n=2)
    assert sender.acked() == (1, 2)
    sender.append("s1", 1, 1, n=2)
    assert sender.acked() == (1, 2)
    assert stored_refs(worker.db) == [1, 1]  # one frame of two events, once
    # A writer killed and restarted still knows what it committed.
    worker.kill()
    worker.start()
    sender.append("s1", 1, 1, n=2)
    assert sender.acked() == (1, 2)
    sender.append("s1", 2, 2)
    assert sender.acked() == (2, 3)
    assert stored_refs(worker.db) == [1, 1, 2]
    assert all(result.ok for result in chain.verify(worker.db))


def test_frame_beyond_a_gap_waits_for_the_gap(ledger_worker: Callable[..., LedgerProcess],
                                              ctx: zmq.Context) -> None:
    worker = ledger_worker()
    sender = RawSender(ctx, worker.run_dir)
    sender.append("s2", 1, 1)
    assert sender.acked() == (1, 1)
    sender.append("s2", 3, 2)                 # ref 2 was lost on the way
    assert sender.acked() == (1, 1)           # "I hold up to 1": resend from 2
    assert stored_refs(worker.db) == [1]
    sender.append("s2", 2, 2)
    sender.append("s2", 3, 2)
    assert sender.acked() == (2, 2)
    assert sender.acked() == (3, 3)
    assert stored_refs(worker.db) == [1, 2, 3]
    # A source the writer has never seen starts at its base, not at whatever arrives first.
    sender.append("s3", 5, 4)
    assert sender.acked() == (3, 0)
    sender.append("s3", 4, 4)
    assert sender.acked() == (4, 4)
    assert stored_refs(worker.db) == [1, 2, 3, 4]


def test_head_request_and_fire_and_forget(ledger_worker: Callable[..., LedgerProcess],
                                          ctx: zmq.Context) -> None:
    worker = ledger_worker()
    sender = RawSender(ctx, worker.run_dir)
    sender.append("ff", 0, 1, n=3, ack=False)
    sender.append("s4", 1, 1)
    assert sender.acked() == (1, 4)  # the unanswered frame was committed before it
    with transport.Requester(worker.run_dir, "ledger", ctx=ctx) as req:
        reply = req.request(protocol.LedgerHead())
    assert isinstance(reply, protocol.LedgerHeadReply)
    feed, _seq, head_hash = chain.head(worker.db)  # type: ignore[misc]
    assert (reply.feed, reply.seq, reply.hash) == (feed, 4, head_hash)


def test_malformed_frames_get_error_replies(ledger_worker: Callable[..., LedgerProcess],
                                            ctx: zmq.Context) -> None:
    worker = ledger_worker()
    sender = RawSender(ctx, worker.run_dir)
    bad_frames: list[tuple[list[bytes], str]] = [
        ([b"\xc1 not msgpack"], "not a msgpack frame"),
        ([msgpack.packb([1, 2])], "not a msgpack map"),
        ([msgpack.packb({"v": 1, "kind": "ledger.nonsense"})], "unknown message kind"),
        ([msgpack.packb({"v": 1, "kind": "ledger.append", "source": "x", "ref": 1,
                         "events": "no"})], "ledger.append.events"),
        ([msgpack.packb({"v": 1, "kind": "ledger.append", "source": "x", "ref": 1,
                         "events": [{"kind": "a", "ts": 1.0}]})], "event 0"),
        ([msgpack.packb({"v": 1, "kind": "ledger.append", "source": "x", "ref": -1,
                         "events": []})], "ref must be"),
        ([b"two", b"frames"], "expected one frame"),
    ]
    for frames, expected in bad_frames:
        sender.send_raw(frames)
        reply = sender.reply()
        assert isinstance(reply, protocol.Error), (frames, reply)
        assert expected in reply.message, (frames, reply)
    sender.append("s5", 1, 1)
    assert sender.acked() == (1, 1)
    assert worker.proc is not None and worker.proc.poll() is None
    assert stored_refs(worker.db) == [1]


# --- through the client ---------------------------------------------------------------------


def test_client_durable_seqs_and_bus_events(ledger_worker: Callable[..., LedgerProcess],
                                            ctx: zmq.Context) -> None:
    worker = ledger_worker({"checkpoint_interval": 0.05})
    bus = transport.make_socket(ctx, zmq.SUB)
    bus.setsockopt(zmq.SUBSCRIBE, b"")
    transport.bind(bus, worker.run_dir, transport.BUS_IN)
    wait_for(lambda: bus.poll(0) and bus.recv_multipart()[0] == b"worker.heartbeat", 10,
             "a heartbeat from the ledger worker on the bus")
    client = LedgerClient(ctx, worker.run_dir, "test", window=2)
    durable: list[int] = []
    for i in range(500):
        client.append("test.client", {"i": i}, on_durable=durable.append)
    assert client.pending() == 500
    assert client.flush(10), "flush did not finish"
    assert client.pending() == 0
    assert durable == list(range(1, 501))
    committed: list[protocol.Message] = []
    while len(committed) < 500 and bus.poll(5000):
        topic, frame = bus.recv_multipart()
        if topic == b"test.client":
            committed.append(protocol.decode(frame))
    assert len(committed) == 500
    first = committed[0]
    assert isinstance(first, protocol.LedgerCommitted)
    assert (first.seq, first.event_kind, first.data) == (1, "test.client", {"i": 0})
    assert first.feed == chain.own_feed(worker.db)
    wait_for(lambda: _checkpoint_seqs(worker.db)[-1:] == [500], 10, "a checkpoint of the head")
    client.close()


def test_client_waits_for_a_writer_that_starts_late(short_tmp: Path, ctx: zmq.Context) -> None:
    worker = LedgerProcess(short_tmp)
    client = LedgerClient(ctx, worker.run_dir, "early", resend_after_s=0.3)
    try:
        durable: list[int] = []
        for i in range(20):
            client.append("test.early", {"i": i}, on_durable=durable.append)
        # The window is full, so this one rides with the queued events, in order.
        client.append("test.early", {"i": "no ack"}, ack=False)
        assert client.pending() == 21
        worker.start()
        assert client.flush(10), "events appended before the writer started never became durable"
        assert durable == list(range(1, 21))
        stored = [e.data["i"] for e in chain.read_events(worker.db, kind_prefix="test.early")]
        assert stored == list(range(20)) + ["no ack"]
        assert worker.stop() == 0
        # The shutdown checkpoint covers the head.
        assert _checkpoint_seqs(worker.db)[-1] == 21
    finally:
        client.close()
        if worker.proc is not None and worker.proc.poll() is None:
            worker.kill()


def _checkpoint_seqs(db: Path) -> list[int]:
    conn = chain.open_reader(db)
    try:
        return [row[0] for row in conn.execute("SELECT seq FROM checkpoints ORDER BY seq")]
    finally:
        conn.close()


# --- kill -9 while senders append -----------------------------------------------------------


SENDER_EVENTS = 6_000


def sender_main(run_dir: str, name: str, count: int, out_path: str) -> None:
    """A sender process: append `count` events with acks, then record what was acknowledged."""
    ctx = zmq.Context()
    client = LedgerClient(ctx, Path(run_dir), name, resend_after_s=0.3)
    acked: list[int] = []
    for i in range(count):
        client.append("test.kill", {"sender": name, "i": i},
                      on_durable=lambda _seq, i=i: acked.append(i))  # type: ignore[misc]
        if i % 20 == 0:
            client.tick()
            if client.sock.poll(0):
                client.on_readable()
            time.sleep(0.002)  # pace the stream so the writer dies in the middle of it
    ok = client.flush(60)
    Path(out_path).write_text(json.dumps({"ok": ok, "acked": acked, "resends": client.resends}))
    client.close()
    ctx.term()


def _feed_reaches(db: Path, target: int) -> Callable[[], bool]:
    return lambda: (chain.head(db) or ("", 0, b""))[1] >= target


def test_kill9_writer_loses_no_acknowledged_event(ledger_worker: Callable[..., LedgerProcess]
                                                  ) -> None:
    worker = ledger_worker()
    senders = []
    for k in range(3):
        out = worker.root / f"sender{k}.json"
        code = (f"from tests.test_ledger_worker import sender_main; "
                f"sender_main({str(worker.run_dir)!r}, 's{k}', {SENDER_EVENTS}, {str(out)!r})")
        senders.append((subprocess.Popen([sys.executable, "-c", code], cwd=REPO), out))
    for target in (2_000, 9_000):
        wait_for(_feed_reaches(worker.db, target), 30,
                 f"the feed to reach seq {target} before killing the writer")
        worker.kill()
        worker.start()
    for proc, _out in senders:
        assert proc.wait(90) == 0
    stored = Counter((e.data["sender"], e.data["i"])
                     for e in chain.read_events(worker.db, kind_prefix="test.kill"))
    duplicates = [key for key, n in stored.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} events written twice, e.g. {duplicates[:3]}"
    resends = 0
    for k, (_proc, out) in enumerate(senders):
        result = json.loads(out.read_text())
        assert result["ok"], f"sender {k} could not flush"
        missing = [i for i in result["acked"] if (f"s{k}", i) not in stored]
        assert not missing, f"sender {k}: {len(missing)} acknowledged events lost"
        assert len(result["acked"]) == SENDER_EVENTS
        resends += result["resends"]
    assert resends > 0, "no sender had to resend: the kill did not land mid-stream"
    assert len(stored) == 3 * SENDER_EVENTS
    assert all(result.ok for result in chain.verify(worker.db)), chain.verify(worker.db)
    os.kill(worker.proc.pid, 0)  # type: ignore[union-attr]


def test_client_drops_what_cannot_be_stored_and_splits_large_frames(
        ledger_worker: Callable[..., LedgerProcess], ctx: zmq.Context) -> None:
    worker = ledger_worker()
    client = LedgerClient(ctx, worker.run_dir, "odd", window=1)
    with pytest.raises(TypeError, match="event kind"):
        client.append(b"bytes", {})  # type: ignore[arg-type]
    durable: list[int] = []
    client.append("test.odd", {"n": 0}, on_durable=durable.append)
    client.append("test.odd", {"n": object()}, on_durable=durable.append)  # not msgpack
    big = "x" * (1 << 20)
    for n in range(1, 21):  # 20 MB behind a full window: more than one frame may carry
        client.append("test.odd", {"n": n, "pad": big}, on_durable=durable.append)
    assert client.flush(30), "flush did not finish"
    assert client.dropped == 1 and client.pending() == 0
    assert durable == list(range(1, 22))
    stored = [e.data["n"] for e in chain.read_events(worker.db, kind_prefix="test.odd")]
    assert stored == list(range(21))
