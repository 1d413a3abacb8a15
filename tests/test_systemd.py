"""systemd integration: the unit file passes `systemd-analyze verify`, and a real supervisor
speaks the notify protocol to a socket this test binds in place of systemd."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor.systemd import SystemdNotifier, status_line
from tests.helpers import REPO, Node, wait_for

UNIT = REPO / "etc" / "akita.service"
EXEC_IN_UNIT = "/opt/akita/.venv/bin/akita-supervisor"


class NotifySocket:
    """A datagram socket standing in for systemd's: collects what the node sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            self.received.append((time.monotonic(), data.decode()))
        return [text for _when, text in self.received]

    def lines(self) -> list[str]:
        return [line for text in self.drain() for line in text.splitlines()]

    def pings_since(self, since: float) -> int:
        self.drain()
        return sum(1 for when, text in self.received
                   if when >= since and "WATCHDOG=1" in text.splitlines())


@pytest.fixture
def notify_socket(short_tmp: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(short_tmp / "notify")
    try:
        yield sock
    finally:
        sock.sock.close()


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    # verify checks that ExecStart= is executable: point it at a stand-in of the same name.
    stand_in = tmp_path / "akita-supervisor"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    text = UNIT.read_text()
    assert EXEC_IN_UNIT in text
    unit = tmp_path / "akita.service"
    unit.write_text(text.replace(EXEC_IN_UNIT, str(stand_in)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and "akita.service" not in done.stderr, done.stderr
    for directive in ("Type=notify", "WatchdogSec=", "NotifyAccess=main"):
        assert directive in text


def test_notifier_is_silent_without_systemd() -> None:
    notifier = SystemdNotifier.from_environment({})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False
    notifier.tick(0.0, {"ledger": "running"}, False)
    assert notifier.next_due_s(0.0) is None


def test_notifier_takes_the_variables_out_of_the_environment(short_tmp: Path) -> None:
    env = {"NOTIFY_SOCKET": str(short_tmp / "n"), "WATCHDOG_USEC": "4000000",
           "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    notifier = SystemdNotifier.from_environment(env)
    assert env == {"PATH": "/bin"}
    assert notifier.ping_every_s == 2.0


def test_watchdog_of_another_pid_is_not_ours(short_tmp: Path) -> None:
    env = {"NOTIFY_SOCKET": str(short_tmp / "n"), "WATCHDOG_USEC": "4000000",
           "WATCHDOG_PID": "1"}
    assert SystemdNotifier.from_environment(env).ping_every_s is None


def test_abstract_socket_address() -> None:
    name = f"akita-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(5)
        notifier = SystemdNotifier("@" + name, None)
        try:
            assert notifier.send("READY=1")
            assert server.recv(100) == b"READY=1"
        finally:
            notifier.close()


def test_status_line() -> None:
    assert status_line([("ledger", "running"), ("gateway", "backoff")], False) == \
        "1/2 workers running (gateway backoff)"
    assert status_line([("ledger", "running")], True) == "stopping: 1/1 workers running"


def test_ready_status_and_watchdog_from_a_real_supervisor(
        make_node: Callable[..., Node], notify_socket: NotifySocket,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # a ping every 0.3 s
    node = make_node()
    node.start(wait=False)
    assert node.proc is not None
    # READY=1 only after every worker runs: the node's own status must agree at that moment.
    wait_for(lambda: "READY=1" in notify_socket.lines(), 20, "READY=1 on the notify socket")
    states = {name: w["state"] for name, w in node.status()["workers"].items()}
    assert set(states.values()) == {"running"}, states
    assert "STATUS=2/2 workers running" in notify_socket.lines()

    start = time.monotonic()
    wait_for(lambda: notify_socket.pings_since(start) >= 3, 5, "three WATCHDOG=1 pings")

    # A hung supervisor loop stops the pings: freeze the process and count.
    os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(0.1)  # let a datagram already in flight arrive before counting
        frozen_at = time.monotonic()
        time.sleep(1.0)  # four ping intervals: at least three pings if it still pinged
        assert notify_socket.pings_since(frozen_at) == 0
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)
    resumed = time.monotonic()
    wait_for(lambda: notify_socket.pings_since(resumed) >= 1, 5, "pings after SIGCONT")

    assert node.stop() == 0
    assert "STOPPING=1" in notify_socket.lines()


def test_status_names_a_worker_that_is_down(
        make_node: Callable[..., Node], notify_socket: NotifySocket,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    node = make_node()
    node.start()
    wait_for(lambda: "READY=1" in notify_socket.lines(), 10, "READY=1")
    assert node.ctl("stop", "sampler").returncode == 0
    wait_for(lambda: any(line.startswith("STATUS=1/2 workers running (sampler")
                         for line in notify_socket.lines()), 10,
             "a STATUS line naming the stopped sampler")
