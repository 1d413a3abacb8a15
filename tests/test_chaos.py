"""Chaos: about two faults a second for 30 s under a steady submit load, then the books are
checked. Faults: SIGKILL or SIGSTOP of a random worker or fork server (the supervisor's or
the executor's), SIGKILL of a task process. Afterwards: every acknowledged task succeeded
with the right result, no worker is FATAL, and the ledger verifies.

The same load runs for a while without faults first, so acknowledged and completed tasks
per second can be compared (printed; run with -s to see them).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest

import akita
from akita.errors import AkitaError
from akita.ledger import chain
from tests.helpers import Node, free_port, pid_alive

SEED = int(os.environ.get("AKITA_CHAOS_SEED", "11"))
CALM_S = 8.0
CHAOS_S = 30.0
FAULTS_PER_S = 2.0
BATCH = 10
WORKERS = ("ledger", "sampler", "executor", "gateway")
RESTARTS = {"max_restarts": 100, "restart_window": 60, "heartbeat_timeout": 2,
            "backoff_max": 1}


@dataclass
class Load:
    """Submits batches of sample.add until stopped; keeps what was acknowledged."""

    node: Node
    acked: dict[str, int] = field(default_factory=dict)   # task id → expected result
    acked_at: list[tuple[float, int]] = field(default_factory=list)  # (wall time, tasks)
    refused: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            with akita.Client(self.node.config_path, timeout_s=5) as client:
                self._submit(client)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def _submit(self, client: akita.Client) -> None:
        n = 0
        while not self.stop.is_set():
            tasks = [("sample.add", [n + i, 1]) for i in range(BATCH)]
            try:
                ids = client.submit_many(tasks)
            except AkitaError:
                self.refused += 1  # executor or ledger down just now: nothing acknowledged
                time.sleep(0.05)
                continue
            for i, task_id in enumerate(ids):
                self.acked[task_id] = n + i + 1
            self.acked_at.append((time.time(), len(ids)))
            n += BATCH

    def rate(self, start: float, end: float) -> float:
        return sum(count for ts, count in self.acked_at if start <= ts < end) / (end - start)


def children_running(pid: int, marker: str) -> list[psutil.Process]:
    try:
        return [c for c in psutil.Process(pid).children()
                if marker in " ".join(c.cmdline())]
    except psutil.Error:
        return []


def victims(node: Node) -> dict[str, list[int]]:
    """Pids to hit, by kind: workers, fork servers, task processes."""
    assert node.proc is not None
    workers = {w: e["pid"] for w, e in node.status()["workers"].items() if e["pid"]}
    zygotes = [z.pid for z in children_running(node.proc.pid, "workers.zygote")]
    tasks: list[int] = []
    if "executor" in workers:
        for zygote in children_running(workers["executor"], "workers.zygote"):
            zygotes.append(zygote.pid)
            try:
                tasks += [c.pid for c in zygote.children()]
            except psutil.Error:
                pass
    return {"worker": list(workers.values()), "zygote": zygotes, "task": tasks}


def one_fault(node: Node, rng: random.Random, stopped: list[tuple[float, int]]) -> str:
    kinds = victims(node)
    kind = rng.choice([k for k in ("worker", "worker", "zygote", "task", "task") if kinds[k]]
                      or ["none"])
    if kind == "none":
        return "none"
    pid = rng.choice(kinds[kind])
    sig = signal.SIGKILL if kind == "task" or rng.random() < 0.6 else signal.SIGSTOP
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return "missed"
    if sig == signal.SIGSTOP:
        stopped.append((time.monotonic() + rng.uniform(0.3, 3.0), pid))
    return f"{kind}:{sig.name}"


def resume_due(stopped: list[tuple[float, int]], now: float) -> None:
    for entry in [e for e in stopped if e[0] <= now]:
        stopped.remove(entry)
        try:
            os.kill(entry[1], signal.SIGCONT)
        except ProcessLookupError:
            pass


def phase(seconds: float, during: Callable[[], None] | None = None) -> tuple[float, float]:
    """Run for `seconds` (calling `during` often); returns its (start, end) wall times."""
    start = time.time()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if during is not None:
            during()
        time.sleep(0.02)
    return start, time.time()


def rates(node: Node, load: Load, window: tuple[float, float]) -> tuple[float, float]:
    """(acknowledged, completed) tasks per second in `window`, completions as the ledger
    recorded them."""
    start, end = window
    done = sum(1 for e in chain.read_events(chain.db_path(node.config),
                                            kind_prefix="task.succeeded")
               if start <= e.ts < end)
    return load.rate(start, end), done / (end - start)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_chaos_loses_nothing(make_node: Callable[..., Node]) -> None:
    sections: dict[str, dict[str, Any]] = {
        "supervisor": {"workers": ", ".join(WORKERS)},
        "tasks": {"pool_size": 2, "modules": "tests.sample_tasks", "max_attempts": 20,
                  "task_timeout": 30},
        "reticulum": {"auto_interface": "no", "tcp_listen": f"127.0.0.1:{free_port()}"},
        **{f"worker:{w}": dict(RESTARTS) for w in WORKERS}}
    node = make_node(sections)
    node.start()
    rng = random.Random(SEED)
    load = Load(node)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    stopped: list[tuple[float, int]] = []
    faults: list[str] = []
    next_fault = [0.0]

    def inject() -> None:
        now = time.monotonic()
        resume_due(stopped, now)
        if now >= next_fault[0]:
            faults.append(one_fault(node, rng, stopped))
            next_fault[0] = now + rng.expovariate(FAULTS_PER_S)

    try:
        calm_window = phase(CALM_S)
        chaos_window = phase(CHAOS_S, inject)
    finally:
        for _, pid in stopped:
            if pid_alive(pid):
                os.kill(pid, signal.SIGCONT)
        load.stop.set()
        thread.join(30)
    assert load.error is None, f"the load stopped: {load.error!r}"
    assert len(faults) > CHAOS_S * FAULTS_PER_S / 2 and load.acked
    node.wait_running(60)
    ids = list(load.acked)
    with akita.Client(node.config_path, timeout_s=30) as client:
        results = client.wait_many(ids, timeout=120, return_exceptions=True)
    wrong = [(i, r) for i, r in zip(ids, results) if r != load.acked[i]]
    assert not wrong, f"{len(wrong)} of {len(ids)} acknowledged tasks wrong or lost: {wrong[:5]}"
    calm, chaos = rates(node, load, calm_window), rates(node, load, chaos_window)
    print(f"\nseed {SEED}: {len(faults)} faults ({', '.join(sorted(set(faults)))}); "
          f"{len(ids)} tasks acknowledged, all succeeded with the right result")
    print(f"without faults: {calm[0]:.0f} acknowledged/s, {calm[1]:.0f} completed/s")
    print(f"with faults:    {chaos[0]:.0f} acknowledged/s, {chaos[1]:.0f} completed/s; "
          f"{load.refused} submits refused or timed out (not acknowledged)")
    fatal = [w for w, e in node.status()["workers"].items() if e["state"] == "fatal"]
    assert not fatal, f"FATAL workers: {fatal}"
    verify = node.ctl("ledger", "verify", timeout_s=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
