"""The writing side of the ledger: group commits, deduplication of resends, checkpoints.

`LedgerStore` wraps the one read-write connection (held by the ledger worker) and this
node's `Chain`. It has no sockets: the worker hands it the appends it drained, and it
returns, per append, what to answer. Everything a commit changes in memory (chain head,
source refs) changes only after the transaction committed, so a failed commit leaves the
store exactly as it was and the senders simply resend.

Deduplication (see `admit`): every acknowledged append names its sender instance (`source`)
and a ref that rises by 1 per frame. The last committed ref of each source is written in the
same transaction as the events, so a writer killed between commit and acknowledgement still
recognises the resend after its restart.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from akita.identity import NodeIdentity
from akita.ledger import chain
from akita.wire import protocol

log = logging.getLogger(__name__)

SOURCE_RETENTION_S = 7 * 24 * 3600  # a sender silent this long is forgotten
MAX_KIND_CHARS = 200

Row = tuple[int, int, float, str, bytes, bytes, bytes]  # feed id, seq, ts, kind, data, prev, hash

SCHEMA = """
CREATE TABLE IF NOT EXISTS feeds (
    id INTEGER PRIMARY KEY,
    feed TEXT NOT NULL UNIQUE,          -- the author's node id, hex
    public_key BLOB NOT NULL,           -- 64 bytes: X25519 public ‖ Ed25519 public
    local INTEGER NOT NULL DEFAULT 0    -- 1 for this node's own feed
);
CREATE TABLE IF NOT EXISTS events (
    feed INTEGER NOT NULL REFERENCES feeds(id),
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    data BLOB NOT NULL,                 -- msgpack, exactly as hashed
    prev BLOB NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (feed, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_kind ON events (feed, kind, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    feed INTEGER NOT NULL REFERENCES feeds(id),
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    signature BLOB NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (feed, seq)
) WITHOUT ROWID;
-- Which appends of which sender instance are already committed (deduplication of resends).
CREATE TABLE IF NOT EXISTS sources (
    source TEXT PRIMARY KEY,
    ref INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    seen REAL NOT NULL
) WITHOUT ROWID;
-- Signed proof that a feed's author misbehaved: e.g. two different entries at one
-- seq, both under valid checkpoints. Kept for good; one row per (feed, seq, kind).
CREATE TABLE IF NOT EXISTS misbehaviour (
    feed TEXT NOT NULL,                 -- the author's node id, hex
    seq INTEGER NOT NULL,               -- where the feed forked
    kind TEXT NOT NULL,                 -- "fork"
    reporter TEXT NOT NULL,             -- the peer whose bundle revealed it
    evidence BLOB NOT NULL,             -- replication.fork_evidence(): two signed bundles
    ts REAL NOT NULL,
    PRIMARY KEY (feed, seq, kind)
) WITHOUT ROWID;
"""


def open_writer(path: Path) -> apsw.Connection:
    """The read-write connection (the ledger worker's only): WAL, fsync on every commit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(chain.BUSY_TIMEOUT_MS)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    # FULL: a commit is on disk (WAL fsynced) before we acknowledge anything it holds.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(SCHEMA)
    return conn


class Verdict(enum.Enum):
    COMMIT = "commit"        # the next ref of its source: write it
    DUPLICATE = "duplicate"  # already committed: acknowledge again, write nothing
    GAP = "gap"              # an earlier ref is missing: answer with the last committed ref


def admit(last_ref: int | None, ref: int, base: int) -> tuple[Verdict, int]:
    """What to do with frame `ref` of a source whose last committed ref is `last_ref` (None:
    unknown source), when the sender says every ref below `base` was acknowledged to it.
    Returns the verdict and the last committed ref to answer with."""
    last = max(last_ref or 0, base - 1)
    if ref == last + 1:
        return Verdict.COMMIT, ref
    if ref <= last:
        return Verdict.DUPLICATE, last
    return Verdict.GAP, last


def parse_events(events: list[Any]) -> list[tuple[float, str, bytes]]:
    """(ts, kind, packed data) of each {kind, ts, data} map (`protocol.ledger_event`);
    ValueError names what is wrong."""
    parsed = []
    pack = chain.pack_data
    k_kind, k_ts, k_data = protocol.LEDGER_EVENT_KEYS
    for index, event in enumerate(events):
        if type(event) is not dict or len(event) != 3:
            raise ValueError(f"event {index} is not a map of kind, ts and data")
        try:
            kind, ts, data = event[k_kind], event[k_ts], event[k_data]
        except KeyError as exc:
            raise ValueError(f"event {index} has no {exc.args[0]}") from None
        if type(kind) is not str or not 0 < len(kind) <= MAX_KIND_CHARS:
            raise ValueError(f"event {index}: kind must be a string of 1 to "
                             f"{MAX_KIND_CHARS} characters")
        if type(ts) is not float:
            if type(ts) is not int:
                raise ValueError(f"event {index}: ts must be a number")
            ts = float(ts)
        parsed.append((ts, kind, pack(data)))
    return parsed


@dataclass
class Append:
    """One ledger.append frame waiting for the group commit, with the answer it gets."""

    source: str
    ref: int
    base: int
    events: list[tuple[float, str, bytes]]
    ack: bool
    reply_to: Any = None  # whatever the worker needs to answer (its Request)
    verdict: Verdict = Verdict.GAP
    answer_ref: int = 0
    last_seq: int = 0
    first_row: int = 0  # index of its first row in the batch's rows


class LedgerStore:
    """This node's feed in the open database, written in group commits."""

    def __init__(self, conn: apsw.Connection, node: NodeIdentity) -> None:
        self.conn = conn
        self.node = node
        self._signer = node.signer()
        feed_id = self._ensure_own_feed()
        seq, head_hash = self._load_head(feed_id)
        self.chain = chain.Chain(node.node_id, feed_id, seq, head_hash)
        self._sources: dict[str, tuple[int, int]] = {}
        self.prune_sources(time.time())
        self._load_sources()
        self.checkpoint_seq = self._last_checkpoint_seq(feed_id)
        self.checkpoint_at = time.monotonic()
        log.info("ledger feed %s recovered at seq %d (checkpoint at %d, %d known senders)",
                 self.chain.feed, seq, self.checkpoint_seq, len(self._sources))

    # --- startup ----------------------------------------------------------------------------

    def _ensure_own_feed(self) -> int:
        feed = self.node.node_id
        with self.conn:
            self.conn.execute("UPDATE feeds SET local = 0 WHERE local = 1 AND feed != ?", (feed,))
            self.conn.execute("INSERT INTO feeds (feed, public_key, local) VALUES (?, ?, 1) "
                              "ON CONFLICT (feed) DO UPDATE SET local = 1",
                              (feed, self.node.public_key))
        row = self.conn.execute("SELECT id FROM feeds WHERE feed = ?", (feed,)).fetchone()
        assert row is not None
        return int(row[0])

    def _load_head(self, feed_id: int) -> tuple[int, bytes]:
        row = self.conn.execute("SELECT seq, hash FROM events WHERE feed = ? "
                                "ORDER BY seq DESC LIMIT 1", (feed_id,)).fetchone()
        return (int(row[0]), bytes(row[1])) if row else (0, chain.GENESIS_HASH)

    def _last_checkpoint_seq(self, feed_id: int) -> int:
        row = self.conn.execute("SELECT max(seq) FROM checkpoints WHERE feed = ?",
                                (feed_id,)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # --- group commit -----------------------------------------------------------------------

    def commit(self, appends: list[Append], *, checkpoint_events: int) -> list[Row]:
        """Write every admitted append in one transaction; fill in each append's verdict,
        answer_ref and last_seq. Returns the rows written. Raises apsw.Error, with nothing
        changed, when the transaction fails."""
        feed_chain = self.chain
        seq, prev = feed_chain.seq, feed_chain.hash
        rows: list[Row] = []
        sources: dict[str, tuple[int, int]] = {}
        for append in appends:
            known = sources.get(append.source) or self._sources.get(append.source)
            if append.ref == 0:  # fire-and-forget: never deduplicated, never answered
                verdict, answer = Verdict.COMMIT, 0
            else:
                verdict, answer = admit(known[0] if known else None, append.ref, append.base)
            append.verdict, append.answer_ref = verdict, answer
            if verdict is Verdict.COMMIT:
                append.first_row = len(rows)
                new_rows, seq, prev = feed_chain.extend(append.events, seq, prev)
                rows.extend(new_rows)
                append.last_seq = seq
                if append.ref:
                    sources[append.source] = (append.ref, seq)
            elif known is not None and known[0] == answer:
                append.last_seq = known[1]
        if rows or sources:
            self._write(rows, sources, seq, prev, checkpoint_events)
        feed_chain.advance(seq, prev)
        self._sources.update(sources)
        return rows

    def _write(self, rows: list[Row], sources: dict[str, tuple[int, int]], seq: int,
               prev: bytes, checkpoint_events: int) -> None:
        now = time.time()
        sign = seq - self.checkpoint_seq >= checkpoint_events
        with self.conn:
            self.conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            if sources:
                self.conn.executemany(
                    "INSERT INTO sources VALUES (?, ?, ?, ?) ON CONFLICT (source) DO UPDATE "
                    "SET ref = excluded.ref, last_seq = excluded.last_seq, seen = excluded.seen",
                    [(source, ref, last_seq, now) for source, (ref, last_seq) in sources.items()])
            if sign:
                self._insert_checkpoint(seq, prev, now)
        if sign:
            self._checkpoint_written(seq)

    # --- checkpoints ------------------------------------------------------------------------

    def checkpoint_due(self, interval_s: float, now: float) -> bool:
        """True when events arrived since the last checkpoint and `interval_s` has passed."""
        return self.chain.seq > self.checkpoint_seq and now - self.checkpoint_at >= interval_s

    def checkpoint(self) -> bool:
        """Sign and store a checkpoint of the current head, if it has none yet."""
        seq = self.chain.seq
        if seq <= self.checkpoint_seq:
            return False
        with self.conn:
            self._insert_checkpoint(seq, self.chain.hash, time.time())
        self._checkpoint_written(seq)
        return True

    def _insert_checkpoint(self, seq: int, head_hash: bytes, now: float) -> None:
        self.conn.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                          (self.chain.feed_id, seq, head_hash, self.sign(seq, head_hash), now))

    def sign(self, seq: int, head_hash: bytes) -> bytes:
        """This node's checkpoint signature over entry `seq` (hash `head_hash`) of its feed."""
        return self._signer.sign(chain.checkpoint_message(self.chain.feed, seq, head_hash))

    def _checkpoint_written(self, seq: int) -> None:
        self.checkpoint_seq = seq
        self.checkpoint_at = time.monotonic()

    # --- housekeeping -----------------------------------------------------------------------

    def prune_sources(self, now: float) -> int:
        """Forget senders silent for SOURCE_RETENTION_S; returns how many."""
        with self.conn:
            self.conn.execute("DELETE FROM sources WHERE seen < ?", (now - SOURCE_RETENTION_S,))
            pruned = self.conn.changes()
        if pruned:
            self._load_sources()
        return pruned

    def _load_sources(self) -> None:
        self._sources = {source: (ref, last_seq) for source, ref, last_seq in
                         self.conn.execute("SELECT source, ref, last_seq FROM sources")}


class WalCheckpointer:
    """Copies the WAL back into the database from a thread of its own.

    Why: SQLite's automatic checkpoint runs inside the commit that crosses the threshold,
    so one unlucky commit (and every sender waiting on it) pays for copying megabytes and
    an fsync of the database file. A PASSIVE checkpoint on a second connection never blocks
    the writer, and APSW releases the GIL while SQLite works, so the writer's loop goes on.
    The owner turns the automatic checkpoint off on its own connection and installs
    `on_wal` as its WAL hook instead: like SQLite's own automatic checkpoint, this one runs
    once the WAL holds `pages` pages, and at most every `interval_s` (an idle ledger never
    wakes the thread). Each checkpoint fsyncs the database file, and durable commits that
    meet it wait behind it: at 2,000 commits/s, one every 0.5 s put 1 % of them behind one.
    """

    def __init__(self, path: Path, interval_s: float = 0.5, pages: int = 1000) -> None:
        self.path = path
        self.interval_s = interval_s
        self.pages = pages
        self._stop = threading.Event()
        self._written = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def on_wal(self, _conn: apsw.Connection, _db: str, pages: int) -> int:
        """The writer connection's WAL hook, called after each commit with the WAL's size."""
        if pages >= self.pages and not self._written.is_set():
            self._written.set()
        return apsw.SQLITE_OK

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._written.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        conn = apsw.Connection(str(self.path))
        conn.set_busy_timeout(chain.BUSY_TIMEOUT_MS)
        try:
            while not self._stop.wait(self.interval_s):
                self._written.wait()
                if self._stop.is_set():
                    break
                self._written.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except apsw.Error as exc:  # e.g. busy: the next round tries again
                    log.warning("WAL checkpoint failed: %s", exc)
                    self._written.set()
        finally:
            conn.close()

