"""Restart latency: SIGKILL a worker, time until that worker answers a ping again.

    python bench/restart.py [--worker sampler|ledger|executor|gateway] [--kills 20]

Starts a node in a temporary directory, then for each kill: waits until the worker has run
stably (so the supervisor restarts it at once, as it does a worker that crashes in normal
service), sends SIGKILL, and pings the worker's own socket (a DEALER to run_dir/NAME.sock)
every millisecond until a pong comes from the new pid. Prints median and p99.

Baseline, measured in the same run: fork+exec of a fresh interpreter that imports zmq,
msgpack, psutil and apsw — what a restart costs without a fork server. Target: median
≤ 10 ms; the ratio against the baseline is the figure that survives a noisy machine.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

import zmq
from node_fixture import BenchNode, percentile

from akita import transport
from akita.wire import protocol
from supervisor.process import STABLE_AFTER_S

PING_EVERY_S = 0.001
GIVE_UP_S = 10.0


def ping_until_new_pid(sock: zmq.Socket, old_pid: int, rids: itertools.count[int]) -> int:
    """Ping until a pong arrives from a pid other than `old_pid`; returns that pid."""
    deadline = time.monotonic() + GIVE_UP_S
    while time.monotonic() < deadline:
        sock.send(protocol.encode(protocol.Ping(), rid=next(rids)))
        while sock.poll(int(PING_EVERY_S * 1000)):
            reply = protocol.decode(sock.recv())
            if isinstance(reply, protocol.Pong) and reply.pid != old_pid:
                return reply.pid
    raise SystemExit(f"no pong from a new pid within {GIVE_UP_S:g} s")


def wait_stable(node: BenchNode, worker: str, old_pid: int | None) -> int:
    """Wait until `worker` runs under a new pid and has run for STABLE_AFTER_S."""
    deadline = time.monotonic() + GIVE_UP_S
    while time.monotonic() < deadline:
        entry = node.status()[worker]
        if (entry["state"] == "running" and entry["pid"] != old_pid
                and entry["uptime_s"] > STABLE_AFTER_S + 0.1):
            return int(entry["pid"])
        time.sleep(0.05)
    raise SystemExit(f"{worker} did not run stably again within {GIVE_UP_S:g} s")


def bench_sections(worker: str) -> dict[str, dict[str, object]]:
    """The node for `worker`: ledger and sampler, plus the worker if it is another one (the
    gateway on a loopback TCP port of its own, no AutoInterface)."""
    workers = ["ledger", "sampler"] + ([worker] if worker not in ("ledger", "sampler") else [])
    sections: dict[str, dict[str, object]] = {
        "supervisor": {"workers": ", ".join(workers)},
        f"worker:{worker}": {"max_restarts": 1000, "restart_window": 1}}
    if worker == "gateway":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        sections["reticulum"] = {"auto_interface": "no", "tcp_listen": f"127.0.0.1:{port}"}
    if worker == "executor":
        sections["tasks"] = {"pool_size": 1}
    return sections


def measure_restarts(worker: str, kills: int) -> list[float]:
    sections = bench_sections(worker)
    node = BenchNode(sections)
    ctx = zmq.Context()
    try:
        node.start(str(sections["supervisor"]["workers"]).split(", "))
        sock = transport.make_socket(ctx, zmq.DEALER)
        sock.setsockopt(zmq.RECONNECT_IVL, 1)
        sock.connect(transport.endpoint(node.run_dir, worker))
        rids = itertools.count(1)
        samples_s = []
        pid: int | None = None
        for _ in range(kills):
            pid = wait_stable(node, worker, pid)
            while sock.poll(0):
                sock.recv()  # stale pongs from the last round
            start = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            ping_until_new_pid(sock, pid, rids)
            samples_s.append(time.perf_counter() - start)
        sock.close(linger=0)
        return samples_s
    finally:
        ctx.destroy(linger=0)
        node.stop()


def measure_fresh_interpreter(runs: int) -> list[float]:
    samples_s = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import zmq, msgpack, psutil, apsw"], check=True)
        samples_s.append(time.perf_counter() - start)
    return samples_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", default="sampler",
                        choices=["ledger", "sampler", "executor", "gateway"])
    parser.add_argument("--kills", type=int, default=20)
    args = parser.parse_args()
    restarts = measure_restarts(args.worker, args.kills)
    baseline = measure_fresh_interpreter(args.kills)
    median_ms = statistics.median(restarts) * 1000
    base_ms = statistics.median(baseline) * 1000
    print(f"restart of {args.worker} after SIGKILL → answering pings, {len(restarts)} kills:")
    print(f"  median {median_ms:7.1f} ms   p99 {percentile(restarts, 0.99) * 1000:7.1f} ms   "
          f"min {min(restarts) * 1000:6.1f} ms")
    print(f"baseline: fork+exec python importing zmq, msgpack, psutil, apsw, {len(baseline)} runs:")
    print(f"  median {base_ms:7.1f} ms   p99 {percentile(baseline, 0.99) * 1000:7.1f} ms")
    print(f"ratio restart/baseline (medians): {median_ms / base_ms:.2f}   target median ≤ 10 ms: "
          f"{'met' if median_ms <= 10 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
