"""The ledger model: hash chain, signed checkpoints, verification, read-only readers.

One SQLite file (``data_dir/ledger.db``, WAL) holds every feed this node knows: its own,
written only by the ledger worker, and (issue 5) feeds of other nodes replicated into the
same tables. A feed is named by its author's node id (hex) and bound to its public key in
`feeds`. Its events are numbered from 1 and chained:

    hash = SHA-256(prev_hash ‖ msgpack([feed, seq, ts, kind, data]))

with 32 zero bytes as the genesis prev hash. `data` is stored as the exact msgpack bytes
that went into the hash, so verifying (here, or on a peer that received the row verbatim)
never re-encodes anything. Checkpoints sign (feed, seq, hash) of the head with the author's
Ed25519 key: one signature covers every event before it, and a checkpoint beyond the last
stored event proves that events were cut off.

The readers open the file read-only, so they work while the writer writes and when no node
runs at all. The schema and every read-write connection (`LedgerStore`, the writing
side) live in `workers.ledger.store`, in the ledger worker's wing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import msgpack

from akita import identity
from akita.errors import AkitaError

DB_FILE = "ledger.db"
GENESIS_HASH = bytes(32)
BUSY_TIMEOUT_MS = 5_000
_ARRAY5 = b"\x95"  # msgpack header of a 5-element array: [feed, seq, ts, kind, data]
_CHECKPOINT_TAG = "akita.ledger.checkpoint"

class LedgerNotFound(AkitaError):
    """There is no ledger file (the node has never started, or the path is wrong)."""


@dataclass(frozen=True, slots=True)
class Event:
    feed: str
    seq: int
    ts: float
    kind: str
    data: Any


@dataclass(frozen=True, slots=True)
class FeedHead:
    """One feed held in the file: its last event (seq 0 and an empty hash when it has none),
    its last signed checkpoint, and how many proofs of misbehaviour are stored against it."""

    feed: str
    local: bool
    seq: int
    hash: bytes
    signed_seq: int
    forks: int


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    feed: str
    seq: int
    kind: str
    reporter: str
    evidence: bytes
    ts: float


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The verdict on one feed: `first_bad_seq` is None when `ok`."""

    feed: str
    ok: bool
    events: int
    first_bad_seq: int | None = None
    reason: str = ""


# --- the hash chain (pure) ------------------------------------------------------------------


# One reusable packer: building a Packer per call (what msgpack.packb does) costs as much as
# packing a small event. Only the ledger writer and readers use it, each single-threaded.
_pack = msgpack.Packer(use_bin_type=True).pack


def pack_data(data: Any) -> bytes:
    """The stored (and hashed) form of an event's data."""
    return _pack(data)


def event_hash(prev: bytes, feed: str, seq: int, ts: float, kind: str, data_blob: bytes) -> bytes:
    """SHA-256(prev ‖ msgpack([feed, seq, ts, kind, data])), with data already packed."""
    # pack((seq, ts, kind)) is a 1-byte array header followed by the three packed values.
    head = _pack(feed) + _pack((seq, float(ts), kind))[1:]
    return hashlib.sha256(prev + _ARRAY5 + head + data_blob).digest()


def checkpoint_message(feed: str, seq: int, head_hash: bytes) -> bytes:
    """The bytes a checkpoint signature covers."""
    return msgpack.packb([_CHECKPOINT_TAG, feed, seq, head_hash], use_bin_type=True)


class Chain:
    """The head of one feed, and the rows that extend it.

    `extend()` returns rows ready for the events table without touching any database; the
    caller commits them and then calls `advance()`, or drops them if the commit failed.
    """

    def __init__(self, feed: str, feed_id: int, seq: int = 0, head_hash: bytes = GENESIS_HASH):
        self.feed = feed
        self.feed_id = feed_id
        self.seq = seq
        self.hash = head_hash
        self._packed_feed = msgpack.packb(feed)

    def extend(self, events: Iterable[tuple[float, str, bytes]], seq: int, prev: bytes
               ) -> tuple[list[tuple[int, int, float, str, bytes, bytes, bytes]], int, bytes]:
        """Rows for `events` (ts, kind, data_blob) following (seq, prev); and the new head."""
        rows = []
        pack = _pack
        sha256 = hashlib.sha256
        prefix = _ARRAY5 + self._packed_feed
        feed_id = self.feed_id
        for ts, kind, blob in events:
            seq += 1
            # The same bytes as event_hash(), inlined: this loop is the writer's hot path.
            digest = sha256(prev + prefix + pack((seq, ts, kind))[1:] + blob).digest()
            rows.append((feed_id, seq, ts, kind, blob, prev, digest))
            prev = digest
        return rows, seq, prev

    def advance(self, seq: int, head_hash: bytes) -> None:
        self.seq = seq
        self.hash = head_hash


def verify_rows(feed: str, public_key: bytes | None,
                rows: Iterable[tuple[int, float, str, bytes, bytes, bytes]],
                checkpoints: dict[int, tuple[bytes, bytes]]) -> VerifyResult:
    """Check one feed: `rows` are (seq, ts, kind, data, prev, hash) in seq order, and
    `checkpoints` maps seq → (hash, signature). Names the first bad sequence number."""
    if public_key is None:
        return VerifyResult(feed, False, 0, 1, "feed has no public key")
    if identity.node_id_of(public_key) != feed:
        return VerifyResult(feed, False, 0, 1, "public key does not match the feed id")
    expected_seq, prev, count = 1, GENESIS_HASH, 0
    for seq, ts, kind, data, row_prev, row_hash in rows:
        bad = _check_row(feed, expected_seq, prev, seq, ts, kind, data, row_prev, row_hash)
        if bad:
            return VerifyResult(feed, False, count, expected_seq, bad)
        checkpoint = checkpoints.get(seq)
        if checkpoint is not None:
            bad = _check_checkpoint(feed, public_key, seq, row_hash, *checkpoint)
            if bad:
                return VerifyResult(feed, False, count, seq, bad)
        count += 1
        expected_seq, prev = seq + 1, row_hash
    beyond = [seq for seq in checkpoints if seq >= expected_seq]
    if beyond:
        return VerifyResult(feed, False, count, expected_seq,
                            f"events missing: a checkpoint covers seq {max(beyond)} but the "
                            f"feed ends at {expected_seq - 1}")
    return VerifyResult(feed, True, count)


def _check_row(feed: str, expected_seq: int, prev: bytes, seq: int, ts: float, kind: str,
               data: bytes, row_prev: bytes, row_hash: bytes) -> str:
    """Why this row breaks the chain, or "" when it does not."""
    if seq != expected_seq:
        return f"seq {expected_seq} missing (next stored is {seq})"
    if row_prev != prev:
        return "prev hash does not match the previous event"
    if event_hash(prev, feed, seq, ts, kind, data) != row_hash:
        return "hash does not match the event's contents"
    return ""


def _check_checkpoint(feed: str, public_key: bytes, seq: int, chain_hash: bytes,
                      signed_hash: bytes, signature: bytes) -> str:
    if signed_hash != chain_hash:
        return f"checkpoint at seq {seq} signs a different head"
    if not identity.verify(public_key, signature, checkpoint_message(feed, seq, signed_hash)):
        return f"checkpoint signature at seq {seq} does not verify"
    return ""


# --- opening the file -----------------------------------------------------------------------


def db_path(config: Any) -> Path:
    """Where the node keeps its ledger: data_dir/ledger.db (`config` is an akita Config)."""
    return Path(config.node.data_dir) / DB_FILE


def open_reader(path: Path) -> apsw.Connection:
    """A read-only connection; raises `LedgerNotFound` when there is no ledger file."""
    if not path.is_file():
        raise LedgerNotFound(f"no ledger at {path} (has this node ever started?)")
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
    return conn


def _feed_ids(conn: apsw.Connection, feed: str | None) -> list[tuple[int, str]]:
    """(id, feed) of `feed`, or of the node's own feed when `feed` is None."""
    args: tuple[str, ...] = ()
    if feed is None:
        sql = "SELECT id, feed FROM feeds WHERE local = 1"
    else:
        sql, args = "SELECT id, feed FROM feeds WHERE feed = ?", (feed,)
    try:
        return [(row[0], row[1]) for row in conn.execute(sql, args)]
    except apsw.SQLError:  # a file the writer has not initialised yet
        return []


def _prefix_range(prefix: str) -> tuple[str, str]:
    """Bounds [low, high) of every string starting with `prefix` (for an index range scan)."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


# --- readers --------------------------------------------------------------------------------


def read_events(path: Path, *, feed: str | None = None, kind_prefix: str | None = None,
                after_seq: int = 0, limit: int | None = None) -> Iterator[Event]:
    """Events of `feed` (default: this node's own) with seq > `after_seq`, in seq order,
    optionally only kinds starting with `kind_prefix`. Reads one consistent snapshot."""
    conn = open_reader(path)
    try:
        for feed_id, name in _feed_ids(conn, feed):
            sql = "SELECT seq, ts, kind, data FROM events WHERE feed = ? AND seq > ?"
            args: list[Any] = [feed_id, after_seq]
            if kind_prefix:
                sql += " AND kind >= ? AND kind < ?"
                args.extend(_prefix_range(kind_prefix))
            sql += " ORDER BY seq"
            if limit is not None:
                sql += " LIMIT ?"
                args.append(limit)
            for seq, ts, kind, data in conn.execute(sql, args):
                yield Event(name, seq, ts, kind, msgpack.unpackb(data, raw=False))
    finally:
        conn.close()


def tail(path: Path, n: int, kind_prefix: str | None = None, feed: str | None = None
         ) -> list[Event]:
    """The last `n` events of `feed` (default: this node's own), oldest first."""
    conn = open_reader(path)
    try:
        found: list[Event] = []
        for feed_id, name in _feed_ids(conn, feed):
            sql = "SELECT seq, ts, kind, data FROM events WHERE feed = ?"
            args: list[Any] = [feed_id]
            if kind_prefix:
                sql += " AND kind >= ? AND kind < ?"
                args.extend(_prefix_range(kind_prefix))
            sql += " ORDER BY seq DESC LIMIT ?"
            args.append(n)
            found.extend(Event(name, seq, ts, kind, msgpack.unpackb(data, raw=False))
                         for seq, ts, kind, data in conn.execute(sql, args))
        return found[::-1]
    finally:
        conn.close()


def own_feed(path: Path) -> str | None:
    """This node's own feed id as recorded in the file, None before the writer started."""
    conn = open_reader(path)
    try:
        found = _feed_ids(conn, None)
        return found[0][1] if found else None
    finally:
        conn.close()


def head(path: Path, feed: str | None = None) -> tuple[str, int, bytes] | None:
    """(feed, seq, hash) of the last event of `feed` (default: own), None if it has none."""
    conn = open_reader(path)
    try:
        for feed_id, name in _feed_ids(conn, feed):
            for seq, head_hash in conn.execute(
                    "SELECT seq, hash FROM events WHERE feed = ? ORDER BY seq DESC LIMIT 1",
                    (feed_id,)):
                return name, seq, head_hash
        return None
    finally:
        conn.close()


def verify(path: Path, feed: str | None = None) -> list[VerifyResult]:
    """Verify `feed`, or every feed in the file when None; one result per feed."""
    conn = open_reader(path)
    try:
        conn.execute("BEGIN")  # one snapshot for rows and checkpoints alike
        try:
            args: tuple[str, ...] = ()
            sql = "SELECT id, feed, public_key FROM feeds ORDER BY local DESC, feed"
            if feed is not None:
                sql, args = "SELECT id, feed, public_key FROM feeds WHERE feed = ?", (feed,)
            try:
                feeds = list(conn.execute(sql, args))
            except apsw.SQLError:
                feeds = []
            return [_verify_feed(conn, feed_id, name, key) for feed_id, name, key in feeds]
        finally:
            conn.execute("COMMIT")
    finally:
        conn.close()


def _verify_feed(conn: apsw.Connection, feed_id: int, name: str, public_key: bytes
                 ) -> VerifyResult:
    checkpoints = {seq: (head_hash, sig) for seq, head_hash, sig in conn.execute(
        "SELECT seq, hash, signature FROM checkpoints WHERE feed = ?", (feed_id,))}
    rows = conn.execute("SELECT seq, ts, kind, data, prev, hash FROM events WHERE feed = ? "
                        "ORDER BY seq", (feed_id,))
    return verify_rows(name, public_key, rows, checkpoints)


# --- feeds held, for replication -----------------------------------------------------------


_HEADS_SQL = """
SELECT f.feed, f.local,
       (SELECT seq FROM events WHERE feed = f.id ORDER BY seq DESC LIMIT 1),
       (SELECT hash FROM events WHERE feed = f.id ORDER BY seq DESC LIMIT 1),
       (SELECT max(seq) FROM checkpoints WHERE feed = f.id),
       {forks}
FROM feeds f ORDER BY f.local DESC, f.feed
"""


def feed_heads(conn: apsw.Connection) -> list[FeedHead]:
    """Every feed in the open database, this node's own first."""
    # A file written before the misbehaviour table existed has none until its writer runs.
    forks = ("(SELECT count(*) FROM misbehaviour WHERE feed = f.feed)"
             if _has_table(conn, "misbehaviour") else "0")
    try:
        rows = list(conn.execute(_HEADS_SQL.format(forks=forks)))
    except apsw.SQLError:  # a file the writer has not initialised yet
        return []
    return [FeedHead(feed, bool(local), seq or 0, bytes(head_hash or b""), signed or 0, forks)
            for feed, local, seq, head_hash, signed, forks in rows]


def heads(path: Path) -> list[FeedHead]:
    """Every feed held in the ledger file (own and replicated), read-only."""
    conn = open_reader(path)
    try:
        return feed_heads(conn)
    finally:
        conn.close()


def misbehaviour(path: Path, feed: str | None = None) -> list[Misbehaviour]:
    """The stored proofs of misbehaviour, of `feed` or of every feed, oldest first."""
    conn = open_reader(path)
    try:
        if not _has_table(conn, "misbehaviour"):
            return []
        sql = "SELECT feed, seq, kind, reporter, evidence, ts FROM misbehaviour"
        args: tuple[str, ...] = ()
        if feed is not None:
            sql, args = sql + " WHERE feed = ?", (feed,)
        return [Misbehaviour(*row) for row in conn.execute(sql + " ORDER BY ts", args)]
    finally:
        conn.close()


def _has_table(conn: apsw.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (name,)).fetchone() is not None
