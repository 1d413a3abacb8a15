"""Task-history snapshots: the executor's book as of one seq of this node's feed, so that a
restart replays only the task events after it, whatever the ledger holds.

The ledger stays the system of record; a snapshot is a cache of its projection. It is
written only when the book is exactly the projection of the durable events up to its seq:
every event the executor appended is acknowledged (nothing waits to become durable, so no
record is half way), and the catch-up of a previous executor's late submits is done. On
load it is used only if it names this node's feed and the event at its seq still has the
hash it recorded (the database was not replaced or restored); otherwise the executor
replays the whole feed, as it did before snapshots existed.

The file is msgpack, written to a temporary name, fsynced and renamed over the old one: a
crash leaves the old snapshot or the new one, never half of one.
"""

from __future__ import annotations

import logging
import operator
import os
import time
from pathlib import Path
from typing import Any

import apsw
import msgpack

from akita.ledger import chain
from akita.tasks.queue import Foreign, TaskBook, TaskRecord, TaskState

log = logging.getLogger(__name__)

FILE_NAME = "tasks.snapshot"
FORMAT = 1
EVERY_EVENTS = 20_000    # task events since the last snapshot before the next one is due
MAX_FILE_BYTES = 1 << 30
_FIELDS = ("id", "name", "args", "priority", "order", "attempts", "ran_on", "result",
           "error", "submitted_ts", "started_ts", "finished_ts", "size", "lease_s")
_FIELDS_OF = operator.attrgetter(*_FIELDS)


def path_for(db_path: Path) -> Path:
    return db_path.parent / FILE_NAME


def save(path: Path, book: TaskBook, feed: str, seq: int, seq_hash: bytes) -> int:
    """Write `book` as of `seq` (whose event hash is `seq_hash`); returns the bytes written."""
    # One C call per record for its fields: a generator of getattr took 3x as long, and a
    # snapshot is written while the executor's loop waits (10,000 records: 18 -> 6 ms).
    fields = _FIELDS_OF
    records = [[*fields(r), r.state.value, list(r.requires),
                list(r.foreign) if r.foreign is not None else None]
               for r in book.records.values()]
    data = msgpack.packb({"v": FORMAT, "feed": feed, "seq": seq, "hash": seq_hash,
                          "records": records, "finished": book.finished_ids()},
                         use_bin_type=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a half-written file must not hold the space of a full disk
        raise
    return len(data)


def load(path: Path, db_path: Path, book: TaskBook) -> int:
    """Fill the empty `book` from the snapshot at `path` if it is usable; returns its seq
    (0: none usable, the book is untouched and the whole feed must be replayed)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("task snapshot %s unreadable (%s): replaying the whole feed", path, exc)
        return 0
    try:
        body = msgpack.unpackb(data, raw=False)
        reason = _unusable(body, db_path)
        if reason is None:
            records = [_record(row) for row in body["records"]]
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
        reason = f"malformed: {exc}"
    if reason is not None:
        log.warning("task snapshot %s not used (%s): replaying the whole feed", path, reason)
        return 0
    book.adopt(records, [str(task_id) for task_id in body["finished"]])
    return int(body["seq"])


def _unusable(body: Any, db_path: Path) -> str | None:
    if not isinstance(body, dict) or body.get("v") != FORMAT:
        return "unknown format"
    try:
        conn = chain.open_reader(db_path)
    except chain.LedgerNotFound:
        return "no ledger"
    try:
        rows = list(conn.execute(
            "SELECT e.hash FROM events e JOIN feeds f ON f.id = e.feed "
            "WHERE f.local = 1 AND f.feed = ? AND e.seq = ?", (body["feed"], body["seq"])))
    except apsw.Error as exc:
        return f"cannot read the ledger: {exc}"
    finally:
        conn.close()
    if not rows or rows[0][0] != body["hash"]:
        return f"the ledger has no such event at seq {body['seq']} of feed {body['feed']}"
    return None


def _record(row: list[Any]) -> TaskRecord:
    values = dict(zip(_FIELDS, row))
    state, requires, foreign = row[len(_FIELDS):]
    record = TaskRecord(values["id"], values["name"], values["args"], values["priority"],
                        values["order"], values["submitted_ts"], TaskState(state))
    for name in _FIELDS[5:]:
        setattr(record, name, values[name])
    record.requires = tuple(requires)
    if foreign is not None:
        record.foreign = Foreign(*foreign)
    return record


class Snapshots:
    """When to write the next snapshot: after `every` task events, at a quiet moment."""

    def __init__(self, db_path: Path, every: int = EVERY_EVENTS) -> None:
        self.db_path = db_path
        self.path = path_for(db_path)
        self.every = every
        self.events = 0          # task events since the snapshot on disk
        self.written = 0

    def note(self, events: int = 1) -> None:
        self.events += events

    def due(self) -> bool:
        return self.events >= self.every

    def save(self, book: TaskBook, seq: int) -> None:
        """Write the snapshot of `book` at `seq`; the caller vouches that the book is the
        projection of the durable feed up to `seq` (see the module docstring)."""
        if seq <= 0:
            return
        started = time.monotonic()
        try:
            found = _hash_at(self.db_path, seq)
            if found is None:
                return
            feed, digest = found
            size = save(self.path, book, feed, seq, digest)
        except (OSError, apsw.Error, chain.LedgerNotFound) as exc:
            log.warning("task snapshot not written (%s); the next one is tried later", exc)
            self.events = self.every // 2  # not at once again: a full disk would spin
            return
        self.events = 0
        self.written += 1
        log.info("task snapshot at seq %d: %d records, %d bytes, %.0f ms", seq,
                 len(book.records), size, (time.monotonic() - started) * 1000)


def _hash_at(db_path: Path, seq: int) -> tuple[str, bytes] | None:
    """(own feed, hash of its event `seq`). Two lookups by key: joined, SQLite (without
    statistics) scans the whole events index for `seq`, 50 ms at a million events."""
    conn = chain.open_reader(db_path)
    try:
        for feed_id, feed in conn.execute("SELECT id, feed FROM feeds WHERE local = 1"):
            for (digest,) in conn.execute("SELECT hash FROM events WHERE feed = ? AND seq = ?",
                                          (feed_id, seq)):
                return feed, digest
        return None
    finally:
        conn.close()
