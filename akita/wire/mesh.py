"""What crosses Reticulum: announce app_data and the small packets of the probe protocol.

Everything is one msgpack map with short keys, checked field by field on the way in: a peer
is untrusted input. `decode_*` raise `WireError` for anything malformed; callers count it
and drop the packet, never crash.

Announce app_data must stay small: announces are rate-limited on radio links, Reticulum
refuses app_data above ~333 bytes and a hub silently drops forwarding batches from ~318, so
the encoder guarantees ≤ `MAX_APP_DATA_BYTES` whatever the node offers (services travel in
the state, not the announce).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgpack

from akita.errors import ProtocolError
from akita.mesh.cluster import PeerView

WIRE_VERSION = 1
MAX_APP_DATA_BYTES = 200
MAX_PACKET_BYTES = 383          # what one encrypted single packet carries
MAX_NAME_BYTES = 32
DIGEST_BYTES = 8
ID_BYTES = 16                   # a Reticulum identity hash
ID_TAG_BYTES = 4
KEY_TAG_BYTES = 8               # akita.keyring.TAG_BYTES
_MAX_INT = 2**63 - 1


# What the pure modules raise for malformed input from a peer (akita.cluster, akita.state).
BAD_INPUT = (ValueError, ProtocolError)


class WireError(ValueError):
    """Input from a peer that is not what the protocol allows."""


class Impersonation(WireError):
    """app_data copied from another node: its identity tag is not the announcer's.

    Reticulum already guarantees the announce was signed by the identity it names; the tag
    ties the app_data to that identity too, so another node's announce content replayed
    under a different identity is refused rather than seating a look-alike.
    """


@dataclass(frozen=True)
class Load:
    """The load summary a node announces: what a peer needs to pick a delegate."""

    cpu_percent: int = 0
    memory_percent: int = 0
    queue_depth: int = 0


@dataclass(frozen=True)
class Announce:
    """The content of a node's announce app_data."""

    name: str
    generation: int          # boot generation: rises on every gateway start
    seq: int                 # rises on every announce within one generation
    report: PeerView         # the node's cluster report: seat, term, coordinator
    load: Load
    state_version: int       # version of the node's own state record in this generation
    digest: bytes            # short hash of the node's merged state view
    interval_s: float        # the node's announce interval, so peers know when to expect it
    id_tag: bytes = b""      # first bytes of the sender's identity hash (see ID_TAG_BYTES)
    key_tag: bytes = b""     # admission = key: the network key's tag (akita.keyring)

    @property
    def order(self) -> tuple[int, int]:
        """Announces of one node are ordered by (generation, seq): an older one never wins."""
        return (self.generation, self.seq)

    @property
    def cluster(self) -> str:
        return self.report.seat.cluster if self.report.seat is not None else ""


def encode_announce(info: Announce) -> bytes:
    """The app_data for `info`; never larger than MAX_APP_DATA_BYTES."""
    body = {
        "p": WIRE_VERSION, "n": _truncate_utf8(info.name, MAX_NAME_BYTES),
        "g": info.generation, "s": info.seq, "r": info.report.pack(),
        "l": [_clamp(info.load.cpu_percent, 0, 100), _clamp(info.load.memory_percent, 0, 100),
              _clamp(info.load.queue_depth, 0, 2**31)],
        "v": info.state_version, "d": info.digest[:DIGEST_BYTES],
        "i": round(info.interval_s, 1), "k": info.id_tag[:ID_TAG_BYTES],
    }
    if info.key_tag:
        body["m"] = info.key_tag[:KEY_TAG_BYTES]
    data: bytes = msgpack.packb(body, use_bin_type=True)
    # Every field is bounded (name 32 bytes, a report ~30, numbers ≤ 9 each): ~130 at most.
    assert len(data) <= MAX_APP_DATA_BYTES, len(data)
    return data


def decode_announce(node_id: str, data: bytes | None) -> Announce:
    """Parse announce app_data heard from `node_id`, or raise WireError saying what is wrong."""
    if not data:
        raise WireError("no app_data")
    if len(data) > MAX_APP_DATA_BYTES:
        raise WireError(f"app_data of {len(data)} bytes exceeds {MAX_APP_DATA_BYTES}")
    body = _unpack_map(data)
    if body.get("p") != WIRE_VERSION:
        raise WireError(f"wire version {body.get('p')!r}, expected {WIRE_VERSION}")
    load = _field(body, "l", list)
    if len(load) != 3 or not all(_is_int(x) and 0 <= x < _MAX_INT for x in load):
        raise WireError("l: expected [cpu, memory, queue] of whole numbers")
    name = _field(body, "n", str)
    if len(name.encode()) > MAX_NAME_BYTES:
        raise WireError("n: name too long")
    interval = _field(body, "i", (int, float))
    if not 0 < interval < 10**7:
        raise WireError("i: announce interval out of range")
    generation = _count(body, "g")
    try:
        report = PeerView.unpack(node_id, _field(body, "r", list))
    except BAD_INPUT as exc:
        raise WireError(f"r: {exc}") from None
    if report.generation != generation:
        raise WireError("r: report of another generation")
    id_tag = _field(body, "k", bytes)
    if id_tag != bytes.fromhex(node_id)[:ID_TAG_BYTES]:
        raise Impersonation("app_data names another identity than the one that signed it")
    key_tag = _field(body, "m", bytes) if "m" in body else b""
    if len(key_tag) > KEY_TAG_BYTES:
        raise WireError("m: network key tag too long")
    return Announce(name=name, generation=generation, seq=_count(body, "s"), report=report,
                    load=Load(int(load[0]), int(load[1]), int(load[2])),
                    state_version=_count(body, "v"), digest=_field(body, "d", bytes),
                    interval_s=float(interval), id_tag=id_tag, key_tag=key_tag)


# --- probe packets ----------------------------------------------------------------------
# A direct probe is a packet the peer's destination proves (Reticulum signs the proof): the
# proof is the acknowledgement. An indirect probe asks a helper to probe the target; the
# helper answers with an `ack` packet once the target has proved its probe.


class ProbeKind(str, Enum):
    PING = "ping"            # direct probe: the proof is the answer
    PING_REQ = "ping-req"    # please probe `target` for me
    ACK = "ack"              # `target` answered the probe you asked for
    LEAVE = "leave"          # the sender is shutting down: drop it now (signed)


@dataclass(frozen=True)
class ProbePacket:
    kind: ProbeKind
    sender: bytes            # identity hash of the sender (16 bytes)
    nonce: int
    target: bytes = b""      # for PING_REQ and ACK
    generation: int = 0      # LEAVE: the sender's generation and last announce seq, so an
    seq: int = 0             # old LEAVE replayed later cannot drop a newer incarnation
    signature: bytes = b""   # LEAVE: Ed25519 over leave_message()


def leave_message(sender: bytes, generation: int, seq: int) -> bytes:
    """What a LEAVE's signature covers."""
    return b"akita.leave\x1f" + sender + generation.to_bytes(8, "big") + seq.to_bytes(8, "big")


def encode_probe(packet: ProbePacket) -> bytes:
    body: dict[str, Any] = {"k": packet.kind.value, "f": packet.sender, "n": packet.nonce}
    if packet.kind in (ProbeKind.PING_REQ, ProbeKind.ACK):
        body["t"] = packet.target
    if packet.kind is ProbeKind.LEAVE:
        body.update(g=packet.generation, s=packet.seq, x=packet.signature)
    return msgpack.packb(body, use_bin_type=True)


def decode_probe(data: bytes) -> ProbePacket:
    if len(data) > MAX_PACKET_BYTES:
        raise WireError("probe packet too large")
    body = _unpack_map(data)
    try:
        kind = ProbeKind(_field(body, "k", str))
    except ValueError:
        raise WireError("k: unknown probe kind") from None
    sender = _hash_field(body, "f")
    if kind is ProbeKind.LEAVE:
        signature: bytes = _field(body, "x", bytes)
        return ProbePacket(kind=kind, sender=sender, nonce=_count(body, "n"),
                           generation=_count(body, "g"), seq=_count(body, "s"),
                           signature=signature)
    target = _hash_field(body, "t") if kind is not ProbeKind.PING else b""
    return ProbePacket(kind=kind, sender=sender, nonce=_count(body, "n"), target=target)


def new_nonce() -> int:
    return int.from_bytes(os.urandom(6), "big")


# --- helpers ----------------------------------------------------------------------------


def unpack(data: bytes, max_bytes: int) -> Any:
    """Decode one msgpack value from a peer (bounded, strict map keys) or raise WireError."""
    if len(data) > max_bytes:
        raise WireError(f"{len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError) as exc:
        # msgpack raises several unrelated types for malformed input (ExtraData is a
        # ValueError, a bad map key a TypeError): all mean the same here.
        raise WireError(f"not msgpack ({type(exc).__name__})") from None


def pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def _unpack_map(data: bytes) -> dict[str, Any]:
    body = unpack(data, max(len(data), 1))
    if not isinstance(body, dict):
        raise WireError("not a msgpack map")
    return body


def _field(body: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in body:
        raise WireError(f"{key}: missing")
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise WireError(f"{key}: wrong type {type(value).__name__}")
    return value


def _count(body: dict[str, Any], key: str) -> int:
    value: int = _field(body, key, int)
    if not 0 <= value < _MAX_INT:
        raise WireError(f"{key}: out of range")
    return value


def _hash_field(body: dict[str, Any], key: str) -> bytes:
    value: bytes = _field(body, key, bytes)
    if len(value) != ID_BYTES:
        raise WireError(f"{key}: expected a {ID_BYTES}-byte identity hash")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, int(value)))


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode()[:max_bytes].decode(errors="ignore")
