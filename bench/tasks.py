"""Task throughput and latency, end to end, against concurrent.futures.ProcessPoolExecutor in
the same run.

    python bench/tasks.py [--tasks 50000] [--pool 2] [--cpu-tasks 4000] [--rounds 3]
                          [--loads 0.5,0.9] [--latency-s 5] [--pools 1,2,4]
                          [--sweep-tasks 10000] [--sweep-cpu-tasks 2000] [--no-metrics]

Starts a real node (ledger + executor) in a temporary directory and measures, through the
public `akita.Client` with pipelined submits (`submit_many`, then `wait_many`):

1. trivial tasks (`akita.echo`): submit → durable (task.submitted committed by the ledger
   before the client is acknowledged) → run in the pool → outcome durable → result back.
   Baseline: ProcessPoolExecutor.submit of the same function with the same pool size.
2. 1 ms CPU-bound tasks (a loop calibrated to take 1 ms of CPU in this process):
   throughput against the ideal pool figure (pool_size / 1 ms), and the same tasks through
   ProcessPoolExecutor. The work is fixed, so CPU the node itself spends (executor, ledger,
   client) shows as lost throughput when the pool has every core.

3. submit → result latency (p50/p90/p99) of 1 ms tasks arriving open-loop (Poisson, each
   measured from its scheduled arrival, so a client that falls behind counts) at `--loads`
   of the saturated throughput measured in 2., for `--latency-s` seconds each; the baseline
   is ProcessPoolExecutor fed the same arrivals at the same rate.
4. the cost curve: for each of `--pools`, a fresh node, and 1 ms and trivial tasks through it
   and through a ProcessPoolExecutor of that size.

Where the node's own CPU goes is shown per process (CPU per task, and wake-ups per task:
voluntary context switches of all its threads) for both kinds of tasks.

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
from bench.open_loop import latency, spin
from supervisor.demo import free_port

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

    def __init__(self, pool: int, metrics: bool = True) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="akb-", dir="/tmp"))
        (self.root / "bench_tasks.py").write_text(TASK_MODULE)
        self.config_path = self.root / "akita.ini"
        # /metrics and the dashboard on, as in the default config, on a port of its own
        listen = f"127.0.0.1:{free_port()}" if metrics else ""
        self.config_path.write_text(
            "[node]\ndata_dir = data\nrun_dir = run\nlog_dir = log\nname = bench\n"
            "[supervisor]\nworkers = ledger, executor\n"
            f"[tasks]\npool_size = {pool}\nmodules = bench_tasks\nmax_queue = 10000000\n"
            f"[metrics]\nlisten = {listen}\n")
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

    def wakeups(self, roles: dict[int, str]) -> dict[str, int]:
        """Voluntary context switches so far (every thread), by role: how often each slept
        and was woken."""
        counts: dict[str, int] = {}
        for pid, role in roles.items():
            counts[role] = counts.get(role, 0) + _voluntary_switches(pid)
        return counts

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


def _voluntary_switches(pid: int) -> int:
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as status:
                total += sum(int(line.split()[1]) for line in status
                             if line.startswith("voluntary_ctxt_switches:"))
        except OSError:
            continue
    return total


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


# --- the sections -------------------------------------------------------------------------


class Usage:
    """CPU seconds and wake-ups by role, summed over the measured runs."""

    def __init__(self, node: BenchNode) -> None:
        self.node, self.roles = node, node.roles()
        self.cpu: dict[str, float] = {}
        self.wakeups: dict[str, int] = {}
        self.tasks = 0

    def measure(self, run: Callable[[], float], tasks: int) -> float:
        before, woke, mine = self.node.cpu(self.roles), self.node.wakeups(self.roles), \
            sum(os.times()[:2])
        figure = run()
        for role, seconds in self.node.cpu(self.roles).items():
            self.cpu[role] = self.cpu.get(role, 0.0) + seconds - before.get(role, 0.0)
        for role, count in self.node.wakeups(self.roles).items():
            self.wakeups[role] = self.wakeups.get(role, 0) + count - woke.get(role, 0)
        self.cpu["client"] = self.cpu.get("client", 0.0) + sum(os.times()[:2]) - mine
        self.tasks += tasks
        return figure

    def report(self, what: str) -> None:
        print(f"\nCPU and wake-ups per {what}, by process (machine-load independent):")
        total = 0.0
        for role, seconds in sorted(self.cpu.items(), key=lambda item: -item[1]):
            if role in ("zygotes", "task processes"):
                continue
            total += seconds
            woke = self.wakeups.get(role)
            woke_text = f"{woke / self.tasks:6.3f} wake-ups" if woke is not None else ""
            print(f"  {role:<16} {seconds / self.tasks * 1e6:7.1f} us  {woke_text}")
        tasks_s = self.cpu.get("task processes", 0.0)
        print(f"  {'node total':<16} {total / self.tasks * 1e6:7.1f} us  "
              f"(task processes: {tasks_s / self.tasks * 1e6:.1f} us)")


def throughput(node: BenchNode, client: akita.Client, pool: concurrent.futures.ProcessPoolExecutor,
               args: argparse.Namespace, loops: int) -> dict[str, Any]:
    """Section 1 and 2 on the main node: trivial and 1 ms tasks, rounds alternating."""
    figures: dict[str, Any] = {"ak": [], "ppe": [], "ak_cpu": [], "ppe_cpu": [], "busy": [],
                               "task_ms": []}
    figures["trivial_usage"], figures["cpu_usage"] = Usage(node), Usage(node)
    for _ in range(args.rounds):  # alternating, so a burst of load elsewhere hits both alike
        figures["ppe"].append(ppe_run(pool, echo, lambda i: [i], args.tasks))
        figures["ak"].append(figures["trivial_usage"].measure(
            lambda: akita_run(client, "akita.echo", lambda i: [i], args.tasks), args.tasks))
    for _ in range(args.rounds):
        figures["ppe_cpu"].append(ppe_run(pool, spin, lambda i: [loops], args.cpu_tasks))
        head = chain.head(chain.db_path(node.config))
        figures["ak_cpu"].append(figures["cpu_usage"].measure(
            lambda: akita_run(client, "bench.spin", lambda i: [loops], args.cpu_tasks),
            args.cpu_tasks))
        ran_s = sum(e.data.get("duration_s", 0.0) for e in chain.read_events(
            chain.db_path(node.config), kind_prefix="task.succeeded",
            after_seq=head[1] if head else 0))
        figures["busy"].append(ran_s / (args.pool * args.cpu_tasks / figures["ak_cpu"][-1]))
        figures["task_ms"].append(ran_s / args.cpu_tasks * 1000)
    return figures


def report_throughput(figures: dict[str, Any], args: argparse.Namespace) -> None:
    ak, ppe = statistics.median(figures["ak"]), statistics.median(figures["ppe"])
    ak_cpu, ppe_cpu = statistics.median(figures["ak_cpu"]), statistics.median(figures["ppe_cpu"])
    ideal = min(args.pool, os.cpu_count() or 1) / 0.001
    print(f"trivial tasks, end to end ({args.tasks:,} per round)")
    print(f"  akita Client (durable)       {ak:>10,.0f}   [{fmt(figures['ak'])}]")
    print(f"  ProcessPoolExecutor.submit   {ppe:>10,.0f}   [{fmt(figures['ppe'])}]")
    print(f"  ratio akita / PPE            {ak / ppe:>10.2f}   (target >= 5)")
    print(f"\n1 ms CPU-bound tasks ({args.cpu_tasks:,} per round), ideal {ideal:,.0f}/s")
    print(f"  akita Client (durable)       {ak_cpu:>10,.0f}   [{fmt(figures['ak_cpu'])}]   "
          f"{ak_cpu / ideal:.0%} of ideal (target >= 90% and above PPE)")
    print(f"  ProcessPoolExecutor.submit   {ppe_cpu:>10,.0f}   [{fmt(figures['ppe_cpu'])}]   "
          f"{ppe_cpu / ideal:.0%} of ideal")
    print(f"  ratio akita / PPE            {ak_cpu / ppe_cpu:>10.2f}")
    print(f"  akita pool busy (time inside tasks / pool x wall, from the ledger's durations): "
          f"{statistics.median(figures['busy']):.0%}; a task ran "
          f"{statistics.median(figures['task_ms']):.2f} ms on average (1 ms when the machine "
          "is ours)")
    usage = figures["cpu_usage"]
    task_cpu_s = usage.cpu.get("task processes", 0.0) / max(1, usage.tasks)
    if task_cpu_s:
        # The calibration's 1 ms is measured here, and a task process may run the same loop
        # faster or slower; the CPU the task processes really spent per task does not lie.
        cores = min(args.pool, os.cpu_count() or 1)
        print(f"  by the task processes' own CPU ({task_cpu_s * 1000:.3f} ms a task), akita's "
              f"tasks held {ak_cpu * task_cpu_s / cores:.0%} of the {cores} cores")
    figures["trivial_usage"].report("trivial task")
    figures["cpu_usage"].report("1 ms task")


def sweep(args: argparse.Namespace, loops: int) -> int:
    """Section 4: a fresh node per pool size; returns the tasks it ran (for the ledger check)."""
    print(f"\nthe cost curve by pool size ({args.sweep_cpu_tasks:,} 1 ms tasks and "
          f"{args.sweep_tasks:,} trivial tasks per round; tasks/s, median of {args.rounds})")
    print(f"  {'pool':>4} {'ideal':>6} | {'akita 1ms':>9} {'PPE 1ms':>8} {'of ideal':>12} "
          f"{'ratio':>6} | {'akita triv':>10} {'PPE triv':>9} {'ratio':>6}")
    for size in args.pools:
        node = BenchNode(size, args.metrics)
        try:
            node.wait_ready()
            with akita.Client(config=node.config, timeout_s=120) as client, \
                    concurrent.futures.ProcessPoolExecutor(max_workers=size) as pool:
                row = _sweep_row(client, pool, size, args, loops)
            check = check_ledger(node, args.rounds * (args.sweep_tasks + args.sweep_cpu_tasks)
                                 + WARM_UP_TASKS)
        finally:
            node.stop(keep=args.keep)
        print(row + ("" if check.endswith("ok") else f"   ledger: {check}"))
    return 0


def _sweep_row(client: akita.Client, pool: concurrent.futures.ProcessPoolExecutor, size: int,
               args: argparse.Namespace, loops: int) -> str:
    warm_up(client, pool, size, loops)
    got: dict[str, list[float]] = {"ak": [], "ppe": [], "ak_t": [], "ppe_t": []}
    for _ in range(args.rounds):
        got["ppe"].append(ppe_run(pool, spin, lambda i: [loops], args.sweep_cpu_tasks))
        got["ak"].append(akita_run(client, "bench.spin", lambda i: [loops],
                                   args.sweep_cpu_tasks))
        got["ppe_t"].append(ppe_run(pool, echo, lambda i: [i], args.sweep_tasks))
        got["ak_t"].append(akita_run(client, "akita.echo", lambda i: [i], args.sweep_tasks))
    ak, ppe, ak_t, ppe_t = (statistics.median(got[k]) for k in ("ak", "ppe", "ak_t", "ppe_t"))
    ideal = min(size, os.cpu_count() or 1) * 1000
    return (f"  {size:>4} {ideal:>6,} | {ak:>9,.0f} {ppe:>8,.0f} {ak / ideal:>5.0%} / "
            f"{ppe / ideal:>4.0%} {ak / ppe:>6.2f} | {ak_t:>10,.0f} {ppe_t:>9,.0f} "
            f"{ak_t / ppe_t:>6.2f}")


WARM_UP_TASKS = 2201   # wait_ready's one, and warm_up's


def warm_up(client: akita.Client, pool: concurrent.futures.ProcessPoolExecutor, size: int,
            loops: int) -> None:
    list(pool.map(echo, range(size * 4)))
    akita_run(client, "akita.echo", lambda i: [i], 2000)
    akita_run(client, "bench.spin", lambda i: [loops], 200)


def _fractions(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: loads are fractions between 0 and 1, "
                                         "comma-separated (e.g. 0.5,0.9)")
    return values


def _sizes(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not all(v >= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: pool sizes are whole numbers >= 1, "
                                         "comma-separated (e.g. 1,2,4), or empty for none")
    return values


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50_000, help="trivial tasks per round")
    parser.add_argument("--cpu-tasks", type=int, default=4_000, help="1 ms tasks per round")
    parser.add_argument("--pool", type=int, default=2, help="pool size for both (default 2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loads", type=_fractions, default=[0.5, 0.9],
                        help="latency at these fractions of the saturated 1 ms throughput")
    parser.add_argument("--saturated", type=float, default=0.0,
                        help="tasks/s the loads are fractions of (default: the 1 ms figure "
                        "measured in this run); fixed, to compare runs")
    parser.add_argument("--latency-s", type=float, default=5.0,
                        help="seconds of open-loop arrivals per load (0: no latency section)")
    parser.add_argument("--pools", type=_sizes, default=[1, 2, 4],
                        help="pool sizes of the cost curve ('' for none)")
    parser.add_argument("--sweep-tasks", type=int, default=10_000,
                        help="trivial tasks per round in the cost curve")
    parser.add_argument("--sweep-cpu-tasks", type=int, default=2_000,
                        help="1 ms tasks per round in the cost curve")
    parser.add_argument("--no-metrics", dest="metrics", action="store_false",
                        help="the node without /metrics and the dashboard (on by default, "
                        "as in the default config): what the operator pages cost")
    parser.add_argument("--keep", action="store_true",
                        help="keep the nodes' directories (config, ledger, logs) afterwards")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    loops = calibrate()
    print(f"pool size {args.pool}, {os.cpu_count()} CPUs, {args.rounds} rounds each; "
          "figures in tasks/s (median; all rounds in brackets); a 1 ms task is "
          f"{loops:,} loops; load average {os.getloadavg()[0]:.2f} at the start\n")
    node = BenchNode(args.pool, args.metrics)
    try:
        node.wait_ready()
        with akita.Client(config=node.config, timeout_s=120) as client, \
                concurrent.futures.ProcessPoolExecutor(max_workers=args.pool) as pool:
            warm_up(client, pool, args.pool, loops)
            figures = throughput(node, client, pool, args, loops)
            report_throughput(figures, args)
            if args.latency_s > 0:
                latency(client, pool, args, loops,
                        args.saturated or statistics.median(figures["ak_cpu"]))
        durable = check_ledger(node, None)
    finally:
        node.stop(keep=args.keep)
    print(f"\nledger: {durable}")
    if args.pools:
        sweep(args, loops)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 0


def check_ledger(node: BenchNode, expected: int | None) -> str:
    """Every task's submission and success must be in the ledger (`expected` of each, when
    known; else as many successes as submissions)."""
    counts: dict[str, int] = {}
    for event in chain.read_events(chain.db_path(node.config), kind_prefix="task."):
        counts[event.kind] = counts.get(event.kind, 0) + 1
    submitted, succeeded = counts.get("task.submitted", 0), counts.get("task.succeeded", 0)
    want = submitted if expected is None else expected
    verdict = "ok" if submitted == succeeded == want else "MISSING EVENTS"
    return f"{submitted:,} task.submitted, {succeeded:,} task.succeeded of {want:,}: {verdict}"


if __name__ == "__main__":
    sys.exit(main())
