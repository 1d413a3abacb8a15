"""Traffic accounting: bytes, packets and estimated airtime per interface and by kind.

Every frame Reticulum sends passes `Transport.transmit(interface, raw)` and every frame it
receives `Transport.inbound(raw, interface)`; `TrafficMeter.install()` wraps both, so the
figures are what actually crossed each interface (forwarded traffic and Reticulum's own
upkeep included), not what the node meant to send.

The kind of a frame is read from its Reticulum header:

- announce: any ANNOUNCE packet;
- probe: a DATA packet to a discovery destination (ours or a peer's), and the proof of one
  (a proof is addressed to the truncated hash of the packet it proves, which is worked out
  when the probe passes);
- state, replication, delegation, message: packets on a Link, by the path of the latest
  request sent or served on that link (`tag_link`), since a request's path travels
  encrypted; link setup, keepalives and closes are "other";
- other: everything else (path requests, link setup, frames behind an interface access
  code, other applications).

Airtime is estimated per frame: with `akita.mesh.airtime` when the interface's bitrate is a
LoRa modulation's (an RNode, or a pipe to the LoRa channel emulator), else bytes·8/bitrate.
Each interface's airtime is reported over the meter's lifetime and over the last hour (the
window of Europe's duty-cycle rule), kept in one-minute buckets.
Hooks run on Reticulum's threads; a lock guards the counters, `snapshot()` reads on the loop.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from akita.config import ChannelsConfig, Config
from akita.mesh import airtime, budget

KINDS = ("announce", "probe", "state", "replication", "delegation", "message", "other")
MAX_TRACKED = 1024            # link ids and probe hashes remembered (oldest forgotten)
HASH_BYTES = 16
WINDOW_S = 3600.0             # the recent airtime window (EU 868 MHz duty cycle: one hour)
BUCKET_S = 60.0

# Reticulum header (RNS/Packet.py): flags, hops, [transport id], destination, context.
_IFAC_FLAG = 0x80
_ANNOUNCE, _PROOF, _DATA = 0x01, 0x03, 0x00
_LINK_UPKEEP = {0xFA, 0xFB, 0xFC, 0xFE, 0xFF}   # keepalive, identify, close, rtt, link proof


def path_kinds(channels: ChannelsConfig) -> dict[str, str]:
    """Link request path prefix → kind (paths are named after their channel)."""
    return {channels.state_channel: "state", channels.service_channel: "state",
            channels.ledger_channel: "replication", channels.task_channel: "delegation",
            channels.inter_cluster_channel: "message"}


def frame_airtime_s(bitrate: float, size: int, lora: airtime.LoraProfile | None) -> float:
    """Estimated seconds on air of one frame of `size` bytes."""
    if lora is not None:
        return lora.time_on_air_s(size)
    return size * 8 / bitrate if bitrate > 0 else 0.0


@dataclass
class Counter:
    tx_bytes: int = 0
    rx_bytes: int = 0
    packets: int = 0


@dataclass
class InterfaceCounter:
    bitrate: float = 0.0
    tx_bytes: int = 0
    rx_bytes: int = 0
    airtime_s: float = 0.0
    lora: airtime.LoraProfile | None = None
    recent: deque[list[float]] = field(default_factory=deque)   # [bucket start, airtime s]

    def add_airtime(self, seconds: float, now: float) -> None:
        self.airtime_s += seconds
        start = now - now % BUCKET_S
        if not self.recent or self.recent[-1][0] != start:
            self.recent.append([start, 0.0])
            while self.recent[0][0] <= start - WINDOW_S:
                self.recent.popleft()
        self.recent[-1][1] += seconds

    def airtime_in_window(self, now: float) -> float:
        """Airtime in the buckets of the last hour (to the minute)."""
        return sum(seconds for start, seconds in self.recent if start > now - WINDOW_S)


@dataclass
class TrafficMeter:
    """Counts every frame by interface and kind (see the module docstring)."""

    kinds_by_path: dict[str, str]
    is_discovery: Callable[[bytes], bool]
    lora_of: Callable[[Any], airtime.LoraProfile | None] = lambda _iface: None
    started: float = field(default_factory=time.monotonic)
    by_kind: dict[str, Counter] = field(default_factory=lambda: {k: Counter() for k in KINDS})
    interfaces: dict[str, InterfaceCounter] = field(default_factory=dict)
    _links: OrderedDict[bytes, str] = field(default_factory=OrderedDict)
    _proofs: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- hooks ------------------------------------------------------------------------------

    def install(self, transport: Any) -> None:
        """Wrap `transport.transmit` and `transport.inbound` (RNS.Transport's statics)."""
        transmit, inbound = transport.transmit, transport.inbound

        def counted_transmit(interface: Any, raw: bytes) -> Any:
            self.count(interface, raw, outgoing=True)
            return transmit(interface, raw)

        def counted_inbound(raw: bytes, interface: Any = None, *args: Any, **kw: Any) -> Any:
            self.count(interface, raw, outgoing=False)
            return inbound(raw, interface, *args, **kw)

        transport.transmit = staticmethod(counted_transmit)
        transport.inbound = staticmethod(counted_inbound)

    def tag_link(self, link_id: bytes, path: str) -> None:
        """A request for `path` goes over (or came in on) link `link_id`."""
        kind = self.kind_of_path(path)
        with self._lock:
            self._links[bytes(link_id)] = kind
            self._links.move_to_end(bytes(link_id))
            _trim(self._links)

    def kind_of_path(self, path: str) -> str:
        for prefix, kind in self.kinds_by_path.items():
            if path.startswith(prefix + "/"):
                return kind
        return "other"

    # --- counting -----------------------------------------------------------------------------

    def count(self, interface: Any, raw: bytes, *, outgoing: bool,
              now: float | None = None) -> None:
        size = len(raw)
        with self._lock:
            kind = self._classify(raw)
            counter = self.by_kind[kind]
            counter.packets += 1
            iface = self._interface(interface)
            if outgoing:
                counter.tx_bytes += size
                iface.tx_bytes += size
                iface.add_airtime(frame_airtime_s(iface.bitrate, size, iface.lora),
                                  time.monotonic() if now is None else now)
            else:
                counter.rx_bytes += size
                iface.rx_bytes += size

    def _interface(self, interface: Any) -> InterfaceCounter:
        name = str(interface) if interface is not None else "unknown"
        found = self.interfaces.get(name)
        if found is None:
            bitrate = float(getattr(interface, "bitrate", 0) or 0)
            found = InterfaceCounter(bitrate=bitrate, lora=self.lora_of(interface))
            self.interfaces[name] = found
        return found

    def _classify(self, raw: bytes) -> str:
        if len(raw) < 2 + HASH_BYTES + 1 or raw[0] & _IFAC_FLAG:
            return "other"
        flags = raw[0]
        packet_type = flags & 0x03
        if packet_type == _ANNOUNCE:
            return "announce"
        start = 2 + HASH_BYTES if (flags >> 6) & 0x01 else 2
        destination = bytes(raw[start:start + HASH_BYTES])
        context = raw[start + HASH_BYTES] if len(raw) > start + HASH_BYTES else 0
        if packet_type == _DATA and self.is_discovery(destination):
            self._expect_proof(raw, start)
            return "probe"
        if packet_type == _PROOF and destination in self._proofs:
            return "probe"
        kind = self._links.get(destination)
        if kind is not None and context not in _LINK_UPKEEP:
            return kind
        return "other"

    def _expect_proof(self, raw: bytes, start: int) -> None:
        """The proof of this packet will be addressed to its truncated hash."""
        hashable = bytes([raw[0] & 0x0F]) + bytes(raw[start:])
        self._proofs[hashlib.sha256(hashable).digest()[:HASH_BYTES]] = None
        _trim(self._proofs)

    # --- reading ------------------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """`{"interfaces": [...], "by_kind": {...}}` as `akitactl status --json` shows it;
        airtime_percent is over the meter's lifetime, airtime_hour_percent over the last hour
        (over the lifetime while that is shorter)."""
        now = time.monotonic() if now is None else now
        elapsed = max(1e-9, now - self.started)
        window = min(elapsed, WINDOW_S)
        with self._lock:
            interfaces = [{"name": name, "bitrate": round(c.bitrate),
                           "tx_bytes": c.tx_bytes, "rx_bytes": c.rx_bytes,
                           "airtime_percent": round(100.0 * c.airtime_s / elapsed, 3),
                           "airtime_hour_percent": round(
                               100.0 * c.airtime_in_window(now) / window, 3)}
                          for name, c in sorted(self.interfaces.items())]
            by_kind = {kind: {"tx_bytes": c.tx_bytes, "rx_bytes": c.rx_bytes,
                              "packets": c.packets} for kind, c in self.by_kind.items()}
        return {"interfaces": interfaces, "by_kind": by_kind}


def lora_for_bitrate(bitrate: float, configured: airtime.LoraProfile | None = None
                     ) -> airtime.LoraProfile | None:
    """The LoRa modulation behind an interface of `bitrate` bits/s: the configured one when
    its rate matches, else a CR 4/5 modulation whose rate is within 1 %, else None."""
    if bitrate <= 0:
        return None
    for candidate in ([configured] if configured is not None else []) + airtime.standard():
        if abs(candidate.bitrate - bitrate) <= 0.01 * candidate.bitrate:
            return candidate
    return None


def for_config(config: Config, is_discovery: Callable[[bytes], bool]) -> TrafficMeter:
    """A meter for this node: an RNode interface is charged with the configured modulation,
    any other by the modulation its bitrate matches (see `lora_for_bitrate`)."""
    ret = config.reticulum
    rnode = airtime.LoraProfile(ret.rnode_spreading_factor, ret.rnode_bandwidth,
                                ret.rnode_coding_rate) if ret.rnode_port else None

    def lora_of(interface: Any) -> airtime.LoraProfile | None:
        configured = rnode if type(interface).__name__.startswith("RNode") else None
        return lora_for_bitrate(float(getattr(interface, "bitrate", 0) or 0), configured)

    return TrafficMeter(path_kinds(config.channels), is_discovery, lora_of)


def media(meter: TrafficMeter) -> list[budget.Medium]:
    """Each interface of this process's Reticulum as a budget `Medium` (bitrate, LoRa)."""
    import RNS  # the gateway's process only

    found = []
    for interface in list(RNS.Transport.interfaces):
        bitrate = float(getattr(interface, "bitrate", 0) or 0)
        found.append(budget.Medium(bitrate, meter.lora_of(interface), str(interface)))
    return found


def install(meter: TrafficMeter) -> None:
    """Count every frame of this process's Reticulum (call before constructing it)."""
    import RNS  # the gateway's process only

    meter.install(RNS.Transport)


def _trim(table: OrderedDict[bytes, Any]) -> None:
    while len(table) > MAX_TRACKED:
        table.popitem(last=False)
