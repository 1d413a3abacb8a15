"""Inter-cluster messages, the pure part: what a message may hold, the bodies that cross
Links, retry timing, duplicate suppression and the node's subscription table.

No RNS, no sockets, no clock: time comes in as an argument, so every rule is tested
directly. `workers.gateway.intercluster` wires these to the gateway's links and loop.

Limits
    A topic is 1–128 printable characters without whitespace (dotted by convention, e.g.
    ``alerts.fire``); a subscription prefix is the same but may be empty (every topic). A
    payload is any JSON value (null, bools, numbers, strings, lists, maps with string keys)
    whose msgpack encoding fits ``[cluster] max_message_bytes``. Bytes, NaN and infinities
    are refused: a payload must print as JSON on the receiving side.

Link bodies (msgpack maps, checked field by field by `decode_send` / `decode_deliver`)
    send     sender → target coordinator: {id, topic, payload, to, from_cluster, wait_s}
    deliver  coordinator → member:        {id, topic, payload, from, from_cluster}
    outcome  the coordinator's answer:    {delivered: [NODE_ID…], failed: [[NODE_ID, why]…],
                                          coordinator, term}
"""

from __future__ import annotations

import math
import os
import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from akita.wire import mesh

MAX_TOPIC_CHARS = 128
ID_HEX_CHARS = 32               # 16 random bytes
MAX_SUBSCRIPTIONS = 64          # distinct prefixes one node advertises (its state record)
MAX_NESTING = 64
# A body holds the payload plus a few short fields; anything past this is not ours.
BODY_OVERHEAD_BYTES = 1024
MIN_WAIT_S = 0.05
MAX_WAIT_S = 3600.0


class MessageError(ValueError):
    """A topic, prefix or payload that cannot be sent; the text says which and why."""


class PayloadTooLarge(MessageError):
    """The payload's encoding exceeds ``[cluster] max_message_bytes``."""


# --- what a message may hold --------------------------------------------------------------


def new_id() -> str:
    return os.urandom(ID_HEX_CHARS // 2).hex()


def check_id(value: Any) -> str:
    """A message id: 16 to 64 lowercase hex characters (clients may choose their own)."""
    if (not isinstance(value, str) or not 16 <= len(value) <= 64
            or any(c not in "0123456789abcdef" for c in value)):
        raise MessageError(f"message id: expected 16 to 64 lowercase hex digits, got {value!r}")
    return value


def check_topic(topic: Any, *, prefix: bool = False) -> str:
    """A valid topic (or, with `prefix`, subscription prefix: may be empty)."""
    what = "topic prefix" if prefix else "topic"
    if not isinstance(topic, str):
        raise MessageError(f"{what}: expected text, got {type(topic).__name__}")
    if len(topic) > MAX_TOPIC_CHARS or (not topic and not prefix):
        raise MessageError(f"{what}: expected {0 if prefix else 1} to {MAX_TOPIC_CHARS} "
                           f"characters, got {len(topic)}")
    if not topic.isprintable() or any(c.isspace() for c in topic):
        raise MessageError(f"{what}: {topic!r} holds whitespace or unprintable characters")
    return topic


def matches(prefixes: Iterable[str], topic: str) -> bool:
    """Does any subscription prefix cover `topic`?"""
    return any(topic.startswith(prefix) for prefix in prefixes)


def payload_size(payload: Any, max_bytes: int) -> int:
    """The payload's encoded size; MessageError if it is not JSON or exceeds `max_bytes`."""
    _check_json(payload, "payload", 0)
    size = len(mesh.pack(payload))
    if size > max_bytes:
        raise PayloadTooLarge(f"payload is {size} bytes encoded, over the limit of {max_bytes} "
                           f"([cluster] max_message_bytes)")
    return size


def _check_json(value: Any, where: str, depth: int) -> None:
    if depth > MAX_NESTING:
        raise MessageError(f"{where}: nested deeper than {MAX_NESTING} levels")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 64):
            raise MessageError(f"{where}: integer out of the 64-bit range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MessageError(f"{where}: {value} is not a JSON number")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise MessageError(f"{where}: map key {key!r} is not text")
            _check_json(item, f"{where}[{key!r}]", depth + 1)
        return
    raise MessageError(f"{where}: {type(value).__name__} is not a JSON value")


# --- link bodies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SendBody:
    """What a sender asks a target coordinator to deliver."""

    id: str
    topic: str
    payload: Any
    to: str              # the target cluster
    from_cluster: str    # the sender's cluster ("" before its first seat)
    wait_s: float        # how long the sender waits for the outcome

    def encode(self) -> bytes:
        return mesh.pack({"id": self.id, "topic": self.topic, "payload": self.payload,
                          "to": self.to, "from_cluster": self.from_cluster,
                          "wait_s": self.wait_s})


@dataclass(frozen=True)
class DeliverBody:
    """What a coordinator hands a subscribed member; `sender` is the origin's identity, as
    the coordinator saw it on the sender's Link (never a claim from the body)."""

    id: str
    topic: str
    payload: Any
    sender: str
    from_cluster: str

    def encode(self) -> bytes:
        return mesh.pack({"id": self.id, "topic": self.topic, "payload": self.payload,
                          "from": self.sender, "from_cluster": self.from_cluster})


@dataclass(frozen=True)
class Outcome:
    """A coordinator's answer: who acknowledged, who did not (and why)."""

    delivered: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]
    coordinator: str
    term: int

    def encode(self) -> bytes:
        return mesh.pack({"delivered": list(self.delivered),
                          "failed": [list(item) for item in self.failed],
                          "coordinator": self.coordinator, "term": self.term})


def decode_send(data: bytes, max_payload_bytes: int) -> SendBody:
    body = _map(data, max_payload_bytes)
    wait_s = body.get("wait_s")
    if isinstance(wait_s, bool) or not isinstance(wait_s, (int, float)) \
            or not MIN_WAIT_S <= wait_s <= MAX_WAIT_S:
        raise mesh.WireError(f"wait_s: expected {MIN_WAIT_S} to {MAX_WAIT_S} s")
    payload = body.get("payload")
    _common(body, payload, max_payload_bytes)
    return SendBody(body["id"], body["topic"], payload, _text(body, "to"),
                    _text(body, "from_cluster"), float(wait_s))


def decode_deliver(data: bytes, max_payload_bytes: int) -> DeliverBody:
    body = _map(data, max_payload_bytes)
    payload = body.get("payload")
    _common(body, payload, max_payload_bytes)
    return DeliverBody(body["id"], body["topic"], payload, _text(body, "from"),
                       _text(body, "from_cluster"))


def decode_outcome(data: bytes) -> Outcome:
    body = _map(data, 1 << 20)
    delivered = body.get("delivered")
    failed = body.get("failed")
    if not isinstance(delivered, list) or not all(isinstance(n, str) for n in delivered):
        raise mesh.WireError("delivered: expected a list of node ids")
    if not isinstance(failed, list) or not all(
            isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f)
            for f in failed):
        raise mesh.WireError("failed: expected [node id, reason] pairs")
    term = body.get("term")
    if isinstance(term, bool) or not isinstance(term, int):
        raise mesh.WireError("term: expected a whole number")
    return Outcome(tuple(delivered), tuple((f[0], f[1]) for f in failed),
                   _text(body, "coordinator"), term)


def _map(data: bytes, max_payload_bytes: int) -> dict[str, Any]:
    body = mesh.unpack(data, max_payload_bytes + BODY_OVERHEAD_BYTES)
    if not isinstance(body, dict):
        raise mesh.WireError("not a msgpack map")
    return body


def _common(body: dict[str, Any], payload: Any, max_payload_bytes: int) -> None:
    if "payload" not in body:
        raise mesh.WireError("payload: missing")
    try:
        check_id(body.get("id"))
        check_topic(body.get("topic"))
        payload_size(payload, max_payload_bytes)
    except MessageError as exc:
        raise mesh.WireError(str(exc)) from None


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or len(value) > 64:
        raise mesh.WireError(f"{key}: expected a short text")
    return value


# --- retry timing ---------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff between attempts: `initial_s`, doubling up to `max_s`, each delay
    scaled by a random factor in [1 - jitter, 1 + jitter] so senders do not retry in step."""

    initial_s: float = 0.2
    max_s: float = 5.0
    jitter: float = 0.2
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        base = min(self.max_s, self.initial_s * (2 ** self.failures))
        self.failures += 1
        return base * self.rng.uniform(1 - self.jitter, 1 + self.jitter)


# --- duplicate suppression --------------------------------------------------------------


class DedupWindow:
    """Message keys seen within the last `window_s` (at most `max_entries` of them).

    A sender retries only until its deadline, so a window longer than the longest deadline
    catches every retry of a message already delivered.
    """

    def __init__(self, window_s: float, max_entries: int = 100_000) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def first_time(self, key: tuple[str, str], now: float) -> bool:
        """True the first time `key` is offered within the window (and remembers it)."""
        self._expire(now)
        if key in self._seen:
            return False
        self._seen[key] = now
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return True

    def _expire(self, now: float) -> None:
        while self._seen:
            key, seen_at = next(iter(self._seen.items()))
            if now - seen_at < self.window_s:
                return
            del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)


# --- local subscriptions ------------------------------------------------------------------


class Subscriptions:
    """Local subscribers' prefixes, each held under a lease its subscriber renews.

    A subscriber (akitactl subscribe, `Client.subscribe`) that dies without unsubscribing
    lapses when its lease runs out, so the node stops advertising a topic nobody reads.
    """

    def __init__(self) -> None:
        self._leases: dict[tuple[str, str], float] = {}   # (subscriber, prefix) → expiry

    def add(self, subscriber: str, prefix: str, until: float) -> None:
        """Add or renew; MessageError when the node would advertise too many prefixes."""
        check_topic(prefix, prefix=True)
        if prefix not in self.prefixes() and len(self.prefixes()) >= MAX_SUBSCRIPTIONS:
            raise MessageError(f"a node advertises at most {MAX_SUBSCRIPTIONS} topic prefixes")
        self._leases[(subscriber, prefix)] = until

    def remove(self, subscriber: str, prefix: str) -> None:
        self._leases.pop((subscriber, prefix), None)

    def expire(self, now: float) -> None:
        for key in [key for key, until in self._leases.items() if until <= now]:
            del self._leases[key]

    def prefixes(self) -> list[str]:
        """The distinct prefixes held, sorted: what the node's state record advertises."""
        return sorted({prefix for _subscriber, prefix in self._leases})

    def __len__(self) -> int:
        return len(self._leases)
