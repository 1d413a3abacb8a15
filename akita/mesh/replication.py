"""Ledger replication over Links, the pure part: the bodies of the two requests, how large a
served bundle may be, and which feed to pull next from a cluster mate.

Two Link request paths, named after the ledger channel (see `workers.gateway.replicate`):

- ``{ledger_channel}/heads``: request and response are both `replication.encode_heads` of the
  sender's heads for the feeds of its cluster's members ([[feed, seq, hash prefix], …]), so
  one round trip tells each side what the other holds.
- ``{ledger_channel}/range``: request ``[feed (16 bytes), after_seq, with_key]``; response
  ``[bundle, head_seq]``: a `replication` bundle (b"" when nothing follows after_seq) and how
  far the server holds the feed.

Pure: no RNS, no sockets.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import msgpack

from akita.errors import ProtocolError
from akita.ledger import bundles
from akita.ledger.bundles import Head
from akita.wire import mesh

HEADS_MAX_BYTES = 256 << 10
RANGE_REQUEST_MAX_BYTES = 64
# A range response is the bundle plus what wraps it: our [bundle, head_seq] (≤ 1 + 5 + 9)
# inside Links' [request_id (18), [0, payload (≤ 5 of header)]] (≤ 1 + 1 + 1): 41 bytes at
# most; the rest is margin.
RESPONSE_ENVELOPE_BYTES = 48
# What a node answers a range request with when its airtime budget cannot pay for the
# response now (where the budget binds): the asker tries again later, not counting it a
# failure.
BUSY = "busy: this node's airtime budget is spent for now"
# Below this a bundle would spend most of itself on its key, prev hash and checkpoint (about
# 170 bytes): on a link with small packets (radio, UDP) a bundle of a few KB travels as one
# Resource instead, whose parts carry little more than the data.
MIN_BUNDLE_BYTES = 4096
RANGE_RESPONSE_MAX_BYTES = bundles.MAX_BUNDLE_BYTES + 1024


@dataclass(frozen=True, slots=True)
class RangeRequest:
    feed: str
    after_seq: int
    with_key: bool


def bundle_budget(link_mdu: int) -> int:
    """How many bytes of bundle to serve on a link whose packets carry `link_mdu` bytes: a
    whole packet when one is large enough to be worth it, else `MIN_BUNDLE_BYTES`."""
    fits = link_mdu - RESPONSE_ENVELOPE_BYTES
    return max(fits, MIN_BUNDLE_BYTES)


def encode_range_request(request: RangeRequest) -> bytes:
    return mesh.pack([bytes.fromhex(request.feed), request.after_seq, request.with_key])


def decode_range_request(data: bytes) -> RangeRequest:
    """The request in `data`; raises `wire.WireError` for anything else."""
    body = mesh.unpack(data, RANGE_REQUEST_MAX_BYTES)
    if type(body) is not list or len(body) != 3:
        raise mesh.WireError("a range request is [feed, after_seq, with_key]")
    feed, after_seq, with_key = body
    if type(feed) is not bytes or len(feed) != bundles.FEED_ID_BYTES:
        raise mesh.WireError(f"feed: expected {bundles.FEED_ID_BYTES} bytes")
    if type(after_seq) is not int or not 0 <= after_seq < 1 << 63:
        raise mesh.WireError("after_seq: expected an integer >= 0")
    if type(with_key) is not bool:
        raise mesh.WireError("with_key: expected a boolean")
    return RangeRequest(feed.hex(), after_seq, with_key)


def encode_range_response(bundle: bytes, head_seq: int) -> bytes:
    return mesh.pack([bundle, head_seq])


def decode_range_response(data: bytes) -> tuple[bytes, int]:
    """(bundle, head_seq) from a range response; raises `wire.WireError` for anything else.
    The bundle itself is checked by the ledger writer, not here."""
    body = mesh.unpack(data, RANGE_RESPONSE_MAX_BYTES)
    if (type(body) is not list or len(body) != 2 or type(body[0]) is not bytes
            or type(body[1]) is not int or body[1] < 0):
        raise mesh.WireError("a range response is [bundle, head_seq]")
    return body[0], body[1]


def bundle_feed(bundle: bytes) -> str | None:
    """The feed a bundle claims to be of (its second element), read without decoding the
    rest; None when `bundle` does not start like one. The ledger writer checks the rest."""
    unpacker = msgpack.Unpacker(max_buffer_size=len(bundle) or 1)
    unpacker.feed(bundle)
    try:
        if unpacker.read_array_header() != 8 or unpacker.unpack() != bundles.BUNDLE_VERSION:
            return None
        feed = unpacker.unpack()
    except (msgpack.UnpackException, ValueError, TypeError):
        return None
    if type(feed) is not bytes or len(feed) != bundles.FEED_ID_BYTES:
        return None
    return feed.hex()


def decode_peer_heads(data: bytes) -> dict[str, Head]:
    """A peer's heads; raises `wire.WireError` for anything else (size bounded first)."""
    if len(data) > HEADS_MAX_BYTES:
        raise mesh.WireError(f"heads of {len(data)} bytes exceed {HEADS_MAX_BYTES}")
    try:
        return bundles.decode_heads(data)
    except ProtocolError as exc:
        raise mesh.WireError(str(exc)) from None


def member_heads(heads: Mapping[str, Head], members: Collection[str]) -> dict[str, Head]:
    """The heads of feeds whose author is a member: all a mate is told, or asked for."""
    return {feed: head for feed, head in heads.items() if feed in members}


def news_for(mine: Mapping[str, Head], told: Mapping[str, Head] | None,
             theirs: Mapping[str, Head] | None, feeds: Collection[str]) -> bool:
    """Whether a mate should be sent our heads now: one of `feeds` (those we speak for: our
    own, and members' whose author is not a live mate to tell it) moved since we last told
    this mate (`told`), and the mate, as far as we know (`theirs`), lacks it.

    Only the author (or, for a gone author, whoever holds the feed) tells: a mate that
    pulled an event does not tell the others, so one new event costs one exchange per mate
    instead of a cascade; a mate that missed it still gets it at the next refresh."""
    held = theirs or {}
    for feed in feeds:
        head = mine.get(feed)
        if head is None or (told is not None and told.get(feed) == head):
            continue
        known = held.get(feed)
        if known is None or known.seq < head.seq:
            return True
    return False


def next_pull(mine: Mapping[str, Head], theirs: Mapping[str, Head], *,
              members: Collection[str], skip: Collection[str],
              stalled: Mapping[str, Head]) -> tuple[str, int] | None:
    """The next (feed, after_seq) to ask a mate for, or None when it has nothing for us.

    Only feeds whose author is one of `members` (a peer must not fill our disk with arbitrary
    valid feeds); never one in `skip` (our own, forked ones, ones another mate is sending);
    never one `stalled` at the head the mate still reports (its last pull brought nothing
    new: asking again would loop until the mate's head moves).
    """
    for feed, after_seq in bundles.missing(mine, theirs, skip=skip):
        if feed in members and stalled.get(feed) != theirs[feed]:
            return feed, after_seq
    return None
