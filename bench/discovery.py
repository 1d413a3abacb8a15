"""Discovery benchmark: N local nodes on loopback Reticulum (a hub and N-1 clients).

For N = 3, 6, 10 (or --nodes):
- time from start to every node agreeing on the clusters (same clusters, every node placed,
  ceil(N / cluster_size) of them), in seconds and in announce intervals (target ≤ 3), both
  from the first process start and from the moment every gateway was up;
- kill -9 one node: time until every other node has dropped it
  (target ≤ peer_timeout + 1 announce interval);
- gateway idle CPU over --idle-s seconds once formed (target ≤ 2 % of a core);
- announce app_data size (target ≤ 200 bytes).

Run by hand: python bench/discovery.py [--nodes 3 6 10] [--announce-interval 1]
A shared 2-core machine is noisy: run it twice and read the spread.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from akita import config as config_mod
from akita import transport
from akita.errors import AkitaError
from akita.wire import protocol
from supervisor import demo

POLL_S = 0.05


def request(node: demo.DemoNode, msg: protocol.Message) -> Any:
    run_dir = config_mod.load(node.config_path).node.run_dir
    with transport.Requester(run_dir, transport.CONTROL) as req:
        return req.request(msg, 2.0)


def gateway_pid(node: demo.DemoNode) -> int | None:
    try:
        reply = request(node, protocol.NodeStatus())
    except AkitaError:
        return None
    for worker in reply.workers:
        if worker["name"] == "gateway" and worker["state"] == "running":
            return int(worker["pid"])
    return None


def agreement(nodes: list[demo.DemoNode], cluster_size: int) -> bool:
    views = [demo.query(node) for node in nodes]
    if any(view is None for view in views):
        return False
    shapes = {demo._shape(view) for view in views if view}
    if len(shapes) != 1:
        return False
    (shape,) = shapes
    placed = {m for _cid, members, _coord in shape for m in members}
    return (len(placed) == len(nodes) and len(shape) == math.ceil(len(nodes) / cluster_size)
            and all(len(members) <= cluster_size for _c, members, _k in shape))


def wait(condition: Any, timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic()
        time.sleep(POLL_S)
    return None


def run(count: int, args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="akb-", dir="/tmp"))
    nodes = [demo.DemoNode(i, root / f"n{i}", root / f"n{i}" / "akita.ini") for i in range(count)]
    config = argparse.Namespace(workers="ledger, gateway", cluster_size=args.cluster_size,
                                announce_interval=args.announce_interval,
                                peer_timeout=args.peer_timeout)
    port = demo.free_port()
    out: dict[str, Any] = {"nodes": count}
    try:
        for node in nodes:
            demo.write_config(node, port, config)
        started = time.monotonic()
        demo.start(nodes[0])
        demo._wait_listening(port, nodes[0])
        for node in nodes[1:]:
            demo.start(node)
        all_up = wait(lambda: all(gateway_pid(n) for n in nodes), 120)
        agreed = wait(lambda: agreement(nodes, args.cluster_size), 120)
        out["gateways_up_s"] = None if all_up is None else all_up - started
        out["agree_s"] = None if agreed is None else agreed - started
        out["agree_after_up_s"] = None if agreed is None or all_up is None else agreed - all_up
        if agreed is None:
            return out
        out.update(idle(nodes, args.idle_s))
        out["app_data_bytes"] = max(request(n, protocol.PeerStats()).stats["announces"]
                                    ["last_app_data_bytes"] for n in nodes)
        out["drop_s"] = failure(nodes, count)
    finally:
        demo.stop_all(nodes)
        shutil.rmtree(root, ignore_errors=True)
    return out


def idle(nodes: list[demo.DemoNode], seconds: float) -> dict[str, Any]:
    procs = [psutil.Process(pid) for pid in (gateway_pid(n) for n in nodes) if pid]
    before = [sum(p.cpu_times()[:2]) for p in procs]
    time.sleep(seconds)
    after = [sum(p.cpu_times()[:2]) for p in procs]
    percents = [100 * (b - a) / seconds for a, b in zip(before, after)]
    return {"idle_cpu_mean": statistics.mean(percents), "idle_cpu_max": max(percents)}


def failure(nodes: list[demo.DemoNode], count: int) -> float | None:
    """kill -9 every process of the last node; seconds until every other node dropped it."""
    victim = nodes[-1]
    victim_id = demo.query(victim)["self"]  # type: ignore[index]
    tree = psutil.Process(victim.proc.pid).children(recursive=True)  # type: ignore[union-attr]
    killed = time.monotonic()
    for proc in [*tree, psutil.Process(victim.proc.pid)]:  # type: ignore[union-attr]
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    others = nodes[:-1]

    def dropped() -> bool:
        views = [demo.query(node) for node in others]
        return all(view is not None and victim_id not in {p["id"] for p in view["peers"]}
                   for view in views)

    done = wait(dropped, 60)
    return None if done is None else done - killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 6, 10])
    parser.add_argument("--cluster-size", type=int, default=3)
    parser.add_argument("--announce-interval", type=float, default=1.0)
    parser.add_argument("--peer-timeout", type=float, default=4.0)
    parser.add_argument("--idle-s", type=float, default=10.0)
    args = parser.parse_args()
    interval, timeout = args.announce_interval, args.peer_timeout
    print(f"announce_interval {interval:g} s, peer_timeout {timeout:g} s, "
          f"cluster_size {args.cluster_size}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    for count in args.nodes:
        r = run(count, args)
        print(f"\nN = {count}")
        if r.get("agree_s") is None:
            print(f"  never agreed within 120 s (gateways up after {r.get('gateways_up_s')})")
            continue
        print(f"  gateways up after      {r['gateways_up_s']:.2f} s")
        print(f"  agreement after start  {r['agree_s']:.2f} s = "
              f"{r['agree_s'] / interval:.1f} announce intervals (target ≤ 3)")
        print(f"  agreement after up     {r['agree_after_up_s']:.2f} s = "
              f"{r['agree_after_up_s'] / interval:.1f} announce intervals")
        bound = timeout + interval
        drop = r.get("drop_s")
        print("  node killed, all dropped it after "
              + (f"{drop:.2f} s = {drop / bound:.2f} × (peer_timeout + 1 interval = "
                 f"{bound:g} s)" if drop is not None else "never (60 s)"))
        print(f"  gateway idle CPU       mean {r['idle_cpu_mean']:.2f} %, max "
              f"{r['idle_cpu_max']:.2f} % of a core (target ≤ 2 %)")
        print(f"  announce app_data      {r['app_data_bytes']} bytes (target ≤ 200)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
