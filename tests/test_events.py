"""The ledger's event vocabulary (akita.wire.events): layouts, decoding, and that it is the
only place a kind is spelled."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import msgpack
import pytest

from akita.errors import ProtocolError
from akita.tasks.queue import TaskBook, TaskState
from akita.wire import events, protocol

ROOT = Path(__file__).resolve().parent.parent

# One event of every kind, with the data map writers stored before the kinds were declared
# (same keys, same order, same value types): what feeds, hashes and signatures hold.
SAMPLES: list[tuple[events.Event, dict[str, Any]]] = [
    (events.NodeStarted(pid=10, workers=["ledger", "executor"]),
     {"pid": 10, "workers": ["ledger", "executor"]}),
    (events.NodeStopped(pid=10), {"pid": 10}),
    (events.ConfigReloaded(restarted=["sampler"], started=[], stopped=["gateway"]),
     {"restarted": ["sampler"], "started": [], "stopped": ["gateway"]}),
    (events.ConfigReloadFailed(error="bad"), {"error": "bad"}),
    (events.WorkerStarted(name="ledger", pid=11, restarts=0),
     {"name": "ledger", "pid": 11, "restarts": 0}),
    (events.WorkerExited(name="ledger", pid=11, exit_code=None, signal=9, cause="exited"),
     {"name": "ledger", "pid": 11, "exit_code": None, "signal": 9, "cause": "exited"}),
    (events.WorkerFatal(name="ledger", restarts=5, window_s=60.0),
     {"name": "ledger", "restarts": 5, "window_s": 60.0}),
    (events.WorkerFatal(name="gateway", restarts=0, window_s=60.0, error="held by rnsd",
                        retry_in_s=None),
     {"name": "gateway", "restarts": 0, "window_s": 60.0, "error": "held by rnsd"}),
    (events.WorkerFatalRetry(name="executor", retry=2, after_s=600.0),
     {"name": "executor", "retry": 2, "after_s": 600.0}),
    (events.TaskCancelled(id="t1", attempt=1, reason="no space left"),
     {"id": "t1", "attempt": 1, "reason": "no space left"}),
    (events.ResourceAlert(metric="cpu_percent", subject="host", value=97, threshold=95.0,
                          raised=True),
     {"metric": "cpu_percent", "subject": "host", "value": 97, "threshold": 95.0,
      "raised": True}),
    (events.TaskSubmitted(id="t1", name="echo", args=[1], priority=5),
     {"id": "t1", "name": "echo", "args": [1], "priority": 5}),
    (events.TaskSubmitted(id="t2", name="echo", args=[], priority=5, origin="o",
                          origin_attempt=2, requires=["gpu"], timeout=3.5),
     {"id": "t2", "name": "echo", "args": [], "priority": 5, "origin": "o",
      "origin_attempt": 2, "requires": ["gpu"], "timeout": 3.5}),
    (events.TaskStarted(id="t1", attempt=1, pid=12), {"id": "t1", "attempt": 1, "pid": 12}),
    (events.TaskDelegated(id="t1", attempt=1, peer="p", lease_s=5.0, term=3),
     {"id": "t1", "attempt": 1, "peer": "p", "lease_s": 5.0, "term": 3}),
    (events.TaskRequeued(id="t1", attempts=1, reason="died"),
     {"id": "t1", "attempts": 1, "reason": "died"}),
    (events.TaskSucceeded(id="t1", attempt=1, result=None, duration_s=0.5),
     {"id": "t1", "attempt": 1, "result": None, "duration_s": 0.5}),
    (events.TaskFailed(id="t1", attempt=2, ran_on="p", error={"type": "E", "message": "m"}),
     {"id": "t1", "attempt": 2, "ran_on": "p", "error": {"type": "E", "message": "m"}}),
    (events.TaskTimedOut(id="t1", attempt=1, error=None),
     {"id": "t1", "attempt": 1, "error": None}),
    (events.TaskCancelled(id="t1", attempt=1), {"id": "t1", "attempt": 1}),
    (events.PeerJoined(node="n", name="a", generation=2),
     {"node": "n", "name": "a", "generation": 2}),
    (events.PeerRestarted(node="n", name="a", generation=3),
     {"node": "n", "name": "a", "generation": 3}),
    (events.PeerLeft(node="n", name="a", reason="timeout"),
     {"node": "n", "name": "a", "reason": "timeout"}),
    (events.ClusterSeat(seat=[b"\x01\x02", 1, 7], term=4),
     {"seat": [b"\x01\x02", 1, 7], "term": 4}),
    (events.ClusterSeat(seat=None, term=0), {"seat": None, "term": 0}),
    (events.ClusterChanged(clusters=[{"id": "c"}], term=1), {"clusters": [{"id": "c"}], "term": 1}),
    (events.StateOwn(record=[b"\x01", 1, 2, {"k": "v"}]),
     {"record": [b"\x01", 1, 2, {"k": "v"}]}),
    (events.StateView(records=[]), {"records": []}),
    (events.GatewayStarted(node="n", generation=1, interfaces=[{"name": "tcp", "online": True}],
                           seat={"seat": None, "term": 0}),
     {"node": "n", "generation": 1, "interfaces": [{"name": "tcp", "online": True}],
      "seat": {"seat": None, "term": 0}}),
    (events.GatewayStopped(), {}),
    (events.OperatorCommand(from_="ab" * 16, via="lxmf", command="status", message="cd" * 32),
     {"from": "ab" * 16, "via": "lxmf", "command": "status", "message": "cd" * 32}),
    (events.GatewayInterfaceFailed(error="port taken"), {"error": "port taken"}),
    (events.GatewayInterfaceFailed(error="held by rnsd", restarts_help=False),
     {"error": "held by rnsd", "restarts_help": False}),
    (events.GatewayReticulumMode(mode="attach", why="rnsd runs",
                                 shared_instance={"port": 37428}),
     {"mode": "attach", "why": "rnsd runs", "shared_instance": {"port": 37428}}),
    (events.GatewaySharedInstance(address="127.0.0.1:37428", connected=False, error="gone"),
     {"address": "127.0.0.1:37428", "connected": False, "error": "gone"}),
    (events.InterclusterSent(id="m", to="c", topic="t", bytes=10),
     {"id": "m", "to": "c", "topic": "t", "bytes": 10}),
    (events.InterclusterDelivered(id="m", to="c", subscribers=2, attempts=1),
     {"id": "m", "to": "c", "subscribers": 2, "attempts": 1}),
    (events.InterclusterFailed(id="m", to="c", attempts=3, reason="gone"),
     {"id": "m", "to": "c", "attempts": 3, "reason": "gone"}),
    (events.InterclusterRouted(id="m", from_="s", topic="t", delivered=2, failed=0),
     {"id": "m", "from": "s", "topic": "t", "delivered": 2, "failed": 0}),
    (events.InterclusterReceived(id="m", from_="s", topic="t"),
     {"id": "m", "from": "s", "topic": "t"}),
    (events.LedgerForgeryRefused(feed="f", from_="s", reason="bad signature", suppressed=3),
     {"feed": "f", "from": "s", "reason": "bad signature", "suppressed": 3}),
    (events.LedgerForgeryRefused(feed="f", from_="s", reason="bad signature"),
     {"feed": "f", "from": "s", "reason": "bad signature"}),
    (events.LedgerForkDetected(feed="f", seq=9, from_="s"), {"feed": "f", "seq": 9, "from": "s"}),
]


def test_every_kind_has_a_sample() -> None:
    assert sorted({event.KIND for event, _ in SAMPLES}) == events.kinds()


@pytest.mark.parametrize(("event", "stored"), SAMPLES, ids=lambda v: getattr(v, "KIND", ""))
def test_every_kind_round_trips_byte_for_byte(event: events.Event, stored: dict[str, Any]
                                              ) -> None:
    data = event.to_data()
    pack = msgpack.Packer(use_bin_type=True).pack
    assert pack(data) == pack(stored)  # key order counts: hashes cover these bytes
    assert event.entry() == (event.KIND, data)
    unpacked = msgpack.unpackb(pack(data), raw=False)
    assert events.decode(event.KIND, unpacked) == event


def test_task_outcome_picks_the_kind_of_the_state() -> None:
    assert events.task_outcome("succeeded", id="t", attempt=1, result=0).to_data() == \
        {"id": "t", "attempt": 1, "result": 0}
    assert events.task_outcome("timed_out", id="t", attempt=1, error=None).KIND == \
        "task.timed_out"


@pytest.mark.parametrize(("kind", "data", "field"), [
    ("task.started", {"attempt": 1}, "id"),
    ("task.started", {"id": "t", "attempt": "1"}, "attempt"),
    ("task.succeeded", {"id": "t"}, "result"),
    ("peer.left", {"node": "n", "name": 1, "reason": "r"}, "name"),
    ("intercluster.received", {"id": "m", "topic": "t"}, "from"),
    ("worker.exited", {"name": "x", "pid": 1, "exit_code": 0, "cause": "exited"}, "signal"),
    ("resource.alert", {"metric": "m", "subject": "s", "value": "high", "threshold": 1.0,
                        "raised": True}, "value"),
])
def test_a_bad_shape_names_the_kind_and_field(kind: str, data: dict[str, Any], field: str
                                              ) -> None:
    with pytest.raises(ProtocolError) as caught:
        events.decode(kind, data)
    assert (caught.value.kind, caught.value.field) == (kind, field)
    assert f"{kind}.{field}" in str(caught.value)


def test_data_that_is_not_a_map_or_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ProtocolError, match="task.started: data is a list"):
        events.decode("task.started", ["t"])
    with pytest.raises(ProtocolError, match="task.future: unknown event kind"):
        events.decode("task.future", {})
    assert events.lookup("task.future") is None


def test_optional_fields_may_be_absent_and_unknown_keys_are_ignored() -> None:
    """Older feeds lack fields; a newer node's feed may carry keys this version ignores."""
    assert events.decode("task.delegated", {"id": "t", "peer": "p", "extra": 1}) == \
        events.TaskDelegated(id="t", peer="p")


# --- the vocabulary is declared once --------------------------------------------------------

_SINKS = {"append", "record", "_append", "_record"}
_SCANNED = ("akita", "workers", "supervisor")


def _literal_kinds(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, kind) of every call to a ledger sink whose kind is spelled out as a string."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        first = node.args[0]
        spelled = isinstance(first, ast.JoinedStr) or (
            isinstance(first, ast.Constant) and isinstance(first.value, str)
            and "." in first.value)
        # A ledger sink takes (kind, data): one argument is a list's append.
        if name in _SINKS and len(node.args) >= 2 and spelled:
            found.append((node.lineno, ast.unparse(first)))
    return found


def test_no_module_passes_a_literal_kind_to_a_ledger_append() -> None:
    offenders = []
    for package in _SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "akita" / "wire" / "events.py":
                continue
            for line, kind in _literal_kinds(ast.parse(path.read_text(), str(path))):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {kind}")
    assert offenders == [], ("declare these kinds in akita/wire/events.py and append the "
                             f"event: {offenders}")


def test_the_scan_finds_a_literal_kind() -> None:
    tree = ast.parse('ledger.append("task.started", {})\nself._record(f"task.{s}", d)\n'
                     'items.append("x.y")\nrows.append(f"{a}.b")\n')
    assert _literal_kinds(tree) == [(1, "'task.started'"), (2, "f'task.{s}'")]


# --- the ledger.append and ledger.committed frames ------------------------------------------


def test_hand_built_ledger_frames_decode_as_their_messages() -> None:
    event = protocol.ledger_event("task.started", 1.5, {"id": "t"})
    assert tuple(event) == protocol.LEDGER_EVENT_KEYS
    acked = protocol.ledger_append_body("s", 3, [event], base=2)
    rid, msg = protocol.decode_frame(msgpack.packb(acked, use_bin_type=True))
    assert (rid, msg) == (3, protocol.LedgerAppend(source="s", ref=3, events=[event], base=2))
    quiet = protocol.ledger_append_body("s", 0, [event], ack=False)
    rid, msg = protocol.decode_frame(msgpack.packb(quiet, use_bin_type=True))
    assert (rid, msg) == (None, protocol.LedgerAppend(source="s", ref=0, events=[event],
                                                      ack=False))
    k_ts, k_kind, k_data = protocol.LEDGER_COMMITTED_KEYS
    pack = msgpack.packb
    frame = b"".join((protocol.ledger_committed_prefix("feed"), pack(7), k_ts, pack(1.5),
                      k_kind, pack("task.started"), k_data, pack({"id": "t"})))
    assert protocol.decode(frame) == protocol.LedgerCommitted(
        feed="feed", seq=7, ts=1.5, event_kind="task.started", data={"id": "t"})
    assert protocol.read_committed(frame) == (7, 1.5, "task.started", {"id": "t"})
    beat = protocol.encode(protocol.Heartbeat(name="w", pid=1, ts=0.0))
    for bad in (b"\xc1", pack([1, 2]), beat, frame.replace(pack(7), pack("7"), 1)):
        assert protocol.read_committed(bad) is None, bad


def test_replay_skips_and_counts_events_that_do_not_decode() -> None:
    book = TaskBook("me")
    book.apply("task.submitted", {"id": "t", "name": "n", "args": [], "priority": 5}, 1.0)
    book.apply("task.started", {"id": "t", "attempt": "two"}, 2.0)   # damaged
    book.apply("task.submitted", ["not", "a", "map"], 3.0)            # damaged
    book.apply("task.future_kind", {"anything": 1}, 4.0)              # unknown: not counted
    assert (book.unreadable, book.records["t"].state) == (2, TaskState.QUEUED)
    assert "task.submitted" in book.last_unreadable
