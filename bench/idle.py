"""Idle cost of a node: total USS and CPU of the supervisor, its zygote and every worker.

    python bench/idle.py [--seconds 10] [--settle 3] [--no-gateway] [--no-metrics]

    python bench/idle.py --operators     # and LXMF operator access + the NomadNet page

Starts a node with the default timers (heartbeat every 1 s, a sample every 5 s, an announce
every 10 s) and every worker: ledger, sampler, executor (pool_size = 2) and, unless
--no-gateway, the gateway with one loopback TCP listener and no peers. /metrics and the
dashboard are on, as in the default config (on a free loopback port; --no-metrics turns
them off). With --operators, also LXMF operator access (one listed identity) and the
NomadNet page. Lets it settle, then measures CPU over the window and USS at its end.
Baseline, in the same run: an idle Python interpreter that imported zmq, msgpack, psutil
and apsw (USS), i.e. what any one process of ours costs at the least. Targets: total USS
≤ 80 MB, total CPU ≤ 0.5 % of one core.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

import psutil
from node_fixture import BenchNode

MB = 1 << 20


def node_processes(root_pid: int) -> list[psutil.Process]:
    root = psutil.Process(root_pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
            out[proc.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return out


def describe(proc: psutil.Process, roles: dict[int, str]) -> str:
    if proc.pid in roles:
        return roles[proc.pid]
    cmdline = proc.cmdline()
    if "supervisor.main" in cmdline:
        return "supervisor"
    if "workers.zygote" in cmdline and proc.parent() and "supervisor.main" in \
            proc.parent().cmdline():
        return "zygote"
    return f"child of {roles.get(proc.ppid(), proc.ppid())}"


def uss_bytes(procs: list[psutil.Process]) -> dict[int, int]:
    out = {}
    for proc in procs:
        try:
            out[proc.pid] = proc.memory_full_info().uss
        except psutil.NoSuchProcess:
            pass
    return out


def baseline_uss() -> int:
    """USS of an idle interpreter holding our four heavy imports."""
    code = "import zmq, msgpack, psutil, apsw, sys; print('ready', flush=True); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        child.stdout.readline()
        return int(psutil.Process(child.pid).memory_full_info().uss)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--no-gateway", action="store_true", help="leave the gateway out")
    parser.add_argument("--operators", action="store_true",
                        help="with LXMF operator access and the NomadNet page on")
    parser.add_argument("--no-metrics", action="store_true",
                        help="with /metrics and the dashboard off (the default config has them)")
    args = parser.parse_args()
    workers = ["ledger", "sampler", "executor"] + ([] if args.no_gateway else ["gateway"])
    with socket.socket() as probe:  # a free loopback port for the gateway's listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sections = {"supervisor": {"workers": ", ".join(workers)},
                "tasks": {"pool_size": 2},
                "reticulum": {"auto_interface": "no", "tcp_listen": f"127.0.0.1:{port}"},
                "metrics": {"listen": ""}}
    if not args.no_metrics:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            sections["metrics"] = {"listen": f"127.0.0.1:{probe.getsockname()[1]}"}
    if args.operators:
        sections["operators"] = {"identities": "0" * 32 + ":read", "page": "open"}
    node = BenchNode(sections)
    try:
        node.start(workers)
        assert node.proc is not None
        time.sleep(args.settle)  # let start-up work finish; the measurement window follows
        roles = {w["pid"]: name for name, w in node.status().items()}
        procs = node_processes(node.proc.pid)
        cpu_before = cpu_seconds(procs)
        wall_before = time.monotonic()
        time.sleep(args.seconds)
        wall_s = time.monotonic() - wall_before
        procs = node_processes(node.proc.pid)
        cpu_after = cpu_seconds(procs)
        cpu = {pid: (cpu_after[pid] - cpu_before.get(pid, 0.0)) / wall_s * 100
               for pid in cpu_after}
        uss = uss_bytes(procs)
        names = {proc.pid: describe(proc, roles) for proc in procs}
    finally:
        node.stop()
    base = baseline_uss()
    total = sum(uss.values())
    cpu_percent = sum(cpu.values())
    extras = [name for name, on in (("metrics", not args.no_metrics),
                                    ("LXMF + NomadNet", args.operators)) if on]
    print(f"node at idle, workers {', '.join(workers)}; {', '.join(extras) or 'no extras'}; "
          f"{len(uss)} processes:")
    for pid, value in uss.items():
        print(f"  {value / MB:6.1f} MB USS  {cpu.get(pid, 0.0):5.2f} % CPU  {pid} {names[pid]}")
    print(f"total USS {total / MB:.1f} MB (target ≤ 80 MB); CPU {cpu_percent:.2f} % of one core "
          f"over {args.seconds:g} s (target ≤ 0.5 %)")
    print(f"baseline: idle python with zmq, msgpack, psutil, apsw: {base / MB:.1f} MB USS; "
          f"node / baseline: {total / base:.2f} (processes: {len(uss)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
