"""Control-socket round trip: a `node.status` request to a running supervisor, against a bare
ZeroMQ REQ/REP echo over ipc carrying the same request and reply sizes, in the same run.

    python bench/control.py [--requests 3000]

Both sides use a REQ client in this process and a server in another process, so the
difference is what the supervisor adds: decoding, building the status, encoding, and the
envelope handling of its ROUTER (it serves DEALER clients with requests in flight, too).
The two are measured in alternating blocks, so that load from other processes falls on
both alike. Target: ratio ≤ 1.1.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import zmq
from node_fixture import REPO, BenchNode, percentile

from akita import transport
from akita.wire import protocol

# The baseline server: bind REP, answer every request with a fixed reply of the given size.
ECHO_SERVER = """
import sys, zmq
path, size = sys.argv[1], int(sys.argv[2])
ctx = zmq.Context()
sock = ctx.socket(zmq.REP)
sock.bind("ipc://" + path)
reply = b"x" * size
print("ready", flush=True)
while True:
    if sock.recv() == b"stop":
        sock.send(b"")
        break
    sock.send(reply)
"""


def round_trips(sock: zmq.Socket, request: bytes, count: int) -> list[float]:
    samples_s = []
    for _ in range(count):
        start = time.perf_counter()
        sock.send(request)
        if not sock.poll(5000):
            raise SystemExit("no reply within 5 s")
        sock.recv()
        samples_s.append(time.perf_counter() - start)
    return samples_s


def start_echo(root: Path, reply_size: int) -> tuple[subprocess.Popen[bytes], str]:
    path = root / "echo.sock"
    server = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(path), str(reply_size)],
                              stdout=subprocess.PIPE, cwd=REPO)
    assert server.stdout is not None
    if server.stdout.readline().strip() != b"ready":
        raise SystemExit("the echo server did not start")
    return server, f"ipc://{path}"


def measure(count: int, block: int) -> tuple[list[float], list[float], int, int]:
    """Alternate blocks of round trips to both servers, so load changes hit both alike."""
    node = BenchNode({"supervisor": {"workers": "ledger, sampler"}})
    ctx = zmq.Context()
    server: subprocess.Popen[bytes] | None = None
    try:
        node.start(["ledger", "sampler"])
        ours = transport.make_socket(ctx, zmq.REQ)
        ours.connect(transport.endpoint(node.run_dir, transport.CONTROL))
        request = protocol.encode(protocol.NodeStatus(), rid=1)
        ours.send(request)
        ours.poll(5000)
        reply_size = len(ours.recv())
        server, address = start_echo(node.root, reply_size)
        bare = transport.make_socket(ctx, zmq.REQ)
        bare.connect(address)
        bare_request = b"r" * len(request)
        round_trips(ours, request, block)  # warm up both
        round_trips(bare, bare_request, block)
        status_s: list[float] = []
        bare_s: list[float] = []
        while len(status_s) < count:
            status_s += round_trips(ours, request, block)
            bare_s += round_trips(bare, bare_request, block)
        bare.send(b"stop")
        bare.poll(2000)
        for sock in (ours, bare):
            sock.close(linger=0)
        return status_s, bare_s, len(request), reply_size
    finally:
        if server is not None and server.poll() is None:
            server.kill()
        if server is not None:
            server.wait(5)
        ctx.destroy(linger=0)
        node.stop()


def describe(label: str, samples_s: list[float]) -> float:
    median_us = statistics.median(samples_s) * 1e6
    print(f"  {label:<34} median {median_us:7.1f} µs   p99 "
          f"{percentile(samples_s, 0.99) * 1e6:8.1f} µs")
    return median_us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--block", type=int, default=250,
                        help="round trips to one server before switching to the other")
    args = parser.parse_args()
    status, bare, request_size, reply_size = measure(args.requests, args.block)
    print(f"round trips, {args.requests} each (request {request_size} B, reply {reply_size} B):")
    ours = describe("node.status via control socket", status)
    base = describe("bare REQ/REP over ipc (baseline)", bare)
    print(f"ratio control/bare (medians): {ours / base:.2f}   target ≤ 1.1: "
          f"{'met' if ours / base <= 1.1 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
