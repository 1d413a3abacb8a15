"""Cost of a /metrics scrape: time and size on an idle node and on a busy one.

    python bench/metrics.py [--scrapes 50] [--tasks 2000]

Starts a node (ledger, sampler, executor with pool_size = 2; gateway unless --no-gateway)
with /metrics on a free loopback port, scrapes it --scrapes times while idle, then again
while a client keeps submitting 1 ms `spin` tasks (tests/sample_tasks.py). Prints the
median and 95th percentile scrape time and the page size in each state. Baseline, in the
same run: GET of the dashboard's static page (the same server with no metrics to build).
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

from node_fixture import BenchNode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import akita


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int, path: str, count: int) -> tuple[list[float], int]:
    times, size = [], 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request("GET", path)
            reply = conn.getresponse()
            size = len(reply.read())
            times.append(time.perf_counter() - started)
            assert reply.status == 200, reply.status
            time.sleep(0.02)
    finally:
        conn.close()
    return times, size


def report(label: str, times: list[float], size: int) -> float:
    median = statistics.median(times) * 1000
    p95 = sorted(times)[int(len(times) * 0.95) - 1] * 1000
    print(f"{label:<34} median {median:6.2f} ms  p95 {p95:6.2f} ms  {size / 1024:6.1f} KiB")
    return median


def keep_busy(config_path: Path, tasks: int, stop: threading.Event) -> None:
    with akita.Client(config_path, timeout_s=30) as client:
        sent = 0
        while sent < tasks and not stop.is_set():
            client.submit_many([("tests.sample_tasks.spin", [1]) for _ in range(100)])
            sent += 100


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--no-gateway", action="store_true")
    args = parser.parse_args()
    workers = ["ledger", "sampler", "executor"] + ([] if args.no_gateway else ["gateway"])
    port = free_port()
    node = BenchNode({"supervisor": {"workers": ", ".join(workers)},
                      "sampler": {"interval": 1},
                      "tasks": {"pool_size": 2, "modules": "tests.sample_tasks"},
                      "reticulum": {"auto_interface": "no",
                                    "tcp_listen": f"127.0.0.1:{free_port()}"},
                      "metrics": {"listen": f"127.0.0.1:{port}"}})
    stop = threading.Event()
    try:
        node.start(workers)
        time.sleep(3)  # a few observer steps, so every family is present
        base = report("baseline: GET / (static page)", *scrape(port, "/", args.scrapes))
        idle = report("idle: GET /metrics", *scrape(port, "/metrics", args.scrapes))
        busy_thread = threading.Thread(target=keep_busy,
                                       args=(node.config_path, args.tasks, stop))
        busy_thread.start()
        time.sleep(2)
        busy = report("busy (tasks streaming): GET /metrics",
                      *scrape(port, "/metrics", args.scrapes))
        stop.set()
        busy_thread.join(60)
    finally:
        stop.set()
        node.stop()
    print(f"/metrics idle / baseline: {idle / base:.2f}; busy / idle: {busy / idle:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
