"""akitactl's node verbs: status, start/stop/restart, shutdown, top, events, log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from queue import Empty, Queue

import pytest

from akita import cli
from akita.cli import common
from akita.cli.node import last_lines
from tests.helpers import REPO, Node, pid_alive, wait_for

# --- without a node ---------------------------------------------------------------------------


@pytest.fixture
def idle(make_node: Callable[..., Node]) -> Node:
    """A node that is configured but not started."""
    return make_node()


def ctl_here(node: Node, capsys: pytest.CaptureFixture[str], *args: str
             ) -> tuple[int, str, str]:
    """akitactl run in this process (quicker where no node is involved): code, out, err."""
    try:
        code = cli.main(["-c", str(node.config_path), *args])
    except SystemExit as exc:  # argparse: --help and usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("verb", [["status"], ["status", "--json"], ["restart", "sampler"],
                                  ["shutdown"], ["reload"], ["top", "--count", "1"],
                                  ["events", "--count", "1"]])
def test_no_node_running_is_one_line_and_exit_3(idle: Node, verb: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = ctl_here(idle, capsys, *verb)
    assert code == 3, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no node is running" in lines[0], err


@pytest.mark.parametrize("verb", ["start", "stop", "restart"])
def test_an_unknown_worker_is_a_usage_error_naming_the_allowed_ones(
        idle: Node, verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = ctl_here(idle, capsys, verb, "samplr")
    assert code == 2
    assert err.strip() == "akitactl: unknown worker 'samplr'; this node runs: ledger, sampler"


def test_every_verb_explains_itself(idle: Node, capsys: pytest.CaptureFixture[str]) -> None:
    for verb in ("status", "start", "stop", "restart", "shutdown", "reload", "top", "events",
                 "log"):
        code, out, _err = ctl_here(idle, capsys, verb, "--help")
        assert code == 0
        assert f"usage: akitactl {verb}" in out and len(out) > 200
        assert "--json" in out


def test_the_real_command_line_exits_3_without_a_node(idle: Node) -> None:
    done = idle.ctl("status")
    assert (done.returncode, done.stdout) == (3, ""), done
    assert done.stderr.startswith("akitactl: no node is running")


# --- log (reads files; no node needed) ----------------------------------------------------


def write_log(path: Path, first: int, last: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.writelines(f"line {i}\n" for i in range(first, last + 1))


def test_log_shows_the_last_lines_without_a_node(idle: Node) -> None:
    write_log(idle.log_dir / "sampler.log", 1, 500)
    done = idle.ctl("log", "sampler", "-n", "3")
    assert done.returncode == 0, done
    assert done.stdout.splitlines() == ["line 498", "line 499", "line 500"]
    as_json = idle.ctl("log", "sampler", "-n", "2", "--json")
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"line": "line 499"}, {"line": "line 500"}]


def test_log_reaches_into_the_rotated_file(tmp_path: Path) -> None:
    write_log(tmp_path / "ledger.log.1", 1, 10)
    write_log(tmp_path / "ledger.log", 11, 12)
    assert last_lines(tmp_path / "ledger.log", 4) == ["line 9", "line 10", "line 11", "line 12"]
    assert last_lines(tmp_path / "ledger.log", 0) == []
    long_lines = tmp_path / "long.log"
    long_lines.write_text("".join(f"{i:05d}" * 4000 + "\n" for i in range(5)))
    assert [line[:5] for line in last_lines(long_lines, 2)] == ["00003", "00004"]


def test_log_of_an_unknown_name_or_a_missing_file(idle: Node) -> None:
    done = idle.ctl("log", "nosuch")
    assert done.returncode == 2
    assert "unknown worker 'nosuch'; logs: supervisor, ledger, sampler" in done.stderr
    done = idle.ctl("log", "supervisor")
    assert done.returncode == 1 and "no log for supervisor yet" in done.stderr


@pytest.fixture
def follower(idle: Node) -> Iterator[tuple[subprocess.Popen[str], Queue[str]]]:
    """`akitactl log sampler -f` running, with its output lines in a queue."""
    write_log(idle.log_dir / "sampler.log", 1, 3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "akita.cli", "-c", str(idle.config_path), "log", "sampler",
         "-n", "1", "-f"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    lines: Queue[str] = Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield proc, lines
    finally:
        proc.kill()
        proc.wait(5)
        reader.join(5)
        assert proc.stdout is not None
        proc.stdout.close()


def take(lines: Queue[str], count: int, timeout_s: float = 10) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        try:
            got.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))
        except Empty:
            raise AssertionError(f"only {got} of {count} lines within {timeout_s:g} s") from None
    return got


def test_log_follow_continues_across_rotation(
        idle: Node, follower: tuple[subprocess.Popen[str], Queue[str]]) -> None:
    _proc, lines = follower
    log = idle.log_dir / "sampler.log"
    assert take(lines, 1) == ["line 3"]
    write_log(log, 4, 5)
    assert take(lines, 2) == ["line 4", "line 5"]
    # Rotate as the supervisor does: the tail of the old file, then the new file.
    write_log(log, 6, 6)
    os.replace(log, log.with_name("sampler.log.1"))
    write_log(log, 7, 8)
    assert take(lines, 3) == ["line 6", "line 7", "line 8"]


# --- with a running node ------------------------------------------------------------------


@pytest.fixture
def node(make_node: Callable[..., Node]) -> Node:
    node = make_node()
    node.start()
    return node


def test_status_json_shape(node: Node) -> None:
    status = node.ctl_json("status")
    assert set(status) >= {"node", "workers"}
    assert [w["name"] for w in status["workers"]] == ["ledger", "sampler"]
    for worker in status["workers"]:
        assert set(worker) >= {"name", "state", "pid", "uptime_s", "restarts", "cpu_percent",
                               "rss_bytes"}
        assert worker["state"] == "running" and pid_alive(worker["pid"])
        assert worker["restarts"] == 0 and worker["uptime_s"] >= 0


def test_status_table(node: Node) -> None:
    done = node.ctl("status")
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert lines[0].startswith("node test-node")
    assert lines[1].split()[:6] == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"ledger", "sampler"}
    for name, row in rows.items():
        assert row[1] == "running" and int(row[2]) == node.worker(name)["pid"]


def test_restart_gives_the_worker_a_new_pid_and_leaves_the_others(node: Node) -> None:
    before = {name: w["pid"] for name, w in node.status()["workers"].items()}
    done = node.ctl("restart", "sampler")
    assert done.returncode == 0, done
    after = {name: w["pid"] for name, w in node.status()["workers"].items()}
    assert after["sampler"] != before["sampler"] and pid_alive(after["sampler"])
    assert after["ledger"] == before["ledger"]
    assert done.stdout.strip() == f"sampler: running (pid {after['sampler']})"


def test_stop_then_start_a_worker(node: Node) -> None:
    stopped = node.ctl_json("stop", "sampler")
    assert stopped["state"] == "stopped" and node.worker("sampler")["state"] == "stopped"
    started = node.ctl_json("start", "sampler")
    assert started["state"] == "running" and started["pid"] == node.worker("sampler")["pid"]


def test_events_count_prints_one_line_per_message(node: Node) -> None:
    done = node.ctl("events", "--topic", "worker.heartbeat", "--count", "3", "--timeout", "20",
                    "--json")
    assert done.returncode == 0, done
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(events) == 3
    assert all(e["topic"] == "worker.heartbeat" and e["name"] in ("ledger", "sampler")
               for e in events)
    text = node.ctl("events", "--topic", "resource.sample", "--count", "1", "--timeout", "20")
    assert text.returncode == 0, text
    assert len(text.stdout.splitlines()) == 1 and " resource.sample cpu " in text.stdout


def test_events_timeout_before_count_fails(node: Node) -> None:
    done = node.ctl("events", "--topic", "no.such.topic", "--count", "1", "--timeout", "0.5")
    assert done.returncode == 1
    assert done.stderr.strip() == "akitactl: 0 of 1 messages within 0.5 s"


def test_top_count_1_json_is_one_sample(node: Node) -> None:
    sample = node.ctl_json("top", "--count", "1")
    roles = {p["role"] for p in sample["processes"]}
    assert {"supervisor", "zygote"} <= roles
    assert sample["host"]["cpu_count"] >= 1 and sample["ts"] > 0
    text = node.ctl("top", "--count", "1")
    assert text.returncode == 0, text
    assert "ROLE" in text.stdout and "supervisor" in text.stdout


def test_log_of_a_running_worker(node: Node) -> None:
    def logged() -> bool:
        return "sampler worker running" in (node.log_dir / "sampler.log").read_text()

    wait_for(logged, 10, "the sampler's start in its log")
    done = node.ctl("log", "sampler", "-n", "50")
    assert done.returncode == 0, done
    assert "sampler worker running" in done.stdout


def test_shutdown_stops_the_node(node: Node) -> None:
    assert node.proc is not None
    done = node.ctl("shutdown")
    assert done.returncode == 0, done
    assert done.stdout.strip() == "node stopped"
    assert node.proc.wait(5) == 0
    assert node.ctl("status").returncode == 3


def test_format_helpers() -> None:
    assert common.format_bytes(512) == "512B"
    assert common.format_bytes(1536) == "1.5K"
    assert common.format_bytes(3 << 30) == "3.0G"
    assert common.format_bytes(None) == "-"
    assert common.format_duration(5.24) == "5.2s"   # (no halves: 5.25 rounds to even)
    assert common.format_duration(5.26) == "5.3s"
    assert common.format_duration(95) == "1m35s"
    assert common.format_duration(7300) == "2h01m"
    assert common.format_duration(90000) == "1d01h"
