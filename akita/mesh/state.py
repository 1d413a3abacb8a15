"""Node state: one last-writer-wins record per node, merged without clocks.

Each node owns exactly one record — its resources, queue depth, offered services and the
custom keys an operator set — stamped (generation, version): the version rises on every
local change, the generation on every restart. A `StateStore` holds the records of every
origin it has heard of. Merging keeps, per origin, the record with the higher stamp (on an
equal stamp, the higher content fingerprint, so the result never depends on who merged
first): merge is commutative, associative and idempotent, and no wall clock decides
anything. Whole records replace each other, so deleting a key needs no tombstone.

Anti-entropy: a node announces its own stamp (or the store's `digest()`); a peer that is
behind sends its `summary()` and receives `delta_since(summary)`. The encoding helpers
say how many bytes a delta takes, so the gateway can choose a packet or a Link/Resource.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from akita.errors import ProtocolError

Origin = str  # the owning node's identity hash, lowercase hex
Stamp = tuple[int, int]  # (generation, version)

# Keys the node itself writes; custom keys set by an operator may not use these names.
KEY_RESOURCES = "resources"
KEY_QUEUE_DEPTH = "queue_depth"
KEY_SERVICES = "services"
KEY_TASK_TYPES = "task_types"
KEY_CAPABILITIES = "capabilities"
KEY_SUBSCRIPTIONS = "subscriptions"   # topic prefixes of inter-cluster messages wanted here
KEY_TASK_LOAD = "task_load"   # the executor's compact load: pool, free, queued… (delegation)
RESERVED_KEYS = frozenset({KEY_RESOURCES, KEY_QUEUE_DEPTH, KEY_SERVICES, KEY_TASK_TYPES,
                           KEY_CAPABILITIES, KEY_SUBSCRIPTIONS, KEY_TASK_LOAD})
MAX_KEY_CHARS = 64
DIGEST_BYTES = 8
# Largest encoded delta `decode_records` accepts: far above any honest record set, low
# enough that a hostile peer cannot make us allocate without bound.
MAX_DECODE_BYTES = 4 << 20
_MAX_INT = (1 << 63) - 1


# --- canonical values ----------------------------------------------------------------------


def _canonical(value: Any, where: str) -> Any:
    """`value` in the form msgpack decodes it to, with map keys sorted; ValueError if unfit."""
    if value is None or isinstance(value, (bool, str, bytes, float)):
        return value
    if isinstance(value, int):
        if not -(1 << 63) <= value <= (1 << 64) - 1:
            raise ValueError(f"{where}: integer out of the 64-bit range")
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical(item, where) for item in value]
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise ValueError(f"{where}: map keys must be strings")
        return {key: _canonical(value[key], where) for key in sorted(value)}
    raise ValueError(f"{where}: {type(value).__name__} cannot be stored (msgpack types only)")


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def check_key(key: Any) -> str:
    """A valid state key (1–64 printable characters), else ValueError."""
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_CHARS or not key.isprintable():
        raise ValueError(f"state key: expected 1 to {MAX_KEY_CHARS} printable characters, "
                         f"got {key!r}")
    return key


def check_custom_key(key: Any) -> str:
    """A key an operator may set (`akitactl state set`): valid and not one the node owns."""
    check_key(key)
    if key in RESERVED_KEYS:
        raise ValueError(f"state key {key!r} is written by the node itself; reserved keys: "
                         + ", ".join(sorted(RESERVED_KEYS)))
    return key


def _check_origin(origin: Any) -> str:
    if not isinstance(origin, str) or not origin or len(origin) % 2:
        raise ValueError(f"state origin: expected a hex node id, got {origin!r}")
    try:
        bytes.fromhex(origin)
    except ValueError:
        raise ValueError(f"state origin: expected a hex node id, got {origin!r}") from None
    if origin != origin.lower():
        raise ValueError(f"state origin: expected lowercase hex, got {origin!r}")
    return origin


def _check_count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_INT:
        raise ValueError(f"{what}: expected a whole number from 0 to 2**63-1, got {value!r}")
    return value


# --- one node's record -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One origin's whole state at one (generation, version). Build with `Record.new`."""

    origin: Origin
    generation: int
    version: int
    entries: tuple[tuple[str, Any], ...]  # sorted by key, values canonical

    @classmethod
    def new(cls, origin: Origin, generation: int, version: int = 0,
            entries: Mapping[str, Any] | None = None) -> Record:
        """A validated record; ValueError for a bad origin, counter, key or value."""
        items = dict(entries or {})
        for key in items:
            check_key(key)
        canonical = tuple((key, _canonical(items[key], f"state[{key!r}]"))
                          for key in sorted(items))
        return cls(_check_origin(origin), _check_count(generation, "generation"),
                   _check_count(version, "version"), canonical)

    @property
    def stamp(self) -> Stamp:
        return (self.generation, self.version)

    def get(self, key: str, default: Any = None) -> Any:
        for name, value in self.entries:
            if name == key:
                return value
        return default

    def as_dict(self) -> dict[str, Any]:
        return dict(self.entries)

    def fingerprint(self) -> bytes:
        """A hash of the whole record: breaks ties between equal stamps deterministically."""
        return hashlib.blake2b(_pack(self.pack()), digest_size=16).digest()

    def supersedes(self, other: Record) -> bool:
        """True when merge keeps this record over `other` (same origin assumed)."""
        if self.stamp != other.stamp:
            return self.stamp > other.stamp
        return self.fingerprint() > other.fingerprint()

    def with_entries(self, changes: Mapping[str, Any], removed: Iterable[str] = ()) -> Record:
        """The next version: `changes` set, `removed` keys dropped."""
        entries = self.as_dict()
        entries.update(changes)
        for key in removed:
            entries.pop(key, None)
        return Record.new(self.origin, self.generation, self.version + 1, entries)

    def pack(self) -> list[Any]:
        """msgpack-ready: [origin bytes, generation, version, {key: value}]."""
        return [bytes.fromhex(self.origin), self.generation, self.version, dict(self.entries)]

    @classmethod
    def unpack(cls, obj: Any) -> Record:
        """The record from `pack()` output; ProtocolError for anything malformed."""
        if not isinstance(obj, (list, tuple)) or len(obj) != 4:
            raise ProtocolError("expected [origin, generation, version, entries]",
                                kind="state.record")
        origin, generation, version, entries = obj
        if not isinstance(origin, bytes) or not origin:
            raise ProtocolError("expected bytes", kind="state.record", field="origin")
        if not isinstance(entries, Mapping):
            raise ProtocolError("expected a map", kind="state.record", field="entries")
        try:
            return cls.new(origin.hex(), generation, version, entries)
        except ValueError as exc:
            raise ProtocolError(str(exc), kind="state.record") from None


def newer(a: Record, b: Record) -> Record:
    """The record merge keeps of two records of one origin."""
    return a if a.supersedes(b) else b


def merge_records(a: Mapping[Origin, Record], b: Iterable[Record]) -> dict[Origin, Record]:
    """Per origin, the record with the higher stamp: commutative, associative, idempotent."""
    merged = dict(a)
    for record in b:
        held = merged.get(record.origin)
        merged[record.origin] = record if held is None else newer(held, record)
    return merged


# --- all origins ----------------------------------------------------------------------


@dataclass(frozen=True)
class StateStore:
    """The records of every origin this node knows, its own included. Immutable: every
    change returns a new store. Build with `StateStore.create`."""

    local: Origin
    records: Mapping[Origin, Record]

    @classmethod
    def create(cls, local: Origin, generation: int,
               entries: Mapping[str, Any] | None = None) -> StateStore:
        """A store holding only this node's record at (generation, 0)."""
        own = Record.new(local, generation, 0, entries)
        return cls(local, {local: own})

    @property
    def own(self) -> Record:
        return self.records[self.local]

    def get(self, origin: Origin) -> Record | None:
        return self.records.get(origin)

    def _with_own(self, record: Record) -> StateStore:
        records = dict(self.records)
        records[self.local] = record
        return StateStore(self.local, records)

    def set(self, key: str, value: Any) -> StateStore:
        """This node sets `key`: its version rises by one."""
        return self._with_own(self.own.with_entries({key: value}))

    def update(self, changes: Mapping[str, Any], removed: Iterable[str] = ()) -> StateStore:
        """Several local changes at once, under one version."""
        return self._with_own(self.own.with_entries(changes, removed))

    def delete(self, key: str) -> StateStore:
        """This node removes `key` (a no-op change still raises the version)."""
        return self._with_own(self.own.with_entries({}, (key,)))

    def restarted(self, generation: int) -> StateStore:
        """The store after this node restarts: its record moves to (generation, 0) and keeps
        its entries. If peers already hold a later generation of ours (our data was lost),
        the generation goes just past it, so our new writes are never outranked by our past."""
        own = self.own
        generation = max(generation, own.generation + 1)
        return self._with_own(Record.new(self.local, generation, 0, own.as_dict()))

    def merge(self, other: StateStore | Iterable[Record]) -> StateStore:
        """Both stores' knowledge: per origin the record with the higher stamp."""
        records = other.records.values() if isinstance(other, StateStore) else other
        return StateStore(self.local, merge_records(self.records, records))

    def changed_by(self, records: Iterable[Record]) -> tuple[Origin, ...]:
        """Origins whose record in this store `records` would replace (sorted)."""
        return tuple(sorted({r.origin for r in records
                             if r.origin not in self.records
                             or r.supersedes(self.records[r.origin])}))

    def retain(self, origins: Iterable[Origin]) -> StateStore:
        """Only the records of `origins` (and our own): forget nodes long gone."""
        keep = set(origins) | {self.local}
        return StateStore(self.local, {o: r for o, r in self.records.items() if o in keep})

    def summary(self) -> dict[Origin, Stamp]:
        """origin → (generation, version): what a peer needs to compute our delta."""
        return {origin: record.stamp for origin, record in self.records.items()}

    def digest(self) -> bytes:
        """8 bytes naming the summary: equal digests mean nothing to pull."""
        return summary_digest(self.summary())

    def delta_since(self, summary: Mapping[Origin, Stamp]) -> tuple[Record, ...]:
        """The records the holder of `summary` lacks or holds at a lower stamp (by origin)."""
        return tuple(record for origin, record in sorted(self.records.items())
                     if origin not in summary or record.stamp > tuple(summary[origin]))


def summary_digest(summary: Mapping[Origin, Stamp]) -> bytes:
    """The short hash of a summary, independent of its order."""
    flat = [[origin, int(stamp[0]), int(stamp[1])] for origin, stamp in sorted(summary.items())]
    return hashlib.blake2b(_pack(flat), digest_size=DIGEST_BYTES).digest()


# --- encoding, sizes ----------------------------------------------------------------------


def encode_records(records: Iterable[Record]) -> bytes:
    """A delta on the wire: a msgpack array of packed records."""
    return _pack([record.pack() for record in records])


def encoded_size(records: Iterable[Record]) -> int:
    """Bytes `encode_records(records)` takes."""
    return len(encode_records(records))


def fits(records: Iterable[Record], max_bytes: int) -> bool:
    """True when the encoded delta fits `max_bytes` (e.g. a packet's payload or link.mdu)."""
    return encoded_size(records) <= max_bytes


def _unpack(data: bytes, max_bytes: int, kind: str) -> Any:
    if len(data) > max_bytes:
        raise ProtocolError(f"{len(data)} bytes is over the {max_bytes}-byte limit", kind=kind)
    try:
        return msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError) as exc:
        # msgpack raises several unrelated types for malformed input (ExtraData is a
        # ValueError; a bad map key a TypeError): all mean the same thing here.
        raise ProtocolError(f"undecodable msgpack ({exc})", kind=kind) from None


def decode_records(data: bytes, max_bytes: int = MAX_DECODE_BYTES) -> tuple[Record, ...]:
    """Records from `encode_records` output; ProtocolError for anything malformed."""
    obj = _unpack(data, max_bytes, "state.records")
    if not isinstance(obj, list):
        raise ProtocolError("expected an array of records", kind="state.records")
    return tuple(Record.unpack(item) for item in obj)


def encode_summary(summary: Mapping[Origin, Stamp]) -> bytes:
    """A summary on the wire: msgpack array of [origin bytes, generation, version]."""
    return _pack([[bytes.fromhex(origin), stamp[0], stamp[1]]
                  for origin, stamp in sorted(summary.items())])


def decode_summary(data: bytes, max_bytes: int = MAX_DECODE_BYTES) -> dict[Origin, Stamp]:
    """The summary from `encode_summary` output; ProtocolError for anything malformed."""
    obj = _unpack(data, max_bytes, "state.summary")
    if not isinstance(obj, list):
        raise ProtocolError("expected an array", kind="state.summary")
    summary: dict[Origin, Stamp] = {}
    for item in obj:
        if not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], bytes):
            raise ProtocolError("expected [origin bytes, generation, version]",
                                kind="state.summary")
        try:
            origin = _check_origin(item[0].hex())
            summary[origin] = (_check_count(item[1], "generation"),
                               _check_count(item[2], "version"))
        except ValueError as exc:
            raise ProtocolError(str(exc), kind="state.summary") from None
    return summary


def _array_header_bytes(count: int) -> int:
    return 1 if count < 16 else 3 if count < 1 << 16 else 5


def batches(records: Iterable[Record], max_bytes: int) -> list[tuple[Record, ...]]:
    """`records` split into groups whose encoding fits `max_bytes`, in order.

    A record too big for `max_bytes` on its own forms a group of one: the caller sees
    `fits(group, max_bytes)` is false and sends that group as a Link Resource.
    """
    groups: list[tuple[Record, ...]] = []
    current: list[Record] = []
    body = 0  # encoded bytes of the records in `current`, without the array header
    for record in records:
        size = len(_pack(record.pack()))
        if current and _array_header_bytes(len(current) + 1) + body + size > max_bytes:
            groups.append(tuple(current))
            current, body = [], 0
        current.append(record)
        body += size
    if current:
        groups.append(tuple(current))
    return groups


def packets_needed(records: Iterable[Record], max_bytes: int) -> int:
    """How many payloads of `max_bytes` the records take (a lower bound when one is too big)."""
    return sum(max(1, math.ceil(encoded_size(group) / max_bytes))
               for group in batches(records, max_bytes))
