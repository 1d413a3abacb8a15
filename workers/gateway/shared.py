"""The host's shared Reticulum instance: where it listens, whether it runs, whether to attach.

A Reticulum program started with ``share_instance = Yes`` (rnsd, Sideband, NomadNet,
MeshChat...) owns the host's interfaces and serves local clients: on Linux on the abstract
Unix socket ``rns/NAME`` (NAME ``default`` unless its config sets ``instance_name``), or
with ``shared_instance_type = tcp`` on 127.0.0.1:``shared_instance_port`` (37428). Its
statistics (the interfaces and their bitrates) answer over RPC on ``rns/NAME/rpc`` or
127.0.0.1:``instance_control_port`` (37429), authenticated with ``rpc_key`` from its config
or else the SHA-256 of its transport identity: a client with a config directory of its own
needs that key to read them, which is why the instance's config directory is looked up.

No RNS import here: the choice is made before Reticulum is constructed (a process gets one
instance, so it cannot try one way and then the other), and unit tests use it directly.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from akita.config import ReticulumConfig

log = logging.getLogger(__name__)

DEFAULT_NAME = "default"
DEFAULT_PORT = 37428
DEFAULT_CONTROL_PORT = 37429
PROBE_TIMEOUT_S = 0.5
# Attached last time and the instance is not there: it is most likely restarting (its
# service manager, or the node started first at boot). Owning the interfaces now would take
# its ports and make it fail in turn, so `auto` waits this long for it first.
RETURN_WAIT_S = 30.0
_MAX_CONFIG_BYTES = 1 << 20  # a Reticulum config is a few KiB; never read more than this


class Mode(str, Enum):
    """How the gateway's Reticulum instance runs."""

    ATTACHED = "attached"      # a client of the host's shared instance
    OWN = "own"                # owns the interfaces of [reticulum]
    WAITING = "waiting"        # shared_instance = attach, and none runs yet
    CONFIG_DIR = "config_dir"  # [reticulum] config_dir: Reticulum's own config decides


@dataclass(frozen=True)
class SharedInstance:
    """Where a shared instance listens, and the key to its statistics."""

    kind: str                  # "unix" | "tcp"
    name: str                  # instance name (kind unix)
    port: int                  # data port (kind tcp)
    control_port: int          # RPC port (kind tcp)
    rpc_key: bytes | None      # None: unknown, its statistics cannot be read
    config_dir: Path | None    # where its settings were read, if anywhere

    def address(self) -> str:
        if self.kind == "unix":
            return f"unix socket rns/{self.name}"
        return f"127.0.0.1:{self.port}"

    def describe(self) -> dict[str, object]:
        return {"type": self.kind, "address": self.address(),
                "config_dir": None if self.config_dir is None else str(self.config_dir)}

    def reachable(self, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
        """True if a shared instance accepts local clients there right now."""
        if self.kind == "unix":
            family, target = socket.AF_UNIX, f"\0rns/{self.name}"
        else:
            family, target = socket.AF_INET, ("127.0.0.1", self.port)  # type: ignore[assignment]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            try:
                sock.connect(target)
            except OSError:
                return False
        return True


@dataclass(frozen=True)
class Decision:
    """The mode chosen at start and why, in words for the log, `status` and the ledger."""

    mode: Mode
    why: str
    instance: SharedInstance | None


def default_dirs(home: Path) -> list[Path]:
    """Where Reticulum itself looks for its config, in its order."""
    return [Path("/etc/reticulum"), home / ".config" / "reticulum", home / ".reticulum"]


def find_config_dir(ret: ReticulumConfig, home: Path) -> Path | None:
    if ret.shared_instance_dir is not None:
        return ret.shared_instance_dir if (ret.shared_instance_dir / "config").is_file() else None
    for candidate in default_dirs(home):
        if (candidate / "config").is_file():
            return candidate
    return None


def read_reticulum_section(path: Path) -> dict[str, str]:
    """The keys of the top-level [reticulum] section of a Reticulum config file ({} if it
    cannot be read). Only that flat section is needed, so no ConfigObj parser."""
    try:
        with open(path, "rb") as f:
            text = f.read(_MAX_CONFIG_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return {}
    keys: dict[str, str] = {}
    inside = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("["):
            inside = line == "[reticulum]"
        elif inside and "=" in line:
            key, _, value = line.partition("=")
            keys[key.strip().lower()] = value.strip().strip("\"'")
    return keys


def locate(ret: ReticulumConfig, home: Path) -> SharedInstance:
    """Where the shared instance would listen, from [reticulum] and its own config."""
    config_dir = find_config_dir(ret, home)
    theirs = read_reticulum_section(config_dir / "config") if config_dir else {}
    port = ret.shared_instance_port or _port(theirs.get("shared_instance_port"), DEFAULT_PORT)
    control = _port(theirs.get("instance_control_port"),
                    port + 1 if ret.shared_instance_port else DEFAULT_CONTROL_PORT)
    if ret.shared_instance_port is not None or theirs.get("shared_instance_type", "") == "tcp":
        kind, name = "tcp", ""
    else:
        kind = "unix"
        name = ret.shared_instance_name or theirs.get("instance_name", "") or DEFAULT_NAME
    return SharedInstance(kind, name, port, control, _rpc_key(config_dir, theirs), config_dir)


def _port(raw: str | None, default: int) -> int:
    try:
        value = int(raw) if raw else default
    except ValueError:
        return default
    return value if 0 < value < 65536 else default


def _rpc_key(config_dir: Path | None, theirs: dict[str, str]) -> bytes | None:
    if theirs.get("rpc_key"):
        try:
            return bytes.fromhex(theirs["rpc_key"])
        except ValueError:
            pass
    if config_dir is None:
        return None
    try:
        with open(config_dir / "storage" / "transport_identity", "rb") as f:
            private_key = f.read(128)
    except OSError:
        return None
    return hashlib.sha256(private_key).digest() if len(private_key) == 64 else None


def decide(ret: ReticulumConfig, instance: SharedInstance, running: bool,
           attached_before: bool = False) -> Decision:
    """Attach, own, or wait, as [reticulum] shared_instance asks and the host allows."""
    decision = _decide(ret, instance, running, attached_before)
    if ret.shared_instance_dir is not None and instance.config_dir is None:
        why = (f"{decision.why}; [reticulum] shared_instance_dir = {ret.shared_instance_dir} "
               "holds no Reticulum config file, so Reticulum's defaults were assumed")
        return Decision(decision.mode, why, decision.instance)
    return decision


def _decide(ret: ReticulumConfig, instance: SharedInstance, running: bool,
            attached_before: bool) -> Decision:
    where = instance.address()
    if ret.config_dir is not None:
        return Decision(Mode.CONFIG_DIR, f"[reticulum] config_dir = {ret.config_dir}: its "
                        "Reticulum config decides", None)
    if ret.shared_instance == "own":
        return Decision(Mode.OWN, "[reticulum] shared_instance = own", None)
    if running:
        keys = ignored_keys(ret)
        unused = f"; not applied while attached: {', '.join(keys)}" if keys else ""
        return Decision(Mode.ATTACHED, f"a shared Reticulum instance runs at {where} "
                        f"([reticulum] shared_instance = {ret.shared_instance}), this node "
                        f"uses its interfaces{unused}", instance)
    if ret.shared_instance == "attach":
        return Decision(Mode.WAITING, f"waiting for a shared Reticulum instance at {where} "
                        "([reticulum] shared_instance = attach)", instance)
    if attached_before:
        return Decision(Mode.WAITING, f"waiting up to {RETURN_WAIT_S:g} s for the shared "
                        f"Reticulum instance at {where}, attached to last time, before owning "
                        "the interfaces ([reticulum] shared_instance = auto)", instance)
    return Decision(Mode.OWN, f"no shared Reticulum instance at {where} ([reticulum] "
                    "shared_instance = auto): this node owns its interfaces", None)


def ignored_keys(ret: ReticulumConfig) -> list[str]:
    """The interface keys of [reticulum] that an attached node does not apply."""
    keys = []
    if ret.auto_interface:
        keys.append("auto_interface")
    if ret.tcp_listen is not None:
        keys.append("tcp_listen")
    if ret.tcp_connect:
        keys.append("tcp_connect")
    if ret.network_name or ret.passphrase:
        keys.append("network_name/passphrase")
    if ret.rnode_port:
        keys.append("rnode_port")
    if ret.pipe is not None:
        keys.append("pipe")
    if ret.transport == "yes":
        keys.append("transport")
    return keys


def explain_failure(reason: str, ret: ReticulumConfig, instance: SharedInstance,
                    running: bool) -> tuple[str, bool]:
    """Say what an interface failure means and which key solves it; True if another
    Reticulum program holds what the interface needs, which will not change by itself, so
    restarting would only loop. (A TCP port held by something else may be freed: a previous
    incarnation still closing, a program that exits; that one is retried.)"""
    lowered = reason.lower()
    if "already in use" not in lowered and "errno 98" not in lowered:
        return reason, False
    if running:
        fix = (f"a shared Reticulum instance runs on this host ({instance.address()}) and "
               "holds it: set [reticulum] shared_instance = auto to attach to it and use "
               "its interfaces")
        if ret.shared_instance == "own":
            fix += " (shared_instance = own forbids attaching)"
        return f"{reason}; {fix}", True
    if "akita auto" in lowered or "autointerface" in lowered:
        return (f"{reason}; another Reticulum program (rnsd, Sideband, NomadNet, MeshChat or "
                "another node) holds the AutoInterface ports without sharing its instance: let "
                "it share (share_instance = Yes in its Reticulum config) and keep [reticulum] "
                "shared_instance = auto to attach to it, or set [reticulum] auto_interface = "
                "no"), True
    return (f"{reason}; if another Reticulum program holds it, let it share its instance "
            "(share_instance = Yes in its config) and set [reticulum] shared_instance = auto, "
            "or choose another [reticulum] tcp_listen port; retrying"), False
