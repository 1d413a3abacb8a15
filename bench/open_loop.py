"""Open-loop latency for bench/tasks.py: Poisson arrivals of 1 ms tasks at fractions of a
saturated rate, through the akita Client and through ProcessPoolExecutor, each task's
latency measured from its scheduled arrival (so a client that falls behind counts)."""

from __future__ import annotations

import argparse
import concurrent.futures
import random
import time

import akita
from bench.node_fixture import percentile


def spin(loops: int) -> int:
    """A fixed amount of CPU work (the same code as bench.spin in the node)."""
    total = 0
    for i in range(loops):
        total += i
    return total


def arrivals(rate: float, duration_s: float, seed: int) -> list[float]:
    """Poisson arrival times (s from the start) at `rate` per second for `duration_s`."""
    rng = random.Random(seed)
    times: list[float] = []
    at = rng.expovariate(rate)
    while at < duration_s:
        times.append(at)
        at += rng.expovariate(rate)
    return times


def akita_latencies(client: akita.Client, loops: int, schedule: list[float]) -> list[float]:
    """Submit → result seconds of one 1 ms task per scheduled arrival, open loop: each from
    its scheduled time. A submit returns once durable, so what arrives meanwhile is submitted
    together next (as a server taking requests would); results are gathered as they come."""
    started = time.perf_counter()
    due: dict[str, float] = {}    # task id → its scheduled arrival (perf_counter)
    latencies: list[float] = []

    def gather(timeout_s: float) -> None:
        done = client.finished(due, timeout=max(0.0, timeout_s))
        now = time.perf_counter()
        for task_id in done:
            latencies.append(now - due.pop(task_id))
        if done:
            client.wait_many(done, timeout=0)   # collect them (and raise if one failed)

    arrived = 0
    while arrived < len(schedule):
        while (ahead := started + schedule[arrived] - time.perf_counter()) > 0:
            gather(ahead)
        now = time.perf_counter() - started
        batch = [at for at in schedule[arrived:] if at <= now]
        arrived += len(batch)
        ids = client.submit_many([("bench.spin", [loops])] * len(batch))
        due.update((task_id, started + at) for task_id, at in zip(ids, batch))
        gather(0.0)  # outcomes read while submitting count now, not after the schedule
    deadline = time.monotonic() + 120
    while due:
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(due)} open-loop tasks not finished within 120 s")
        gather(0.1)
    return latencies


def ppe_latencies(pool: concurrent.futures.ProcessPoolExecutor, loops: int,
                  schedule: list[float]) -> list[float]:
    """The same arrivals through ProcessPoolExecutor; a result counts when its future is
    done (the callback's time)."""
    latencies: list[float] = []
    futures = []
    started = time.perf_counter()
    for offset in schedule:
        at = started + offset
        while (ahead := at - time.perf_counter()) > 0:
            time.sleep(ahead)
        future = pool.submit(spin, loops)
        future.add_done_callback(lambda _f, at=at: latencies.append(time.perf_counter() - at))
        futures.append(future)
    concurrent.futures.wait(futures, timeout=120)
    while len(latencies) < len(futures):  # callbacks run just after the futures complete
        time.sleep(0.001)
    return latencies


def ms(values: list[float]) -> str:
    return "  ".join(f"{percentile(values, p) * 1000:7.1f}" for p in (0.5, 0.9, 0.99))


def latency(client: akita.Client, pool: concurrent.futures.ProcessPoolExecutor,
            args: argparse.Namespace, loops: int, saturated: float) -> None:
    """Section 3: open-loop latency at fractions of the saturated throughput."""
    print(f"\nsubmit -> result latency of 1 ms tasks, open-loop Poisson arrivals for "
          f"{args.latency_s:g} s at each load (of {saturated:,.0f}/s, "
          f"{'given' if args.saturated else 'akita saturated, measured above'}); ms")
    print(f"  {'load':>5} {'rate/s':>8}  {'':<22} {'p50':>7}  {'p90':>7}  {'p99':>7}")
    for seed, load in enumerate(args.loads):
        rate = load * saturated
        schedule = arrivals(rate, args.latency_s, seed)
        ppe = ppe_latencies(pool, loops, schedule)
        ak = akita_latencies(client, loops, schedule)
        print(f"  {load:>5.0%} {rate:>8,.0f}  {'akita Client (durable)':<22} {ms(ak)}")
        print(f"  {'':>5} {'':>8}  {'ProcessPoolExecutor':<22} {ms(ppe)}")
