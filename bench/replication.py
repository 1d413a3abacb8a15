"""Replication benchmark, the ledger side: bundle size per event and ingest throughput.

    python bench/replication.py [--events 10000] [--rounds 3] [--mdu 431]

Two ledger writers (nodes A and B) run as the supervisor would start them. A's feed gets
`--events` task-sized events; then, each round, a fresh B pulls the whole feed from A
through ledger.range → ledger.ingest over their ipc sockets, as a gateway does (without the
network in between).

1. Size: bundle bytes per event against the event's stored size (the row's columns: seq,
   ts, kind, data, prev, hash), for one large bundle and for bundles cut to a Reticulum
   link MDU (`--mdu`, 431 bytes: one packet each). Target ≤ 1.5×.
2. Throughput: events/s from the first range request to the last ingest reply, against
   raw APSW in the same round storing the same rows the cheapest way a verifying receiver
   could (recompute the SHA-256 chain, one transaction, WAL, synchronous=FULL).

The summary is the median round (the ratio: the median of the rounds' ratios). Figures depend on the machine; the ratios are what count.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import apsw
import msgpack
import zmq

from akita import transport
from akita.ledger import chain
from akita.ledger.client import LedgerClient
from akita.wire import protocol
from bench.ledger import event_data, start_writer, stop_writer
from workers.ledger import store

KIND = "task.succeeded"


# --- writers --------------------------------------------------------------------------------


def ask(root: Path, msg: protocol.Message, timeout_s: float = 30.0) -> Any:
    with transport.Requester(root / "run", "ledger") as req:
        return req.request(msg, timeout_s)


def fill(root: Path, count: int) -> str:
    """Append `count` events to the writer's own feed; returns the feed id."""
    ctx = zmq.Context()
    client = LedgerClient(ctx, root / "run", "bench")
    for i in range(count):
        client.append(KIND, event_data(i))
        if i & 63 == 0 and client.sock.poll(0):
            client.on_readable()
    if not client.flush(120):
        raise SystemExit("appends to A were not acknowledged within 120 s")
    client.close()
    ctx.term()
    feed = chain.own_feed(root / "data" / chain.DB_FILE)
    assert feed is not None
    return feed


# --- measurements ---------------------------------------------------------------------------


def stored_sizes(db: Path, feed: str) -> tuple[float, float]:
    """Mean stored event size: the row's column bytes, and the events table's and index's
    pages on disk divided by the events (dbstat)."""
    conn = chain.open_reader(db)
    try:
        count, columns = one(conn, "SELECT count(*), sum(8 + 8 + length(CAST(kind AS BLOB)) "
                             "+ length(data) + length(prev) + length(hash)) FROM events e "
                             "JOIN feeds f ON f.id = e.feed WHERE f.feed = ?", (feed,))
        (pages,) = one(conn, "SELECT sum(pgsize) FROM dbstat WHERE name IN "
                             "('events', 'events_by_kind')", ())
        return columns / count, pages / count
    finally:
        conn.close()


def one(conn: apsw.Connection, sql: str, args: tuple[Any, ...]) -> Any:
    row = conn.execute(sql, args).fetchone()
    assert row is not None, sql
    return row


def pull(source: Path, target: Path, feed: str, max_bytes: int) -> tuple[int, int, float]:
    """Everything of `feed` from `source` into `target`: (bundles, bundle bytes, seconds)."""
    bundles = total = 0
    after, head = 0, 1
    ctx = zmq.Context()
    with (transport.Requester(source / "run", "ledger", ctx=ctx) as serve,
          transport.Requester(target / "run", "ledger", ctx=ctx) as store):
        started = time.perf_counter()
        while after < head:
            served = serve.request(protocol.LedgerRange(
                feed=feed, after_seq=after, max_bytes=max_bytes, with_key=after == 0), 30.0)
            assert isinstance(served, protocol.LedgerRangeReply)
            got = store.request(protocol.LedgerIngest(bundle=served.bundle, sender=feed), 30.0)
            assert isinstance(got, protocol.LedgerIngestReply)
            if got.outcome != "stored":
                raise SystemExit(f"ingest refused: {got}")
            bundles, total = bundles + 1, total + len(served.bundle)
            after, head = got.head_seq, served.head_seq
        elapsed = time.perf_counter() - started
    ctx.term()
    return bundles, total, elapsed


def raw_apsw(path: Path, rows: list[tuple[int, float, str, bytes, bytes, bytes]],
             feed: str) -> float:
    """Events/s storing `rows` with the chain recomputed: the floor of any verifying ingest."""
    conn = store.open_writer(path)
    started = time.perf_counter()
    prev = chain.GENESIS_HASH
    out = []
    for seq, ts, kind, data, _prev, stored_hash in rows:
        digest = hashlib.sha256(prev + msgpack_head(feed, seq, ts, kind) + data).digest()
        if digest != stored_hash:
            raise SystemExit(f"raw baseline: the chain breaks at seq {seq}")
        out.append((1, seq, ts, kind, data, prev, digest))
        prev = digest
    with conn:
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", out)
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


def msgpack_head(feed: str, seq: int, ts: float, kind: str) -> bytes:
    return b"\x95" + msgpack.packb(feed) + msgpack.packb((seq, ts, kind))[1:]


def feed_rows(db: Path, feed: str) -> list[tuple[int, float, str, bytes, bytes, bytes]]:
    conn = chain.open_reader(db)
    try:
        return list(conn.execute(
            "SELECT e.seq, e.ts, e.kind, e.data, e.prev, e.hash FROM events e JOIN feeds f "
            "ON f.id = e.feed WHERE f.feed = ? ORDER BY e.seq", (feed,)))
    finally:
        conn.close()


# --- the run --------------------------------------------------------------------------------


def run(root: Path, args: argparse.Namespace) -> int:
    a_root = root / "a"
    writer_a = start_writer(a_root)
    try:
        feed = fill(a_root, args.events)
        rows = feed_rows(a_root / "data" / chain.DB_FILE, feed)
        columns, on_disk = stored_sizes(a_root / "data" / chain.DB_FILE, feed)
        print(f"A's feed: {len(rows):,} events; stored size per event: {columns:.1f} B of "
              f"columns, {on_disk:.1f} B of table and index pages")
        rates, ratios, sizes, mdu_sizes, mdu_bundles = [], [], [], [], []
        for round_no in range(1, args.rounds + 1):
            big = measure_round(root / f"b{round_no}", a_root, feed, 0)
            mdu = measure_round(root / f"m{round_no}", a_root, feed, args.mdu)
            raw = raw_apsw(root / f"raw{round_no}.db", rows, feed)
            rates.append(args.events / big[2])
            ratios.append(rates[-1] / raw)
            sizes.append(big[1] / args.events)
            mdu_sizes.append(mdu[1] / args.events)
            mdu_bundles.append(mdu[0])
            print(f"round {round_no}: {big[0]} bundle(s), {big[1] / args.events:.1f} B/event, "
                  f"{rates[-1]:,.0f} events/s range→ingest, raw {raw:,.0f} events/s "
                  f"(ratio {rates[-1] / raw:.2f}); {args.mdu}-byte bundles: {mdu[0]:,} of "
                  f"{mdu[1] / mdu[0]:.0f} B, {mdu[1] / args.events:.1f} B/event, "
                  f"{args.events / mdu[2]:,.0f} events/s")
        summarize(args, columns, statistics.median(sizes), statistics.median(mdu_sizes),
                  statistics.median(rates), statistics.median(ratios),
                  int(statistics.median(mdu_bundles)))
        return 0
    finally:
        stop_writer(writer_a)


def measure_round(b_root: Path, a_root: Path, feed: str, max_bytes: int
                  ) -> tuple[int, int, float]:
    writer_b = start_writer(b_root)
    try:
        moved = pull(a_root, b_root, feed, max_bytes)
        results = chain.verify(b_root / "data" / chain.DB_FILE, feed)
        if not all(result.ok for result in results):
            raise SystemExit(f"B's copy does not verify: {results}")
        return moved
    finally:
        stop_writer(writer_b)


def summarize(args: argparse.Namespace, stored: float, size: float, mdu_size: float,
              rate: float, ratio: float, mdu_bundles: int) -> None:
    print()
    print(f"bundle bytes per event, one bundle:      {size:6.1f} B = {size / stored:.2f} × "
          f"stored ({stored:.1f} B)   target ≤ 1.50 ×")
    print(f"bundle bytes per event, {args.mdu}-B bundles: {mdu_size:6.1f} B = "
          f"{mdu_size / stored:.2f} × stored   ({mdu_bundles:,} bundles, each a single packet)")
    print(f"ingest, range → ingest of {args.events:,} events: {rate:,.0f} events/s "
          f"(median round); {ratio:.2f} × raw APSW (median of the rounds' ratios)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mdu", type=int, default=431, help="bytes a bundle may take to fit "
                        "one packet (Reticulum link MDU: 431)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="akb-repl-", dir="/tmp"))
    try:
        return run(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
