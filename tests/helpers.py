"""Shared test machinery: bounded waits, free ports, and real nodes in temporary directories.

Every wait has a deadline and fails saying what it waited for and what it last saw.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from akita import config as config_mod
from akita import transport
from akita.errors import AkitaError
from akita.wire import protocol
from supervisor.demo import free_port  # re-exported for the tests: one home for it

REPO = Path(__file__).resolve().parent.parent
# A node asked to stop must be gone within this (workers stop in reverse order, each within
# its stop_timeout; an idle or busy test node takes well under 5 s).
CLEAN_STOP_S = 15.0
# What the supervisor logs when a stop was not clean (supervisor/table.py, mainloop.py).
UNCLEAN_STOP_MARKS = (" did not stop within ", " were not acknowledged before the ledger stopped",
                      " not yet durable at shutdown")


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str,
             interval_s: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = condition()
        except AkitaError as exc:  # a node that is still starting answers with these
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}; "
                                 f"last saw: {last!r}")
        time.sleep(interval_s)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# Fast timers so the suite stays quick; tests override what they exercise.
TEST_DEFAULTS: dict[str, dict[str, Any]] = {
    "node": {"data_dir": "data", "run_dir": "run", "log_dir": "log", "name": "test-node"},
    "supervisor": {"heartbeat_interval": 0.2, "workers": "ledger, sampler"},
    "sampler": {"interval": 0.5},
    "ledger": {"checkpoint_interval": 0.2},
    # Never attach to a shared Reticulum instance someone runs on the test host.
    "reticulum": {"shared_instance": "own"},
    # Off unless a test asks: nodes running side by side would all want the default port.
    "metrics": {"listen": ""},
}


def render_config(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def merge_sections(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            merged.setdefault(section, {}).update(values)
    return merged


class NotYet(dict):  # type: ignore[type-arg]
    """What a `wait_for` condition saw so far: shown in the failure message, but falsy."""

    def __bool__(self) -> bool:
        return False


class PeerProcess:
    """A hand-made Reticulum peer script (tests/rns_*.py) in its own process, dialling the
    hub at `hub_port`; its stdout lines go to a file the test polls with `wait_line`."""

    def __init__(self, script: Path, root: Path, hub_port: int, *args: str,
                 what: str = "the hand-made peer") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.what = what
        self.out = root / "peer.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), "--dir", str(root), "--connect",
                 f"127.0.0.1:{hub_port}", *args],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)

    def lines(self) -> list[str]:
        return self.out.read_text(errors="replace").splitlines()

    def wait_line(self, prefix: str, timeout_s: float) -> str:
        """The first line starting with `prefix`; fails at once if the peer exited."""
        def found() -> Any:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.what} exited: {self.lines()[-20:]}")
            return next((line for line in self.lines() if line.startswith(prefix)),
                        NotYet({"lines": self.lines()[-5:]}))

        return str(wait_for(found, timeout_s, f"{self.what} to print {prefix!r}"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


class Node:
    """A real supervisor process with its own config in `root`; always stopped by its fixture."""

    def __init__(self, root: Path, sections: dict[str, dict[str, Any]] | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "akita.ini"
        self.sections = merge_sections(TEST_DEFAULTS, sections or {})
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_problems: list[str] = []  # every stop that was not clean (see `stop`)

    def write_config(self) -> None:
        self.config_path.write_text(render_config(self.sections))
        self.config = config_mod.load(self.config_path)

    @property
    def run_dir(self) -> Path:
        return self.config.node.run_dir

    @property
    def data_dir(self) -> Path:
        return self.config.node.data_dir

    @property
    def log_dir(self) -> Path:
        return self.config.node.log_dir

    def start(self, wait: bool = True, timeout_s: float = 20.0,
              env: dict[str, str] | None = None, wrap: list[str] | None = None) -> None:
        """`wrap` runs the supervisor through a command that execs it (e.g. nsenter)."""
        with open(self.root / "supervisor.out", "ab") as out:
            self.proc = subprocess.Popen(
                [*(wrap or []), sys.executable, "-m", "supervisor.main", "-c",
                 str(self.config_path)],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                env=None if env is None else {**os.environ, **env})
        if wait:
            self.wait_running(timeout_s)

    def output(self) -> str:
        try:
            return (self.root / "supervisor.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def request(self, msg: protocol.Message, timeout_s: float = 5.0) -> protocol.Message:
        with transport.Requester(self.run_dir, transport.CONTROL) as req:
            return req.request(msg, timeout_s)

    def status(self) -> dict[str, Any]:
        reply = self.request(protocol.NodeStatus())
        assert isinstance(reply, protocol.NodeStatusReply)
        return {"node": reply.node, "workers": {w["name"]: w for w in reply.workers}}

    def worker(self, name: str) -> dict[str, Any]:
        return self.status()["workers"][name]

    def wait_running(self, timeout_s: float = 20.0, names: list[str] | None = None) -> dict:
        wanted = names or list(self.config.supervisor.workers)

        def all_running() -> Any:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited with {self.proc.returncode}:\n"
                                     + self.output()[-3000:])
            workers = self.status()["workers"]
            states = {n: workers[n]["state"] for n in wanted}
            return workers if all(s == "running" for s in states.values()) else NotYet(states)

        return wait_for(all_running, timeout_s, f"workers {wanted} running")

    def ctl(self, *args: str, timeout_s: float = 30.0, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "akita.cli", "-c", str(self.config_path), *args],
            check=False, capture_output=True, text=True, timeout=timeout_s, cwd=REPO,
            input=input)

    def ctl_json(self, *args: str, timeout_s: float = 30.0) -> Any:
        done = self.ctl(*args, "--json", timeout_s=timeout_s)
        assert done.returncode == 0, f"akitactl {args} failed ({done.returncode}): {done.stderr}"
        return json.loads(done.stdout)

    def stop(self, timeout_s: float = CLEAN_STOP_S) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code.

        A stop that is not clean is recorded in `stop_problems` (the fixtures fail the test
        with them): exit code other than 0, a worker the supervisor had to SIGKILL at its
        stop_timeout, a ledger event left unacknowledged, a process of the node left behind.
        Not exiting within `timeout_s` (timed here, not by the node) raises at once.
        """
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        log_before = len(self.output())
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            problem = (f"supervisor did not stop within {timeout_s:g} s:\n"
                       + self.output()[-3000:])
            self.stop_problems.append(f"{self.root.name}: {problem}")
            raise AssertionError(problem) from None
        said = self.output()[log_before:]
        problems = [] if code == 0 else [f"exited with {code} after SIGTERM"]
        problems += [line.strip() for line in said.splitlines()
                     if any(mark in line for mark in UNCLEAN_STOP_MARKS)]
        left = self.leftovers()
        if left:
            problems.append(f"left processes behind: {left}")
        if problems:
            self.stop_problems.append(f"{self.root.name}: " + "; ".join(problems) + "\n"
                                      + said[-2000:])
        return code

    def leftovers(self) -> list[str]:
        """Processes other than the supervisor still naming this node's config or directory."""
        markers = (str(self.config_path), str(self.root))
        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            line = " ".join(proc.info["cmdline"] or [])
            if (proc.pid != self.proc_pid() and proc.info["status"] != psutil.STATUS_ZOMBIE
                    and any(m in line for m in markers)):
                found.append(f"{proc.pid} {line[:120]}")
        return found

    def kill_everything(self) -> None:
        """SIGKILL the whole node at once: nothing gets to say goodbye.

        This is a crash of every process, not a power cut: whatever they wrote is already in
        the kernel and survives. tests/powercut.py makes the power go for real.

        The supervisor is frozen first so it cannot restart what dies, and its descendants
        are killed before it, since its death would send the workers a graceful SIGTERM
        (their parent-death signal). Also the last-resort cleanup of every fixture: anything
        still naming our config or directory on its command line goes too.
        """
        victims: list[psutil.Process] = []
        supervisor: psutil.Process | None = None
        if self.proc is not None and self.proc.poll() is None:
            try:
                supervisor = psutil.Process(self.proc.pid)
                supervisor.suspend()
                victims = supervisor.children(recursive=True)
            except psutil.NoSuchProcess:
                supervisor = None
        markers = (str(self.config_path), str(self.root))
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if proc.pid != self.proc_pid() and any(
                    m in " ".join(proc.info["cmdline"] or []) for m in markers):
                victims.append(proc)
        for proc in victims:
            try:
                proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        if supervisor is not None and self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)

    def proc_pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


def stop_all(nodes: list[Node]) -> None:
    """Stop every node, kill whatever is left, then fail naming each stop of these nodes that
    was not clean, during the test or now (see `Node.stop`). A node that a test killed is
    not judged; one it stopped is."""
    for node in nodes:
        try:
            node.stop()
        except AssertionError:
            pass  # recorded in stop_problems
        finally:
            node.kill_everything()
    problems = [problem for node in nodes for problem in node.stop_problems]
    if problems:
        raise AssertionError("nodes did not stop cleanly:\n" + "\n".join(problems))


# --- networks of nodes (gateway tests) ----------------------------------------------------------
# Every node of a test network runs a real supervisor with ledger and gateway, its own
# Reticulum instance on loopback TCP: node 0 listens (a hub), the others dial it.

NET_CLUSTER = {"cluster_size": 3, "announce_interval": 1, "discovery_interval": 0.5,
               "peer_timeout": 4}


def net_sections(hub_port: int, hub: bool, name: str, **overrides: Any) -> dict[str, Any]:
    """Config sections for one node of a loopback network (timers small, AutoInterface off)."""
    sections: dict[str, Any] = {
        "node": {"name": name},
        "supervisor": {"workers": "ledger, gateway"},
        "cluster": dict(NET_CLUSTER),
        "reticulum": {"auto_interface": "no",
                      "tcp_listen" if hub else "tcp_connect": f"127.0.0.1:{hub_port}"},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    return sections


def start_network(make_node: Callable[..., Node], count: int, **overrides: Any) -> list[Node]:
    """`count` running nodes; the hub first (a client dialling too early waits ~5 s)."""
    port = free_port()
    nodes = []
    for index in range(count):
        node = make_node(net_sections(port, index == 0, f"node{index}", **overrides),
                         name=f"n{index}")
        node.start(wait=index == 0)
        nodes.append(node)
    for node in nodes[1:]:
        node.wait_running()
    return nodes
