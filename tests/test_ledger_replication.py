"""Feed replication, the ledger side: the bundle format and its checks (pure), then real
ledger writers of two nodes exchanging feeds through ledger.heads / ledger.range /
ledger.ingest, as the gateway does over Reticulum.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from akita import identity, transport
from akita.errors import ProtocolError
from akita.identity import NodeIdentity
from akita.ledger import bundles, chain
from akita.ledger.bundles import Bundle, Checkpoint, Head, Held, Outcome
from akita.ledger.client import LedgerClient
from akita.wire import protocol
from tests.helpers import REPO, wait_for
from tests.test_ledger_worker import LedgerProcess

# --- building bundles by hand (as a peer, honest or not, would) -----------------------------


def events(first: int, count: int, kind: str = "test.rep") -> list[tuple[float, str, bytes]]:
    return [(1000.0 + i, kind, chain.pack_data({"i": i})) for i in range(first, first + count)]


def chain_of(feed: str, evs: list[tuple[float, str, bytes]], after_seq: int = 0,
             prev: bytes = chain.GENESIS_HASH) -> list[bytes]:
    """The hash of each event, as the author's writer computes it."""
    rows, _seq, _head = chain.Chain(feed, 0).extend(evs, after_seq, prev)
    return [row[6] for row in rows]


def signed_bundle(author: NodeIdentity, evs: list[tuple[float, str, bytes]], *,
                  after_seq: int = 0, prev: bytes = chain.GENESIS_HASH,
                  signer: NodeIdentity | None = None, feed: str | None = None,
                  with_key: bool = True) -> Bundle:
    """A bundle of `evs` after `after_seq`, its head signed by `signer` (default: author)."""
    feed = feed or author.node_id
    head = chain_of(feed, evs, after_seq, prev)[-1]
    seq = after_seq + len(evs)
    signature = (signer or author).sign(chain.checkpoint_message(feed, seq, head))
    return Bundle(feed, author.public_key if with_key else None, after_seq, prev, evs,
                  [Checkpoint(seq, 2000.0, head, signature)])


def held_of(author: NodeIdentity, evs: list[tuple[float, str, bytes]]) -> Held:
    hashes = chain_of(author.node_id, evs)
    return Held(author.public_key, len(evs),
                {0: chain.GENESIS_HASH, **{i + 1: h for i, h in enumerate(hashes)}})


NOTHING = Held(None, 0, {0: chain.GENESIS_HASH})
ME = "f" * 32


@pytest.fixture(scope="module")
def author() -> NodeIdentity:
    return NodeIdentity.generate()


# --- the bundle format ----------------------------------------------------------------------


def test_bundle_round_trip_and_size(author: NodeIdentity) -> None:
    bundle = signed_bundle(author, events(1, 20))
    data = bundles.encode_bundle(bundle)
    assert bundles.decode_bundle(data) == bundle
    # Per event: [ts, kind index, data] only; the kind is spelled once.
    extra = len(data) - len(bundles.encode_bundle(signed_bundle(author, events(1, 1))))
    # 19 more events of 17 bytes each, and the events array's header grows by 2 past 15.
    assert extra == 19 * (1 + 9 + 1 + 2 + len(chain.pack_data({"i": 10}))) + 2
    later = signed_bundle(author, events(21, 5), after_seq=20,
                          prev=chain_of(author.node_id, events(1, 20))[-1], with_key=False)
    assert bundles.decode_bundle(bundles.encode_bundle(later)) == later


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "task.succeeded", "k" * 40, "é" * 100]),
                          st.binary(max_size=300)), min_size=1, max_size=40),
       st.sampled_from([0, 1, 127, 128, 255, 65_530, 2**32 - 3, 2**40]), st.booleans())
def test_bundle_size_is_exact(author: NodeIdentity, evs: list[tuple[str, bytes]],
                              after_seq: int, with_key: bool) -> None:
    size = bundles.BundleSize(with_key, after_seq)
    prev = bytes(32) if after_seq else chain.GENESIS_HASH
    for n, (kind, data) in enumerate(evs, 1):
        predicted = size.add(kind, data)
        bundle = Bundle(author.node_id, author.public_key if with_key else None, after_seq, prev,
                        [(1.5, k, d) for k, d in evs[:n]],
                        [Checkpoint(after_seq + n, 2.5, bytes(32), bytes(64))])
        assert predicted == len(bundles.encode_bundle(bundle))


@pytest.mark.parametrize("mangle, field", [
    (lambda b: b[:3], "array of 8"),
    (lambda b: [2, *b[1:]], "version"),
    (lambda b: [1, b"short", *b[2:]], "feed"),
    (lambda b: [*b[:2], b"k" * 10, *b[3:]], "public_key"),
    (lambda b: [*b[:3], -1, *b[4:]], "after_seq"),
    (lambda b: [*b[:4], b"\x00" * 32, *b[5:]], "prev"),
    (lambda b: [*b[:5], [""], *b[6:]], "kinds"),
    (lambda b: [*b[:6], [[1.0, 5, b"\xc0"]], b[7]], "events"),
    (lambda b: [*b[:6], [[1, 0, b"\xc0"]], b[7]], "events"),
    (lambda b: [*b[:6], [[1.0, 0, b"\xc1"]], b[7]], "not msgpack"),
    (lambda b: [*b[:6], [[1.0, 0, b"\x01\x02"]], b[7]], "not msgpack"),
    (lambda b: [*b[:7], [[99, 1.0, bytes(32), bytes(64)]]], "checkpoints"),
    (lambda b: [*b[:7], [[1, 1.0, bytes(31), bytes(64)]]], "checkpoints"),
])
def test_malformed_bundles_raise_protocol_error(author: NodeIdentity, mangle: Callable, field: str
                                                ) -> None:
    body = msgpack.unpackb(bundles.encode_bundle(signed_bundle(author, events(1, 2))))
    with pytest.raises(ProtocolError, match=field):
        bundles.decode_bundle(msgpack.packb(mangle(body), use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_but_protocol_error(data: bytes) -> None:
    try:
        bundles.decode_bundle(data)
    except ProtocolError:
        pass
    try:
        bundles.decode_heads(data)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_flipped_byte_never_stores_altered_events(author: NodeIdentity, data: st.DataObject
                                                    ) -> None:
    good = signed_bundle(author, events(1, 4))
    encoded = bytearray(bundles.encode_bundle(good))
    at = data.draw(st.integers(0, len(encoded) - 1))
    encoded[at] ^= data.draw(st.integers(1, 255))
    try:
        bundle = bundles.decode_bundle(bytes(encoded))
    except ProtocolError:
        return
    plan = bundles.check_bundle(bundle, NOTHING, own_feed=ME)
    if plan.outcome is Outcome.STORED:
        assert [row[2:5] for row in plan.rows] == good.events
        assert bundle.feed == good.feed


# --- the checks ------------------------------------------------------------------------------


def test_check_stores_only_signed_extensions(author: NodeIdentity) -> None:
    held = held_of(author, events(1, 5))
    prev = held.hashes[5]
    plan = bundles.check_bundle(signed_bundle(author, events(6, 3), after_seq=5, prev=prev),
                                    held, own_feed=ME, feed_id=7)
    assert plan.outcome is Outcome.STORED
    assert [(row[0], row[1]) for row in plan.rows] == [(7, 6), (7, 7), (7, 8)]
    # Overlapping what is held, with an unsigned tail: only the signed new part is taken.
    bundle = signed_bundle(author, events(3, 5), after_seq=2, prev=held.hashes[2])
    tail = Bundle(bundle.feed, None, 2, held.hashes[2], events(3, 7), bundle.checkpoints)
    plan = bundles.check_bundle(tail, held, own_feed=ME)
    assert plan.outcome is Outcome.STORED and [row[1] for row in plan.rows] == [6, 7]
    assert bundles.check_bundle(signed_bundle(author, events(1, 5)), held,
                                    own_feed=ME).outcome is Outcome.DUPLICATE


@pytest.mark.parametrize("case, outcome, detail", [
    ("own", Outcome.OWN_FEED, "own feed"),
    ("no_key", Outcome.NEED_KEY, "public key"),
    ("gap", Outcome.GAP, "held up to 0"),
    ("unsigned", Outcome.UNSIGNED, "no checkpoint"),
    ("bad_signature", Outcome.FORGERY, "signature at seq 3 does not verify"),
    ("broken_chain", Outcome.FORGERY, "chain broken"),
    ("other_key", Outcome.FORGERY, "does not hash to the feed id"),
])
def test_check_refusals(author: NodeIdentity, case: str, outcome: Outcome, detail: str) -> None:
    intruder = NodeIdentity.generate()
    bundle = signed_bundle(author, events(1, 3))
    own = ME
    if case == "own":
        own = author.node_id
    elif case == "no_key":
        bundle = signed_bundle(author, events(1, 3), with_key=False)
    elif case == "gap":
        bundle = signed_bundle(author, events(4, 3), after_seq=3, prev=bytes(32))
    elif case == "unsigned":
        bundle = Bundle(bundle.feed, bundle.public_key, 0, bundle.prev, bundle.events, [])
    elif case == "bad_signature":
        bundle = signed_bundle(author, events(1, 3), signer=intruder)
    elif case == "broken_chain":
        bundle = Bundle(bundle.feed, bundle.public_key, 0, bundle.prev,
                        events(1, 2) + events(9, 1), bundle.checkpoints)
    elif case == "other_key":
        bundle = signed_bundle(intruder, events(1, 3), feed=author.node_id)
    plan = bundles.check_bundle(bundle, NOTHING, own_feed=own)
    assert plan.outcome is outcome and detail in plan.detail and not plan.rows


def test_check_detects_forks_as_signed_proof(author: NodeIdentity) -> None:
    held = held_of(author, events(1, 6))
    other = events(4, 2, kind="test.other")
    fork = signed_bundle(author, other, after_seq=3, prev=held.hashes[3])
    plan = bundles.check_bundle(fork, held, own_feed=ME)
    assert (plan.outcome, plan.fork_seq) == (Outcome.FORK, 4)
    # A chain that differs before the bundle starts: its signature commits to another prev.
    alt_prev = chain_of(author.node_id, events(1, 2) + other)[-1]
    later = signed_bundle(author, events(7, 1), after_seq=4, prev=alt_prev)
    assert bundles.check_bundle(later, held, own_feed=ME).fork_seq == 4
    # The same divergence without a valid signature proves nothing: a forgery.
    forged = signed_bundle(author, other, after_seq=3, prev=held.hashes[3],
                           signer=NodeIdentity.generate())
    assert bundles.check_bundle(forged, held, own_feed=ME).outcome is Outcome.FORGERY


def test_fork_evidence_verifies_alone(author: NodeIdentity) -> None:
    mine = events(1, 6)
    theirs = events(1, 3) + events(4, 3, kind="test.other")
    a = bundles.encode_bundle(signed_bundle(author, mine))
    b = bundles.encode_bundle(signed_bundle(author, theirs))
    assert bundles.verify_fork_evidence(bundles.fork_evidence(a, b)) == (author.node_id, 4)
    assert bundles.verify_fork_evidence(bundles.fork_evidence(a, a)) is None
    forged = bundles.encode_bundle(signed_bundle(author, theirs,
                                                     signer=NodeIdentity.generate()))
    assert bundles.verify_fork_evidence(bundles.fork_evidence(a, forged)) is None
    assert bundles.verify_fork_evidence(b"\x93garbage") is None


def test_missing_and_compact_heads() -> None:
    a, b, c, d = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)
    mine = {a: Head(5, b"\x01" * 32), b: Head(9, b"\x02" * 32), c: Head(3, b"\x03" * 32)}
    theirs = {a: Head(7, b"\x09" * 32), b: Head(4, b"\x00" * 32), c: Head(3, b"\x07" * 32),
              d: Head(2, b"\x04" * 32), ME: Head(50, b"\x05" * 32)}
    assert bundles.missing(mine, theirs, skip=[ME]) == [(a, 5), (c, 2), (d, 0)]
    compact = bundles.encode_heads(theirs)
    assert len(compact) == 1 + 5 * (1 + (2 + 16) + 1 + (2 + 8))  # 30 bytes a feed
    decoded = bundles.decode_heads(compact)
    assert {feed: head.seq for feed, head in decoded.items()} == {
        feed: head.seq for feed, head in theirs.items()}
    assert bundles.missing(mine, decoded, skip=[ME]) == [(a, 5), (c, 2), (d, 0)]
    with pytest.raises(ProtocolError):
        bundles.decode_heads(msgpack.packb([[b"short", 1, b""]]))


def test_refusal_limiter() -> None:
    limiter = bundles.RefusalLimiter(per_sender=2, total=3, window_s=10.0)
    assert [limiter.allow("p", t)[0] for t in (0, 1, 2)] == [True, True, False]
    assert limiter.allow("q", 3) == (True, 1)     # says one refusal went unrecorded
    assert limiter.allow("r", 4)[0] is False      # the total cap
    assert limiter.allow("p", 10.5) == (True, 1)  # the window moved on


# --- two real ledger writers ----------------------------------------------------------------


@pytest.fixture
def writers(short_tmp: Path) -> Iterator[Callable[[str], LedgerProcess]]:
    """writers(name) → a started ledger writer of its own node; all killed at teardown."""
    started: list[LedgerProcess] = []

    def make(name: str) -> LedgerProcess:
        (short_tmp / name).mkdir()
        worker = LedgerProcess(short_tmp / name)
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


def ask(worker: LedgerProcess, msg: protocol.Message) -> Any:
    with transport.Requester(worker.run_dir, "ledger") as req:
        return req.request(msg, timeout_s=10.0)


def heads_of(worker: LedgerProcess) -> tuple[str, dict[str, Head], list[str]]:
    reply = ask(worker, protocol.LedgerHeads())
    assert isinstance(reply, protocol.LedgerHeadsReply), reply
    return reply.own, bundles.heads_from_reply(reply.feeds), reply.forked


def anti_entropy(source: LedgerProcess, target: LedgerProcess, max_bytes: int = 0) -> int:
    """What a gateway does: swap heads, pull what `target` misses from `source` until it has
    everything; returns the number of bundles moved."""
    moved = 0
    source_id = heads_of(source)[0]
    for _round in range(1000):
        own, mine, forked = heads_of(target)
        wanted = bundles.missing(mine, heads_of(source)[1], skip=[own, *forked])
        if not wanted:
            return moved
        for feed, after_seq in wanted:
            served = ask(source, protocol.LedgerRange(feed=feed, after_seq=after_seq,
                                                      max_bytes=max_bytes,
                                                      with_key=feed not in mine))
            assert isinstance(served, protocol.LedgerRangeReply), served
            # Only an author can cut its feed anywhere; a copy is cut at checkpoints it holds.
            assert max_bytes == 0 or feed != source_id or len(served.bundle) <= max_bytes
            got = ask(target, protocol.LedgerIngest(bundle=served.bundle, sender=source_id))
            assert got.outcome == "stored" and got.head_seq == served.last_seq, got
            moved += 1
    raise AssertionError(f"still missing after 1000 rounds: {wanted}")


def append(worker: LedgerProcess, count: int, start: int = 0) -> None:
    ctx = zmq.Context()
    client = LedgerClient(ctx, worker.run_dir, "test")
    try:
        for i in range(start, start + count):
            client.append("test.rep", {"i": i, "pad": "x" * (i % 40)})
        assert client.flush(15), f"{client.pending()} appends not acknowledged within 15 s"
    finally:
        client.close()
        ctx.term()


def rows_of(db: Path, feed: str) -> list[tuple[Any, ...]]:
    conn = chain.open_reader(db)
    try:
        return list(conn.execute(
            "SELECT e.seq, e.ts, e.kind, e.data, e.prev, e.hash FROM events e JOIN feeds f "
            "ON f.id = e.feed WHERE f.feed = ? ORDER BY e.seq", (feed,)))
    finally:
        conn.close()


def own_events(worker: LedgerProcess, kind: str) -> list[dict[str, Any]]:
    return [event.data for event in chain.read_events(worker.db, kind_prefix=kind)]


def akitactl(worker: LedgerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "akita.cli", "-c", str(worker.config_path),
                           "ledger", *args], capture_output=True, text=True, timeout=30,
                          cwd=REPO, check=False)


def test_replicate_verify_restart_and_catch_up(writers: Callable[[str], LedgerProcess]) -> None:
    a, b = writers("a"), writers("b")
    append(a, 300)
    feed_a = chain.own_feed(a.db)
    assert feed_a is not None
    assert anti_entropy(a, b) == 1
    assert rows_of(b.db, feed_a) == rows_of(a.db, feed_a)  # byte for byte, prev and hash too
    assert all(result.ok for result in chain.verify(b.db)), chain.verify(b.db)
    assert anti_entropy(a, b) == 0  # nothing left to pull

    # B goes away while A goes on; B's copy survives its restart, and it catches up.
    assert b.stop() == 0
    append(a, 500, start=300)
    b.start()
    assert heads_of(b)[1][feed_a].seq == 300
    assert anti_entropy(a, b, max_bytes=2_000) > 10  # link-sized bundles
    assert rows_of(b.db, feed_a) == rows_of(a.db, feed_a)
    assert heads_of(b)[1][feed_a] == Head(800, rows_of(a.db, feed_a)[-1][5], 800)

    # A third node pulls A's feed from B (transitively), and verify --all checks both feeds.
    c = writers("c")
    anti_entropy(b, c, max_bytes=5_000)
    assert rows_of(c.db, feed_a) == rows_of(a.db, feed_a)
    done = akitactl(c, "verify", "--all", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert {(f["feed"], f["events"]) for f in report["feeds"]} >= {(feed_a, 800)}
    heads = json.loads(akitactl(c, "heads", "--json").stdout)["feeds"]
    assert [(h["own"], h["seq"]) for h in heads if h["feed"] == feed_a] == [(False, 800)]
    assert akitactl(c, "heads").stdout.splitlines()[0].split()[:3] == ["FEED", "OWN", "SEQ"]


def test_replicated_events_are_not_republished(writers: Callable[[str], LedgerProcess]
                                               ) -> None:
    a, b = writers("a"), writers("b")
    append(a, 20)
    ctx = zmq.Context()
    bus = transport.make_socket(ctx, zmq.SUB)
    try:
        bus.setsockopt(zmq.SUBSCRIBE, b"")
        transport.bind(bus, b.run_dir, transport.BUS_IN)
        wait_for(lambda: bus.poll(0) and bus.recv_multipart()[0] == b"worker.heartbeat", 10,
                 "a heartbeat from B's ledger writer on the bus")
        anti_entropy(a, b)
        topics: list[bytes] = []

        def replicated_seen() -> bool:
            while bus.poll(0):
                topics.append(bus.recv_multipart()[0])
            return b"ledger.replicated" in topics

        wait_for(replicated_seen, 10, f"ledger.replicated on B's bus (saw {topics})")
        assert b"test.rep" not in topics
    finally:
        bus.close(linger=0)
        ctx.term()


def test_forgeries_are_refused_and_recorded(writers: Callable[[str], LedgerProcess]) -> None:
    a, b = writers("a"), writers("b")
    append(a, 30)
    anti_entropy(a, b)
    append(a, 10, start=30)
    author = identity.load(a.data_dir)
    intruder = NodeIdentity.generate()
    served = ask(a, protocol.LedgerRange(feed=author.node_id, after_seq=30))
    good = bundles.decode_bundle(served.bundle)
    cp = good.checkpoints[0]
    altered = [*good.events[:4], (good.events[4][0], "test.rep", chain.pack_data("forged")),
               *good.events[5:]]
    bad_signature = intruder.sign(chain.checkpoint_message(good.feed, cp.seq, cp.hash))
    forgeries = {
        "wrong-signature": Bundle(good.feed, good.public_key, 30, good.prev, good.events,
                                  [Checkpoint(cp.seq, cp.ts, cp.hash, bad_signature)]),
        "broken-chain": Bundle(good.feed, good.public_key, 30, good.prev, altered, [cp]),
        "other-identity": signed_bundle(intruder, good.events, after_seq=30, prev=good.prev,
                                        feed=good.feed),
    }
    before = rows_of(b.db, good.feed)
    for sender, bundle in forgeries.items():
        got = ask(b, protocol.LedgerIngest(bundle=bundles.encode_bundle(bundle),
                                           sender=sender))
        assert (got.outcome, got.stored, got.head_seq) == ("forgery", 0, 30), got
    assert rows_of(b.db, good.feed) == before
    garbage = ask(b, protocol.LedgerIngest(bundle=b"\x93\x01\x02", sender="garbler"))
    assert garbage.outcome == "malformed"

    # B's own feed is never taken from a peer, even when it is B's own bundle.
    own_b = ask(b, protocol.LedgerRange(feed=heads_of(b)[0]))
    got = ask(b, protocol.LedgerIngest(bundle=own_b.bundle, sender="mirror"))
    assert got.outcome == "own_feed" and got.stored == 0

    # The genuine bundle still goes in, once: the same bundle again stores nothing.
    first = ask(b, protocol.LedgerIngest(bundle=served.bundle, sender=author.node_id))
    again = ask(b, protocol.LedgerIngest(bundle=served.bundle, sender=author.node_id))
    assert (first.outcome, first.stored) == ("stored", 10)
    assert (again.outcome, again.stored, again.head_seq) == ("duplicate", 0, 40)
    assert rows_of(b.db, good.feed) == rows_of(a.db, good.feed)

    def recorded() -> Any:
        seen = own_events(b, "ledger.forgery_refused")
        return seen if len(seen) == 4 else None

    seen = wait_for(recorded, 10, "four ledger.forgery_refused events in B's own feed")
    assert {(e["from"], e["feed"]) for e in seen} == {
        *((sender, good.feed) for sender in forgeries), ("garbler", "")}
    reasons = {e["from"]: e["reason"] for e in seen}
    assert "signature" in reasons["wrong-signature"]
    assert "chain broken" in reasons["broken-chain"]
    assert "does not hash to the feed id" in reasons["other-identity"]
    assert all(result.ok for result in chain.verify(b.db))


def test_a_hostile_peer_cannot_flood_the_ledger(writers: Callable[[str], LedgerProcess]) -> None:
    b = writers("b")
    intruder, victim = NodeIdentity.generate(), NodeIdentity.generate()
    forged = bundles.encode_bundle(signed_bundle(victim, events(1, 2), signer=intruder))
    for _ in range(25):
        got = ask(b, protocol.LedgerIngest(bundle=forged, sender="hostile"))
        assert got.outcome == "forgery"
    ask(b, protocol.LedgerHeads())  # a round trip after the last ingest: its record is written
    wait_for(lambda: len(own_events(b, "ledger.forgery_refused")) >= 3, 10,
             "the first refusals recorded")
    assert len(own_events(b, "ledger.forgery_refused")) == 3


def test_fork_is_stored_as_proof_and_refused(writers: Callable[[str], LedgerProcess]) -> None:
    a, b = writers("a"), writers("b")
    append(a, 20)
    anti_entropy(a, b)
    author = identity.load(a.data_dir)  # the author itself signs a second history
    held = rows_of(a.db, author.node_id)
    fork = signed_bundle(author, events(11, 6, kind="test.fork"), after_seq=10, prev=held[9][5])
    got = ask(b, protocol.LedgerIngest(bundle=bundles.encode_bundle(fork), sender="c" * 32))
    assert (got.outcome, got.stored, got.head_seq) == ("fork", 0, 20), got
    assert "seq 11" in got.detail
    proofs = chain.misbehaviour(b.db, author.node_id)
    assert [(p.seq, p.kind, p.reporter) for p in proofs] == [(11, "fork", "c" * 32)]
    assert bundles.verify_fork_evidence(proofs[0].evidence) == (author.node_id, 11)
    assert rows_of(b.db, author.node_id) == held  # nothing overwritten

    # Seen again (from anyone): refused, no second proof, no second record.
    again = ask(b, protocol.LedgerIngest(bundle=bundles.encode_bundle(fork), sender="d" * 32))
    assert again.outcome == "fork"
    assert heads_of(b)[2] == [author.node_id]
    seen = wait_for(lambda: own_events(b, "ledger.fork_detected"), 10,
                    "ledger.fork_detected in B's own feed")
    assert seen == [{"feed": author.node_id, "seq": 11, "from": "c" * 32}]
    assert len(chain.misbehaviour(b.db)) == 1
    heads = json.loads(akitactl(b, "heads", "--json").stdout)["feeds"]
    assert [h["forks"] for h in heads if h["feed"] == author.node_id] == [1]


def test_range_and_ingest_edge_cases(writers: Callable[[str], LedgerProcess]) -> None:
    a, b = writers("a"), writers("b")
    append(a, 10)
    feed = heads_of(a)[0]
    with transport.Requester(a.run_dir, "ledger") as req:
        rid = req.send(protocol.LedgerRange(feed="0" * 32))
        unknown = req.receive(rid, 10.0)
    assert isinstance(unknown, protocol.Error) and unknown.code == "unknown_feed"
    empty = ask(a, protocol.LedgerRange(feed=feed, after_seq=10))
    assert (empty.bundle, empty.head_seq) == (b"", 10)
    keyless = ask(a, protocol.LedgerRange(feed=feed, after_seq=0, with_key=False))
    assert ask(b, protocol.LedgerIngest(bundle=keyless.bundle, sender=feed)).outcome == "need_key"
    later = ask(a, protocol.LedgerRange(feed=feed, after_seq=5))
    got = ask(b, protocol.LedgerIngest(bundle=later.bundle, sender=feed))
    assert (got.outcome, got.head_seq) == ("gap", 0)
    one = ask(a, protocol.LedgerRange(feed=feed, limit=3))
    assert (one.first_seq, one.last_seq) == (1, 3)
    assert ask(b, protocol.LedgerIngest(bundle=one.bundle, sender=feed)).head_seq == 3
