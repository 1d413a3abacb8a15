"""SIGHUP and node.reload, the supervisor's own ledger events, log rotation, and the loss of
the zygote — against a real supervisor."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from akita.errors import RequestFailed
from akita.ledger import chain
from akita.wire import protocol
from supervisor.logs import RotatingLog
from tests.helpers import Node, NotYet, pid_alive, wait_for

MakeNode = Callable[..., Node]


def pids(node: Node) -> dict[str, int]:
    return {name: w["pid"] for name, w in node.status()["workers"].items()}


def events(node: Node, prefix: str = "") -> list[chain.Event]:
    return list(chain.read_events(node.data_dir / chain.DB_FILE, kind_prefix=prefix or None))


def test_sighup_restarts_only_the_worker_whose_settings_changed(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    before = pids(node)
    node.sections["sampler"]["interval"] = 0.3
    node.write_config()
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)

    def sampler_replaced() -> Any:
        now = node.status()["workers"]
        if now["sampler"]["pid"] not in (None, before["sampler"]) and \
                now["sampler"]["state"] == "running":
            return now
        return NotYet(sampler=now["sampler"]["state"])

    after = wait_for(sampler_replaced, 10, "the sampler restarted after SIGHUP")
    assert after["ledger"]["pid"] == before["ledger"], "the ledger's settings did not change"
    assert after["ledger"]["restarts"] == 0
    reloaded = wait_for(lambda: events(node, "config.reloaded"), 5, "config.reloaded in ledger")
    assert reloaded[-1].data == {"restarted": ["sampler"], "started": [], "stopped": []}


def test_reload_request_with_a_bad_file_keeps_the_old_config(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    before = pids(node)
    good_text = node.config_path.read_text()
    node.config_path.write_text(good_text + "\n[security]\nadmision = open\n")
    with pytest.raises(RequestFailed) as failed:
        node.request(protocol.NodeReload())
    assert failed.value.code == "reload_failed"
    assert "admision" in failed.value.message
    assert pids(node) == before
    failures = wait_for(lambda: events(node, "config.reload_failed"), 5,
                        "config.reload_failed in the ledger")
    assert "admision" in failures[-1].data["error"]

    # A good file with nothing changed restarts nothing.
    node.config_path.write_text(good_text)
    reply = node.request(protocol.NodeReload())
    assert isinstance(reply, protocol.Ok) and reply.detail == "no worker changed"
    assert pids(node) == before


def test_reload_removes_and_adds_workers(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    sampler_pid = pids(node)["sampler"]
    node.sections["supervisor"]["workers"] = "ledger"
    node.write_config()
    reply = node.request(protocol.NodeReload())
    assert isinstance(reply, protocol.Ok) and "stopped: sampler" in reply.detail
    wait_for(lambda: list(node.status()["workers"]) == ["ledger"], 5, "sampler forgotten")
    wait_for(lambda: not pid_alive(sampler_pid), 5, "sampler process gone")

    node.sections["supervisor"]["workers"] = "ledger, sampler"
    node.write_config()
    reply = node.request(protocol.NodeReload())
    assert isinstance(reply, protocol.Ok) and "started: sampler" in reply.detail
    node.wait_running(timeout_s=10)


def test_supervisor_records_its_events_in_the_ledger(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    sampler_pid = pids(node)["sampler"]
    os.kill(sampler_pid, signal.SIGKILL)
    wait_for(lambda: [e for e in events(node, "worker.exited")
                      if e.data["pid"] == sampler_pid], 5, "worker.exited for the sampler")
    assert node.stop() == 0
    kinds = [e.kind for e in events(node)]
    assert kinds[0] == "node.started"
    started = [e.data for e in events(node, "worker.started")]
    assert [d["name"] for d in started[:2]] == ["ledger", "sampler"]
    exited = [e.data for e in events(node, "worker.exited") if e.data["pid"] == sampler_pid]
    assert exited == [{"name": "sampler", "pid": sampler_pid, "exit_code": None,
                       "signal": signal.SIGKILL, "cause": "exited"}]
    assert kinds[-1] == "node.stopped", "flushed before the ledger worker was stopped"


def test_zygote_loss_is_survived(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    assert node.proc is not None
    before = pids(node)
    zygotes = [p for p in psutil.Process(node.proc.pid).children()
               if "workers.zygote" in " ".join(p.cmdline())]
    assert len(zygotes) == 1, zygotes
    zygotes[0].kill()

    def all_replaced() -> Any:
        now = pids(node)
        states = {n: w["state"] for n, w in node.status()["workers"].items()}
        fresh = all(now[n] not in (None, before[n]) for n in before)
        return now if fresh and set(states.values()) == {"running"} else NotYet(states)

    wait_for(all_replaced, 10, "every worker restarted under a new zygote")
    assert "zygote" in (node.log_dir / "supervisor.log").read_text()


def test_rotating_log_keeps_the_configured_backups(tmp_path: Path) -> None:
    sink = RotatingLog(tmp_path / "w.log", max_bytes=100, backups=2)
    for index in range(10):
        sink.write(f"line {index:02d} ".encode() * 4)  # 36 bytes
    sink.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["w.log", "w.log.1", "w.log.2"]
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    assert (tmp_path / "w.log").read_text().startswith("line 09")
    assert (tmp_path / "w.log.1").read_text().startswith("line 06")


def test_worker_log_is_rotated_by_size(make_node: MakeNode) -> None:
    node = make_node({"supervisor": {"log_max_bytes": 4096, "log_backups": 1},
                      "worker:sampler": {"max_restarts": 1000, "backoff_initial": 0}})
    node.start()
    path = node.log_dir / "sampler.log"

    def rotated() -> Any:
        if (node.log_dir / "sampler.log.1").exists():
            return True
        # Each start writes a few lines; restart until the file passes 4 KiB.
        node.request(protocol.WorkerRestart(name="sampler"))
        node.wait_running(names=["sampler"])
        return NotYet(size=path.stat().st_size)

    wait_for(rotated, 30, "sampler.log rotated into sampler.log.1", interval_s=0)
    assert path.stat().st_size <= 4096
    assert not (node.log_dir / "sampler.log.2").exists(), "log_backups = 1"
