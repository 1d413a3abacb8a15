"""The node's Reticulum instance, its identity and its discovery destination.

This module and `links` are the only ones that import RNS, and only the gateway process
imports them. Everything Reticulum calls back on its own threads is posted to the gateway's
loop through a `LoopBridge`.

Process hygiene (measured on rns 1.5, see RETICULUM.md in the design notes):
- one `RNS.Reticulum` per process, constructed once, never again after shutdown;
- its constructor installs SIGINT/SIGTERM handlers that `os._exit()`: the caller installs
  its own right after `start()`;
- an interface that cannot start makes it `os._exit(255)` with the reason in its log only:
  `start()` turns that into an `InterfaceFailed` exception carrying the reason;
- `shutdown()` runs its exit handler (which silences logging and points stdout/stderr at
  /dev/null) and restores stdout/stderr afterwards.
"""

from __future__ import annotations

import collections
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import RNS

from workers.gateway.bridge import LoopBridge

log = logging.getLogger(__name__)
rns_log = logging.getLogger("RNS")

_LEVELS = {"[Critical]": logging.CRITICAL, "[Error]": logging.ERROR,
           "[Warning]": logging.WARNING, "[Notice]": logging.INFO, "[Info]": logging.INFO}

AnnounceCallback = Callable[[str, Any, bytes | None], None]
PacketCallback = Callable[[bytes], None]


class InterfaceFailed(Exception):
    """Reticulum could not start an interface (e.g. a TCP port already taken)."""


def split_channel(channel: str) -> tuple[str, tuple[str, ...]]:
    """"akita.state" → app name "akita", aspects ("state",)."""
    app, *aspects = channel.split(".")
    return app, tuple(aspects)


class RnsNode:
    """Owns `RNS.Reticulum` and the node's discovery destination."""

    def __init__(self, bridge: LoopBridge, identity_path: Path, channel: str) -> None:
        self.bridge = bridge
        self.identity_path = identity_path
        self.channel = channel
        self.app_name, self.aspects = split_channel(channel)
        self.reticulum: Any = None
        self.identity: Any = None
        self.destination: Any = None
        self.node_id = ""
        self._recent_errors: collections.deque[str] = collections.deque(maxlen=4)
        self._peer_destinations: dict[str, Any] = {}
        self._discovery_hashes: frozenset[bytes] = frozenset()
        self._announce_handler: Any = None
        self._saved_streams = (sys.stdout, sys.stderr)
        self._online: set[int] = set()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, config_dir: Path, on_announce: AnnounceCallback,
              on_packet: PacketCallback, loglevel: int = RNS.LOG_NOTICE) -> None:
        """Construct Reticulum from `config_dir` and open the discovery destination."""
        RNS.logtimestamps = False  # our log lines carry their own timestamp
        real_panic = RNS.panic
        RNS.panic = self._panic
        try:
            self.reticulum = RNS.Reticulum(configdir=str(config_dir), loglevel=loglevel,
                                           logdest=self._log)
        finally:
            RNS.panic = real_panic
        self.identity = RNS.Identity.from_file(str(self.identity_path))
        if self.identity is None:
            raise InterfaceFailed(f"cannot load the node identity from {self.identity_path}")
        self.node_id = self.identity.hash.hex()
        self.destination = RNS.Destination(self.identity, RNS.Destination.IN,
                                           RNS.Destination.SINGLE, self.app_name, *self.aspects)
        self._discovery_hashes = frozenset({self.destination.hash})
        self.destination.set_proof_strategy(RNS.Destination.PROVE_ALL)
        self.destination.set_packet_callback(
            lambda data, _packet: self.bridge.post(on_packet, bytes(data)))
        self._announce_handler = _AnnounceHandler(self.channel, self.bridge, on_announce)
        RNS.Transport.register_announce_handler(self._announce_handler)

    def shutdown(self) -> None:
        """Stop Reticulum (interfaces detached, caches saved); restore stdout/stderr."""
        if self.reticulum is None:
            return
        if self._announce_handler is not None:
            RNS.Transport.deregister_announce_handler(self._announce_handler)
        RNS.Reticulum.exit_handler()
        sys.stdout, sys.stderr = self._saved_streams

    def _log(self, line: str) -> None:
        level_word, _, message = line.partition(" ")
        level = _LEVELS.get(level_word.strip(), logging.DEBUG)
        message = message.strip()
        if level >= logging.ERROR:
            self._recent_errors.append(message)
        rns_log.log(level, "%s", message)

    def _panic(self) -> None:
        reason = "; ".join(self._recent_errors) or "Reticulum could not start"
        raise InterfaceFailed(reason)

    # --- discovery ----------------------------------------------------------------------------

    def announce(self, app_data: bytes) -> None:
        self.destination.announce(app_data=app_data)

    def new_interfaces_online(self) -> list[str]:
        """Names of interfaces that came online since the last call (spawned ones too)."""
        online = {id(iface): str(iface) for iface in list(RNS.Transport.interfaces)
                  if getattr(iface, "online", False)}
        fresh = [name for key, name in online.items() if key not in self._online]
        self._online = set(online)
        return fresh

    def interfaces(self) -> list[dict[str, Any]]:
        """Name and online flag of each configured interface, for stats."""
        return [{"name": str(iface), "online": bool(getattr(iface, "online", False))}
                for iface in list(RNS.Transport.interfaces)]

    def remember_peer(self, node_id: str, identity: Any) -> None:
        if node_id not in self._peer_destinations:
            self._peer_destinations[node_id] = RNS.Destination(
                identity, RNS.Destination.OUT, RNS.Destination.SINGLE, self.app_name,
                *self.aspects)
            self._discovery_hashes |= {self._peer_destinations[node_id].hash}

    def forget_peer(self, node_id: str) -> None:
        gone = self._peer_destinations.pop(node_id, None)
        if gone is not None:
            self._discovery_hashes -= {gone.hash}

    def is_discovery_hash(self, destination_hash: bytes) -> bool:
        """Is this our discovery destination or a known peer's? (Any thread: the set is
        replaced, never changed in place.)"""
        return destination_hash in self._discovery_hashes

    def peer_destination(self, node_id: str) -> Any | None:
        return self._peer_destinations.get(node_id)

    def public_key(self, node_id: str) -> bytes | None:
        """The peer's 64-byte public key, as announced (None if unknown)."""
        destination = self._peer_destinations.get(node_id)
        if destination is None:
            return None
        key: bytes = destination.identity.get_public_key()
        return key

    # --- packets ------------------------------------------------------------------------------

    def send_packet(self, node_id: str, data: bytes, timeout_s: float | None = None,
                    on_proof: Callable[[], None] | None = None) -> bool:
        """Send one packet to a peer; with `on_proof`, ask for a proof (the peer signs it)."""
        destination = self._peer_destinations.get(node_id)
        if destination is None:
            return False
        packet = RNS.Packet(destination, data, create_receipt=on_proof is not None)
        receipt = packet.send()
        if receipt is False:
            return False
        if on_proof is not None and receipt is not None:
            if timeout_s is not None:
                receipt.set_timeout(timeout_s)
            receipt.set_delivery_callback(lambda _r: self.bridge.post(on_proof))
        return True


class _AnnounceHandler:
    """Receives announces of the discovery aspect (Reticulum checked the signature and that
    the destination hash belongs to the announced identity)."""

    def __init__(self, aspect_filter: str, bridge: LoopBridge,
                 callback: AnnounceCallback) -> None:
        self.aspect_filter = aspect_filter
        self.receive_path_responses = False
        self._bridge = bridge
        self._callback = callback

    def received_announce(self, destination_hash: bytes, announced_identity: Any,
                          app_data: bytes | None) -> None:
        if announced_identity is None:
            return
        self._bridge.post(self._callback, announced_identity.hash.hex(), announced_identity,
                          app_data)
