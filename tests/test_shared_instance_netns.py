"""The reported case itself: rnsd with its default config (AutoInterface, shared instance on
the default abstract socket) already runs, and a node starts with the default config.

AutoInterface must never run on the test host, so everything here runs inside a network
namespace the test creates, holding one veth pair and no uplink. The default abstract socket
``rns/default`` is per network namespace too, so parallel tests never meet. Skipped, saying
why, where namespaces cannot be created.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from akita.ledger import chain
from tests.helpers import Node, NotYet, wait_for

RNSD = Path(sys.executable).with_name("rnsd")
SETUP = ("ip link set lo up && ip link add v0 type veth peer name v1 && ip link set v0 up "
         "&& ip link set v1 up && exec sleep 3600")


class Namespace:
    """A network namespace kept alive by a sleeping process; `enter` prefixes a command."""

    def __init__(self) -> None:
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            pytest.skip("unshare/nsenter are not installed: cannot isolate AutoInterface")
        self.holder = subprocess.Popen(["unshare", "--net", "sh", "-c", SETUP],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.enter = ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net"]
        try:
            wait_for(self._link_local_ready, 10, "a usable IPv6 link-local address on v0",
                     interval_s=0.1)
        except pytest.skip.Exception:
            self.close()
            raise

    def _link_local_ready(self) -> bool:
        if self.holder.poll() is not None:
            error = self.holder.stderr.read().decode(errors="replace") if self.holder.stderr else ""
            pytest.skip(f"cannot create a network namespace with a veth pair here: {error}")
        shown = subprocess.run([*self.enter, "ip", "-6", "addr", "show", "v0"], check=False,
                               capture_output=True, text=True, timeout=5).stdout
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


@pytest.fixture
def default_rnsd(netns: Namespace, short_tmp: Path) -> Iterator[Path]:
    """rnsd inside the namespace, with the config it writes itself (AutoInterface on every
    card, shared instance on rns/default). Yields its config directory."""
    config_dir = short_tmp / "home" / ".reticulum"
    config_dir.mkdir(parents=True)
    with open(short_tmp / "rnsd.out", "ab") as out:
        proc = subprocess.Popen([*netns.enter, str(RNSD), "--config", str(config_dir)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"rnsd exited with {proc.returncode}: "
                                     + (short_tmp / "rnsd.out").read_text(errors="replace"))
            sockets = subprocess.run([*netns.enter, "ss", "-xl"], check=False,
                                     capture_output=True, text=True, timeout=5).stdout
            return "@rns/default " in sockets or "@rns/default\n" in sockets

        wait_for(listening, 20, "rnsd listening on the abstract socket rns/default",
                 interval_s=0.2)
        yield config_dir
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


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
    node.start(env={"HOME": str(default_rnsd.parent)}, wrap=netns.enter)

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
    node.start(wait=False, env={"HOME": str(default_rnsd.parent)}, wrap=netns.enter)

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
