"""Feed replication, the ledger side: bundles, heads, and the checks a bundle must pass.

Feeds replicate Scuttlebutt-style: two nodes swap heads ({feed → latest seq}), each asks the
other for what it misses (`missing`), and the answer is a *bundle*: a run of one feed's
events with the checkpoint that signs its last event. The receiver recomputes every hash from
the last entry it holds and stores nothing unless the author's signature covers it. Whoever
serves a bundle (the author or any node holding a copy) cannot alter it undetected, so
bundles may travel through any peer.

Bundle (one msgpack array, bytes as bin, ts as float64):

    [1,                                  # bundle format version
     feed,                               # bin 16: the author's node id
     public_key | nil,                   # bin 64 (X25519 ‖ Ed25519); nil: the receiver has it
     after_seq,                          # the events below follow this seq
     prev | nil,                         # bin 32: hash of entry after_seq; nil when it is 0
     [kind, ...],                        # each distinct event kind once, in first-use order
     [[ts, kind_index, data], ...],      # seq after_seq+1, +2, …; data: the stored msgpack
     [[seq, ts, hash, signature], ...]]  # checkpoints in the range, ascending (≤ 16)

Nothing per event repeats what the receiver recomputes (seq, prev, hash), and a kind is
spelled once per bundle, so a bundle costs less per event than the stored row. A served
bundle carries one checkpoint, at its last event: one signature covers everything before
it. The author can cut its own feed anywhere (it signs the cut on the spot); a copy can
only be cut where it holds a checkpoint, so a bundle of a copy may exceed the requested size.

A receiver stores a bundle's events only up to its last valid checkpoint, so the head of
every replicated feed is signed. A bundle whose signed chain differs from a signed entry
held is proof that the author forked its feed (`fork_evidence`, checkable by anyone with
`verify_fork_evidence`).

Pure: no sockets, no database. `workers.ledger.replicas.ReplicaStore` applies these rules to
the node's database inside the ledger writer.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

from akita import identity
from akita.errors import ProtocolError
from akita.ledger import chain

BUNDLE_VERSION = 1
FEED_ID_BYTES = 16
HASH_BYTES = 32
KEY_BYTES = 64
SIGNATURE_BYTES = 64
MAX_KIND_CHARS = 200
MAX_KINDS = 4096             # kind indexes then fit in 3 bytes of msgpack
# A served bundle carries one checkpoint; the cap keeps a peer from making the writer check
# thousands of signatures (~70 µs each) for one bundle.
MAX_CHECKPOINTS = 16
MAX_BUNDLE_BYTES = 8 << 20   # well under protocol.MAX_FRAME_BYTES, with room for the envelope
HEAD_HASH_PREFIX_BYTES = 8   # compact heads carry this much of each head hash

_WHAT = "ledger.bundle"
_UNPACK_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    ts: float
    hash: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Bundle:
    """Events of `feed` numbered after_seq+1, after_seq+2, …, each (ts, kind, data bytes)."""

    feed: str
    public_key: bytes | None
    after_seq: int
    prev: bytes
    events: list[tuple[float, str, bytes]]
    checkpoints: list[Checkpoint]

    @property
    def last_seq(self) -> int:
        return self.after_seq + len(self.events)


# --- encoding -------------------------------------------------------------------------------


def encode_bundle(bundle: Bundle) -> bytes:
    kinds: dict[str, int] = {}
    events = [(ts, kinds.setdefault(kind, len(kinds)), data) for ts, kind, data in bundle.events]
    body = [BUNDLE_VERSION, bytes.fromhex(bundle.feed), bundle.public_key, bundle.after_seq,
            bundle.prev if bundle.after_seq else None, list(kinds), events,
            [[c.seq, c.ts, c.hash, c.signature] for c in bundle.checkpoints]]
    return msgpack.packb(body, use_bin_type=True)


class BundleSize:
    """The encoded size of a bundle ending at one checkpoint, kept up to date as events are
    added, so a range can be cut to a byte budget (a link MDU) without encoding it twice.
    Exact for events and checkpoints read from the ledger (every ts a float)."""

    def __init__(self, with_key: bool, after_seq: int) -> None:
        self.after_seq = after_seq
        self.kinds: dict[str, int] = {}
        self.events = 0
        # version, feed, key, after_seq, prev, the checkpoints' array and one checkpoint
        # [seq, ts, hash, signature] less its seq, which grows with the events.
        self._fixed = (1 + 1 + (2 + FEED_ID_BYTES) + (2 + KEY_BYTES if with_key else 1)
                       + _uint_size(after_seq) + (2 + HASH_BYTES if after_seq else 1)
                       + 1 + (1 + 9 + (2 + HASH_BYTES) + (2 + SIGNATURE_BYTES)))
        self._kinds_bytes = 0
        self._events_bytes = 0

    def add(self, kind: str, data: bytes) -> int:
        """Add one event [ts, kind_index, data]; returns the bundle's size with it."""
        kinds = self.kinds
        index = kinds.get(kind)
        if index is None:
            index = kinds[kind] = len(kinds)
            self._kinds_bytes += _str_size(kind)
        length = len(data)
        self._events_bytes += 10 + _uint_size(index) + _bin_header(length) + length
        self.events += 1
        return (self._fixed + _array_header(len(kinds)) + self._kinds_bytes
                + _array_header(self.events) + self._events_bytes
                + _uint_size(self.after_seq + self.events))


def _uint_size(value: int) -> int:
    if value < 1 << 7:
        return 1
    return 2 if value < 1 << 8 else 3 if value < 1 << 16 else 5 if value < 1 << 32 else 9


def _array_header(length: int) -> int:
    return 1 if length < 16 else 3 if length < 1 << 16 else 5


def _str_size(text: str) -> int:
    length = len(text.encode())
    return length + (1 if length < 32 else 2 if length < 1 << 8 else 3 if length < 1 << 16 else 5)


def _bin_header(length: int) -> int:
    return 2 if length < 1 << 8 else 3 if length < 1 << 16 else 5


def decode_bundle(data: bytes) -> Bundle:
    """The bundle in `data`; raises `ProtocolError` naming the part that is malformed."""
    if not isinstance(data, bytes):
        raise ProtocolError("a bundle is bytes", kind=_WHAT)
    if len(data) > MAX_BUNDLE_BYTES:
        raise ProtocolError(f"{len(data)} bytes exceed the limit of {MAX_BUNDLE_BYTES}",
                            kind=_WHAT)
    body = _unpack(data, "bundle")
    if not isinstance(body, list) or len(body) != 8:
        raise ProtocolError("not an array of 8 parts", kind=_WHAT)
    version, feed, key, after_seq, prev, kinds, events, checkpoints = body
    if version != BUNDLE_VERSION:
        raise ProtocolError(f"version {version!r}, expected {BUNDLE_VERSION}", kind=_WHAT,
                            field="version")
    _expect_bytes(feed, FEED_ID_BYTES, "feed")
    if key is not None:
        _expect_bytes(key, KEY_BYTES, "public_key")
    if type(after_seq) is not int or after_seq < 0:
        raise ProtocolError("must be an integer >= 0", kind=_WHAT, field="after_seq")
    if after_seq == 0:
        if prev is not None:
            raise ProtocolError("must be nil when after_seq is 0", kind=_WHAT, field="prev")
        prev = chain.GENESIS_HASH
    else:
        _expect_bytes(prev, HASH_BYTES, "prev")
    parsed = _decode_events(_decode_kinds(kinds), events)
    return Bundle(feed.hex(), key, after_seq, prev, parsed,
                  _decode_checkpoints(checkpoints, after_seq, after_seq + len(parsed)))


def _unpack(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False)
    except _UNPACK_ERRORS as exc:
        raise ProtocolError(f"{what} is not msgpack ({type(exc).__name__})", kind=_WHAT) from None


def _expect_bytes(value: Any, length: int, name: str) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise ProtocolError(f"expected {length} bytes", kind=_WHAT, field=name)


def _decode_kinds(kinds: Any) -> list[str]:
    if not isinstance(kinds, list) or len(kinds) > MAX_KINDS:
        raise ProtocolError(f"expected a list of at most {MAX_KINDS}", kind=_WHAT, field="kinds")
    for kind in kinds:
        if type(kind) is not str or not 0 < len(kind) <= MAX_KIND_CHARS:
            raise ProtocolError(f"a kind is a string of 1 to {MAX_KIND_CHARS} characters",
                                kind=_WHAT, field="kinds")
    return kinds


def _decode_events(kinds: list[str], events: Any) -> list[tuple[float, str, bytes]]:
    if not isinstance(events, list):
        raise ProtocolError("expected a list", kind=_WHAT, field="events")
    parsed = []
    for index, event in enumerate(events):
        if type(event) is not list or len(event) != 3:
            raise ProtocolError(f"event {index} is not [ts, kind, data]", kind=_WHAT,
                                field="events")
        ts, kind_index, data = event
        if type(ts) is not float or type(kind_index) is not int or type(data) is not bytes:
            raise ProtocolError(f"event {index}: wrong types", kind=_WHAT, field="events")
        if not 0 <= kind_index < len(kinds):
            raise ProtocolError(f"event {index}: no kind {kind_index}", kind=_WHAT,
                                field="events")
        # Readers unpack stored data as it is, so what is stored must be one msgpack value.
        _unpack(data, f"event {index} data")
        parsed.append((ts, kinds[kind_index], data))
    return parsed


def _decode_checkpoints(checkpoints: Any, after_seq: int, last_seq: int) -> list[Checkpoint]:
    if not isinstance(checkpoints, list) or len(checkpoints) > MAX_CHECKPOINTS:
        raise ProtocolError(f"expected a list of at most {MAX_CHECKPOINTS}", kind=_WHAT,
                            field="checkpoints")
    parsed: list[Checkpoint] = []
    for entry in checkpoints:
        if type(entry) is not list or len(entry) != 4:
            raise ProtocolError("a checkpoint is [seq, ts, hash, signature]", kind=_WHAT,
                                field="checkpoints")
        seq, ts, head_hash, signature = entry
        low = parsed[-1].seq if parsed else after_seq
        if type(seq) is not int or not low < seq <= last_seq:
            raise ProtocolError(f"checkpoint seq {seq!r} is not ascending within the range "
                                f"{after_seq + 1}..{last_seq}", kind=_WHAT, field="checkpoints")
        if type(ts) not in (float, int):
            raise ProtocolError("checkpoint ts must be a number", kind=_WHAT, field="checkpoints")
        _expect_bytes(head_hash, HASH_BYTES, "checkpoints")
        _expect_bytes(signature, SIGNATURE_BYTES, "checkpoints")
        parsed.append(Checkpoint(seq, float(ts), head_hash, signature))
    return parsed


# --- heads and anti-entropy -----------------------------------------------------------------


class Head(NamedTuple):
    """The last entry of a feed as one node holds it (`hash` may be a prefix: see
    `encode_heads`); `signed_seq` is its last checkpoint."""

    seq: int
    hash: bytes
    signed_seq: int = 0


def heads_from_reply(feeds: Mapping[str, list[Any]]) -> dict[str, Head]:
    """The heads in a `ledger.heads_reply` (feed → [seq, hash, signed_seq])."""
    return {feed: Head(int(entry[0]), bytes(entry[1]), int(entry[2]))
            for feed, entry in feeds.items()}


def missing(my_heads: Mapping[str, Head], their_heads: Mapping[str, Head], *,
            skip: Iterable[str] = ()) -> list[tuple[str, int]]:
    """What to ask a peer for: (feed, after_seq) for each feed it holds further than we do.

    A feed both hold at the same seq under different hashes is asked for from one entry
    earlier: the bundle that comes back proves the fork. `skip`: our own feed (never taken
    from a peer) and feeds already known to be forked.
    """
    skipped = set(skip)
    wanted = []
    for feed, theirs in sorted(their_heads.items()):
        mine = my_heads.get(feed)
        if feed in skipped or theirs.seq <= 0:
            continue
        if mine is None:
            wanted.append((feed, 0))
        elif theirs.seq > mine.seq:
            wanted.append((feed, mine.seq))
        elif theirs.seq == mine.seq and not _same_hash(theirs.hash, mine.hash):
            wanted.append((feed, mine.seq - 1))
    return wanted


def _same_hash(a: bytes, b: bytes) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def encode_heads(heads: Mapping[str, Head], prefix_bytes: int = HEAD_HASH_PREFIX_BYTES) -> bytes:
    """Heads in a form small enough for a packet: [[feed (16 bytes), seq, hash prefix], …]."""
    return msgpack.packb([[bytes.fromhex(feed), head.seq, head.hash[:prefix_bytes]]
                          for feed, head in sorted(heads.items())], use_bin_type=True)


def decode_heads(data: bytes) -> dict[str, Head]:
    """Heads from `encode_heads`; raises `ProtocolError` for anything else."""
    body = _unpack(data, "heads")
    if not isinstance(body, list):
        raise ProtocolError("heads are a list", kind="ledger.heads")
    heads = {}
    for entry in body:
        if (type(entry) is not list or len(entry) != 3 or type(entry[0]) is not bytes
                or len(entry[0]) != FEED_ID_BYTES or type(entry[1]) is not int or entry[1] < 0
                or type(entry[2]) is not bytes or len(entry[2]) > HASH_BYTES):
            raise ProtocolError("a head is [feed, seq, hash prefix]", kind="ledger.heads")
        heads[entry[0].hex()] = Head(entry[1], entry[2])
    return heads


# --- checking a bundle against what is held -------------------------------------------------


class Outcome(enum.Enum):
    """What became of an ingested bundle. Only FORGERY, FORK and MALFORMED are recorded."""

    STORED = "stored"        # new signed events stored
    DUPLICATE = "duplicate"  # every signed event in it is held already
    GAP = "gap"              # it starts beyond the held head: ask again from there
    NEED_KEY = "need_key"    # a feed new here, and the bundle has no public key
    UNSIGNED = "unsigned"    # no checkpoint covers anything new
    OWN_FEED = "own_feed"    # this node's own feed is never taken from a peer
    MALFORMED = "malformed"  # not a bundle
    FORGERY = "forgery"      # key, chain or signature wrong
    FORK = "fork"            # signed, and conflicts with a signed entry held here


@dataclass(frozen=True, slots=True)
class Held:
    """What the receiver holds of a bundle's feed: its key (None: feed unknown), its head,
    and the hash of each held seq from the bundle's after_seq to where the bundle ends."""

    public_key: bytes | None
    head_seq: int
    hashes: Mapping[int, bytes]


@dataclass
class Plan:
    """The verdict on a bundle, with the rows (`ledger.Chain.extend` form) to store."""

    outcome: Outcome
    detail: str = ""
    rows: list[tuple[int, int, float, str, bytes, bytes, bytes]] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    public_key: bytes | None = None
    fork_seq: int = 0


def check_bundle(bundle: Bundle, held: Held, *, own_feed: str, feed_id: int = 0) -> Plan:
    """Decide what of `bundle` may be stored: only events that extend the held chain and that
    a valid checkpoint of the feed's own key covers; the unsigned tail is left out."""
    if bundle.feed == own_feed:
        return Plan(Outcome.OWN_FEED, "this node's own feed")
    key = bundle.public_key or held.public_key
    if key is None:
        return Plan(Outcome.NEED_KEY, "the feed is new here: send its public key")
    if identity.node_id_of(key) != bundle.feed or (held.public_key not in (None, key)):
        return Plan(Outcome.FORGERY, "public key does not hash to the feed id")
    if bundle.after_seq > held.head_seq:
        return Plan(Outcome.GAP, f"starts after seq {bundle.after_seq}, "
                                 f"held up to {held.head_seq}")
    rows, _seq, _prev = chain.Chain(bundle.feed, feed_id).extend(
        bundle.events, bundle.after_seq, bundle.prev)
    bad = _bad_checkpoint(bundle, key, rows)
    if bad:
        return Plan(Outcome.FORGERY, bad)
    signed = bundle.checkpoints[-1].seq if bundle.checkpoints else bundle.after_seq
    fork_seq = _first_conflict(bundle, held, rows, signed)
    if fork_seq:
        return Plan(Outcome.FORK, f"a signed entry at seq {fork_seq} differs from the one "
                                  f"held", public_key=key, fork_seq=fork_seq)
    if bundle.after_seq and held.hashes[bundle.after_seq] != bundle.prev:
        return Plan(Outcome.UNSIGNED, f"prev hash differs from the held seq "
                                      f"{bundle.after_seq} and nothing signed vouches for it")
    if signed <= held.head_seq:
        if bundle.last_seq > held.head_seq:
            return Plan(Outcome.UNSIGNED, "no checkpoint covers the new events")
        return Plan(Outcome.DUPLICATE, "nothing new")
    start = held.head_seq - bundle.after_seq
    return Plan(Outcome.STORED, rows=rows[start:signed - bundle.after_seq],
                checkpoints=[c for c in bundle.checkpoints if c.seq > held.head_seq],
                public_key=key)


def _bad_checkpoint(bundle: Bundle, key: bytes,
                    rows: list[tuple[int, int, float, str, bytes, bytes, bytes]]) -> str:
    """Why a checkpoint of the bundle is not the author's word on its chain, or ""."""
    for checkpoint in bundle.checkpoints:
        message = chain.checkpoint_message(bundle.feed, checkpoint.seq, checkpoint.hash)
        if not identity.verify(key, checkpoint.signature, message):
            return f"checkpoint signature at seq {checkpoint.seq} does not verify"
        if rows[checkpoint.seq - bundle.after_seq - 1][6] != checkpoint.hash:
            return (f"chain broken: the events do not hash to the head signed at seq "
                    f"{checkpoint.seq}")
    return ""


def _first_conflict(bundle: Bundle, held: Held,
                    rows: list[tuple[int, int, float, str, bytes, bytes, bytes]],
                    signed: int) -> int:
    """The first seq, up to `signed`, where the bundle's chain differs from the held one;
    0 when none does. Everything held is signed, so a conflict here is a proven fork."""
    if signed <= bundle.after_seq:
        return 0
    if bundle.after_seq and held.hashes[bundle.after_seq] != bundle.prev:
        return bundle.after_seq  # the author signed a chain that differs at or before it
    for index in range(min(held.head_seq, signed) - bundle.after_seq):
        seq = bundle.after_seq + 1 + index
        if rows[index][6] != held.hashes[seq]:
            return seq
    return 0


# --- fork evidence --------------------------------------------------------------------------


def fork_evidence(held_bundle: bytes, their_bundle: bytes) -> bytes:
    """The stored proof of a fork: two bundles of one feed, both signed, that disagree."""
    return msgpack.packb([held_bundle, their_bundle], use_bin_type=True)


def verify_fork_evidence(evidence: bytes) -> tuple[str, int] | None:
    """(feed, seq) when `evidence` proves that the feed's author signed two different
    entries at seq; None when it proves nothing. Anyone can run this: it needs no ledger."""
    try:
        first, second = (decode_bundle(part) for part in _unpack(evidence, "evidence"))
    except (ProtocolError, TypeError, ValueError):
        return None
    key = first.public_key or second.public_key
    if first.feed != second.feed or key is None or identity.node_id_of(key) != first.feed:
        return None
    chains = [_signed_hashes(bundle, key) for bundle in (first, second)]
    if chains[0] is None or chains[1] is None:
        return None
    for seq in sorted(set(chains[0]) & set(chains[1])):
        if chains[0][seq] != chains[1][seq]:
            return first.feed, seq
    return None


def _signed_hashes(bundle: Bundle, key: bytes) -> dict[int, bytes] | None:
    """seq → hash for the entries the bundle's last checkpoint vouches for (after_seq's via
    prev), or None when its signatures do not hold."""
    rows, _seq, _prev = chain.Chain(bundle.feed, 0).extend(bundle.events, bundle.after_seq,
                                                          bundle.prev)
    if not bundle.checkpoints or _bad_checkpoint(bundle, key, rows):
        return None
    hashes = {row[1]: row[6] for row in rows if row[1] <= bundle.checkpoints[-1].seq}
    if bundle.after_seq:
        hashes[bundle.after_seq] = bundle.prev
    return hashes


# --- recording refusals without letting a peer flood the ledger -----------------------------


class RefusalLimiter:
    """Lets at most `per_sender` refusal records per sender, and `total` in all, through in
    any `window_s`; counts the refusals it held back so the next record can say how many."""

    def __init__(self, per_sender: int = 3, total: int = 20, window_s: float = 600.0) -> None:
        self.per_sender = per_sender
        self.total = total
        self.window_s = window_s
        self._recent: deque[tuple[float, str]] = deque()
        self.suppressed = 0

    def allow(self, sender: str, now: float) -> tuple[bool, int]:
        """(whether to record this refusal, how many were held back since the last record)."""
        while self._recent and self._recent[0][0] <= now - self.window_s:
            self._recent.popleft()
        from_sender = sum(1 for _ts, who in self._recent if who == sender)
        if len(self._recent) >= self.total or from_sender >= self.per_sender:
            self.suppressed += 1
            return False, 0
        self._recent.append((now, sender))
        held_back, self.suppressed = self.suppressed, 0
        return True, held_back
