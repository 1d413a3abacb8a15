"""akita-demo starts real nodes that form clusters, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.helpers import REPO, NotYet, wait_for


def demo_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any("/akita-demo-" in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_demo_forms_clusters_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    out = tmp_path / "demo.out"
    with open(out, "wb") as sink:
        demo = subprocess.Popen([sys.executable, "-m", "supervisor.demo", "--nodes", "3",
                                 "--cluster-size", "2", "--duration", "90"],
                                stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_for(lambda: "every node agrees" in out.read_text() or
                 NotYet({"output": out.read_text()[-600:]}), 45,
                 "the demo's nodes to agree on their clusters")
        supervisors = [p for p in demo_processes() if "supervisor.main" in p.cmdline()]
        assert len(supervisors) == 3
        root = Path(supervisors[0].cmdline()[-1]).parent.parent
        assert root.name.startswith("akita-demo-") and root.is_dir()
        shown = out.read_text().rsplit("every node agrees", 1)[1]
        assert shown.count("coordinator node") == 2  # 3 nodes, clusters of 2: two clusters
        started = time.monotonic()
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0
        took = time.monotonic() - started
        assert took < 30, f"the demo took {took:.1f} s to stop its nodes"
        wait_for(lambda: not demo_processes(), 5, "every demo process to be gone")
        assert not root.exists()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(5)
        for proc in demo_processes():
            proc.kill()


def test_demo_over_the_emulated_radio_shows_airtime(tmp_path: Path) -> None:
    out = tmp_path / "demo.out"
    with open(out, "wb") as sink:
        demo = subprocess.Popen([sys.executable, "-m", "supervisor.demo", "--nodes", "3",
                                 "--cluster-size", "3", "--radio", "SF7-500",
                                 "--announce-interval", "3", "--peer-timeout", "12",
                                 "--duration", "120"],
                                stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_for(lambda: "every node agrees" in out.read_text() or
                 NotYet({"output": out.read_text()[-600:]}), 60,
                 "the radio demo's nodes to agree on one cluster")
        assert any("radio" in " ".join(p.cmdline()) for p in demo_processes()), \
            "no radio channel process among the demo's processes"
        screen = out.read_text().rsplit("akita-demo: 3 nodes", 1)[1]
        assert "AIRTIME" in screen and screen.count(" %") >= 3, screen
        assert "channel 21875 bit/s, busy" in screen, screen
        demo.send_signal(signal.SIGINT)
        assert demo.wait(30) == 0
        wait_for(lambda: not demo_processes(), 5, "every demo process to be gone")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(5)
        for proc in demo_processes():
            proc.kill()
