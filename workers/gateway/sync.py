"""State sync: this node's own record, the merged view of its peers' records, and how a node
that is behind catches up.

- The own record holds what the node writes itself (resources from the sampler, queue
  depth, task types, named services, capabilities) and the custom keys set with
  `akitactl state set` or the client. Its (generation, version) stamp goes out in every
  announce; the store's digest too.
- A node that hears a peer announce a stamp newer than the one it holds for that peer (or,
  for a cluster mate, a different digest) pulls: a Link request carrying its summary, whose
  response is the delta (a Resource when it exceeds a packet, handled by `links`).
- When the own record changes, cluster mates are pushed the new record at once, so a
  `state set` is visible in the cluster within a round trip rather than an announce.

Records are signed by their origin (Ed25519 over the packed record) and travel with the
origin's public key, whose hash must be the origin's node id: a record relayed by a third
node (or read back from the ledger) is accepted only if its origin really wrote it, so an
admitted peer cannot put words in another node's mouth.

Pure logic: no RNS, no sockets (`akita.identity` signs and verifies).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from akita import identity as ident
from akita.mesh import state as st
from akita.wire import mesh

log = logging.getLogger(__name__)

MAX_DELTA_BYTES = 4 << 20
MAX_CUSTOM_KEYS = 256
MAX_CUSTOM_VALUE_BYTES = 4096
LIST_HEADER_BYTES = 5             # msgpack array header, at most
# Keys whose values change by themselves (sampled load, queue, the executor's task load):
# a snapshot of the view does not follow them (see `ViewSnapshots`).
VOLATILE_KEYS = frozenset({st.KEY_RESOURCES, st.KEY_QUEUE_DEPTH, st.KEY_TASK_LOAD})
SNAPSHOT_BURST = 3



def record_bytes(record: st.Record) -> bytes:
    """What an origin signs: the packed record (canonical, so every holder gets the same)."""
    data: bytes = msgpack.packb(record.pack(), use_bin_type=True)
    return data


@dataclass
class SyncCounters:
    pulls: int = 0
    pushes: int = 0
    records_taken: int = 0
    bad_signature: int = 0
    malformed: int = 0
    over_quota: int = 0


@dataclass
class StateSync:
    """The node's state store plus the signatures of the records it holds."""

    store: st.StateStore
    identity: ident.NodeIdentity
    signatures: dict[str, tuple[st.Stamp, bytes]] = field(default_factory=dict)
    public_keys: dict[str, bytes] = field(default_factory=dict)
    counters: SyncCounters = field(default_factory=SyncCounters)
    # Bounds on a record taken from a peer (`[security] max_record_bytes / max_record_keys`):
    # one peer's record is copied into every snapshot and replicated, so it must stay small.
    max_record_bytes: int = 64 << 10
    max_record_keys: int = 256
    on_refused: Callable[[str, str, str], None] | None = None   # (reason, origin, detail)

    @classmethod
    def create(cls, identity: ident.NodeIdentity, generation: int,
               previous_own: st.Record | None = None) -> StateSync:
        """A fresh store; `previous_own` (from the ledger) carries custom keys over a restart."""
        node_id = identity.node_id
        store = st.StateStore.create(node_id, generation)
        if previous_own is not None and previous_own.origin == node_id:
            store = st.StateStore(node_id, {node_id: previous_own}).restarted(generation)
        return cls(store, identity, public_keys={node_id: identity.public_key})

    @property
    def own(self) -> st.Record:
        return self.store.own

    # --- local writes ---------------------------------------------------------------------------

    def update_own(self, changes: Mapping[str, Any], removed: Iterable[str] = ()) -> bool:
        """Apply node-written keys; False (no new version) when nothing actually changes."""
        current = self.own.as_dict()
        if all(current.get(k) == _canon(v) for k, v in changes.items()) and \
                not any(k in current for k in removed):
            return False
        self.store = self.store.update(changes, removed)
        return True

    def set_custom(self, key: str, value: Any) -> None:
        """`akitactl state set`: raises ValueError with a one-line reason for a bad key/value."""
        st.check_custom_key(key)
        if len(msgpack.packb(value, use_bin_type=True)) > MAX_CUSTOM_VALUE_BYTES:
            raise ValueError(f"state value for {key!r} is over {MAX_CUSTOM_VALUE_BYTES} bytes")
        custom = [k for k in self.own.as_dict() if k not in st.RESERVED_KEYS]
        if key not in custom and len(custom) >= MAX_CUSTOM_KEYS:
            raise ValueError(f"a node holds at most {MAX_CUSTOM_KEYS} custom state keys")
        self.store = self.store.set(key, value)

    # --- what goes out ------------------------------------------------------------------------

    def signed(self, record: st.Record) -> bytes | None:
        """The signature we hold (or make, for our own record) for `record`."""
        held = self.signatures.get(record.origin)
        if held is not None and held[0] == record.stamp:
            return held[1]
        if record.origin == self.store.local:
            signature = self.identity.sign(record_bytes(record))
            self.signatures[record.origin] = (record.stamp, signature)
            return signature
        return None

    def encode_delta(self, summary: Mapping[str, st.Stamp], origins: set[str],
                     max_bytes: int | None = None) -> bytes:
        """Records (with signatures) newer than `summary`, for origins in `origins`.

        With `max_bytes` (a link packet's room), only as many as fit, oldest origin first
        and at least one: a puller that got some asks again with its new summary, so a
        large delta crosses a radio link as packets rather than as one Resource."""
        items: list[Any] = []
        size = LIST_HEADER_BYTES
        for record in self.store.delta_since(summary):
            if record.origin not in origins and record.origin != self.store.local:
                continue
            item = self._item(record)
            if item is None:
                continue
            item_bytes = len(mesh.pack(item))
            if max_bytes is not None and items and size + item_bytes > max_bytes:
                break
            items.append(item)
            size += item_bytes
        return mesh.pack(items)

    def encode_own(self) -> bytes:
        return mesh.pack([self._item(self.own)])

    def _item(self, record: st.Record) -> list[Any] | None:
        signature = self.signed(record)
        public_key = self.public_keys.get(record.origin)
        if signature is None or public_key is None:
            return None
        return [record.pack(), signature, public_key]

    def encode_summary(self) -> bytes:
        return st.encode_summary(self.store.summary())

    # --- what comes in ------------------------------------------------------------------------

    def take(self, data: bytes, accept: Callable[[str], bool]) -> list[str]:
        """Merge a delta from a peer; returns the origins whose record changed.

        `accept(origin)`: whether records of that origin are wanted (live peers only).
        Records of our own origin are never taken from others.
        """
        try:
            items = mesh.unpack(data, MAX_DELTA_BYTES)
        except mesh.WireError:
            self.counters.malformed += 1
            return []
        if not isinstance(items, list):
            self.counters.malformed += 1
            return []
        verified = [found for found in map(self._verified, items) if found is not None]
        wanted = [rec for rec, _sig, _key in verified
                  if rec.origin != self.store.local and accept(rec.origin)]
        changed = self.store.changed_by(wanted)
        if changed:
            self.store = self.store.merge(rec for rec in wanted if rec.origin in changed)
            for rec, signature, public_key in verified:
                if rec.origin in changed and self.store.get(rec.origin) == rec:
                    self.signatures[rec.origin] = (rec.stamp, signature)
                    self.public_keys[rec.origin] = public_key
            self.counters.records_taken += len(changed)
        return list(changed)

    def _verified(self, item: Any) -> tuple[st.Record, bytes, bytes] | None:
        """(record, signature, public key) if `item` is a record its origin signed."""
        if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[1], bytes)
                or not isinstance(item[2], bytes)):
            self.counters.malformed += 1
            return None
        try:
            record = st.Record.unpack(item[0])
        except mesh.BAD_INPUT:
            self.counters.malformed += 1
            return None
        signature, public_key = item[1], item[2]
        packed = record_bytes(record)
        if len(packed) > self.max_record_bytes or len(record.entries) > self.max_record_keys:
            self.counters.over_quota += 1
            self._refused("over_quota", record.origin, f"state record of {len(packed)} bytes, "
                          f"{len(record.entries)} keys")
            return None
        if (len(public_key) != 64 or ident.node_id_of(public_key) != record.origin
                or not ident.verify(public_key, signature, packed)):
            self.counters.bad_signature += 1
            self._refused("bad_signature", record.origin, "state record")
            return None
        return record, signature, public_key

    def _refused(self, reason: str, origin: str, detail: str) -> None:
        if self.on_refused is not None:
            self.on_refused(reason, origin, detail)

    def behind(self, origin: str, stamp: st.Stamp) -> bool:
        """Does a peer announce a newer own record than the one we hold for it?"""
        held = self.store.get(origin)
        return held is None or stamp > held.stamp

    def forget_except(self, origins: Iterable[str]) -> None:
        """Keep only the records of live peers (and our own)."""
        keep = set(origins)
        self.store = self.store.retain(keep)
        for table in (self.signatures, self.public_keys):
            for origin in [o for o in table if o not in keep and o != self.store.local]:
                del table[origin]

    # --- persistence ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The merged view with signatures, as a ledger event's data."""
        items = []
        for origin, record in sorted(self.store.records.items()):
            item = self._item(record)
            if origin != self.store.local and item is not None:
                items.append(item)
        return {"records": items}

    def lasting_digest(self) -> bytes:
        """A digest of what `snapshot()` would hold, without the `VOLATILE_KEYS`: it changes
        when a record appears or goes, or a lasting key (task types, services, custom keys
        ...) of one changes."""
        digest = hashlib.sha256()
        for origin, record in sorted(self.store.records.items()):
            if origin != self.store.local and self._item(record) is not None:
                lasting = [[k, v] for k, v in record.entries if k not in VOLATILE_KEYS]
                digest.update(msgpack.packb([origin, lasting], use_bin_type=True))
        return digest.digest()

    def restore(self, snapshot: Mapping[str, Any]) -> int:
        """Take records from a ledger snapshot (signatures are checked again)."""
        items = snapshot.get("records")
        if not isinstance(items, list):
            return 0
        return len(self.take(mesh.pack(items), lambda _origin: True))


def _canon(value: Any) -> Any:
    try:
        return st.Record.new("00", 0, 0, {"k": value}).entries[0][1]
    except ValueError:
        return value


@dataclass
class ViewSnapshots:
    """When the merged view goes into the ledger as ``state.view`` (what a restarted gateway
    serves until it hears its peers again). Every event of the own feed is replicated to
    each cluster mate, over the radio too, so:

    - only a change a restart would miss is written: a record appearing or going, or a
      lasting key of one changing. Load figures (`VOLATILE_KEYS`) change by themselves
      and are stale after a restart anyway; were they followed, every state refresh of
      every peer would put an event in every member's feed, and an idle cluster would
      never stop replicating;
    - at once (at the caller's next check), at most `burst` in a row and on average one per
      `interval_s` (a token bucket): an operator's rare change is in the ledger before the
      cluster goes idle, and a peer that keeps changing its record costs a bounded rate.
    """

    interval_s: float
    burst: int = SNAPSHOT_BURST
    tokens: float = SNAPSHOT_BURST
    refilled_at: float | None = None
    written: bytes | None = None     # `lasting_digest()` of the last snapshot written
    pending: bool = False            # a change waits for a token

    def take(self, sync: StateSync, now: float) -> dict[str, Any] | None:
        """The snapshot to write now, or None: nothing lasting changed, or no token yet
        (then `pending` stays set)."""
        key = sync.lasting_digest()
        if key == self.written:
            self.pending = False
            return None
        if self.refilled_at is not None:
            earned = (now - self.refilled_at) / self.interval_s
            self.tokens = min(float(self.burst), self.tokens + earned)
        self.refilled_at = now
        if self.tokens < 1:
            self.pending = True
            return None
        self.tokens -= 1
        self.written, self.pending = key, False
        return sync.snapshot()
