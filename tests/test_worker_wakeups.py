"""An idle worker sleeps long, yet a stop signal still ends it at once.

The ledger and the sampler no longer tick ten times a second at idle, and here their
heartbeat comes every 5 s: only the signal wakeup descriptor in the worker loop can make a
SIGTERM sent just after a heartbeat take effect in well under a second. Real node, real
worker processes, the heartbeat seen on the node's bus.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from akita.wire import protocol
from tests.helpers import Node, NotYet, wait_for
from tests.test_sampler import BusListener

HEARTBEAT_S = 4.0
# The first heartbeats come fast (0.05 s, doubling): by then they come every HEARTBEAT_S.
RAMPED_S = 0.05 * (2 ** 7 - 1)
SETTLE_S = 1.0
PROMPT_S = 1.0  # a loop woken only by its next heartbeat would take HEARTBEAT_S - SETTLE_S


@pytest.mark.parametrize("worker", ["ledger", "sampler"])
def test_an_idle_worker_stops_at_once_on_sigterm(make_node: Callable[..., Node],
                                                 worker: str) -> None:
    node = make_node({"supervisor": {"workers": "ledger, sampler",
                                     "heartbeat_interval": HEARTBEAT_S},
                      "sampler": {"interval": 60},
                      f"worker:{worker}": {"heartbeat_timeout": 60}})
    node.start()
    pid = node.worker(worker)["pid"]
    proc = psutil.Process(pid)
    listener = BusListener(node.run_dir, protocol.Heartbeat.KIND)
    try:
        time.sleep(max(0.0, RAMPED_S - (time.time() - proc.create_time())))
        listener.next(HEARTBEAT_S + 5, f"a heartbeat of {worker} (pid {pid})",
                      lambda m: isinstance(m, protocol.Heartbeat) and m.pid == pid)
    finally:
        listener.close()
    time.sleep(SETTLE_S)  # whatever the heartbeat set off (its bus traffic) is over
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE,
             HEARTBEAT_S + 5, f"{worker} (pid {pid}) gone after SIGTERM")
    took_s = time.monotonic() - started
    assert took_s < PROMPT_S, f"{worker} took {took_s:.2f} s to stop after SIGTERM"


def _wakeups_per_s(pid: int, window_s: float) -> float:
    """Voluntary context switches of the main thread of `pid`: each is a sleep it woke from."""
    def switches() -> int:
        status = (Path("/proc") / str(pid) / "task" / str(pid) / "status").read_text()
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("voluntary_ctxt_switches")))

    before = switches()
    time.sleep(window_s)
    return (switches() - before) / window_s


def test_an_idle_executor_ticks_about_once_a_second(make_node: Callable[..., Node]) -> None:
    # Nothing queued, running, leased or waiting for the ledger: the executor's timer has
    # nothing to look after (requests and task processes wake its loop by themselves).
    node = make_node({"supervisor": {"workers": "ledger, executor",
                                     "heartbeat_interval": HEARTBEAT_S}})
    node.start()
    pid = node.worker("executor")["pid"]
    rates: list[float] = []

    def quiet() -> Any:
        rates.append(round(_wakeups_per_s(pid, 2.0), 1))
        # it ticked ten times a second before
        return True if rates[-1] < 4.0 else NotYet({"wake-ups per second": rates})

    wait_for(quiet, 30, f"the idle executor (pid {pid}) waking under 4 times a second")
