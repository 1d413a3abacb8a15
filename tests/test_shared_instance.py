"""Nodes beside a real `rnsd`: attaching to the host's shared Reticulum instance.

Each test starts its own rnsd with its own config directory, sharing its instance over TCP
on free loopback ports (never the host's default abstract socket, so parallel tests never
meet) and owning one loopback TCP server interface; AutoInterface never runs.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from akita.ledger import chain
from akita.wire import protocol
from tests.helpers import NET_CLUSTER, Node, NotYet, free_port, wait_for

RNSD = Path(sys.executable).with_name("rnsd")


class Rnsd:
    """A real rnsd in `root`: shared instance on 127.0.0.1:`port`, one TCP server interface."""

    def __init__(self, root: Path, bitrate: int | None = None) -> None:
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.control_port, self.iface_port = free_port(), free_port(), free_port()
        (self.dir / "config").write_text(
            "[reticulum]\n"
            "  enable_transport = No\n  share_instance = Yes\n  shared_instance_type = tcp\n"
            f"  shared_instance_port = {self.port}\n"
            f"  instance_control_port = {self.control_port}\n"
            "  panic_on_interface_error = No\n"
            "[logging]\n  loglevel = 4\n"
            "[interfaces]\n  [[loopback server]]\n    type = TCPServerInterface\n"
            "    enabled = yes\n    listen_ip = 127.0.0.1\n"
            f"    listen_port = {self.iface_port}\n    ingress_control = No\n"
            + (f"    bitrate = {bitrate}\n" if bitrate else ""))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.dir / "rnsd.out", "ab") as out:
            self.proc = subprocess.Popen([str(RNSD), "--config", str(self.dir)], stdout=out,
                                         stderr=subprocess.STDOUT)
        wait_for(self.accepting, 20, f"rnsd accepting local clients on 127.0.0.1:{self.port}",
                 interval_s=0.1)

    def accepting(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"rnsd exited with {self.proc.returncode}: "
                                 + (self.dir / "rnsd.out").read_text(errors="replace"))
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def rnsd(short_tmp: Path) -> Iterator[Rnsd]:
    daemon = Rnsd(short_tmp / "rnsd")
    try:
        yield daemon
    finally:
        daemon.stop()


def attached(name: str, daemon: Rnsd, peer_timeout: float = 6, **reticulum: str
             ) -> dict[str, Any]:
    return {"node": {"name": name}, "supervisor": {"workers": "ledger, gateway"},
            "cluster": {**NET_CLUSTER, "peer_timeout": peer_timeout},
            "reticulum": {"auto_interface": "no", "shared_instance": "auto",
                          "shared_instance_dir": str(daemon.dir), **reticulum}}


def reticulum_of(node: Node) -> dict[str, Any]:
    info: dict[str, Any] = node.ctl_json("status")["reticulum"] or {}
    return info


def peer_ids(node: Node) -> dict[str, dict[str, Any]]:
    reply = node.request(protocol.PeerList())
    assert isinstance(reply, protocol.PeerListReply)
    return {p["id"]: p for p in reply.peers}


def events(node: Node, kind: str) -> list[Any]:
    return list(chain.read_events(chain.db_path(node.config), kind_prefix=kind))


def test_the_default_config_attaches_to_a_running_shared_instance(
        make_node: Callable[..., Node], rnsd: Rnsd, short_tmp: Path) -> None:
    rnsd.start()
    home = short_tmp / "home"
    home.mkdir()
    (home / ".reticulum").symlink_to(rnsd.dir)  # where Reticulum itself looks first here
    unused_port = free_port()
    node = make_node({"node": {"name": "beside"}, "supervisor": {"workers": "ledger, gateway"},
                      "reticulum": {"auto_interface": "no",
                                    "tcp_connect": f"127.0.0.1:{unused_port}"}})
    del node.sections["reticulum"]["shared_instance"]  # the default: auto
    node.write_config()
    assert node.config.reticulum.shared_instance == "auto"
    node.start(env={"HOME": str(home)})

    def reported() -> Any:
        info = reticulum_of(node)
        return info if info.get("interfaces") else NotYet(info)

    info = wait_for(reported, 20, "status --json to show the shared instance's interfaces")
    assert info["mode"] == "attached"
    assert info["connected"] is True
    assert info["shared_instance"]["address"] == f"127.0.0.1:{rnsd.port}"
    assert "tcp_connect" in info["ignored_keys"]
    names = [iface["name"] for iface in info["interfaces"]]
    assert any(str(rnsd.iface_port) in name for name in names), names
    assert all(iface["bitrate"] for iface in info["interfaces"])
    written = (node.data_dir / "reticulum" / "config").read_text()
    assert "share_instance = Yes" in written and "[[" not in written
    assert "attached" in node.worker("gateway")["note"]
    assert events(node, "gateway.reticulum_mode")[0].data["mode"] == "attached"
    text = node.ctl("status").stdout
    assert "reticulum attached" in text and "TCPServerInterface" in text


def test_two_nodes_attached_to_one_rnsd_see_each_other(
        make_node: Callable[..., Node], rnsd: Rnsd) -> None:
    rnsd.start()
    first = make_node(attached("first", rnsd), name="a")
    second = make_node(attached("second", rnsd), name="b")
    first.start(wait=False)
    second.start()
    first.wait_running()
    first_id, second_id = (str(n.status()["node"]["id"]) for n in (first, second))
    wait_for(lambda: second_id in peer_ids(first) and first_id in peer_ids(second), 20,
             "the two attached nodes hearing each other through rnsd")


def test_own_with_the_port_held_by_rnsd_is_fatal_at_once_naming_the_key(
        make_node: Callable[..., Node], rnsd: Rnsd) -> None:
    rnsd.start()
    node = make_node(attached("own", rnsd, shared_instance="own",
                              tcp_listen=f"127.0.0.1:{rnsd.iface_port}"))
    node.start(wait=False)

    def fatal() -> Any:
        gateway = node.worker("gateway")
        return gateway if gateway["state"] == "fatal" else NotYet(gateway)

    gateway = wait_for(fatal, 20, "the gateway to be FATAL")
    assert gateway["restarts"] == 0 and gateway["exit_code"] == 78, gateway
    for text in (gateway["last_error"], events(node, "gateway.interface_failed")[0].data["error"],
                 (node.log_dir / "gateway.log").read_text(), node.ctl("status").stdout):
        assert f"127.0.0.1:{rnsd.iface_port}: already in use" in text
        assert "shared Reticulum instance runs on this host" in text
        assert "shared_instance = auto" in text
    assert "Traceback" not in (node.log_dir / "gateway.log").read_text()
    assert node.worker("gateway")["restarts"] == 0

    # Doing what the message says, then reloading, brings it back attached.
    node.sections["reticulum"]["shared_instance"] = "auto"
    node.write_config()
    assert node.ctl("reload").returncode == 0

    def attached_now() -> Any:
        gateway = node.worker("gateway")
        info = reticulum_of(node) if gateway["state"] == "running" else {}
        return info if info.get("mode") == "attached" else NotYet(gateway)

    wait_for(attached_now, 20, "the reloaded gateway to attach")


def test_attach_waits_for_the_shared_instance_and_says_so(
        make_node: Callable[..., Node], rnsd: Rnsd) -> None:
    node = make_node(attached("patient", rnsd, shared_instance="attach"))
    node.start()
    info = reticulum_of(node)
    assert info["mode"] == "waiting"
    assert "waiting for a shared Reticulum instance" in node.worker("gateway")["note"]
    rnsd.start()

    def attached_now() -> Any:
        info = reticulum_of(node)
        return info if info.get("mode") == "attached" else NotYet(info)

    wait_for(attached_now, 20, "the waiting node to attach once rnsd runs")


def test_an_attached_node_survives_rnsd_restarting(
        make_node: Callable[..., Node], rnsd: Rnsd) -> None:
    rnsd.start()
    peer_timeout = 15
    first = make_node(attached("first", rnsd, peer_timeout=peer_timeout), name="a")
    second = make_node(attached("second", rnsd, peer_timeout=peer_timeout), name="b")
    first.start(wait=False)
    second.start()
    first.wait_running()
    first_id, second_id = (str(n.status()["node"]["id"]) for n in (first, second))
    wait_for(lambda: second_id in peer_ids(first) and first_id in peer_ids(second), 20,
             "the two attached nodes hearing each other")
    gateway_pid = first.worker("gateway")["pid"]

    rnsd.stop()
    rnsd.start()

    def reconnected() -> Any:
        changes = [e.data["connected"] for e in events(first, "gateway.shared_instance")]
        return changes[-2:] == [False, True] or NotYet({"changes": changes})

    wait_for(reconnected, 20, "the node to record losing and regaining the shared instance")

    def heard_again() -> Any:
        seen = peer_ids(second).get(first_id)
        fresh = seen is not None and seen["last_seen_s"] < 1.5 and first.worker(
            "gateway")["note"].startswith("reticulum attached: a shared")
        return fresh or NotYet({"second sees first": seen})

    wait_for(heard_again, peer_timeout, "the peer to hear the node again after rnsd restarted")
    assert first.worker("gateway")["pid"] == gateway_pid, "the gateway was restarted"
    assert first.worker("gateway")["restarts"] == 0
    left = [e for e in events(second, "peer.left") if e.data.get("node") == first_id]
    assert not left, f"the peer dropped the node: {left}"


def test_a_node_attached_before_waits_for_the_instance_instead_of_owning(
        make_node: Callable[..., Node], rnsd: Rnsd) -> None:
    """Booting before rnsd (or while it restarts) must not take the interfaces it owns."""
    rnsd.start()
    node = make_node(attached("early", rnsd, tcp_listen=f"127.0.0.1:{rnsd.iface_port}"))
    node.start()
    wait_for(lambda: reticulum_of(node).get("mode") == "attached", 20, "the node attaching")
    node.stop()
    rnsd.stop()
    node.start()
    info = reticulum_of(node)
    assert info["mode"] == "waiting" and "attached to last time" in info["why"], info
    rnsd.start()  # its listen port was not taken by the node meanwhile

    def attached_again() -> Any:
        info = reticulum_of(node)
        return info if info.get("mode") == "attached" else NotYet(info)

    wait_for(attached_again, 20, "the node to attach to the returning rnsd")


def test_an_attached_node_cuts_its_airtime_budget_from_the_shared_instances_interfaces(
        make_node: Callable[..., Node], short_tmp: Path) -> None:
    """The host's rnsd owns a slow interface (it states LoRa SF9's bit rate); the node's own
    Reticulum has only its fast local link to rnsd, but its traffic leaves through rnsd's
    interfaces, so its upkeep timers must follow those."""
    slow = Rnsd(short_tmp / "rnsd-slow", bitrate=1758)
    try:
        slow.start()
        sections = attached("beside", slow)
        sections["cluster"] = {"cluster_size": 3}  # every timer auto: derived from the budget
        sections["operators"] = {"identities": "ab" * 16 + ":read", "announce_interval": 60}
        node = make_node(sections)
        node.start()
        status = wait_for(lambda: (s := node.ctl_json("status")).get("budget") and s, 20,
                          "status --json to show the derived budget")
        budget = status["budget"]
        assert status["reticulum"]["mode"] == "attached", status["reticulum"]
        assert budget["slowest_bitrate"] == 1758, budget
        # At 1758 bit/s a 1 % budget cannot afford the LAN's 10 s announces.
        assert budget["announce_interval_s"] > 60, budget
        # The LXMF address is announced within the same budget, not every 60 s as asked.
        reply = node.request(protocol.PeerStats())
        assert isinstance(reply, protocol.PeerStatsReply)
        lxmf = reply.stats["operators"]["announce_interval_s"]
        assert lxmf == budget["announce_interval_s"], (lxmf, budget)
    finally:
        slow.stop()
