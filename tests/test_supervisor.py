"""The supervisor as a whole: start, stop, the run-directory lock, and a SIGKILLed supervisor.

Every test starts a real `python -m supervisor.main` with real workers (ledger, sampler)
on real ipc sockets in a temporary directory.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from akita import transport
from akita.wire import protocol
from tests.helpers import REPO, Node, pid_alive, wait_for

MakeNode = Callable[..., Node]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the zygote and the workers it forked)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def worker_pids(node: Node) -> dict[str, int]:
    return {name: w["pid"] for name, w in node.status()["workers"].items()}


def test_start_status_and_clean_stop(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    assert node.proc is not None
    status = node.status()
    assert status["node"]["name"] == "test-node"
    assert len(status["node"]["id"]) == 32
    assert status["node"]["pid"] == node.proc.pid
    assert status["node"]["run_dir"] == str(node.run_dir)
    assert list(status["workers"]) == ["ledger", "sampler"]
    for entry in status["workers"].values():
        assert entry["state"] == "running"
        assert entry["restarts"] == 0
        assert entry["rss_bytes"] and entry["rss_bytes"] > 0
        assert pid_alive(entry["pid"])
    assert oct(node.run_dir.stat().st_mode & 0o777) == "0o700"
    everything = descendants(node.proc.pid)
    assert len(everything) >= 3, f"expected zygote and two workers, saw {everything}"

    assert node.stop() == 0
    wait_for(lambda: not [p for p in everything if pid_alive(p)], 5,
             "every worker and the zygote gone after a clean stop")
    assert not transport.socket_path(node.run_dir, transport.CONTROL).exists()
    log_text = (node.log_dir / "supervisor.log").read_text()
    assert "stopping workers: sampler, ledger" in log_text
    assert "Traceback" not in node.output()


def test_stop_order_is_reverse_of_start(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    node.stop()
    lines = (node.log_dir / "supervisor.log").read_text().splitlines()
    started = [line for line in lines if " started (pid " in line]
    exited = [line for line in lines if "cause: stop_requested" in line]
    assert [line.split("supervisor.table: ")[1].split()[0] for line in started] == [
        "ledger", "sampler"]
    assert [line.split("supervisor.table: ")[1].split()[0] for line in exited] == [
        "sampler", "ledger"]


def test_shutdown_request_over_control_socket(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    pids = list(worker_pids(node).values())
    reply = node.request(protocol.NodeShutdown())
    assert isinstance(reply, protocol.Ok)
    assert node.proc is not None
    assert node.proc.wait(15) == 0
    wait_for(lambda: not [p for p in pids if pid_alive(p)], 5, "workers gone after shutdown")


def test_second_supervisor_on_same_run_dir_is_refused(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    assert node.proc is not None
    second = subprocess.run(
        [sys.executable, "-m", "supervisor.main", "-c", str(node.config_path)],
        capture_output=True, text=True, timeout=30, cwd=REPO, check=False)
    assert second.returncode == 1, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert f"pid {node.proc.pid}" in lines[0] and str(node.run_dir) in lines[0]
    # The first node is untouched.
    assert node.status()["workers"]["ledger"]["state"] == "running"


def test_supervisor_sigkill_leaves_no_orphans(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    assert node.proc is not None
    everything = descendants(node.proc.pid)
    assert len(everything) >= 3, everything
    node.proc.kill()
    node.proc.wait(5)
    killed_at = time.monotonic()
    wait_for(lambda: not [p for p in everything if pid_alive(p)], 10,
             "zygote and workers gone after the supervisor's SIGKILL")
    took = time.monotonic() - killed_at
    assert took < 2.0, f"zygote and workers took {took:.1f} s to go"


def test_restart_after_sigkill_reuses_run_dir(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    assert node.proc is not None
    everything = descendants(node.proc.pid)
    node.proc.kill()
    node.proc.wait(5)
    wait_for(lambda: not [p for p in everything if pid_alive(p)], 2.0, "old processes gone")
    node.start()  # stale socket files and pid file must not stop the next start
    assert node.status()["node"]["pid"] == node.proc.pid


def test_worker_output_goes_to_its_log_file(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    def holds(path: Path, line: str) -> Callable[[], bool]:
        return lambda: path.exists() and line in path.read_text()

    for name in ("ledger", "sampler"):
        path = node.log_dir / f"{name}.log"
        wait_for(holds(path, f"{name} worker running"), 5, f"{path} to hold the start line")


def test_help_and_check(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "supervisor.main", "--help"],
                          capture_output=True, text=True, timeout=30, cwd=REPO, check=False)
    assert done.returncode == 0
    assert "--check" in done.stdout and "SIGHUP" in done.stdout
    config = tmp_path / "a.ini"
    config.write_text("[node]\ndata_dir = d\nrun_dir = r\nlog_dir = l\n")
    done = subprocess.run([sys.executable, "-m", "supervisor.main", "-c", str(config),
                           "--check"], capture_output=True, text=True, timeout=30, cwd=REPO,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert '"run_dir": "' + str(tmp_path / "r") + '"' in done.stdout
    assert '"restart": "always"' in done.stdout
    assert not (tmp_path / "r").exists(), "--check must not create anything"


def test_sigint_stops_cleanly(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    assert node.proc is not None
    pids = list(worker_pids(node).values())
    node.proc.send_signal(signal.SIGINT)
    assert node.proc.wait(15) == 0
    wait_for(lambda: not [p for p in pids if pid_alive(p)], 5, "workers gone after SIGINT")
