"""A real node in a temporary directory, for the benchmarks (not a test fixture: no pytest).

Starts `python -m supervisor.main -c FILE` exactly as an operator would, waits with a
deadline until the wanted workers run, and always stops it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from akita import transport
from akita.errors import AkitaError
from akita.wire import protocol


def render(sections: dict[str, dict[str, Any]]) -> str:
    return "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) + "\n"
                   for name, values in sections.items())


class BenchNode:
    """One supervisor and its workers under a fresh temporary directory."""

    def __init__(self, sections: dict[str, dict[str, Any]]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="akb-", dir="/tmp"))
        base = {"node": {"data_dir": "data", "run_dir": "run", "log_dir": "log",
                         "name": "bench"}}
        merged = {**base, **sections}
        merged["node"] = {**base["node"], **sections.get("node", {})}
        # Never attach to a Reticulum shared instance the host may run: a bench owns its mesh.
        merged["reticulum"] = {"shared_instance": "own", **sections.get("reticulum", {})}
        self.config_path = self.root / "akita.ini"
        self.config_path.write_text(render(merged))
        self.run_dir = self.root / "run"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, workers: list[str], timeout_s: float = 30.0) -> None:
        with open(self.root / "supervisor.out", "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.main", "-c",
                                          str(self.config_path)], stdout=log, stderr=log,
                                         cwd=REPO)
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"supervisor exited: {(self.root / 'supervisor.out').read_text()}")
            try:
                last = self.status()
                if all(last[name]["state"] == "running" for name in workers):
                    return
            except AkitaError as exc:
                last = exc
            time.sleep(0.05)
        raise SystemExit(f"workers {workers} not running after {timeout_s:g} s; saw {last}")

    def status(self) -> dict[str, dict[str, Any]]:
        reply = self.request(protocol.NodeStatus())
        assert isinstance(reply, protocol.NodeStatusReply)
        return {w["name"]: w for w in reply.workers}

    def request(self, msg: protocol.Message, timeout_s: float = 5.0) -> protocol.Message:
        """One request through the node's control socket."""
        with transport.Requester(self.run_dir, transport.CONTROL) as req:
            return req.request(msg, timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str,
             poll_s: float = 0.1) -> Any:
    """Poll `condition` until it returns something truthy; exit naming `what` and the last
    value seen if `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except AkitaError as exc:  # a node still starting answers with these
            last = exc
        else:
            if last:
                return last
        time.sleep(poll_s)
    raise SystemExit(f"timed out after {timeout_s:g} s waiting for {what}; last saw {last!r}")


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (p99 of 20 samples is the largest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]
