"""Figures for the hostile-peer defences, on one real node over loopback Reticulum.

    python bench/hostile.py [--flood 200] [--request-mib 200] [--claims 2000]

- gateway RSS and CPU while tests/rns_hostile_peer.py floods the node with N fresh
  identities, and while it tries one request of M MiB (refused from its advertisement);
- the bytes that refused request cost the node (its links' received bytes);
- the largest change of seat or term one hostile identity causes in a settled cluster,
  over random claims (pure rules; must be none).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from akita.mesh.cluster import MAX_SEAT, MAX_TERM, PeerView, Seat
from akita.mesh.rounds import Local, advance
from akita.wire import protocol
from bench.node_fixture import REPO, BenchNode, wait_for
from supervisor.demo import free_port

PEER = REPO / "tests" / "rns_hostile_peer.py"


class Watch:
    """Samples a process's RSS and CPU every 0.1 s in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.rss: list[int] = []
        self.cpu: list[float] = []
        self._stop = threading.Event()
        self.proc.cpu_percent(None)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.rss.append(self.proc.memory_info().rss)
            self.cpu.append(self.proc.cpu_percent(None))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self.thread.join()
        return {"rss_max_mib": round(max(self.rss) / 2**20, 1),
                "cpu_max_percent": max(self.cpu), "cpu_mean_percent":
                round(sum(self.cpu) / max(1, len(self.cpu)), 1)}


def stats(node: BenchNode) -> dict[str, Any]:
    reply = node.request(protocol.PeerStats())
    assert isinstance(reply, protocol.PeerStatsReply)
    return reply.stats


def attack(root: Path, port: int, *args: str, until: str, timeout_s: float) -> str:
    out = root / f"peer-{args[0]}.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, str(PEER), "--dir", str(root / args[0]),
                                 "--connect", f"127.0.0.1:{port}", *args], stdout=f,
                                stderr=subprocess.STDOUT, cwd=REPO)
    try:
        return str(wait_for(lambda: next((line for line in out.read_text().splitlines()
                                          if line.startswith(until)), None),
                            timeout_s, f"the hostile peer to print {until}"))
    finally:
        proc.kill()
        proc.wait(5)


def node_figures(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="ak-bench-", dir="/tmp"))
    port = free_port()
    node = BenchNode({
        "node": {"name": "bench"}, "supervisor": {"workers": "ledger, gateway"},
        "cluster": {"cluster_size": 3, "announce_interval": 1, "discovery_interval": 0.5,
                    "peer_timeout": 4},
        "reticulum": {"auto_interface": "no", "tcp_listen": f"127.0.0.1:{port}"}})
    try:
        node.start(["ledger", "gateway"], timeout_s=30)
        status = node.request(protocol.NodeStatus())
        assert isinstance(status, protocol.NodeStatusReply)
        me = status.node["id"]
        gateway = int(node.status()["gateway"]["pid"])
        idle = psutil.Process(gateway).memory_info().rss / 2**20
        print(f"gateway idle RSS {idle:.1f} MiB")
        watch = Watch(gateway)
        attack(root, port, "flood", "--count", str(args.flood), until="SENT", timeout_s=120)
        time.sleep(5)  # let the last announces arrive and be handled
        figures = watch.stop()
        held = stats(node)
        print(f"{args.flood}-identity flood: {figures}; peers held {held['peers']}, "
              f"refused {held['security']['refused']}")
        rx_before = stats(node)["link_traffic"].get("rx_bytes", 0)
        watch = Watch(gateway)
        started = time.monotonic()
        answer = attack(root, port, "request", "--to", me, "--bytes",
                        str(args.request_mib << 20), until="FAILED", timeout_s=600)
        figures = watch.stop()
        cost = stats(node)["link_traffic"].get("rx_bytes", 0) - rx_before
        print(f"{args.request_mib} MiB request: {answer} ({time.monotonic() - started:.1f} s "
              f"with the sender's preparation); gateway {figures}; link bytes received "
              f"for it: {cost}")
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


def claim_figures(count: int) -> None:
    """The largest change of seat or term one hostile identity causes (pure rules)."""
    rng = random.Random(1)
    nodes = [f"{rng.getrandbits(128):032x}" for _ in range(9)]
    locals_ = {n: Local(n, 1) for n in nodes}
    for step in range(12):
        view = [local.report() for local in locals_.values()]
        locals_ = {n: advance(local, view, 3, step * 0.5, 4.5).local
                   for n, local in locals_.items()}
    settled = dict(locals_)
    clusters = sorted({l.seat.cluster for l in settled.values() if l.seat})
    moved = term_jump = 0
    for trial in range(count):
        hostile = f"{rng.getrandbits(128):032x}"
        claim = PeerView(hostile, rng.randrange(2**62), rng.randrange(9),
                         Seat(rng.choice(clusters), rng.choice([0, 1, MAX_SEAT]),
                              rng.choice([0, MAX_SEAT])),
                         rng.choice([0, 5, MAX_TERM]), rng.random() < 0.5)
        now = 100.0 + trial
        after = dict(settled)
        for step in range(8):
            view = [local.report() for local in after.values()] + [claim]
            after = {n: advance(local, view, 3, now + step * 0.5, 4.5).local
                     for n, local in after.items()}
        moved = max(moved, sum(1 for n in nodes if after[n].seat.cluster
                               != settled[n].seat.cluster))
        term_jump = max(term_jump, max(after[n].term - settled[n].term for n in nodes))
    print(f"one hostile identity, {count} random claims on a settled 9-node network: "
          f"at most {moved} members moved, terms rose by at most {term_jump}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=200)
    parser.add_argument("--request-mib", type=int, default=200)
    parser.add_argument("--claims", type=int, default=2000)
    args = parser.parse_args()
    claim_figures(args.claims)
    node_figures(args)


if __name__ == "__main__":
    main()
