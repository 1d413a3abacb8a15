"""Finding the host's shared Reticulum instance and choosing the mode, without Reticulum."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
from pathlib import Path

import pytest

from akita import config as config_mod
from akita import exits
from akita.config import RestartPolicy, ReticulumConfig, WorkerConfig
from akita.errors import ConfigError
from supervisor.process import WorkerProcess, WorkerSpec, WorkerState
from workers.gateway import ifstats, rnsconfig, shared


def ret(**keys: object) -> ReticulumConfig:
    return dataclasses.replace(ReticulumConfig(), **keys)  # type: ignore[arg-type]


def instance_dir(tmp_path: Path, reticulum: str) -> Path:
    (tmp_path / "storage").mkdir(parents=True)
    (tmp_path / "config").write_text(
        f"[reticulum]\n{reticulum}\n[logging]\n  loglevel = 4\n[interfaces]\n"
        "  [[Default Interface]]\n    type = AutoInterface\n    shared_instance_port = 1\n")
    return tmp_path


def test_the_defaults_are_reticulums_own(tmp_path: Path) -> None:
    found = shared.locate(ret(), home=tmp_path)
    assert (found.kind, found.name, found.config_dir, found.rpc_key) == (
        "unix", "default", None, None)
    assert found.address() == "unix socket rns/default"


def test_a_tcp_instance_is_read_from_its_config_with_the_key_of_its_identity(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    where = instance_dir(home / ".reticulum", "  share_instance = Yes\n"
                         "  shared_instance_type = tcp # shared over TCP\n"
                         "  shared_instance_port = 4242\n  instance_control_port = 4243\n")
    private_key = bytes(range(64))
    (where / "storage" / "transport_identity").write_bytes(private_key)
    found = shared.locate(ret(), home=home)
    assert (found.kind, found.port, found.control_port) == ("tcp", 4242, 4243)
    assert found.rpc_key == hashlib.sha256(private_key).digest()
    assert found.config_dir == where


def test_rpc_key_name_and_port_keys(tmp_path: Path) -> None:
    where = instance_dir(tmp_path / "rns", "  instance_name = lab\n  rpc_key = 00ff\n")
    found = shared.locate(ret(shared_instance_dir=where), home=tmp_path)
    assert (found.kind, found.name, found.rpc_key) == ("unix", "lab", b"\x00\xff")
    named = shared.locate(ret(shared_instance_dir=where, shared_instance_name="other"),
                          home=tmp_path)
    assert named.name == "other"
    by_port = shared.locate(ret(shared_instance_port=5000), home=tmp_path)
    assert (by_port.kind, by_port.port, by_port.control_port) == ("tcp", 5000, 5001)


def test_reachable_only_while_something_listens() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        found = shared.locate(ret(shared_instance_port=port), home=Path("/nonexistent"))
        assert found.reachable()
    assert not found.reachable()


@pytest.mark.parametrize(("mode", "running", "expected"), [
    ("auto", True, shared.Mode.ATTACHED), ("auto", False, shared.Mode.OWN),
    ("attach", True, shared.Mode.ATTACHED), ("attach", False, shared.Mode.WAITING),
    ("own", True, shared.Mode.OWN), ("own", False, shared.Mode.OWN)])
def test_decide(mode: str, running: bool, expected: shared.Mode) -> None:
    cfg = ret(shared_instance=mode, tcp_connect=(("example.org", 4242),))
    decision = shared.decide(cfg, shared.locate(cfg, Path("/nonexistent")), running)
    assert decision.mode is expected
    assert f"shared_instance = {mode}" in decision.why
    if expected is shared.Mode.ATTACHED:
        assert "not applied while attached: auto_interface, tcp_connect" in decision.why


def test_config_dir_leaves_the_choice_to_reticulums_config(tmp_path: Path) -> None:
    decision = shared.decide(ret(config_dir=tmp_path), shared.locate(ret(), tmp_path), True)
    assert decision.mode is shared.Mode.CONFIG_DIR


def test_explain_failure_names_the_key_and_whether_a_restart_helps() -> None:
    found = shared.locate(ret(), Path("/nonexistent"))
    taken = "TCP listen address 127.0.0.1:4242: already in use"
    message, permanent = shared.explain_failure(taken, ret(shared_instance="own"), found, True)
    assert permanent and "shared_instance = auto" in message and "rns/default" in message
    message, permanent = shared.explain_failure(taken, ret(), found, False)
    assert not permanent and "tcp_listen" in message
    auto = ('The interface "Akita Auto" could not be created; The contained exception was: '
            "[Errno 98] Address already in use")
    message, permanent = shared.explain_failure(auto, ret(), found, False)
    assert permanent and "auto_interface = no" in message and "share_instance = Yes" in message
    assert shared.explain_failure("no such device", ret(), found, False) == (
        "no such device", False)


def test_an_attached_client_config_has_no_interfaces() -> None:
    unix = shared.SharedInstance("unix", "lab", 0, 0, b"\x01\x02", None)
    text = rnsconfig.render_attached(unix)
    assert "share_instance = Yes" in text and "instance_name = lab" in text
    assert "rpc_key = 0102" in text and "[[" not in text
    tcp = shared.SharedInstance("tcp", "", 4242, 4243, None, None)
    text = rnsconfig.render_attached(tcp)
    assert "shared_instance_port = 4242" in text and "instance_control_port = 4243" in text
    assert "rpc_key" not in text


def test_interface_summary_leaves_out_local_pipes_and_bad_entries() -> None:
    stats = {"interfaces": [
        {"name": "Shared Instance[37428]", "type": "LocalServerInterface", "status": True,
         "bitrate": 10**9},
        {"name": "RNodeInterface[LoRa]", "type": "RNodeInterface", "status": True,
         "bitrate": 1758.0, "rxb": 10, "txb": 20},
        "junk",
        {"name": "TCPServerInterface[lan]", "type": "TCPServerInterface", "status": False,
         "bitrate": -1}]}
    summary = ifstats.summarise(stats)
    assert [i["name"] for i in summary] == ["RNodeInterface[LoRa]", "TCPServerInterface[lan]"]
    assert summary[0]["bitrate"] == 1758 and summary[1]["bitrate"] is None
    watch = ifstats.InterfaceWatch(lambda: stats)
    watch.refresh()
    assert watch.slowest_bitrate() == 1758
    broken = ifstats.InterfaceWatch(lambda: 1 / 0)
    broken.refresh()
    assert broken.snapshot()[:2] == ([], "ZeroDivisionError division by zero")
    with pytest.raises(TypeError):
        ifstats.summarise(None)


def test_a_worker_exiting_with_exit_config_is_fatal_at_once() -> None:
    proc = WorkerProcess(WorkerSpec("gateway", WorkerConfig(restart=RestartPolicy.ALWAYS)))
    proc.spawned(100, now=0.0)
    outcome = proc.exited(exits.EXIT_CONFIG, now=0.1, reason="port held by rnsd")
    assert outcome.state is WorkerState.FATAL and proc.last_error == "port held by rnsd"
    proc.spawned(101, now=1.0)
    assert proc.exited(3, now=1.1).state is WorkerState.BACKOFF


def test_the_reason_file_is_taken_once(tmp_path: Path) -> None:
    exits.write_reason(tmp_path, "gateway", "x" * 5000)
    assert exits.take_reason(tmp_path, "gateway") == "x" * exits.MAX_REASON_BYTES
    assert exits.take_reason(tmp_path, "gateway") == ""


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("shared_instance", "sometimes", "auto, attach, own"),
    ("shared_instance_name", "bad name", "letters, digits"),
    ("shared_instance_port", "70000", "from 1 to 65535")])
def test_bad_shared_instance_keys_are_named(tmp_path: Path, key: str, value: str,
                                            allowed: str) -> None:
    text = ("[node]\ndata_dir = d\nrun_dir = r\nlog_dir = l\n"
            f"[reticulum]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as caught:
        config_mod.parse(text, tmp_path / "akita.ini")
    message = str(caught.value)
    assert "reticulum" in message and key in message and value in message
    assert allowed in message


def test_auto_waits_for_an_instance_it_was_attached_to(tmp_path: Path) -> None:
    cfg = ret()
    found = shared.locate(cfg, Path("/nonexistent"))
    assert not rnsconfig.was_attached(cfg, tmp_path)
    rnsconfig.write(cfg, tmp_path)
    assert not rnsconfig.was_attached(cfg, tmp_path)
    rnsconfig.write(cfg, tmp_path, attach=found)
    assert rnsconfig.was_attached(cfg, tmp_path)
    decision = shared.decide(cfg, found, running=False, attached_before=True)
    assert decision.mode is shared.Mode.WAITING and "attached to last time" in decision.why
    assert shared.decide(ret(shared_instance="own"), found, False, True).mode is shared.Mode.OWN


def test_a_shared_instance_dir_without_a_config_is_said(tmp_path: Path) -> None:
    cfg = ret(shared_instance_dir=tmp_path)
    found = shared.locate(cfg, Path("/nonexistent"))
    assert found.config_dir is None and found.kind == "unix"
    why = shared.decide(cfg, found, running=False).why
    assert f"shared_instance_dir = {tmp_path} holds no Reticulum config file" in why


def test_an_attached_node_names_every_interface_key_it_does_not_apply() -> None:
    ret = ReticulumConfig(auto_interface=True, tcp_connect=(("h", 1),), passphrase="p",
                          rnode_port="/dev/ttyUSB0", rnode_frequency=867_200_000,
                          pipe=("cat",), transport="yes")
    assert shared.ignored_keys(ret) == ["auto_interface", "tcp_connect",
                                        "network_name/passphrase", "rnode_port", "pipe",
                                        "transport"]
    assert shared.ignored_keys(ReticulumConfig(auto_interface=False)) == []
