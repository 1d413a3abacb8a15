"""Task throughput, end to end, against concurrent.futures.ProcessPoolExecutor in the same run.

    python bench/tasks.py [--tasks 50000] [--pool 2] [--cpu-tasks 4000] [--rounds 3]

Starts a real node (ledger + executor) in a temporary directory and measures, through the
public `akita.Client` with pipelined submits (`submit_many`, then `wait_many`):

1. trivial tasks (`akita.echo`): submit → durable (task.submitted committed by the ledger
   before the client is acknowledged) → run in the pool → outcome durable → result back.
   Baseline: ProcessPoolExecutor.submit of the same function with the same pool size.
2. 1 ms CPU-bound tasks (a loop calibrated to take 1 ms of CPU in this process):
   throughput against the ideal pool figure (pool_size / 1 ms), and the same tasks through
   ProcessPoolExecutor. The work is fixed, so CPU the node itself spends (executor, ledger,
   client) shows as lost throughput when the pool has every core.

Each figure is the median of `--rounds` runs; the machine is shared and noisy, so the ratio
to the baseline measured in the same run is what counts. At the end the ledger is read to
check that every task's submission and result were recorded.
"""

from __future__ import annotations

import argparse
import concurrent.futures
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

import akita
from akita import config as config_mod
from akita import transport
from akita.errors import AkitaError
from akita.ledger import chain
from akita.wire import protocol

TASK_MODULE = '''
import akita

@akita.task("bench.spin")
def spin(loops: int) -> int:
    total = 0
    for i in range(loops):
        total += i
    return total
'''


def echo(value: Any) -> Any:
    return value


def spin(loops: int) -> int:
    """A fixed amount of CPU work (the same code as bench.spin in the node)."""
    total = 0
    for i in range(loops):
        total += i
    return total


def calibrate(target_s: float = 0.001) -> int:
    """Loops of `spin` that take `target_s` of CPU here (best of several tries)."""
    probe = 200_000
    best = min(_timed(spin, probe) for _ in range(7))
    return max(1, round(probe * target_s / best))


def _timed(fn: Callable[[int], Any], arg: int) -> float:
    started = time.process_time()
    fn(arg)
    return time.process_time() - started


# --- a node -------------------------------------------------------------------------------


class BenchNode:
    """A supervisor with the ledger and executor, in a temporary directory."""

    def __init__(self, pool: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="akb-", dir="/tmp"))
        (self.root / "bench_tasks.py").write_text(TASK_MODULE)
        self.config_path = self.root / "akita.ini"
        self.config_path.write_text(
            "[node]\ndata_dir = data\nrun_dir = run\nlog_dir = log\nname = bench\n"
            "[supervisor]\nworkers = ledger, executor\n"
            f"[tasks]\npool_size = {pool}\nmodules = bench_tasks\nmax_queue = 10000000\n")
        self.config = config_mod.load(self.config_path)
        env = dict(os.environ, PYTHONPATH=f"{self.root}:{REPO}")
        self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.main", "-c",
                                      str(self.config_path)], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        sock = transport.socket_path(self.config.node.run_dir, "executor")
        while True:
            if sock.exists():
                try:
                    with akita.Client(config=self.config, timeout_s=2) as client:
                        client.wait(client.submit("akita.echo", [0]), timeout=5)
                    return
                except (AkitaError, TimeoutError, OSError) as exc:  # still starting
                    last: Any = exc
            else:
                last = "no executor socket yet"
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"the node did not start ({last}); see {self.root}/log")
            time.sleep(0.1)

    def roles(self) -> dict[int, str]:
        """pid → role of every node process: supervisor, each worker, zygotes, task processes."""
        with transport.Requester(self.config.node.run_dir, transport.CONTROL) as control:
            reply = control.request(protocol.NodeStatus(), 10)
        assert isinstance(reply, protocol.NodeStatusReply)
        roles = {w["pid"]: w["name"] for w in reply.workers if w.get("pid")}
        roles[self.proc.pid] = "supervisor"
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            if child.pid in roles:
                continue
            try:
                parent = child.parent()
                is_task = parent is not None and "akita-tasks" in parent.cmdline()
            except psutil.Error:
                continue
            roles[child.pid] = "task processes" if is_task else "zygotes"
        return roles

    def cpu(self, roles: dict[int, str]) -> dict[str, float]:
        """CPU seconds (user + system) used so far, by role."""
        used: dict[str, float] = {}
        for pid, role in roles.items():
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            used[role] = used.get(role, 0.0) + times.user + times.system
        return used

    def stop(self, keep: bool = False) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if keep:
            print(f"node directory kept: {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


# --- measurements -------------------------------------------------------------------------


def akita_run(client: akita.Client, name: str, args_of: Callable[[int], list[Any]],
              count: int) -> float:
    """Tasks/s for `count` tasks through the client, submits pipelined."""
    started = time.perf_counter()
    ids = client.submit_many([(name, args_of(i)) for i in range(count)])
    results = client.wait_many(ids, timeout=600)
    elapsed = time.perf_counter() - started
    assert len(results) == count
    return count / elapsed


def ppe_run(pool: concurrent.futures.ProcessPoolExecutor, fn: Callable[..., Any],
            args_of: Callable[[int], list[Any]], count: int) -> float:
    started = time.perf_counter()
    futures = [pool.submit(fn, *args_of(i)) for i in range(count)]
    results = [f.result() for f in futures]
    elapsed = time.perf_counter() - started
    assert len(results) == count
    return count / elapsed


def fmt(figures: list[float]) -> str:
    return ", ".join(f"{f:,.0f}" for f in figures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50_000, help="trivial tasks per round")
    parser.add_argument("--cpu-tasks", type=int, default=4_000, help="1 ms tasks per round")
    parser.add_argument("--pool", type=int, default=2, help="pool size for both (default 2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true",
                        help="keep the node's directory (config, ledger, logs) afterwards")
    args = parser.parse_args()
    loops = calibrate()
    print(f"pool size {args.pool}, {os.cpu_count()} CPUs, {args.rounds} rounds each; "
          "figures in tasks/s (median; all rounds in brackets); a 1 ms task is "
          f"{loops:,} loops\n")

    node = BenchNode(args.pool)
    try:
        node.wait_ready()
        with akita.Client(config=node.config, timeout_s=120) as client, \
                concurrent.futures.ProcessPoolExecutor(max_workers=args.pool) as pool:
            list(pool.map(echo, range(args.pool * 4)))                   # warm-ups
            akita_run(client, "akita.echo", lambda i: [i], 2000)
            akita_run(client, "bench.spin", lambda i: [loops], 200)
            # Rounds alternate between the two, so a burst of load elsewhere on the machine
            # hits both alike.
            figures: dict[str, list[float]] = {"ak": [], "ppe": [], "ak_cpu": [], "ppe_cpu": []}
            roles = node.roles()
            spent: dict[str, float] = {}
            for _ in range(args.rounds):
                figures["ppe"].append(ppe_run(pool, echo, lambda i: [i], args.tasks))
                before, mine = node.cpu(roles), sum(os.times()[:2])
                figures["ak"].append(akita_run(client, "akita.echo", lambda i: [i], args.tasks))
                after = node.cpu(roles)
                for role, seconds in after.items():
                    spent[role] = spent.get(role, 0.0) + seconds - before.get(role, 0.0)
                spent["client"] = spent.get("client", 0.0) + sum(os.times()[:2]) - mine
            busy: list[float] = []
            task_ms: list[float] = []
            for _ in range(args.rounds):
                figures["ppe_cpu"].append(ppe_run(pool, spin, lambda i: [loops],
                                                  args.cpu_tasks))
                head = chain.head(chain.db_path(node.config))
                figures["ak_cpu"].append(akita_run(client, "bench.spin", lambda i: [loops],
                                                   args.cpu_tasks))
                ran_s = sum(e.data.get("duration_s", 0.0) for e in chain.read_events(
                    chain.db_path(node.config), kind_prefix="task.succeeded",
                    after_seq=head[1] if head else 0))
                busy.append(ran_s / (args.pool * args.cpu_tasks / figures["ak_cpu"][-1]))
                task_ms.append(ran_s / args.cpu_tasks * 1000)
        durable = check_ledger(node, args.rounds * (args.tasks + args.cpu_tasks) + 2201)
    finally:
        node.stop(keep=args.keep)

    ak_trivial, ak_trivial_all = statistics.median(figures["ak"]), figures["ak"]
    ppe_trivial, ppe_trivial_all = statistics.median(figures["ppe"]), figures["ppe"]
    ak_cpu, ak_cpu_all = statistics.median(figures["ak_cpu"]), figures["ak_cpu"]
    ppe_cpu, ppe_cpu_all = statistics.median(figures["ppe_cpu"]), figures["ppe_cpu"]
    ideal = args.pool / 0.001
    print(f"trivial tasks, end to end ({args.tasks:,} per round)")
    print(f"  akita Client (durable)       {ak_trivial:>10,.0f}   [{fmt(ak_trivial_all)}]")
    print(f"  ProcessPoolExecutor.submit   {ppe_trivial:>10,.0f}   [{fmt(ppe_trivial_all)}]")
    print(f"  ratio akita / PPE            {ak_trivial / ppe_trivial:>10.2f}   "
          f"(target >= 1.0; and >= 10,000 tasks/s)")
    print(f"\n1 ms CPU-bound tasks ({args.cpu_tasks:,} per round), ideal {ideal:,.0f}/s")
    print(f"  akita Client (durable)       {ak_cpu:>10,.0f}   [{fmt(ak_cpu_all)}]   "
          f"{ak_cpu / ideal:.0%} of ideal (target >= 90%)")
    print(f"  ProcessPoolExecutor.submit   {ppe_cpu:>10,.0f}   [{fmt(ppe_cpu_all)}]   "
          f"{ppe_cpu / ideal:.0%} of ideal")
    print(f"  akita pool busy (time inside tasks / pool x wall, from the ledger's durations): "
          f"{statistics.median(busy):.0%}; a task ran {statistics.median(task_ms):.2f} ms "
          "on average (1 ms when the machine is ours)")
    print(f"\nCPU per trivial task, by process (machine-load independent; sum bounds what "
          f"{os.cpu_count()} idle cores could do):")
    total = 0.0
    for role, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        per_task = seconds / (args.rounds * args.tasks) * 1e6
        total += per_task
        print(f"  {role:<16} {per_task:6.1f} us")
    print(f"  {'total':<16} {total:6.1f} us  -> {(os.cpu_count() or 1) / total * 1e6:,.0f} "
          "tasks/s if every core were ours and the stages overlapped perfectly")
    print(f"\nledger: {durable}")
    return 0


def check_ledger(node: BenchNode, expected: int) -> str:
    """Every task's submission and success must be in the ledger."""
    counts: dict[str, int] = {}
    for event in chain.read_events(chain.db_path(node.config), kind_prefix="task."):
        counts[event.kind] = counts.get(event.kind, 0) + 1
    submitted, succeeded = counts.get("task.submitted", 0), counts.get("task.succeeded", 0)
    verdict = "ok" if submitted == succeeded == expected else "MISSING EVENTS"
    return f"{submitted:,} task.submitted, {succeeded:,} task.succeeded of {expected:,}: {verdict}"


if __name__ == "__main__":
    sys.exit(main())
