"""Other nodes' feeds in this node's database: serving ranges, ingesting bundles.

The ledger worker holds one `ReplicaStore` beside its `LedgerStore`, on the same (only)
read-write connection, so replicated events are written by the database's single writer,
each bundle in one transaction. The rules of what may be stored are the pure
`akita.ledger.bundles.check_bundle`; this module reads what they need and writes what they
allow.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import apsw

from akita.errors import AkitaError, ProtocolError
from akita.ledger import bundles, chain
from akita.wire import events
from workers.ledger.store import LedgerStore

log = logging.getLogger(__name__)


DEFAULT_RANGE_BYTES = 1 << 20
_NO_LIMIT = 1 << 62
_CHECKPOINT_SQL = "SELECT seq, ts, hash, signature FROM checkpoints WHERE feed = ? AND "
_EVENTS_SQL = "SELECT seq, ts, kind, data, hash FROM events WHERE feed = ? AND seq > ? "

EventRow = tuple[int, float, str, bytes, bytes]  # seq, ts, kind, data, hash


class ReplicationError(AkitaError):
    """A range that cannot be served; `code` is the error reply's code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class RangeResult:
    bundle: bytes     # b"" when the feed holds nothing after the requested seq
    first_seq: int
    last_seq: int
    head_seq: int     # how far this node holds the feed: more remains while last_seq < it


@dataclass(frozen=True, slots=True)
class IngestResult:
    feed: str
    outcome: bundles.Outcome
    detail: str
    stored: int
    head_seq: int
    head_hash: bytes
    first_seq: int = 0
    record: tuple[str, dict[str, Any]] | None = None  # an event for this node's own feed


class ReplicaStore:
    """Feeds of other nodes in the same database, beside this node's own (`store`).

    Serves ranges of any feed held (own or replicated) as bundles, and ingests bundles from
    peers under the rules of `replication.check_bundle`: a replicated feed holds only
    entries covered by a checkpoint its author signed, so every stored head is signed.
    """

    def __init__(self, conn: apsw.Connection, store: LedgerStore,
                 limiter: bundles.RefusalLimiter | None = None) -> None:
        self.conn = conn
        self.store = store
        self.limiter = limiter or bundles.RefusalLimiter()

    def heads(self) -> list[chain.FeedHead]:
        return chain.feed_heads(self.conn)

    # --- serving ----------------------------------------------------------------------------

    def serve_range(self, feed: str, after_seq: int, *, max_bytes: int = 0, limit: int = 0,
                    with_key: bool = True) -> RangeResult:
        """The events of `feed` after `after_seq` that fit `max_bytes` (and `limit` events),
        ending at a signed checkpoint: cut where it fits for the own feed (signed now if no
        stored checkpoint is there), at a stored checkpoint for a replicated one, beyond the
        budget when the first checkpoint lies beyond it."""
        found = self._feed(feed)
        if found is None:
            raise ReplicationError("unknown_feed", f"no feed {feed} is held here")
        if after_seq < 0 or max_bytes < 0 or limit < 0:
            raise ReplicationError("bad_request", "after_seq, max_bytes and limit are >= 0")
        feed_id, key, local = found
        head_seq = self._head(feed_id)[0]
        if after_seq >= head_seq:
            return RangeResult(b"", 0, 0, head_seq)
        budget = min(max_bytes or DEFAULT_RANGE_BYTES, bundles.MAX_BUNDLE_BYTES)
        rows = self._fit(feed_id, bundles.BundleSize(with_key, after_seq), budget,
                         limit or _NO_LIMIT)
        if local:
            checkpoint = self._own_checkpoint(feed_id, rows[-1])
        else:
            rows, checkpoint = self._to_checkpoint(feed_id, after_seq, rows)
        bundle = bundles.encode_bundle(bundles.Bundle(
            feed, key if with_key else None, after_seq, self._hash_at(feed_id, after_seq),
            [(ts, kind, data) for _seq, ts, kind, data, _hash in rows], [checkpoint]))
        if len(bundle) > bundles.MAX_BUNDLE_BYTES:
            raise ReplicationError("range_too_large", f"the first signed range of {feed} after "
                                   f"seq {after_seq} takes {len(bundle)} bytes")
        return RangeResult(bundle, after_seq + 1, after_seq + len(rows), head_seq)

    def _fit(self, feed_id: int, size: bundles.BundleSize, budget: int, limit: int
             ) -> list[EventRow]:
        """The events after `size.after_seq` whose bundle fits `budget` bytes (at least one)."""
        rows: list[EventRow] = []
        cursor = self.conn.cursor()
        try:
            for row in cursor.execute(_EVENTS_SQL + "ORDER BY seq", (feed_id, size.after_seq)):
                kind = row[2]
                if rows and (len(rows) >= limit or (kind not in size.kinds and
                                                    len(size.kinds) >= bundles.MAX_KINDS)):
                    break
                if size.add(kind, row[3]) > budget and rows:
                    break  # `size` now counts an event left out: it is not used again
                rows.append(row)
        finally:
            cursor.close()  # an unfinished statement would hold a read snapshot open
        return rows

    def _own_checkpoint(self, feed_id: int, last: EventRow) -> bundles.Checkpoint:
        seq, head_hash = last[0], last[4]
        for row in self.conn.execute(_CHECKPOINT_SQL + "seq = ?", (feed_id, seq)):
            return bundles.Checkpoint(*row)
        # Signed for this bundle only: storing it would let any peer make us write a row.
        return bundles.Checkpoint(seq, time.time(), head_hash, self.store.sign(seq, head_hash))

    def _to_checkpoint(self, feed_id: int, after_seq: int, rows: list[EventRow]
                       ) -> tuple[list[EventRow], bundles.Checkpoint]:
        """`rows` cut back to the last stored checkpoint among them, or run on to the first
        one after them (a replicated feed can only be served in signed pieces)."""
        last = rows[-1][0]
        for row in self.conn.execute(_CHECKPOINT_SQL + "seq > ? AND seq <= ? ORDER BY seq DESC "
                                     "LIMIT 1", (feed_id, after_seq, last)):
            checkpoint = bundles.Checkpoint(*row)
            return rows[:checkpoint.seq - after_seq], checkpoint
        for row in self.conn.execute(_CHECKPOINT_SQL + "seq > ? ORDER BY seq LIMIT 1",
                                     (feed_id, last)):
            checkpoint = bundles.Checkpoint(*row)
            return rows + self._events(feed_id, last, checkpoint.seq), checkpoint
        # Only a feed this node once wrote itself (its identity changed since) can end in an
        # unsigned tail: whatever ingest stores ends at a checkpoint.
        raise ReplicationError("unsigned", "no checkpoint covers the held events")

    # --- ingesting --------------------------------------------------------------------------

    def ingest(self, data: bytes, sender: str) -> IngestResult:
        """Verify a bundle from peer `sender` and store what it may add; never overwrites.

        A fork (signed conflicting entry) is stored as evidence and recorded; a forgery is
        recorded within the limiter's rate; both are refused. Raises apsw.Error, with nothing
        written, when the database fails."""
        try:
            bundle = bundles.decode_bundle(data)
        except ProtocolError as exc:
            return self._refused("", bundles.Outcome.MALFORMED, str(exc), sender, (0, b""))
        found = self._feed(bundle.feed)
        feed_id = found[0] if found else self._next_feed_id()
        head = self._head(feed_id) if found else (0, chain.GENESIS_HASH)
        hashes = self._held_hashes(feed_id, bundle.after_seq, min(head[0], bundle.last_seq))
        plan = bundles.check_bundle(
            bundle, bundles.Held(found[1] if found else None, head[0], hashes),
            own_feed=self.store.chain.feed, feed_id=feed_id)
        if plan.outcome is bundles.Outcome.STORED:
            self._store(bundle.feed, feed_id, found is None, plan)
            first, last = plan.rows[0], plan.rows[-1]
            return IngestResult(bundle.feed, plan.outcome, "", len(plan.rows), last[1], last[6],
                                first_seq=first[1])
        if plan.outcome is bundles.Outcome.FORK:
            assert plan.public_key is not None
            record = self._store_fork(bundle, data, feed_id, plan, sender)
            return IngestResult(bundle.feed, plan.outcome, plan.detail, 0, *head, record=record)
        return self._refused(bundle.feed, plan.outcome, plan.detail, sender, head)

    def _refused(self, feed: str, outcome: bundles.Outcome, detail: str, sender: str,
                 head: tuple[int, bytes]) -> IngestResult:
        record = None
        if outcome in (bundles.Outcome.FORGERY, bundles.Outcome.MALFORMED):
            log.warning("bundle of feed %s from %s refused: %s", feed or "?", sender, detail)
            allowed, held_back = self.limiter.allow(sender, time.monotonic())
            if allowed:
                record = events.LedgerForgeryRefused(
                    feed=feed, from_=sender, reason=detail,
                    suppressed=held_back or None).entry()  # refusals not recorded since
        return IngestResult(feed, outcome, detail, 0, *head, record=record)

    def _store(self, feed: str, feed_id: int, new: bool, plan: bundles.Plan) -> None:
        with self.conn:
            if new:
                self.conn.execute("INSERT INTO feeds (id, feed, public_key, local) "
                                  "VALUES (?, ?, ?, 0)", (feed_id, feed, plan.public_key))
            self.conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", plan.rows)
            self.conn.executemany(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(feed_id, c.seq, c.hash, c.signature, c.ts) for c in plan.checkpoints])

    def _store_fork(self, bundle: bundles.Bundle, data: bytes, feed_id: int,
                    plan: bundles.Plan, sender: str) -> tuple[str, dict[str, Any]] | None:
        """Keep the proof; the record for the own feed only the first time it is seen."""
        assert plan.public_key is not None
        held = self._held_bundle(bundle.feed, feed_id, plan.public_key, plan.fork_seq)
        evidence = bundles.fork_evidence(held, data)
        with self.conn:
            self.conn.execute("INSERT INTO misbehaviour VALUES (?, ?, 'fork', ?, ?, ?) "
                              "ON CONFLICT DO NOTHING",
                              (bundle.feed, plan.fork_seq, sender, evidence, time.time()))
            new = self.conn.changes() > 0
        log.warning("feed %s forked at seq %d (bundle from %s)%s", bundle.feed, plan.fork_seq,
                    sender, "" if new else ": already known")
        if not new:
            return None
        return events.LedgerForkDetected(feed=bundle.feed, seq=plan.fork_seq,
                                         from_=sender).entry()

    def _held_bundle(self, feed: str, feed_id: int, key: bytes, seq: int) -> bytes:
        """Our side of a fork: the held entries from `seq` to the checkpoint that covers it."""
        checkpoint = bundles.Checkpoint(*self._one(
            _CHECKPOINT_SQL + "seq >= ? ORDER BY seq LIMIT 1", (feed_id, seq)))
        rows = self._events(feed_id, seq - 1, checkpoint.seq)
        return bundles.encode_bundle(bundles.Bundle(
            feed, key, seq - 1, self._hash_at(feed_id, seq - 1),
            [(ts, kind, data) for _seq, ts, kind, data, _hash in rows], [checkpoint]))

    # --- lookups ----------------------------------------------------------------------------

    def _feed(self, feed: str) -> tuple[int, bytes, bool] | None:
        row = self.conn.execute("SELECT id, public_key, local FROM feeds WHERE feed = ?",
                                (feed,)).fetchone()
        return (int(row[0]), bytes(row[1]), bool(row[2])) if row else None

    def _next_feed_id(self) -> int:
        # Safe to predict: this connection is the database's only writer.
        return int(self._one("SELECT coalesce(max(id), 0) + 1 FROM feeds", ())[0])

    def _head(self, feed_id: int) -> tuple[int, bytes]:
        row = self.conn.execute("SELECT seq, hash FROM events WHERE feed = ? "
                                "ORDER BY seq DESC LIMIT 1", (feed_id,)).fetchone()
        return (int(row[0]), bytes(row[1])) if row else (0, chain.GENESIS_HASH)

    def _hash_at(self, feed_id: int, seq: int) -> bytes:
        if seq == 0:
            return chain.GENESIS_HASH
        return bytes(self._one("SELECT hash FROM events WHERE feed = ? AND seq = ?",
                               (feed_id, seq))[0])

    def _held_hashes(self, feed_id: int, first: int, last: int) -> dict[int, bytes]:
        hashes = {0: chain.GENESIS_HASH}
        hashes.update(self.conn.execute("SELECT seq, hash FROM events WHERE feed = ? AND "
                                        "seq BETWEEN ? AND ?", (feed_id, first, last)))
        return hashes

    def _events(self, feed_id: int, after_seq: int, last_seq: int) -> list[EventRow]:
        return cast(list[EventRow], self.conn.execute(
            _EVENTS_SQL + "AND seq <= ? ORDER BY seq", (feed_id, after_seq, last_seq)).fetchall())

    def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        """The one row `sql` finds; every caller asks for a row the feed's invariants imply."""
        row = self.conn.execute(sql, args).fetchone()
        if row is None:
            raise apsw.CorruptError(f"expected a row: {sql} {args}")
        return row
