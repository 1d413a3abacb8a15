"""The Reticulum config a gateway runs with, written from the [reticulum] section.

A node always writes its own Reticulum config into ``data_dir/reticulum`` (unless
`config_dir` names an existing one): a missing config makes Reticulum create a default one
with AutoInterface on every card and a shared instance, which is not what a node wants.
Rules learned from rns 1.5 (see RETICULUM.md in the design notes):

- ``share_instance = No``: otherwise a second node process on the host silently attaches to
  the first as a client.
- every interface gets ``enabled = yes`` (otherwise it is skipped without a word) and
  ``ingress_control = No`` (a young interface otherwise holds back announces arriving faster
  than ~3/s, and a hub of ten nodes never converges).
- a listening node forwards (``enable_transport = Yes``; `transport = yes` makes any node
  forward, e.g. a radio node that relays for nodes out of each other's range) and sets
  ``announce_rate_target`` on its server interface, since a transport node otherwise forwards only a handful of
  announces per destination per hour (and a grace, see below).
"""

from __future__ import annotations

import errno
import os
import shlex
import socket
from pathlib import Path

from akita.config import ReticulumConfig
from workers.gateway.shared import SharedInstance

RETICULUM_SUBDIR = "reticulum"
# A hub's announce rate limit per destination: at least this many seconds between two
# announces, but only after this many violations in a row are forgiven. Without a target a
# transport node falls back to a default that forwards a handful of announces per hour;
# with grace 0 (the default once a target is set) the timing jitter of a busy host makes
# about half the announces count as too fast and the hub drops them.
HUB_ANNOUNCE_RATE_TARGET_S = 1
HUB_ANNOUNCE_RATE_GRACE = 16


ATTACHED_MARK = "# Written by the Akita gateway: a client of the host's shared Reticulum instance."


class PortTaken(Exception):
    """The TCP port a node should listen on is already in use (or cannot be bound)."""


def config_dir_for(ret: ReticulumConfig, data_dir: Path) -> Path:
    """Where the gateway's Reticulum instance keeps its config and storage."""
    return ret.config_dir if ret.config_dir is not None else data_dir / RETICULUM_SUBDIR


def render(ret: ReticulumConfig, loglevel: int = 4) -> str:
    """The text of a Reticulum config file for `ret` (ConfigObj syntax)."""
    transport = "Yes" if forwards(ret) else "No"
    lines = [
        "# Written by the Akita gateway from the [reticulum] section of akita.ini.",
        "# Edits are overwritten at the next start; use [reticulum] config_dir for your own.",
        "[reticulum]",
        f"  enable_transport = {transport}",
        "  share_instance = No",
        "  panic_on_interface_error = No",
        "",
        "[logging]",
        f"  loglevel = {loglevel}",
        "",
        "[interfaces]",
    ]
    for name, body in interfaces(ret):
        lines.append(f"  [[{name}]]")
        lines.extend(f"    {key} = {value}" for key, value in body.items())
    return "\n".join(lines) + "\n"


def forwards(ret: ReticulumConfig) -> bool:
    """Whether the node is a Reticulum transport node (forwards others' traffic)."""
    return ret.transport == "yes" or (ret.transport == "auto" and ret.tcp_listen is not None)


def interfaces(ret: ReticulumConfig) -> list[tuple[str, dict[str, str]]]:
    """(section name, keys) for each interface the [reticulum] section asks for."""
    out: list[tuple[str, dict[str, str]]] = []
    common = {"enabled": "yes", "ingress_control": "No"}
    common.update(_ifac(ret))
    if ret.auto_interface:
        auto = {"type": "AutoInterface", **common}
        if ret.auto_devices:
            auto["devices"] = ", ".join(_quote(device) for device in ret.auto_devices)
        if ret.auto_group_id:
            auto["group_id"] = _quote(ret.auto_group_id)
        out.append(("Akita Auto", auto))
    if ret.rnode_port:
        out.append(("Akita RNode", {"type": "RNodeInterface", **common, **_rnode(ret)}))
    if ret.pipe is not None:
        pipe = {"type": "PipeInterface", **common, "command": _quote(shlex.join(ret.pipe)),
                "respawn_delay": "2"}
        if ret.pipe_bitrate is not None:
            pipe["bitrate"] = str(ret.pipe_bitrate)
        out.append(("Akita Pipe", pipe))
    if ret.tcp_listen is not None:
        host, port = ret.tcp_listen
        out.append((f"Akita TCP listen {host}:{port}", {
            "type": "TCPServerInterface", **common, "listen_ip": _quote(host),
            "listen_port": str(port),
            "announce_rate_target": str(HUB_ANNOUNCE_RATE_TARGET_S),
            "announce_rate_grace": str(HUB_ANNOUNCE_RATE_GRACE),
            "announce_rate_penalty": "0"}))
    for host, port in ret.tcp_connect:
        out.append((f"Akita TCP to {host}:{port}", {
            "type": "TCPClientInterface", **common, "target_host": _quote(host),
            "target_port": str(port)}))
    return out


def _rnode(ret: ReticulumConfig) -> dict[str, str]:
    keys = {"port": _quote(ret.rnode_port), "frequency": str(ret.rnode_frequency),
            "bandwidth": str(ret.rnode_bandwidth),
            "spreadingfactor": str(ret.rnode_spreading_factor),
            "codingrate": str(ret.rnode_coding_rate), "txpower": str(ret.rnode_tx_power)}
    if ret.rnode_airtime_limit_long is not None:
        keys["airtime_limit_long"] = str(ret.rnode_airtime_limit_long)
    if ret.rnode_airtime_limit_short is not None:
        keys["airtime_limit_short"] = str(ret.rnode_airtime_limit_short)
    return keys


def _ifac(ret: ReticulumConfig) -> dict[str, str]:
    keys = {}
    if ret.network_name:
        keys["network_name"] = _quote(ret.network_name)
    if ret.passphrase:
        keys["passphrase"] = _quote(ret.passphrase)
    return keys


def _quote(value: str) -> str:
    """A ConfigObj value that survives commas, '#', quotes and spaces."""
    if "\n" in value or "\r" in value:
        raise ValueError("a Reticulum config value cannot span lines")
    if '"' not in value:
        return f'"{value}"'
    if "'" not in value:
        return f"'{value}'"
    return '"""' + value + '"""'


def render_attached(instance: SharedInstance, loglevel: int = 4) -> str:
    """A client config for the host's shared instance: no interfaces of its own.

    ``share_instance = Yes`` is what makes Reticulum look for a shared instance; the caller
    also passes ``require_shared_instance``, so that if the instance vanished since it was
    found, Reticulum gives up instead of becoming a shared instance without interfaces.
    """
    lines = [
        ATTACHED_MARK,
        "[reticulum]",
        "  share_instance = Yes",
        f"  shared_instance_type = {instance.kind}",
    ]
    if instance.kind == "unix":
        lines.append(f"  instance_name = {instance.name}")
    else:
        lines.append(f"  shared_instance_port = {instance.port}")
        lines.append(f"  instance_control_port = {instance.control_port}")
    if instance.rpc_key is not None:
        lines.append(f"  rpc_key = {instance.rpc_key.hex()}")
    lines += ["", "[logging]", f"  loglevel = {loglevel}", "", "[interfaces]"]
    return "\n".join(lines) + "\n"


def write(ret: ReticulumConfig, data_dir: Path, loglevel: int = 4,
          attach: SharedInstance | None = None) -> Path:
    """Write the config (mode 0600, it may hold a passphrase or an RPC key) unless
    `config_dir` is used; with `attach`, a client config for that shared instance.

    Returns the Reticulum config directory to construct `RNS.Reticulum` with.
    """
    target = config_dir_for(ret, data_dir)
    if ret.config_dir is not None:
        return target
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    path = target / "config"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        text = render(ret, loglevel) if attach is None else render_attached(attach, loglevel)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return target


def was_attached(ret: ReticulumConfig, data_dir: Path) -> bool:
    """True if the config written at the last start was a shared-instance client's."""
    if ret.config_dir is not None:
        return False
    try:
        with open(config_dir_for(ret, data_dir) / "config", "rb") as f:
            return f.readline().decode(errors="replace").strip() == ATTACHED_MARK
    except OSError:
        return False


def check_listen_port(ret: ReticulumConfig) -> None:
    """Raise `PortTaken` if the listen address cannot be bound right now.

    Reticulum would hard-exit the process (status 255) with the reason only in its log; a
    check first lets the gateway say which interface failed, in its log and the ledger.
    """
    if ret.tcp_listen is None:
        return
    host, port = ret.tcp_listen
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise PortTaken(f"cannot resolve listen address {host!r}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # Reticulum binds with SO_REUSEADDR too: only a live listener makes this fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            reason = ("already in use" if exc.errno == errno.EADDRINUSE
                      else exc.strerror or str(exc))
            raise PortTaken(f"TCP listen address {host}:{port}: {reason}") from None
