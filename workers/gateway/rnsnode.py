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
from RNS.Interfaces import LocalInterface

from workers.gateway.bridge import LoopBridge

log = logging.getLogger(__name__)
rns_log = logging.getLogger("RNS")

_LEVELS = {"[Critical]": logging.CRITICAL, "[Error]": logging.ERROR,
           "[Warning]": logging.WARNING, "[Notice]": logging.INFO, "[Info]": logging.INFO}

AnnounceCallback = Callable[[str, Any, bytes | None], None]
PacketCallback = Callable[[bytes], None]


# Attached to a shared instance that restarts, Reticulum retries the connection every
# RECONNECT_WAIT seconds (8 by default) and re-announces two seconds after: a peer would go
# unheard for up to ~10 s more than the instance's own restart. A local connect attempt per
# second costs nothing.
SHARED_RECONNECT_WAIT_S = 1


class InterfaceFailed(Exception):
    """Reticulum could not start an interface (e.g. a TCP port already taken)."""


class SharedInstanceGone(Exception):
    """The shared instance found a moment ago no longer accepts clients."""


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
              on_packet: PacketCallback, loglevel: int = RNS.LOG_NOTICE,
              require_shared: bool = False, on_lost: Callable[[], None] | None = None) -> None:
        """Construct Reticulum from `config_dir` and open the discovery destination.

        With `require_shared`, Reticulum must attach to the host's shared instance
        (`SharedInstanceGone` if none accepts clients any more); if it ever gives up on the
        connection, `on_lost` is called on the loop instead of Reticulum's `os._exit`.
        """
        RNS.logtimestamps = False  # our log lines carry their own timestamp
        real_panic = RNS.panic
        RNS.panic = self._panic
        if require_shared:
            LocalInterface.LocalClientInterface.RECONNECT_WAIT = SHARED_RECONNECT_WAIT_S
            # A closed connection is retried, but an error on it tears the interface down
            # and calls RNS.exit(), which would os._exit() without a word to the ledger.
            RNS.exit = lambda _code=0: self.bridge.post(on_lost or (lambda: None))
        try:
            self.reticulum = RNS.Reticulum(configdir=str(config_dir), loglevel=loglevel,
                                           logdest=self._log,
                                           require_shared_instance=require_shared)
        except SystemError as exc:  # raised only for require_shared_instance
            raise SharedInstanceGone(str(exc)) from None
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
        if "\n" in message or message.startswith(("Traceback", "An unhandled <class")):
            # RNS.trace_exception() logs a traceback at error level after every interface
            # failure: the reason is in the lines around it, an operator needs no stack.
            level = logging.DEBUG
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
        online = {id(iface): iface for iface in list(RNS.Transport.interfaces)
                  if getattr(iface, "online", False)}
        if online.keys() == self._online:
            return []   # every tick: no names built (an interface's str() is not cheap)
        fresh = [str(iface) for key, iface in online.items() if key not in self._online]
        self._online = set(online)
        return fresh

    @property
    def attached(self) -> bool:
        """True if this is a client of the host's shared instance."""
        return bool(getattr(self.reticulum, "is_connected_to_shared_instance", False))

    def shared_link_online(self) -> bool:
        """Attached: whether the local connection to the shared instance is up right now."""
        return any(getattr(iface, "online", False) for iface in list(RNS.Transport.interfaces)
                   if isinstance(iface, LocalInterface.LocalClientInterface))

    def interface_stats(self) -> Any:
        """Reticulum's interface statistics: in-process, or the shared instance's over RPC
        (which blocks on that program: call it off the loop)."""
        return self.reticulum.get_interface_stats()

    def set_rpc_key(self, key: bytes) -> None:
        """Use `key` for the shared instance's RPC from the next call on."""
        self.reticulum.rpc_key = key

    def interfaces(self) -> list[dict[str, Any]]:
        """Name, online flag, bitrate and byte counters of each interface, for stats (the
        counters are Reticulum's own: every byte the interface sent or received)."""
        return [{"name": str(iface), "online": bool(getattr(iface, "online", False)),
                 "bitrate": int(getattr(iface, "bitrate", 0) or 0),
                 "rx_bytes": int(getattr(iface, "rxb", 0) or 0),
                 "tx_bytes": int(getattr(iface, "txb", 0) or 0)}
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
