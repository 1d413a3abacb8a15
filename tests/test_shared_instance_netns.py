"""The reported case itself: rnsd with its default config (AutoInterface, shared instance on
the default abstract socket) already runs, and a node starts with the default config.

AutoInterface must never run on the test host, so everything here runs inside a network
namespace the test creates, holding one veth pair and no uplink. The default abstract socket
``rns/default`` is per network namespace too, so parallel tests never meet. Skipped, saying
why, where namespaces cannot be created.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from akita.ledger import chain
from tests.helpers import NET_CLUSTER, Node, NotYet, wait_for

RNSD = Path(sys.executable).with_name("rnsd")
SETUP = ("ip link set lo up && ip link add v0 type veth peer name v1 && ip link set v0 up "
         "&& ip link set v1 up && exec sleep 3600")
EMPTY = "ip link set lo up && exec sleep 3600"


class Namespace:
    """A network namespace kept alive by a sleeping process; `enter` prefixes a command."""

    def __init__(self, script: str = SETUP, link: str | None = "v0") -> None:
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            pytest.skip("unshare/nsenter are not installed: cannot isolate AutoInterface")
        self.holder = subprocess.Popen(["unshare", "--net", "sh", "-c", script],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.enter = ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net"]
        # Until unshare has run, /proc/PID/ns/net is the host's: never enter it then.
        try:
            wait_for(self._unshared, 10, "the new network namespace", interval_s=0.05)
        except pytest.skip.Exception:
            self.close()
            raise
        if link is not None:
            self.wait_link(link)

    def _unshared(self) -> bool:
        if self.holder.poll() is not None:
            error = self.holder.stderr.read().decode(errors="replace") if self.holder.stderr else ""
            pytest.skip(f"cannot create a network namespace here: {error}")
        try:
            return os.readlink(f"/proc/{self.holder.pid}/ns/net") != os.readlink(
                "/proc/self/ns/net")
        except FileNotFoundError:
            return False

    def wait_link(self, link: str) -> None:
        try:
            wait_for(lambda: self._link_local_ready(link), 10,
                     f"a usable IPv6 link-local address on {link}", interval_s=0.1)
        except pytest.skip.Exception:
            self.close()
            raise

    def run(self, *command: str) -> str:
        return subprocess.run([*self.enter, *command], check=False, capture_output=True,
                              text=True, timeout=5).stdout

    def _link_local_ready(self, link: str) -> bool:
        if self.holder.poll() is not None:
            error = self.holder.stderr.read().decode(errors="replace") if self.holder.stderr else ""
            pytest.skip(f"cannot create a network namespace with a veth pair here: {error}")
        shown = self.run("ip", "-6", "addr", "show", link)
        return "scope link" in shown and "tentative" not in shown

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(5)
        if self.holder.stderr is not None:
            self.holder.stderr.close()


@pytest.fixture
def netns() -> Iterator[Namespace]:
    namespace = Namespace()
    try:
        yield namespace
    finally:
        namespace.close()


class DefaultRnsd:
    """rnsd inside a namespace with the config it writes itself (AutoInterface on every card,
    shared instance on rns/default), in `home`/.reticulum."""

    def __init__(self, netns: Namespace, home: Path) -> None:
        self.home = home
        config_dir = home / ".reticulum"
        config_dir.mkdir(parents=True)
        with open(home / "rnsd.out", "ab") as out:
            self.proc = subprocess.Popen([*netns.enter, str(RNSD), "--config", str(config_dir)],
                                         stdout=out, stderr=subprocess.STDOUT)

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"rnsd exited with {self.proc.returncode}: "
                                     + (home / "rnsd.out").read_text(errors="replace"))
            sockets = netns.run("ss", "-xl")
            return "@rns/default " in sockets or "@rns/default\n" in sockets

        try:
            wait_for(listening, 20, "rnsd listening on the abstract socket rns/default",
                     interval_s=0.2)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def default_rnsd(netns: Namespace, short_tmp: Path) -> Iterator[Path]:
    """Yields the home directory whose .reticulum is that rnsd's config."""
    daemon = DefaultRnsd(netns, short_tmp / "home")
    try:
        yield daemon.home
    finally:
        daemon.stop()


def default_node(make_node: Callable[..., Node], **reticulum: str) -> Node:
    node = make_node({"supervisor": {"workers": "ledger, gateway"}, "reticulum": reticulum})
    if "shared_instance" not in reticulum:
        del node.sections["reticulum"]["shared_instance"]  # the default
    node.write_config()
    return node


def test_the_default_config_beside_a_default_rnsd_attaches_and_runs(
        make_node: Callable[..., Node], netns: Namespace, default_rnsd: Path) -> None:
    node = default_node(make_node)
    assert node.config.reticulum.auto_interface and node.config.reticulum.shared_instance == "auto"
    node.start(env={"HOME": str(default_rnsd)}, wrap=netns.enter)

    def reported() -> Any:
        info = node.ctl_json("status")["reticulum"] or {}
        return info if info.get("interfaces") else NotYet(info)

    info = wait_for(reported, 20, "the attached node to report rnsd's interfaces")
    assert info["mode"] == "attached" and info["connected"]
    assert info["shared_instance"]["address"] == "unix socket rns/default"
    assert "auto_interface" in info["ignored_keys"]
    assert any(iface["type"] == "AutoInterface" for iface in info["interfaces"]), info
    assert node.worker("gateway")["restarts"] == 0


def test_own_beside_a_default_rnsd_says_who_holds_autointerface(
        make_node: Callable[..., Node], netns: Namespace, default_rnsd: Path) -> None:
    node = default_node(make_node, shared_instance="own")
    node.start(wait=False, env={"HOME": str(default_rnsd)}, wrap=netns.enter)

    def fatal() -> Any:
        gateway = node.worker("gateway")
        return gateway if gateway["state"] == "fatal" else NotYet(gateway)

    gateway = wait_for(fatal, 30, "the gateway to be FATAL")
    assert gateway["restarts"] == 0, gateway
    error = gateway["last_error"]
    assert "Akita Auto" in error and "shared_instance = auto" in error, error
    assert "shared Reticulum instance runs on this host (unix socket rns/default)" in error
    recorded = list(chain.read_events(chain.db_path(node.config),
                                      kind_prefix="gateway.interface_failed"))
    assert recorded and recorded[0].data["error"] == error


def test_two_hosts_each_with_rnsd_form_a_cluster_over_their_lan(
        make_node: Callable[..., Node], short_tmp: Path) -> None:
    """Two "hosts" (namespaces joined by a veth pair, no uplink), each running rnsd with its
    default config and a node with the default config: the nodes attach and find each
    other over AutoInterface through their rnsd."""
    first = Namespace(SETUP.replace(" && ip link set v1 up", ""), link=None)
    second = Namespace(EMPTY, link=None)
    daemons: list[DefaultRnsd] = []
    try:
        wait_for(lambda: "v1@" in first.run("ip", "link", "show", "v1"), 10,
                 "the veth pair in the first namespace", interval_s=0.1)
        first.run("ip", "link", "set", "v1", "netns", str(second.holder.pid))
        wait_for(lambda: "v1@" in second.run("ip", "link", "show", "v1"), 10,
                 "v1 moved into the second namespace", interval_s=0.1)
        second.run("ip", "link", "set", "v1", "up")
        first.wait_link("v0")
        second.wait_link("v1")
        nodes = []
        for index, netns in enumerate((first, second)):
            daemons.append(DefaultRnsd(netns, short_tmp / f"home{index}"))
            node = make_node({"node": {"name": f"host{index}"},
                              "supervisor": {"workers": "ledger, gateway"},
                              "cluster": dict(NET_CLUSTER), "reticulum": {}}, name=f"n{index}")
            del node.sections["reticulum"]["shared_instance"]  # the default: auto
            node.write_config()
            node.start(wait=False, env={"HOME": str(daemons[-1].home)}, wrap=netns.enter)
            nodes.append(node)
        for node in nodes:
            node.wait_running()
        ids = [str(node.status()["node"]["id"]) for node in nodes]

        def clustered() -> Any:
            seen = [node.ctl_json("peers") for node in nodes]
            found = [[p["id"] for p in view["peers"]] for view in seen]
            return (ids[1] in found[0] and ids[0] in found[1]) or NotYet({"peers": found})

        wait_for(clustered, 30, "the two attached nodes finding each other over AutoInterface")
        assert all(reticulum_mode(node) == "attached" for node in nodes)
    finally:
        for daemon in daemons:
            daemon.stop()
        second.close()
        first.close()


def reticulum_mode(node: Node) -> str:
    return str((node.ctl_json("status")["reticulum"] or {}).get("mode"))
