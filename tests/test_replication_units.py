"""Ledger replication over Links, without Reticulum or a ledger: the request bodies, the
bundle budget, the choice of the next pull, and the `Replicator`'s rules driven through fake
links and a fake ledger worker (members only, one request per mate, one mate per feed,
paging, stalls, bounded retries, quarantine after a forgery)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as hs

from akita.identity import NodeIdentity
from akita.ledger import bundles
from akita.ledger.bundles import Head
from akita.mesh import replication as plan
from akita.mesh.pacing import Pacer
from akita.wire import mesh, protocol
from workers.gateway.links import DEFER, RequestRefused
from workers.gateway.replicate import MAX_SERVING_PER_MATE, ReplicationTiming, Replicator

ME = "00" * 16
A = "aa" * 16
B = "bb" * 16
STRANGER = "ee" * 16

# --- the pure part --------------------------------------------------------------------------


def test_range_request_round_trip_and_garbage() -> None:
    request = plan.RangeRequest(A, 2**40, True)
    data = plan.encode_range_request(request)
    assert len(data) <= plan.RANGE_REQUEST_MAX_BYTES
    assert plan.decode_range_request(data) == request
    for bad in (b"", b"\xc1", msgpack.packb([1, 2, 3]), msgpack.packb([b"x" * 16, -1, True]),
                msgpack.packb([b"x" * 15, 1, True]), msgpack.packb([b"x" * 16, 1, 1]),
                b"\x93" + b"\xc4\x10" + bytes(16) + b"\x01" * 100):
        with pytest.raises(mesh.WireError):
            plan.decode_range_request(bad)


def test_range_response_round_trip_and_garbage() -> None:
    assert plan.decode_range_response(plan.encode_range_response(b"bundle", 7)) == (b"bundle", 7)
    for bad in (msgpack.packb([b"x"]), msgpack.packb(["x", 1]), msgpack.packb([b"x", -1])):
        with pytest.raises(mesh.WireError):
            plan.decode_range_response(bad)


@given(hs.binary(max_size=64))
def test_garbage_heads_and_bundles_raise_only_wire_errors(data: bytes) -> None:
    try:
        plan.decode_peer_heads(data)
    except mesh.WireError:
        pass
    assert plan.bundle_feed(data) in (None, *([data[4:20].hex()] if len(data) >= 20 else []))


def test_bundle_feed_reads_the_claimed_feed_only() -> None:
    author = NodeIdentity.generate()
    bundle = bundles.encode_bundle(bundles.Bundle(
        author.node_id, None, 0, bytes(32), [(1.0, "k", msgpack.packb(1))],
        [bundles.Checkpoint(1, 1.0, bytes(32), bytes(64))]))
    assert plan.bundle_feed(bundle) == author.node_id
    assert plan.bundle_feed(msgpack.packb([2, bytes(16)] + [0] * 6)) is None


@pytest.mark.parametrize("mdu", [431, 1119, 16303, 262_000])
def test_a_budgeted_bundle_fits_one_packet_when_the_link_allows(mdu: int) -> None:
    budget = plan.bundle_budget(mdu)
    assert budget >= plan.MIN_BUNDLE_BYTES
    if mdu - plan.RESPONSE_ENVELOPE_BYTES >= plan.MIN_BUNDLE_BYTES:
        # What Links sends: [request_id, [0, [bundle, head_seq]]], head_seq at its widest.
        body = plan.encode_range_response(b"x" * budget, 2**63 - 1)
        envelope = msgpack.packb([bytes(16), [0, body]], use_bin_type=True)
        assert len(envelope) <= mdu


def test_next_pull_takes_members_feeds_only_and_skips_what_it_must() -> None:
    mine = {ME: Head(9, b"m"), A: Head(3, b"a3")}
    theirs = {ME: Head(12, b"x"), A: Head(5, b"a5"), B: Head(4, b"b4"), STRANGER: Head(8, b"s")}
    members = {ME, A, B}
    assert plan.next_pull(mine, theirs, members=members, skip={ME}, stalled={}) == (A, 3)
    assert plan.next_pull(mine, theirs, members=members, skip={ME, A}, stalled={}) == (B, 0)
    # Stalled at the head the mate still reports: skipped; once it moves, asked again.
    assert plan.next_pull(mine, theirs, members=members, skip={ME, A},
                          stalled={B: Head(4, b"b4")}) is None
    assert plan.next_pull(mine, {**theirs, B: Head(6, b"b6")}, members=members, skip={ME, A},
                          stalled={B: Head(4, b"b4")}) == (B, 0)
    # A stranger's feed is never pulled, however far ahead.
    assert plan.next_pull({}, {STRANGER: Head(99, b"s")}, members=members, skip=(),
                          stalled={}) is None


# --- the Replicator, driven by hand ---------------------------------------------------------


@dataclass
class Sent:
    peer: str
    path: str
    data: bytes
    on_response: Any
    on_failure: Any


@dataclass
class FakeLinks:
    sent: list[Sent] = field(default_factory=list)
    handlers: dict[str, Any] = field(default_factory=dict)

    def serve(self, path: str, handler: Any) -> None:
        self.handlers[path] = handler

    def request(self, peer: str, path: str, data: bytes, on_response: Any, on_failure: Any,
                timeout_s: float = 0, max_response_bytes: int = 0) -> None:
        self.sent.append(Sent(peer, path, data, on_response, on_failure))

    def is_open(self, peer: str) -> bool:
        return False

    def take(self, path_end: str) -> list[Sent]:
        found = [s for s in self.sent if s.path.endswith(path_end)]
        self.sent = [s for s in self.sent if not s.path.endswith(path_end)]
        return found


@dataclass
class Asked:
    msg: Any
    on_reply: Any
    on_error: Any


@dataclass
class FakeLedger:
    asked: list[Asked] = field(default_factory=list)
    timeouts: int = 0

    def ask(self, msg: Any, expect: Any, on_reply: Any, on_error: Any, timeout_s: float = 0
            ) -> None:
        self.asked.append(Asked(msg, on_reply, on_error))

    def tick(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self, kind: type) -> list[Asked]:
        found = [a for a in self.asked if isinstance(a.msg, kind)]
        self.asked = [a for a in self.asked if not isinstance(a.msg, kind)]
        return found


class Rig:
    """A Replicator on a fake node: ME in a cluster with A and B (both alive)."""

    def __init__(self, members: tuple[str, ...] = (ME, A, B)) -> None:
        self.members = set(members)
        self.links = FakeLinks()
        self.ledger = FakeLedger()
        self.net = SimpleNamespace(
            node_id=ME, links=self.links,
            config=SimpleNamespace(channels=SimpleNamespace(ledger_channel="akita.ledger")),
            formation=SimpleNamespace(
                own_cluster=lambda: SimpleNamespace(members=sorted(self.members)),
                cluster_mates=lambda: self.members - {ME}),
            table=SimpleNamespace(alive_ids=lambda: self.members - {ME}, get=lambda _p: None),
            peer_joined_hooks=[], peer_left_hooks=[], peer_updated_hooks=[], cluster_hooks=[],
            pacer=Pacer.lan())
        self.timing = ReplicationTiming(round_s=1.0, refresh_s=6.0, request_timeout_s=5.0,
                                        retry_s=0.0, max_retries=2, quarantine_s=60.0)
        self.rep = Replicator(self.net, self.ledger, self.timing)  # type: ignore[arg-type]
        self.now = 1e9  # what tick() is told: far past any retry or round that is due

    def tick(self) -> None:
        self.now += 10
        self.rep.tick(self.now)

    def round(self, mine: dict[str, int]) -> None:
        """Run a round with our heads at these seqs (hash = seq as bytes)."""
        self.tick()
        (asked,) = self.ledger.take(protocol.LedgerHeads)
        asked.on_reply(protocol.LedgerHeadsReply(
            own=ME, feeds={f: [s, _hash(s), s] for f, s in mine.items()}, forked=[]))

    def answer_heads(self, peer: str, theirs: dict[str, int], salt: bytes = b"") -> None:
        """The mate's heads at these seqs (hash = seq as bytes, unless salted)."""
        (sent,) = [s for s in self.links.sent if s.path.endswith("/heads") and s.peer == peer]
        self.links.sent.remove(sent)
        sent.on_response(bundles.encode_heads({f: Head(s, salt + _hash(s)) for f, s in
                                                   theirs.items()}))

    def ranges(self) -> dict[str, plan.RangeRequest]:
        return {s.peer: plan.decode_range_request(s.data) for s in self.links.sent
                if s.path.endswith("/range")}


def _hash(seq: int) -> bytes:
    return seq.to_bytes(8, "big") * 4


def _bundle(feed: str, after: int, count: int) -> bytes:
    return bundles.encode_bundle(bundles.Bundle(
        feed, None, after, _hash(after), [(1.0, "k", msgpack.packb(i)) for i in range(count)],
        [bundles.Checkpoint(after + count, 1.0, bytes(32), bytes(64))]))


def _range_answer(rig: Rig, peer: str, bundle: bytes, head: int) -> None:
    (sent,) = [s for s in rig.links.sent if s.path.endswith("/range") and s.peer == peer]
    rig.links.sent.remove(sent)
    sent.on_response(plan.encode_range_response(bundle, head))


def _ingested(rig: Rig, outcome: str, feed: str, head: int, stored: int = 0) -> Asked:
    (asked,) = rig.ledger.take(protocol.LedgerIngest)
    asked.on_reply(protocol.LedgerIngestReply(feed=feed, outcome=outcome, stored=stored,
                                              head_seq=head, head_hash=_hash(head)))
    return asked


def test_a_round_tells_every_live_mate_and_pulls_members_feeds_only() -> None:
    rig = Rig()
    rig.round({ME: 4})
    told = {s.peer: bundles.decode_heads(s.data) for s in rig.links.sent}
    assert set(told) == {A, B} and told[A] == {ME: Head(4, _hash(4)[:8])}
    rig.answer_heads(A, {A: 10, STRANGER: 50})
    rig.answer_heads(B, {})
    assert rig.ranges() == {A: plan.RangeRequest(A, 0, True)}
    (pull,) = rig.links.take("/range")
    # Nothing changed: no second exchange until something does.
    rig.round({ME: 4})
    assert not rig.links.take("/heads")
    rig.round({ME: 5})
    assert {s.peer for s in rig.links.take("/heads")} == {B}  # A is busy sending feed A
    pull.on_failure("timed out")
    rig.round({ME: 5})
    assert {s.peer for s in rig.links.take("/heads")} == {A}  # free again: told now


def test_pages_until_the_mates_head_and_hands_bundles_over_with_the_sender() -> None:
    rig = Rig()
    rig.round({ME: 1})
    rig.answer_heads(A, {A: 300})
    rig.answer_heads(B, {A: 300})
    # One mate sends feed A; the other waits rather than sending it too.
    (first,) = rig.ranges().items()
    peer = first[0]
    _range_answer(rig, peer, _bundle(A, 0, 100), 300)
    (ingest,) = [a for a in rig.ledger.asked if isinstance(a.msg, protocol.LedgerIngest)]
    assert ingest.msg.sender == peer
    _ingested(rig, "stored", A, 100, stored=100)
    assert rig.ranges() == {peer: plan.RangeRequest(A, 100, False)}  # the next page, no key
    _range_answer(rig, peer, _bundle(A, 100, 200), 300)
    _ingested(rig, "stored", A, 300, stored=200)
    assert rig.ranges() == {}
    assert rig.rep.counters.events_stored == 300 and rig.rep.counters.bundles_stored == 2


def test_a_bundle_of_another_feed_never_reaches_the_ledger_and_quarantines() -> None:
    rig = Rig()
    rig.round({ME: 1})
    rig.answer_heads(A, {A: 5})
    rig.answer_heads(B, {})
    _range_answer(rig, A, _bundle(STRANGER, 0, 5), 5)
    assert not rig.ledger.take(protocol.LedgerIngest)
    assert rig.rep.counters.refused == 1 and rig.rep.stats()["mates"][A]["quarantined"]


def test_a_forgery_quarantines_the_mate_and_stalls_the_feed() -> None:
    rig = Rig()
    rig.round({ME: 1})
    rig.answer_heads(A, {A: 5})
    rig.answer_heads(B, {})
    _range_answer(rig, A, _bundle(A, 0, 5), 5)
    _ingested(rig, "forgery", A, 0)
    assert rig.ranges() == {}
    assert rig.rep.counters.refused == 1
    mate = rig.rep.stats()["mates"][A]
    assert mate["quarantined"] and mate["stalled"] == [A]


def test_a_pull_that_brings_nothing_stalls_until_the_mates_head_moves() -> None:
    rig = Rig()
    rig.round({ME: 1, A: 5})
    rig.answer_heads(A, {A: 5}, salt=b"!")  # same seq, other hash: asked from one earlier
    rig.answer_heads(B, {})
    assert rig.ranges() == {A: plan.RangeRequest(A, 4, False)}
    _range_answer(rig, A, _bundle(A, 4, 1), 5)
    _ingested(rig, "duplicate", A, 5)
    assert rig.ranges() == {}
    assert rig.rep.counters.stalled == 1
    # It serves our heads back (its request carries its own): its head moved, ask again.
    handler = rig.links.handlers["akita.ledger/heads"]
    request = SimpleNamespace(peer_id=A, data=bundles.encode_heads({A: Head(6, b"x")}),
                              respond=lambda body: None, fail=lambda text: None)
    assert handler(request) is DEFER
    (asked,) = rig.ledger.take(protocol.LedgerHeads)
    asked.on_reply(protocol.LedgerHeadsReply(own=ME, feeds={A: [5, _hash(5), 5]}, forked=[]))
    assert rig.ranges() == {A: plan.RangeRequest(A, 5, False)}


def test_failures_retry_a_bounded_number_of_times() -> None:
    rig = Rig(members=(ME, A))
    rig.round({ME: 1})
    for _attempt in range(rig.timing.max_retries + 1):
        (sent,) = rig.links.take("/heads")
        sent.on_failure("no response")
        rig.tick()  # a retry is due, if any is left
    assert not rig.links.take("/heads")
    assert rig.rep.counters.failures == rig.timing.max_retries + 1


def test_forked_feeds_are_skipped_and_strangers_are_refused_service() -> None:
    rig = Rig()
    rig.tick()
    (asked,) = rig.ledger.take(protocol.LedgerHeads)
    asked.on_reply(protocol.LedgerHeadsReply(own=ME, feeds={A: [2, _hash(2), 2]},
                                             forked=[A]))
    rig.answer_heads(A, {A: 9})
    rig.answer_heads(B, {A: 9})
    assert rig.ranges() == {}
    for path in ("akita.ledger/heads", "akita.ledger/range"):
        with pytest.raises(RequestRefused):
            rig.links.handlers[path](SimpleNamespace(peer_id=STRANGER, data=b"", link_mdu=0))


def test_a_range_is_served_fitted_to_the_requesters_link() -> None:
    rig = Rig()
    answers: list[bytes] = []
    request = SimpleNamespace(peer_id=A, data=plan.encode_range_request(
        plan.RangeRequest(ME, 3, False)), link_mdu=16303, respond=answers.append,
        fail=lambda text: None)
    assert rig.links.handlers["akita.ledger/range"](request) is DEFER
    (asked,) = rig.ledger.take(protocol.LedgerRange)
    assert asked.msg == protocol.LedgerRange(feed=ME, after_seq=3, with_key=False,
                                             max_bytes=plan.bundle_budget(16303))
    asked.on_reply(protocol.LedgerRangeReply(feed=ME, bundle=b"b", first_seq=4, last_seq=4,
                                             head_seq=4))
    assert answers == [plan.encode_range_response(b"b", 4)]


def test_a_fork_marks_the_feed_and_nobody_sends_it_again() -> None:
    rig = Rig()
    rig.round({ME: 1, A: 3})
    rig.answer_heads(A, {A: 6})
    rig.answer_heads(B, {A: 6})
    ((peer, _request),) = rig.ranges().items()
    _range_answer(rig, peer, _bundle(A, 3, 3), 6)
    _ingested(rig, "fork", A, 3)
    assert rig.rep.counters.forks == 1 and rig.rep.stats()["forked"] == [A]
    assert rig.ranges() == {}  # neither mate is asked for it


def test_a_mate_flooding_requests_is_refused_past_a_few_in_flight() -> None:
    rig = Rig()
    handler = rig.links.handlers["akita.ledger/range"]
    body = plan.encode_range_request(plan.RangeRequest(ME, 0, True))

    def request() -> Any:
        return handler(SimpleNamespace(peer_id=A, data=body, link_mdu=16303,
                                       respond=lambda b: None, fail=lambda t: None))

    for _ in range(MAX_SERVING_PER_MATE):
        assert request() is DEFER
    with pytest.raises(RequestRefused, match="too many"):
        request()
    first = rig.ledger.take(protocol.LedgerRange)[0]
    first.on_error("timeout", "no answer")  # one settles: room for one more
    assert request() is DEFER


# --- who tells whom: the author, once per change ----------------------------------------------


def test_news_for_tells_only_feeds_spoken_for_that_moved_and_the_mate_lacks() -> None:
    mine = {ME: Head(5, b"x"), A: Head(9, b"y")}
    assert plan.news_for(mine, None, None, {ME})
    assert plan.news_for(mine, {ME: Head(4, b"w")}, {ME: Head(4, b"w")}, {ME})
    assert not plan.news_for(mine, {ME: Head(5, b"x")}, {}, {ME})      # told it already
    assert not plan.news_for(mine, {ME: Head(4, b"w")}, {ME: Head(5, b"")}, {ME})  # holds it
    assert not plan.news_for(mine, {}, {}, {B})                         # nothing of B's
    assert not plan.news_for({A: Head(9, b"y")}, {}, {}, {ME})          # A's: A tells it
    assert plan.news_for(mine, {}, {A: Head(3, b"")}, {A})


def test_events_pulled_from_their_author_are_not_passed_on_but_a_gone_authors_are() -> None:
    rig = Rig()
    rig.round({ME: 1, A: 1, B: 1})
    rig.answer_heads(A, {ME: 1, A: 1, B: 1})
    rig.answer_heads(B, {ME: 1, A: 1, B: 1})
    rig.round({ME: 1, A: 2, B: 1})   # A's new event reached us: A tells B itself
    assert not rig.links.take("/heads")
    rig.net.table.alive_ids = lambda: {B}   # A is gone (still a member for now)
    rig.round({ME: 1, A: 3, B: 1})
    assert {s.peer for s in rig.links.take("/heads")} == {B}  # we speak for A's feed now


def test_answering_a_mates_exchange_counts_as_the_pairs_exchange() -> None:
    rig = Rig()
    answers: list[bytes] = []
    request = SimpleNamespace(peer_id=A, data=bundles.encode_heads({A: Head(1, _hash(1))}),
                              link_mdu=16303, respond=answers.append, fail=lambda text: None)
    assert rig.links.handlers["akita.ledger/heads"](request) is DEFER
    (asked,) = rig.ledger.take(protocol.LedgerHeads)
    asked.on_reply(protocol.LedgerHeadsReply(own=ME, feeds={ME: [1, _hash(1), 1],
                                                            A: [1, _hash(1), 1]}, forked=[]))
    assert bundles.decode_heads(answers[0]) == {ME: Head(1, _hash(1)[:8]),
                                                A: Head(1, _hash(1)[:8])}
    rig.round({ME: 1, A: 1})
    assert {s.peer for s in rig.links.take("/heads")} == {B}  # A heard our heads already


def test_a_mate_that_pulled_our_new_events_is_not_told_them_again() -> None:
    rig = Rig()
    rig.round({ME: 1})
    rig.answer_heads(A, {ME: 1})
    rig.answer_heads(B, {ME: 1})
    request = SimpleNamespace(peer_id=A, data=plan.encode_range_request(
        plan.RangeRequest(ME, 1, False)), link_mdu=16303, respond=lambda body: None,
        fail=lambda text: None)
    rig.links.handlers["akita.ledger/range"](request)  # A pulls events 2-3 before our round
    (asked,) = rig.ledger.take(protocol.LedgerRange)
    asked.on_reply(protocol.LedgerRangeReply(feed=ME, bundle=b"b", first_seq=2, last_seq=3,
                                             head_seq=3))
    rig.round({ME: 3})
    assert {s.peer for s in rig.links.take("/heads")} == {B}
