"""The sampler: its measuring parts on real processes, then the worker inside a real node."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import zmq

from akita import transport
from akita.wire import protocol
from tests.helpers import Node, wait_for
from workers.sampler import HostSampler, ProcessSampler, find_supervisor
from workers.zygote import Zygote

# --- measuring parts, on processes this test starts ------------------------------------------

# A process that starts one child that starts one grandchild; each reports once it is up
# (its memory no longer growing with imports), then sleeps.
_TREE = """
import os, subprocess, sys, time
below = subprocess.Popen([sys.executable, "-c", {below!r}], stdout=subprocess.PIPE, text=True)
print(os.getpid(), below.stdout.readline().strip(), flush=True)
time.sleep(60)
"""
_LEAF = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"


@pytest.fixture
def tree() -> Iterator[tuple[int, int, int]]:
    """(root, child, grandchild) pids of a real three-process tree, killed afterwards."""
    middle = _TREE.format(below=_LEAF)
    root = subprocess.Popen([sys.executable, "-c", _TREE.format(below=middle)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert root.stdout is not None
        line = root.stdout.readline().split()
        assert len(line) == 3, f"the process tree did not report its pids: {line!r}"
        yield root.pid, int(line[1]), int(line[2])
    finally:
        os.killpg(root.pid, signal.SIGKILL)
        root.wait(5)
        assert root.stdout is not None
        root.stdout.close()


def test_process_sampler_finds_the_tree_and_labels_the_executors_children(
        tree: tuple[int, int, int]) -> None:
    root, executor, task = tree
    sampler = ProcessSampler(root, uss_every=1)
    sampler.workers[executor] = "executor"
    first = {p["pid"]: p for p in sampler.sample()}
    assert {pid: (p["kind"], p["role"]) for pid, p in first.items()} == {
        root: ("supervisor", "supervisor"), executor: ("worker", "executor"),
        task: ("task", "task")}
    assert all(p["cpu_percent"] is None for p in first.values())  # nothing to compare yet
    second = {p["pid"]: p for p in sampler.sample()}
    for proc in second.values():
        assert isinstance(proc["cpu_percent"], float)
        assert proc["rss_bytes"] > 1 << 20
        assert 0 < proc["uss_bytes"] <= proc["rss_bytes"]
        assert proc["open_files"] >= 3  # stdin, stdout, stderr at least
        assert proc["threads"] >= 1


def test_process_sampler_drops_a_process_that_exited(tree: tuple[int, int, int]) -> None:
    root, executor, task = tree
    sampler = ProcessSampler(root, uss_every=1)
    sampler.workers[executor] = "executor"
    assert task in {p["pid"] for p in sampler.sample()}
    os.kill(task, signal.SIGKILL)
    wait_for(lambda: task not in {p["pid"] for p in sampler.sample()}, 5,
             f"task {task} gone from the samples")
    assert task not in sampler._procs


def task_pool_main(args: dict[str, str]) -> int:
    """Runs in a child of a test zygote, as the executor does: a zygote of its own, a task."""
    pool = Zygote.start([], title="tasks")
    task = pool.spawn("time:sleep", 30)
    Path(args["out"]).write_text(f"{pool.pid} {task}")
    time.sleep(30)
    return 0


def test_zygotes_are_told_from_the_children_they_fork(tmp_path: Path) -> None:
    zygote = Zygote.start(["psutil"])
    try:
        child = zygote.spawn("time:sleep", 30)
        out = tmp_path / "pids"
        executor = zygote.spawn("tests.test_sampler:task_pool_main", {"out": str(out)})
        pool, task = map(int, wait_for(lambda: out.exists() and out.read_text().split(), 10,
                                       "the executor's task pids"))
        sampler = ProcessSampler(os.getpid(), uss_every=0)
        roles = {p["pid"]: (p["kind"], p["role"], p["uss_bytes"]) for p in sampler.sample()}
        assert roles[zygote.pid] == ("zygote", "zygote", None)
        assert roles[child] == ("worker", "worker", None)  # forked, not yet named
        sampler.workers.update({child: "ledger", executor: "executor"})
        roles = {p["pid"]: (p["kind"], p["role"]) for p in sampler.sample()}
        assert roles[child] == ("worker", "ledger")
        assert roles[executor] == ("worker", "executor")
        assert roles[pool] == ("zygote", "executor.zygote")
        assert roles[task] == ("task", "task")
    finally:
        zygote.close()


def test_find_supervisor_trusts_the_pid_file_only_when_it_names_an_ancestor(
        tmp_path: Path) -> None:
    assert find_supervisor(tmp_path) == os.getppid()  # no pid file: the parent
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "supervisor.pid").write_text(f"{stranger.pid}\n")  # stale: ignored
        assert find_supervisor(tmp_path) == os.getppid()
    finally:
        stranger.kill()
        stranger.wait(5)
    grandparent = psutil.Process().parent().parent()  # type: ignore[union-attr]
    (tmp_path / "supervisor.pid").write_text(f"{grandparent.pid}\n")
    assert find_supervisor(tmp_path) == grandparent.pid


def test_host_sample_has_every_figure_and_rates_from_the_second_on(tmp_path: Path) -> None:
    host = HostSampler(tmp_path / "not-yet")
    time.sleep(0.05)  # let the I/O counters span some time between readings
    sample = host.sample()
    assert 0 <= sample["cpu_percent"] <= 100
    assert len(sample["cpu_per_core"]) == sample["cpu_count"] == os.cpu_count()
    assert len(sample["load_avg"]) == 3
    assert sample["memory"]["total"] > 0 and 0 <= sample["memory"]["percent"] <= 100
    assert set(sample["swap"]) == {"total", "used", "percent"}
    assert sample["disk"]["total"] > 0 and sample["disk"]["path"].endswith("not-yet")
    rates = {**sample["disk_io"], **sample["net_io"]}
    assert rates, "no I/O counters at all"
    assert all(key.endswith("_per_s") for key in rates)
    # The constructor took the first reading, so this sample is the second: every rate is
    # a number (None only where no rate can be told yet).
    missing = [key for key, value in rates.items() if value is None]
    assert not missing, f"no rate on the second reading for {missing}"
    assert all(value >= 0 for value in rates.values()), rates

    # Traffic of our own making shows: the clock here brackets the sampler's interval, so
    # bytes / our interval is a lower bound of the rate it must report.
    sent = 4 << 20
    started = time.monotonic()
    host.sample()
    _loopback_traffic(sent)
    rate = host.sample()["net_io"]["bytes_sent_per_s"]
    assert rate is not None and rate >= sent / (time.monotonic() - started), (
        f"{sent} bytes sent over loopback in {time.monotonic() - started:.3f} s, "
        f"sampler says {rate} bytes/s")


def _loopback_traffic(total: int) -> None:
    """Send `total` bytes to ourselves over a loopback TCP connection (a thread drains it)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with client, peer:
            drain = threading.Thread(target=lambda: _read_to_end(peer), daemon=True)
            drain.start()
            chunk = b"x" * 65536
            for _ in range(total // len(chunk)):
                client.sendall(chunk)
            client.shutdown(socket.SHUT_WR)
            drain.join(10)
            assert not drain.is_alive(), "loopback reader did not finish within 10 s"


def _read_to_end(sock: socket.socket) -> None:
    while sock.recv(1 << 20):
        pass


def test_one_sample_is_cheap(tree: tuple[int, int, int]) -> None:
    """The idle budget of a whole node is 1 % of a core, 50 ms of CPU per 5 s sampling
    interval; one sample may take a tenth of that, 5 ms (measured: about 1.5 ms)."""
    root, executor, _task = tree
    host = HostSampler(Path("/tmp"))
    procs = ProcessSampler(root, uss_every=1)
    procs.workers[executor] = "executor"
    procs.sample()
    rounds = 50
    started = time.process_time()
    for _ in range(rounds):
        host.sample()
        procs.sample()
    cost_ms = (time.process_time() - started) / rounds * 1000
    print(f"one sample of the host and 3 processes: {cost_ms:.2f} ms of CPU")
    assert cost_ms < 5, f"a sample costs {cost_ms:.1f} ms of CPU"


# --- the worker in a real node ----------------------------------------------------------------


class BusListener:
    """A SUB socket on a node's bus-out, for tests."""

    def __init__(self, run_dir: Path, *topics: str) -> None:
        self.ctx = zmq.Context()
        self.sock = transport.make_socket(self.ctx, zmq.SUB)
        for topic in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.sock.connect(transport.endpoint(run_dir, transport.BUS_OUT))

    def next(self, timeout_s: float, what: str,
             match: Callable[[protocol.Message], bool] = lambda m: True) -> Any:
        deadline = time.monotonic() + timeout_s
        seen: list[str] = []
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000) + 1):
                _topic, data = self.sock.recv_multipart()
                msg = protocol.decode(data)
                if match(msg):
                    return msg
                seen.append(msg.KIND)
        raise AssertionError(f"no {what} on the bus within {timeout_s:g} s; saw {seen[-10:]}")

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def running_node(make_node: Callable[..., Node]) -> Iterator[Node]:
    node = make_node()
    node.start()
    yield node


def test_samples_carry_the_supervisor_the_workers_and_their_figures(
        running_node: Node) -> None:
    listener = BusListener(running_node.run_dir, "resource.sample")
    try:
        status = running_node.status()["workers"]
        wanted = {name: status[name]["pid"] for name in ("ledger", "sampler")}

        def complete(msg: protocol.Message) -> bool:
            assert isinstance(msg, protocol.ResourceSample)
            by_role = {p["role"]: p for p in msg.processes}
            return all(by_role.get(name, {}).get("pid") == pid for name, pid in wanted.items())

        msg = listener.next(10, f"a sample naming workers {wanted}", complete)
    finally:
        listener.close()
    by_role = {p["role"]: p for p in msg.processes}
    assert by_role["supervisor"]["pid"] == running_node.proc.pid  # type: ignore[union-attr]
    assert "zygote" in by_role
    for proc in msg.processes:
        assert proc["rss_bytes"] > 0 and proc["threads"] >= 1 and proc["open_files"] > 0
    assert msg.host["memory"]["percent"] > 0 and msg.host["cpu_count"] >= 1


def test_task_processes_are_sampled_under_the_executor(make_node: Callable[..., Node]) -> None:
    node = make_node({"supervisor": {"workers": "ledger, sampler, executor"},
                      "tasks": {"pool_size": 2}})
    node.start()
    listener = BusListener(node.run_dir, "resource.sample")
    try:
        def with_tasks(msg: protocol.Message) -> bool:
            assert isinstance(msg, protocol.ResourceSample)
            return sum(p["role"] == "task" for p in msg.processes) == 2

        msg = listener.next(15, "a sample with the executor's 2 task processes", with_tasks)
    finally:
        listener.close()
    roles = sorted(p["role"] for p in msg.processes)
    assert roles == ["executor", "executor.zygote", "ledger", "sampler", "supervisor", "task",
                     "task", "zygote"], roles


def _alert_events(node: Node) -> list[Any]:
    from akita.ledger.chain import read_events

    return [event for event in read_events(node.data_dir / "ledger.db",
                                           kind_prefix="resource.")
            if event.kind == "resource.alert"]


def _collect(listener: BusListener, samples: int, from_sampler: int | None = None
             ) -> list[protocol.ResourceAlert]:
    """Alerts published while `samples` samples (from that sampler pid) go by."""
    alerts: list[protocol.ResourceAlert] = []
    seen = 0
    deadline = time.monotonic() + 10 + samples
    while seen < samples:
        msg = listener.next(max(0.1, deadline - time.monotonic()), f"{samples} samples")
        if isinstance(msg, protocol.ResourceAlert):
            alerts.append(msg)
        elif isinstance(msg, protocol.ResourceSample) and (from_sampler is None or any(
                p["role"] == "sampler" and p["pid"] == from_sampler for p in msg.processes)):
            seen += 1
    return alerts


def test_low_thresholds_raise_each_alert_once_on_the_bus_and_in_the_ledger(
        make_node: Callable[..., Node]) -> None:
    # Memory and per-process RSS only: a busy test host could cross the CPU one.
    node = make_node({"sampler": {"memory_alert_percent": 0.1, "cpu_alert_percent": 0,
                                  "disk_alert_percent": 0, "process_rss_alert_bytes": 4096}})
    node.start(wait=False)
    # Listen before the sampler's first sample, which raises the alerts.
    bus = transport.socket_path(node.run_dir, transport.BUS_OUT)
    wait_for(bus.exists, 20, f"the bus socket {bus}", interval_s=0.002)
    listener = BusListener(node.run_dir, "resource.")
    try:
        node.wait_running()
        alerts = _collect(listener, 4)
        zygote = next(p for p in psutil.Process(node.proc.pid).children()  # type: ignore[union-attr]
                      if "workers.zygote" in p.cmdline())
        expected = [("memory_percent", "host", 0.1)] + [
            ("rss_bytes", subject, 4096) for subject in
            sorted(["supervisor", f"zygote[{zygote.pid}]", "ledger", "sampler"])]
        assert sorted((a.metric, a.subject, a.threshold) for a in alerts) == expected, alerts
        assert all(a.raised for a in alerts)

        def ledger_alerts() -> list[tuple[str, str, float]] | None:
            found = sorted((e.data["metric"], e.data["subject"], e.data["threshold"])
                           for e in _alert_events(node))
            return found if len(found) >= len(expected) else None

        assert wait_for(ledger_alerts, 10, "the alerts in the ledger") == expected

        # A restarted sampler carries on from the ledger: nothing is raised again.
        old_pid = node.worker("sampler")["pid"]
        node.request(protocol.WorkerRestart(name="sampler"))
        new_pid = wait_for(lambda: node.worker("sampler")["pid"] not in (None, old_pid)
                           and node.worker("sampler")["pid"], 10, "a new sampler pid")
        assert _collect(listener, 3, from_sampler=new_pid) == []
    finally:
        listener.close()
    assert len(_alert_events(node)) == len(expected)
