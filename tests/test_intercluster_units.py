"""Inter-cluster messages without a network: the pure rules (`akita.mesh.messaging`) and the
gateway component (`workers.gateway.intercluster`) driven through stand-ins for the links, the
formation and the state store, on a clock the test moves."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from akita import config as config_mod
from akita.mesh import messaging as msgs
from akita.mesh import state as st
from akita.mesh.cluster import Assignment, Cluster, Seat
from akita.wire import mesh, protocol
from workers.gateway.intercluster import InterCluster
from workers.gateway.links import DEFER, RequestRefused

# --- the pure rules ---------------------------------------------------------------------------


def test_topics_and_prefixes() -> None:
    assert msgs.check_topic("alerts.fire") == "alerts.fire"
    assert msgs.check_topic("", prefix=True) == ""
    for bad in ("", "has space", "tab\there", "x" * 129, 3):
        with pytest.raises(msgs.MessageError):
            msgs.check_topic(bad)
    assert msgs.matches(["alerts.", "ops"], "ops.deploy")
    assert msgs.matches([""], "anything")
    assert not msgs.matches(["alerts."], "alert")


def test_payloads_must_be_json_and_fit_the_limit() -> None:
    assert msgs.payload_size({"a": [1, 2.5, None, True, "x"]}, 100) > 0
    for bad in (b"bytes", {1: "int key"}, math.nan, math.inf, {"deep": {"set": {1}}}):
        with pytest.raises(msgs.MessageError):
            msgs.payload_size(bad, 1000)
    with pytest.raises(msgs.PayloadTooLarge) as too_big:
        msgs.payload_size("y" * 200, 100)
    assert "max_message_bytes" in str(too_big.value)


def test_bodies_round_trip() -> None:
    send = msgs.SendBody(msgs.new_id(), "a.b", {"k": [1]}, "c1", "c0", 1.5)
    assert msgs.decode_send(send.encode(), 1000) == send
    deliver = msgs.DeliverBody(msgs.new_id(), "a.b", None, "ab" * 16, "c0")
    assert msgs.decode_deliver(deliver.encode(), 1000) == deliver
    outcome = msgs.Outcome(("n1",), (("n2", "gone"),), "n0", 3)
    assert msgs.decode_outcome(outcome.encode()) == outcome


@pytest.mark.parametrize("body", [
    {"id": "zz", "topic": "a", "payload": 1, "to": "c", "from_cluster": "", "wait_s": 1.0},
    {"id": "ab" * 16, "topic": "a b", "payload": 1, "to": "c", "from_cluster": "",
     "wait_s": 1.0},
    {"id": "ab" * 16, "topic": "a", "to": "c", "from_cluster": "", "wait_s": 1.0},
    {"id": "ab" * 16, "topic": "a", "payload": 1, "to": "c", "from_cluster": "",
     "wait_s": 0},
    {"id": "ab" * 16, "topic": "a", "payload": b"raw", "to": "c", "from_cluster": "",
     "wait_s": 1.0},
    [1, 2, 3],
])
def test_malformed_send_bodies_are_refused(body: Any) -> None:
    with pytest.raises(mesh.WireError):
        msgs.decode_send(mesh.pack(body), 1000)


@given(hs.binary(max_size=300))
def test_garbage_never_raises_anything_but_wire_error(data: bytes) -> None:
    for decode in (lambda d: msgs.decode_send(d, 100), lambda d: msgs.decode_deliver(d, 100),
                   msgs.decode_outcome):
        try:
            decode(data)
        except mesh.WireError:
            pass


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = msgs.Backoff(initial_s=0.5, max_s=3.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittery = msgs.Backoff(initial_s=1.0, jitter=0.2)
    assert all(0.8 <= jittery.next_delay() / 2 ** i <= 1.2 for i in range(3))


def test_dedup_window_remembers_within_the_window_and_its_size() -> None:
    window = msgs.DedupWindow(window_s=10, max_entries=3)
    assert window.first_time(("s", "1"), 0) and not window.first_time(("s", "1"), 5)
    assert window.first_time(("other", "1"), 5)           # the key includes the sender
    assert window.first_time(("s", "1"), 10.5)            # the window has passed
    for n in range(2, 6):
        window.first_time(("s", str(n)), 11)
    assert len(window) == 3 and window.first_time(("s", "2"), 11)   # evicted, oldest first


def test_subscriptions_are_leases() -> None:
    subs = msgs.Subscriptions()
    subs.add("a", "alerts.", until=10)
    subs.add("b", "alerts.", until=20)
    subs.add("b", "ops.", until=5)
    assert subs.prefixes() == ["alerts.", "ops."]
    subs.expire(now=10)
    assert subs.prefixes() == ["alerts."]
    subs.remove("b", "alerts.")
    assert subs.prefixes() == []
    for n in range(msgs.MAX_SUBSCRIPTIONS):
        subs.add("c", f"t{n}", until=100)
    with pytest.raises(msgs.MessageError):
        subs.add("c", "one.more", until=100)


# --- the component, with stand-ins -----------------------------------------------------------

SELF, MATE, OTHER_MATE = "aa" * 16, "bb" * 16, "cc" * 16
FAR_COORD, FAR_MEMBER = "dd" * 16, "ee" * 16
OWN, FAR = "c0c0c0c0", "f0f0f0f0"


@dataclass
class Sent:
    peer: str
    path: str
    data: bytes
    on_response: Callable[[bytes], None]
    on_failure: Callable[[str], None]
    timeout_s: float


@dataclass
class FakeLinks:
    handlers: dict[str, Callable[..., Any]] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)

    def serve(self, path: str, handler: Callable[..., Any]) -> None:
        self.handlers[path] = handler

    def request(self, peer: str, path: str, data: bytes, on_response: Callable[[bytes], None],
                on_failure: Callable[[str], None], timeout_s: float = 10.0) -> None:
        self.sent.append(Sent(peer, path, data, on_response, on_failure, timeout_s))


@dataclass
class FakeRequest:
    peer_id: str | None
    data: bytes
    answers: list[tuple[str, Any]] = field(default_factory=list)

    def respond(self, payload: bytes) -> None:
        self.answers.append(("ok", payload))

    def fail(self, reason: str) -> None:
        self.answers.append(("fail", reason))


class FakeFormation:
    def __init__(self, own_coordinator: str = SELF) -> None:
        self.local = SimpleNamespace(term=4)
        self.set(own_coordinator)

    def set(self, own_coordinator: str, far: bool = True) -> None:
        clusters = [Cluster(OWN, (SELF, MATE, OTHER_MATE), own_coordinator)]
        seats = {SELF: Seat(OWN, 1), MATE: Seat(OWN, 2), OTHER_MATE: Seat(OWN, 3)}
        if far:
            clusters.append(Cluster(FAR, (FAR_COORD, FAR_MEMBER), FAR_COORD))
            seats.update({FAR_COORD: Seat(FAR, 1), FAR_MEMBER: Seat(FAR, 2)})
        self.assignment = Assignment(tuple(sorted(clusters, key=lambda c: c.id)), seats)

    def own_cluster(self) -> Cluster:
        return self.assignment.cluster(OWN)

    def cluster_of(self, node: str) -> str:
        seat = self.assignment.seats.get(node)
        return seat.cluster if seat else ""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    ic: InterCluster
    links: FakeLinks
    formation: FakeFormation
    records: dict[str, st.Record]
    clock: Clock
    published: list[tuple[str, protocol.Message]]
    ledger: list[tuple[str, dict[str, Any]]]
    own_updates: list[dict[str, Any]]

    def subscribe(self, node: str, *prefixes: str) -> None:
        self.records[node] = st.Record.new(node, 1, 1, {st.KEY_SUBSCRIPTIONS: list(prefixes)})

    def serve(self, path: str, peer: str | None, data: bytes) -> FakeRequest:
        request = FakeRequest(peer, data)
        try:
            result = self.links.handlers[f"akita.intercluster/{path}"](request)
        except RequestRefused as exc:
            request.fail(str(exc))
        else:
            if result is not DEFER:
                request.respond(result)
        return request

    def advance(self, seconds: float, step: float = 0.1) -> None:
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now = min(end, self.clock.now + step)
            self.ic.tick(self.clock.now)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    config = config_mod.parse(
        "[node]\ndata_dir = d\nrun_dir = r\nlog_dir = l\n[cluster]\npeer_timeout = 4\n",
        tmp_path / "akita.ini")
    links, formation, clock = FakeLinks(), FakeFormation(), Clock()
    records: dict[str, st.Record] = {}
    published: list[tuple[str, protocol.Message]] = []
    ledger: list[tuple[str, dict[str, Any]]] = []
    own_updates: list[dict[str, Any]] = []
    net = SimpleNamespace(
        config=config, node_id=SELF, links=links, formation=formation,
        table=SimpleNamespace(alive_ids=lambda: {MATE, OTHER_MATE, FAR_COORD, FAR_MEMBER}),
        sync=SimpleNamespace(store=SimpleNamespace(get=records.get)),
        update_own=own_updates.append)
    ic = InterCluster(net, lambda topic, msg: published.append((topic, msg)),  # type: ignore[arg-type]
                      lambda kind, data, **_kw: ledger.append((kind, data)), clock=clock)
    return Harness(ic, links, formation, records, clock, published, ledger, own_updates)


def send(h: Harness, cluster: str = FAR, deadline_s: float = 5.0, **extra: Any
         ) -> list[protocol.Message]:
    replies: list[protocol.Message] = []
    now = h.ic.handle(protocol.MessageSend(cluster=cluster, topic="alerts.fire",
                                           payload={"n": 1}, deadline_s=deadline_s, **extra),
                      replies.append)
    if now is not None:
        replies.append(now)
    return replies


def test_a_send_goes_to_the_target_coordinator_and_retries_until_it_answers(h: Harness
                                                                           ) -> None:
    replies = send(h)
    first = h.links.sent[-1]
    assert (first.peer, first.path) == (FAR_COORD, "akita.intercluster/send")
    assert first.timeout_s == pytest.approx(1.0)          # peer_timeout / 4
    body = msgs.decode_send(first.data, 65536)
    assert (body.to, body.from_cluster, body.payload) == (FAR, OWN, {"n": 1})
    first.on_failure("no response")
    h.advance(0.1)
    assert len(h.links.sent) == 1 and not replies        # backing off
    h.advance(0.5)
    second = h.links.sent[-1]
    assert len(h.links.sent) == 2 and msgs.decode_send(second.data, 65536).id == body.id
    second.on_response(msgs.Outcome((FAR_MEMBER,), (), FAR_COORD, 2).encode())
    (reply,) = replies
    assert reply == protocol.MessageDelivered(id=body.id, cluster=FAR, coordinator=FAR_COORD,
                                              delivered=[FAR_MEMBER], attempts=2)
    first.on_response(msgs.Outcome((), (), FAR_COORD, 2).encode())   # late: ignored
    assert len(replies) == 1
    assert [kind for kind, _ in h.ledger] == ["intercluster.sent", "intercluster.delivered"]


def test_an_attempt_reticulum_never_fails_is_ended_by_our_own_timer(h: Harness) -> None:
    send(h)
    h.advance(2.0)      # 1 s wait + 0.2 s grace + at most 0.24 s backoff
    assert len(h.links.sent) == 2, "the silent first try was not given up"


def test_a_partial_delivery_is_retried_and_failure_reported_after_the_deadline(h: Harness
                                                                               ) -> None:
    replies = send(h, deadline_s=3)
    partial = msgs.Outcome((FAR_MEMBER,), (("ff" * 16, "no response"),), FAR_COORD, 2)
    answered = 0
    while h.clock.now < 103.5:
        for attempt in h.links.sent[answered:]:
            attempt.on_response(partial.encode())
        answered = len(h.links.sent)
        h.advance(0.1)
        assert not replies or h.clock.now >= 103
    assert answered >= 3
    (reply,) = replies
    assert isinstance(reply, protocol.Error) and reply.code == "undeliverable"
    assert "reached 1 of 2 subscribers" in reply.message and "attempt" in reply.message
    assert h.ledger[-1][0] == "intercluster.failed"


def test_an_unknown_cluster_is_retried_then_reported(h: Harness) -> None:
    replies = send(h, cluster="77777777", deadline_s=2)
    h.advance(2.1)
    (reply,) = replies
    assert isinstance(reply, protocol.Error) and "no cluster 77777777 known" in reply.message
    assert h.links.sent == []


def test_a_resend_with_the_same_id_joins_the_pending_message(h: Harness) -> None:
    message_id = msgs.new_id()
    first = send(h, id=message_id)
    second = send(h, id=message_id)
    assert len(h.links.sent) == 1
    h.links.sent[-1].on_response(msgs.Outcome((), (), FAR_COORD, 1).encode())
    assert len(first) == len(second) == 1 and first[0] == second[0]


def test_bad_sends_are_answered_at_once(h: Harness) -> None:
    (too_big,) = h.ic.handle(protocol.MessageSend(cluster=FAR, topic="t", payload="x" * 70000),
                             lambda _r: None),
    assert isinstance(too_big, protocol.Error) and too_big.code == "too_large"
    for msg in (protocol.MessageSend(cluster=FAR, topic="", payload=1),
                protocol.MessageSend(cluster=FAR, topic="t", payload=1, deadline_s=-1),
                protocol.MessageSend(cluster=FAR, topic="t", payload=1, id="not hex"),
                protocol.MessageSubscribe(prefix="a b", subscriber="s")):
        reply = h.ic.handle(msg, lambda _r: None)
        assert isinstance(reply, protocol.Error) and reply.code == "bad_request", msg


def test_the_coordinator_delivers_to_subscribed_members_only(h: Harness) -> None:
    h.subscribe(MATE, "alerts.")
    h.subscribe(OTHER_MATE, "ops.")
    h.ic.handle(protocol.MessageSubscribe(prefix="alerts.", subscriber="cli"), lambda _r: None)
    h.subscribe(SELF, "alerts.")
    body = msgs.SendBody(msgs.new_id(), "alerts.fire", [1], OWN, FAR, 1.0)
    request = h.serve("send", FAR_MEMBER, body.encode())
    (to_mate,) = h.links.sent
    assert (to_mate.peer, to_mate.path) == (MATE, "akita.intercluster/deliver")
    assert to_mate.timeout_s == pytest.approx(0.6)
    delivered = msgs.decode_deliver(to_mate.data, 65536)
    assert (delivered.sender, delivered.from_cluster) == (FAR_MEMBER, FAR)
    assert [topic for topic, _msg in h.published] == ["message.alerts.fire"]   # itself
    assert request.answers == []
    again = h.serve("send", FAR_MEMBER, body.encode())   # a retry joins the fan-out
    to_mate.on_response(b"")
    for answered in (request, again):
        (kind, data), = answered.answers
        outcome = msgs.decode_outcome(data)
        assert kind == "ok" and sorted(outcome.delivered) == sorted([SELF, MATE])
        assert outcome.failed == () and outcome.term == 4


def test_no_subscriber_is_an_immediate_empty_delivery(h: Harness) -> None:
    body = msgs.SendBody(msgs.new_id(), "nobody.wants", 1, OWN, FAR, 1.0)
    (kind, data), = h.serve("send", FAR_MEMBER, body.encode()).answers
    assert kind == "ok" and msgs.decode_outcome(data).delivered == ()


def test_only_the_coordinator_of_the_target_cluster_routes(h: Harness) -> None:
    h.formation.set(MATE)
    body = msgs.SendBody(msgs.new_id(), "alerts.x", 1, OWN, FAR, 1.0)
    (kind, reason), = h.serve("send", FAR_MEMBER, body.encode()).answers
    assert kind == "fail" and "not the coordinator" in reason
    (kind, reason), = h.serve("send", None, body.encode()).answers
    assert kind == "fail"
    (kind, reason), = h.serve("send", FAR_MEMBER, b"\x93garbage").answers
    assert kind == "fail" and "malformed" in reason


def test_a_member_takes_deliveries_from_its_coordinator_once(h: Harness) -> None:
    h.formation.set(MATE)
    deliver = msgs.DeliverBody(msgs.new_id(), "alerts.x", {"v": 1}, FAR_MEMBER, FAR)
    (kind, _), = h.serve("deliver", OTHER_MATE, deliver.encode()).answers
    assert kind == "fail" and h.published == []
    for _ in range(3):
        (kind, _), = h.serve("deliver", MATE, deliver.encode()).answers
        assert kind == "ok"
    (topic, msg), = h.published
    assert topic == "message.alerts.x"
    assert msg == protocol.MessageReceived(id=deliver.id, sender=FAR_MEMBER, cluster=FAR,
                                           topic="alerts.x", payload={"v": 1})
    assert h.ic.counters.duplicates == 2
    assert h.ledger == [("intercluster.received", {"id": deliver.id, "from": FAR_MEMBER,
                                                   "topic": "alerts.x"})]


def test_subscriptions_are_advertised_and_lapse(h: Harness) -> None:
    assert h.own_updates == [{st.KEY_SUBSCRIPTIONS: []}]
    ok = h.ic.handle(protocol.MessageSubscribe(prefix="alerts.", subscriber="s1", lease_s=2),
                     lambda _r: None)
    assert ok == protocol.Ok()
    assert h.own_updates[-1] == {st.KEY_SUBSCRIPTIONS: ["alerts."]}
    h.advance(2.1)
    assert h.own_updates[-1] == {st.KEY_SUBSCRIPTIONS: []}
    h.ic.handle(protocol.MessageSubscribe(prefix="ops.", subscriber="s2"), lambda _r: None)
    h.ic.handle(protocol.MessageUnsubscribe(prefix="ops.", subscriber="s2"), lambda _r: None)
    assert h.own_updates[-1] == {st.KEY_SUBSCRIPTIONS: []}


def test_sending_to_the_own_cluster_as_its_coordinator_needs_no_link(h: Harness) -> None:
    h.subscribe(MATE, "alerts.")
    replies = send(h, cluster=OWN)
    (to_mate,) = h.links.sent
    assert to_mate.path == "akita.intercluster/deliver"
    to_mate.on_response(b"")
    (reply,) = replies
    assert isinstance(reply, protocol.MessageDelivered) and reply.delivered == [MATE]


@pytest.fixture
def h(harness: Harness) -> Harness:
    return harness
