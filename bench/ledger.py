"""Ledger benchmark: durable appends/s through the ledger worker, against raw APSW.

    python bench/ledger.py [--events-per-sender N] [--senders 4] [--latency-s 5] [--rounds 3]

1. Throughput: `--senders` processes, each a LedgerClient appending as fast as it can;
   only acknowledged (durable) events count. Rate = all acked / (last ack - first append).
2. Baseline, same run: raw APSW inserting the same rows into the same schema (WAL,
   synchronous=FULL, the same SHA-256 chain) in 1,000-row transactions, one process.
3. Durable latency (append → ack) of one sender paced at `--rate` events/s, next to its
   floor measured in the same round: raw APSW committing each event alone at that rate.

Each round runs all three back to back (the writer keeps its growing database); the summary
is the median round, which tames a noisy shared machine somewhat.

Targets: ≥ 50,000 events/s, ≥ 0.75 of raw; p50 ≤ 1 ms, p99 ≤ 5 ms at 2,000 events/s.
The writer is started directly (`workers.base.main` in a fresh interpreter), as the
supervisor starts it. Run it on a quiet machine: every figure here is shared-CPU sensitive.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil
import zmq

from akita import transport
from akita.errors import AkitaError
from akita.identity import NodeIdentity
from akita.ledger import chain
from akita.ledger.client import LedgerClient
from akita.wire import protocol
from workers.ledger import store

KIND = "task.succeeded"
CONFIG = """[node]
data_dir = data
run_dir = run
log_dir = log
name = bench
[supervisor]
workers = ledger
"""


def event_data(i: int) -> dict[str, Any]:
    """A task-sized event body (~70 bytes of msgpack)."""
    return {"id": f"{i:016x}", "task": "resize", "attempt": 1, "node": "bench", "ms": 12.5}


# --- the writer -----------------------------------------------------------------------------


def start_writer(root: Path) -> subprocess.Popen[bytes]:
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "akita.ini"
    config_path.write_text(CONFIG)
    transport.ensure_private_dir(root / "run")
    args = {"name": "ledger", "config_path": str(config_path), "config_text": CONFIG}
    with open(root / "ledger.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", f"import sys; from workers.base import main; sys.exit(main({args!r}))"],
            stderr=log, cwd=REPO)
    deadline = time.monotonic() + 15
    while True:
        try:
            with transport.Requester(root / "run", "ledger") as req:
                if isinstance(req.request(protocol.Ping(), 1.0), protocol.Pong):
                    return proc
        except AkitaError:  # still starting: no socket yet, or no answer yet
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the ledger worker did not start; see " + str(root / "ledger.log"))
            time.sleep(0.05)


def stop_writer(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# --- sender processes -----------------------------------------------------------------------


def sender_throughput(run_dir: Path, count: int, start_at: float) -> dict[str, Any]:
    """Append `count` events as fast as possible; times the first append and the last ack."""
    ctx = zmq.Context()
    client = LedgerClient(ctx, run_dir, "bench")
    acked = [0]
    last_ack = [0.0]

    def durable(_seq: int) -> None:
        acked[0] += 1

    poll = client.sock.poll
    while time.time() < start_at:
        time.sleep(0.001)
    cpu_before = time.process_time()  # without the imports, which would double the figure
    first = time.time()
    for i in range(count):
        client.append(KIND, event_data(i), on_durable=durable)
        if i & 63 == 0 and poll(0):
            client.on_readable()
    ok = client.flush(120)
    last_ack[0] = time.time()
    client.close()
    ctx.term()
    return {"ok": ok, "acked": acked[0], "first": first, "last": last_ack[0],
            "cpu_s": time.process_time() - cpu_before}


def _latency_probe(latencies: list[float]) -> Callable[[int], None]:
    """An on_durable callback that records the time since its own creation."""
    sent = time.perf_counter()

    def durable(_seq: int) -> None:
        latencies.append(time.perf_counter() - sent)

    return durable


def sender_latency(run_dir: Path, rate: float, seconds: float) -> dict[str, Any]:
    """Append at a steady `rate`; the latency of each event from append to its ack.

    The sender wakes at least every millisecond (waiting on its socket, so acks are served
    at once) and appends the events whose time has come; it never spins on the CPU, which
    would steal a core from the writer on a small machine."""
    ctx = zmq.Context()
    client = LedgerClient(ctx, run_dir, "bench-latency")
    latencies: list[float] = []
    interval = 1.0 / rate
    total = int(rate * seconds)
    started = time.perf_counter()
    appended = 0
    while appended < total:
        due = min(total, int((time.perf_counter() - started) / interval) + 1)
        while appended < due:
            client.append(KIND, event_data(appended), on_durable=_latency_probe(latencies))
            appended += 1
        if client.sock.poll(1):
            client.on_readable()
    ok = client.flush(30)
    client.close()
    ctx.term()
    return {"ok": ok, "latencies": latencies}


def run_senders(run_dir: Path, senders: int, count: int) -> list[dict[str, Any]]:
    start_at = time.time() + 1.0  # every sender has imported and connected by then
    procs = [subprocess.Popen([sys.executable, __file__, "--as-sender", str(run_dir),
                               str(count), repr(start_at)], stdout=subprocess.PIPE, cwd=REPO)
             for _ in range(senders)]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        results.append(json.loads(out))
    return results


# --- the raw baseline -----------------------------------------------------------------------


def raw_apsw(path: Path, count: int, batch: int = 1000) -> float:
    """Events/s of raw APSW writing the same rows with the same chain; one process."""
    conn = store.open_writer(path)
    node = NodeIdentity.generate()
    conn.execute("INSERT INTO feeds (feed, public_key, local) VALUES (?, ?, 1)",
                 (node.node_id, node.public_key))
    feed_chain = chain.Chain(node.node_id, conn.last_insert_rowid())
    seq, prev = 0, chain.GENESIS_HASH
    started = time.perf_counter()
    for low in range(0, count, batch):
        now = time.time()
        events = [(now, KIND, chain.pack_data(event_data(i)))
                  for i in range(low, min(low + batch, count))]
        rows, seq, prev = feed_chain.extend(events, seq, prev)
        with conn:
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def raw_commit_latency(path: Path, rate: float, seconds: float) -> list[float]:
    """The floor under durable latency: one event per raw APSW commit (synchronous=FULL,
    same row, same chain), paced at `rate`; seconds per commit."""
    conn = store.open_writer(path)
    node = NodeIdentity.generate()
    conn.execute("INSERT INTO feeds (feed, public_key, local) VALUES (?, ?, 1)",
                 (node.node_id, node.public_key))
    feed_chain = chain.Chain(node.node_id, conn.last_insert_rowid())
    seq, prev = 0, chain.GENESIS_HASH
    latencies = []
    started = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        begin = time.perf_counter()
        rows, seq, prev = feed_chain.extend([(time.time(), KIND, chain.pack_data(event_data(i)))],
                                       seq, prev)
        with conn:
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        latencies.append(time.perf_counter() - begin)
    conn.close()
    return latencies


# --- main -----------------------------------------------------------------------------------


def settle() -> None:
    """Flush what the previous phase left dirty in the page cache, so that its writeback
    does not land in the next phase's fsyncs: a 2,000/s latency run that starts while a
    burst of 100 MB is still being written back measures the burst, not the writer."""
    os.sync()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--as-sender":
        run_dir, count, start_at = Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
        print(json.dumps(sender_throughput(run_dir, count, start_at)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--events-per-sender", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2_000.0)
    parser.add_argument("--latency-s", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="akb-ledger-", dir="/tmp"))
    try:
        return run(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, args: argparse.Namespace) -> int:
    """Rounds of (worker throughput, raw baseline, paced latency), interleaved so that both
    sides of each ratio see the same machine; the summary takes the median round."""
    total = args.senders * args.events_per_sender
    ratios, rates, p50s, p99s = [], [], [], []
    floors: list[tuple[float, float]] = []
    ok = True
    writer = start_writer(root)
    try:
        for round_no in range(1, args.rounds + 1):
            load = os.getloadavg()[0]
            settle()
            worker_rate, acked, writer_us, sender_us, busy = throughput(root, args, writer.pid)
            settle()
            raw_rate = raw_apsw(root / f"raw{round_no}.db", total)
            settle()
            latency = sender_latency(root / "run", args.rate, args.latency_s)
            settle()
            floor = [x * 1000 for x in raw_commit_latency(root / f"rawlat{round_no}.db",
                                                          args.rate, args.latency_s)]
            lat = [x * 1000 for x in latency["latencies"]]
            ok = ok and acked == total and latency["ok"]
            p50, p99 = statistics.median(lat), percentile(lat, 99)
            floor_p50, floor_p99 = statistics.median(floor), percentile(floor, 99)
            print(f"round {round_no} (load average {load:.1f}): worker {worker_rate:,.0f} ev/s, "
                  f"raw {raw_rate:,.0f} ev/s, ratio {worker_rate / raw_rate:.2f}; CPU/event: "
                  f"writer {writer_us:.1f} us (busy {busy:.0%}), senders {sender_us:.1f} us; "
                  f"latency p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(lat):.1f} ms; "
                  f"raw 1-event commits p50 {floor_p50:.2f} ms, p99 {floor_p99:.2f} ms")
            ratios.append(worker_rate / raw_rate)
            rates.append(worker_rate)
            p50s.append(p50)
            p99s.append(p99)
            floors.append((floor_p50, floor_p99))
    finally:
        stop_writer(writer)
    verified = chain.verify(root / "data" / chain.DB_FILE)
    print(f"median of {args.rounds} rounds, {args.senders} senders x "
          f"{args.events_per_sender:,} events:")
    print(f"  durable appends through the ledger worker: {statistics.median(rates):,.0f} "
          f"events/s (target >= 50,000)")
    print(f"  ratio to raw APSW (same rows and chain, 1,000-row transactions, "
          f"synchronous=FULL): {statistics.median(ratios):.2f} (target >= 0.75)")
    print(f"  durable latency at {args.rate:,.0f} events/s: p50 {statistics.median(p50s):.2f} ms "
          f"(target 1), p99 {statistics.median(p99s):.2f} ms (target 5); the same run's "
          f"floor, raw APSW committing each event alone at that rate: p50 "
          f"{statistics.median(f[0] for f in floors):.2f} ms, p99 "
          f"{statistics.median(f[1] for f in floors):.2f} ms")
    print(f"  verify: {'intact' if all(v.ok for v in verified) else verified}, "
          f"{sum(v.events for v in verified):,} events; {os.cpu_count()} CPUs")
    return 0 if ok else 1


def throughput(root: Path, args: argparse.Namespace, writer_pid: int
               ) -> tuple[float, int, float, float, float]:
    """(events/s, acked, writer CPU us/event, sender CPU us/event, writer busy fraction)."""
    writer_cpu = psutil.Process(writer_pid)
    cpu_before = sum(writer_cpu.cpu_times()[:2])
    results = run_senders(root / "run", args.senders, args.events_per_sender)
    writer_cpu_s = sum(writer_cpu.cpu_times()[:2]) - cpu_before
    acked = sum(r["acked"] for r in results)
    elapsed = max(r["last"] for r in results) - min(r["first"] for r in results)
    sender_cpu_s = sum(r["cpu_s"] for r in results)
    return (acked / elapsed, acked, writer_cpu_s / acked * 1e6, sender_cpu_s / acked * 1e6,
            writer_cpu_s / elapsed)


if __name__ == "__main__":
    sys.exit(main())
