"""The hash chain, checkpoints and verification, on real SQLite files without any process.

A feed is built with `LedgerStore` (the writer's own code), then tampered with through a
separate connection, as an attacker with write access to the file would.
"""

from __future__ import annotations

from pathlib import Path

import apsw
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from akita.identity import NodeIdentity
from akita.ledger import chain
from workers.ledger.store import Append, LedgerStore, Verdict, admit, open_writer, parse_events

CHECKPOINT_EVERY = 4


def build_feed(path: Path, count: int, *, node: NodeIdentity | None = None,
               kinds: tuple[str, ...] = ("task.submitted", "worker.exited")) -> NodeIdentity:
    """A feed of `count` events committed one per transaction, checkpoints every 4 events
    and at the end (as the worker does at shutdown)."""
    node = node or NodeIdentity.generate()
    conn = open_writer(path)
    store = LedgerStore(conn, node)
    for i in range(count):
        kind = kinds[i % len(kinds)]
        events = parse_events([{"kind": kind, "ts": 1000.0 + i, "data": {"i": i}}])
        store.commit([Append("builder", i + 1, 1, events, True)],
                     checkpoint_events=CHECKPOINT_EVERY)
    store.checkpoint()
    conn.close()
    return node


def tamper(path: Path, sql: str, *args: object) -> None:
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(2000)
    with conn:
        conn.execute(sql, args)
    conn.close()


def swap_rows(path: Path, a: int, b: int, columns: str) -> None:
    """Exchange `columns` between the rows at seq `a` and `b`."""
    conn = apsw.Connection(str(path))
    select = f"SELECT {columns} FROM events WHERE seq = ?"
    row_a, row_b = (tuple(conn.execute(select, (seq,)).fetchone() or ()) for seq in (a, b))
    assignments = ", ".join(f"{name.strip()} = ?" for name in columns.split(","))
    with conn:
        conn.execute(f"UPDATE events SET {assignments} WHERE seq = ?", (*row_b, a))
        conn.execute(f"UPDATE events SET {assignments} WHERE seq = ?", (*row_a, b))
    conn.close()


def only_result(path: Path) -> chain.VerifyResult:
    results = chain.verify(path)
    assert len(results) == 1, results
    return results[0]


@pytest.fixture
def feed_db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    build_feed(path, 10)
    return path


# --- the pure parts -------------------------------------------------------------------------


def test_admit_rules() -> None:
    assert admit(None, 1, 1) == (Verdict.COMMIT, 1)
    assert admit(None, 3, 1) == (Verdict.GAP, 0)            # new source, frames 1-2 lost
    assert admit(None, 7, 7) == (Verdict.COMMIT, 7)          # pruned source, 1-6 were acked
    assert admit(4, 5, 1) == (Verdict.COMMIT, 5)
    assert admit(4, 4, 1) == (Verdict.DUPLICATE, 4)
    assert admit(4, 2, 1) == (Verdict.DUPLICATE, 4)
    assert admit(4, 6, 5) == (Verdict.GAP, 4)
    assert admit(4, 9, 9) == (Verdict.COMMIT, 9)             # sender knows 5-8 were acked


def test_chain_matches_the_documented_formula() -> None:
    feed_chain = chain.Chain("ab" * 16, 1)
    blob = chain.pack_data({"x": [1, 2]})
    rows, seq, head = feed_chain.extend([(5.5, "a.b", blob), (6.0, "c", blob)], 0, chain.GENESIS_HASH)
    assert seq == 2 and head == rows[1][6]
    import hashlib
    first = hashlib.sha256(bytes(32) + msgpack.packb(["ab" * 16, 1, 5.5, "a.b", {"x": [1, 2]}],
                                                     use_bin_type=True)).digest()
    assert rows[0][5] == bytes(32) and rows[0][6] == first
    assert rows[1][5] == first
    assert chain.event_hash(first, "ab" * 16, 2, 6.0, "c", blob) == head


@pytest.mark.parametrize("bad, message", [
    ([["not", "a", "map"]], "not a map"),
    ([{"kind": "a", "ts": 1.0}], "not a map"),
    ([{"kind": "a", "ts": 1.0, "date": 1}], "has no data"),
    ([{"kind": "", "ts": 1.0, "data": 1}], "kind must be"),
    ([{"kind": 5, "ts": 1.0, "data": 1}], "kind must be"),
    ([{"kind": "a", "ts": "now", "data": 1}], "ts must be a number"),
])
def test_parse_events_names_what_is_wrong(bad: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_events(bad)


def test_parse_events_accepts_integer_ts() -> None:
    [(ts, kind, blob)] = parse_events([{"kind": "a", "ts": 3, "data": {"k": b"\x00"}}])
    assert ts == 3.0 and type(ts) is float and kind == "a"
    assert msgpack.unpackb(blob) == {"k": b"\x00"}


# --- an intact feed -------------------------------------------------------------------------


def test_intact_feed_verifies_and_reads_back(feed_db: Path) -> None:
    result = only_result(feed_db)
    assert result.ok and result.events == 10 and result.first_bad_seq is None
    events = list(chain.read_events(feed_db))
    assert [e.seq for e in events] == list(range(1, 11))
    assert events[3].data == {"i": 3} and events[3].ts == 1003.0
    tasks = list(chain.read_events(feed_db, kind_prefix="task.", after_seq=4, limit=2))
    assert [(e.seq, e.kind) for e in tasks] == [(5, "task.submitted"), (7, "task.submitted")]
    assert [e.seq for e in chain.tail(feed_db, 3)] == [8, 9, 10]
    assert [e.seq for e in chain.tail(feed_db, 2, kind_prefix="worker.")] == [8, 10]
    feed, seq, _ = chain.head(feed_db)  # type: ignore[misc]
    assert seq == 10 and chain.own_feed(feed_db) == feed


def test_checkpoints_are_batched(feed_db: Path) -> None:
    conn = chain.open_reader(feed_db)
    seqs = [row[0] for row in conn.execute("SELECT seq FROM checkpoints ORDER BY seq")]
    conn.close()
    assert seqs == [4, 8, 10]


def test_restart_recovers_the_head_and_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    node = build_feed(path, 5)
    conn = open_writer(path)
    store = LedgerStore(conn, node)
    assert store.chain.seq == 5 and store.checkpoint_seq == 5
    resend = Append("builder", 5, 1, parse_events([{"kind": "x", "ts": 1.0, "data": 0}]), True)
    fresh = Append("builder", 6, 1, parse_events([{"kind": "x", "ts": 2.0, "data": 1}]), True)
    rows = store.commit([resend, fresh], checkpoint_events=100)
    conn.close()
    assert (resend.verdict, resend.answer_ref, resend.last_seq) == (Verdict.DUPLICATE, 5, 5)
    assert (fresh.verdict, fresh.last_seq) == (Verdict.COMMIT, 6)
    assert [row[1] for row in rows] == [6]
    assert only_result(path).ok and only_result(path).events == 6


def test_reader_on_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(chain.LedgerNotFound, match="no ledger at"):
        chain.tail(tmp_path / "ledger.db", 5)


# --- tampering ------------------------------------------------------------------------------


def test_edited_row_is_detected(feed_db: Path) -> None:
    tamper(feed_db, "UPDATE events SET data = ? WHERE seq = 5", chain.pack_data({"i": 99}))
    result = only_result(feed_db)
    assert not result.ok and result.first_bad_seq == 5 and result.events == 4
    assert "hash" in result.reason


def test_deleted_row_is_detected(feed_db: Path) -> None:
    tamper(feed_db, "DELETE FROM events WHERE seq = 6")
    result = only_result(feed_db)
    assert not result.ok and result.first_bad_seq == 6 and "missing" in result.reason


def test_reordered_rows_are_detected(feed_db: Path) -> None:
    # Swap the whole contents of rows 3 and 7, keeping their sequence numbers.
    swap_rows(feed_db, 3, 7, "ts, kind, data, prev, hash")
    assert [e.data["i"] for e in chain.read_events(feed_db)][2:7] == [6, 3, 4, 5, 2]
    result = only_result(feed_db)
    assert not result.ok and result.first_bad_seq == 3


def test_swapped_payloads_are_detected(feed_db: Path) -> None:
    swap_rows(feed_db, 2, 9, "data")
    result = only_result(feed_db)
    assert not result.ok and result.first_bad_seq == 2


def test_truncation_past_a_checkpoint_is_detected(feed_db: Path) -> None:
    tamper(feed_db, "DELETE FROM events WHERE seq >= 7")
    result = only_result(feed_db)
    assert not result.ok and result.first_bad_seq == 7 and result.events == 6
    assert "checkpoint covers seq 10" in result.reason


def test_forged_checkpoint_signature_is_detected(feed_db: Path) -> None:
    conn = chain.open_reader(feed_db)
    signature = bytes(conn.execute("SELECT signature FROM checkpoints WHERE seq = 8")
                      .fetchall()[0][0])  # type: ignore[arg-type]
    conn.close()
    forged = bytes([signature[0] ^ 1]) + signature[1:]
    tamper(feed_db, "UPDATE checkpoints SET signature = ? WHERE seq = 8", forged)
    result = only_result(feed_db)
    assert not result.ok and result.first_bad_seq == 8 and "signature" in result.reason


def test_rewritten_chain_is_caught_by_the_signed_checkpoint(feed_db: Path) -> None:
    """An attacker who edits row 5 and recomputes every later hash still fails at the
    first checkpoint after the edit: they cannot sign its new head."""
    conn = apsw.Connection(str(feed_db))
    rows = list(conn.execute("SELECT seq, ts, kind, data FROM events ORDER BY seq"))
    feed = chain.own_feed(feed_db)
    assert feed is not None
    prev = chain.GENESIS_HASH
    with conn:
        for seq, ts, kind, data in rows:
            if seq == 5:
                data = chain.pack_data({"i": "forged"})
            digest = chain.event_hash(prev, feed, seq, ts, kind, data)
            conn.execute("UPDATE events SET data = ?, prev = ?, hash = ? WHERE seq = ?",
                         (data, prev, digest, seq))
            prev = digest
    conn.close()
    result = only_result(feed_db)
    assert not result.ok and result.first_bad_seq == 8 and "different head" in result.reason


def test_substituted_public_key_is_detected(feed_db: Path) -> None:
    tamper(feed_db, "UPDATE feeds SET public_key = ?", NodeIdentity.generate().public_key)
    result = only_result(feed_db)
    assert not result.ok and "public key" in result.reason


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(min_value=1, max_value=12), data=st.data())
def test_any_flipped_byte_is_detected_at_its_row(tmp_path_factory: pytest.TempPathFactory,
                                                 count: int, data: st.DataObject) -> None:
    path = tmp_path_factory.mktemp("flip") / "ledger.db"
    build_feed(path, count)
    seq = data.draw(st.integers(min_value=1, max_value=count), label="seq")
    column = data.draw(st.sampled_from(["data", "prev", "hash"]), label="column")
    conn = apsw.Connection(str(path))
    value = bytes(conn.execute(f"SELECT {column} FROM events WHERE seq = ?", (seq,))
                  .fetchall()[0][0])  # type: ignore[arg-type]
    index = data.draw(st.integers(min_value=0, max_value=len(value) - 1), label="byte")
    flipped = value[:index] + bytes([value[index] ^ 0x01]) + value[index + 1:]
    with conn:
        conn.execute(f"UPDATE events SET {column} = ? WHERE seq = ?", (flipped, seq))
    conn.close()
    result = only_result(path)
    assert not result.ok
    # Each row is checked whole (prev, then recomputed hash) before the next one is read.
    assert result.first_bad_seq == seq, result


def test_an_identity_is_derived_once_and_a_replaced_key_is_read_anew(tmp_path: Path) -> None:
    from akita import identity

    first = identity.load_or_create(tmp_path)
    identity.warm_up(tmp_path)          # as a fork server does before each worker
    assert identity.load(tmp_path) is first
    replacement = NodeIdentity.generate()
    (tmp_path / identity.IDENTITY_FILE).write_bytes(replacement.private_bytes)
    loaded = identity.load(tmp_path)
    assert loaded.node_id == replacement.node_id != first.node_id
    assert identity.verify(loaded.public_key, loaded.sign(b"x"), b"x")
    identity.warm_up(tmp_path / "nothing here")   # no identity yet: nothing to derive
