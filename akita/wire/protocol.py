"""The wire: every message that crosses a ZeroMQ socket, and how it is encoded.

A frame is one msgpack map: ``{"v": PROTOCOL_VERSION, "kind": "noun.verb", "rid": …, fields…}``.
``rid`` is optional: a request id that the reply echoes so a client can match replies to
requests it has in flight. Each message is a frozen dataclass registered under its kind;
`decode()` is the only way in, and raises one `ProtocolError` naming the kind and field for
anything malformed (unknown kind, missing or extra field, wrong type, oversized frame,
another protocol version). Nothing that crossed a socket is ever unpickled.

Bus frames are two ZeroMQ frames: a topic (dotted prefix, for subscription) and one encoded
message. The topic is usually the message kind, but a committed ledger event travels under
its event kind (e.g. ``worker.exited``) inside a `ledger.committed` message.

Messages are grouped by the process that answers them; add new ones in their group.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import msgpack

from akita.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 16 << 20

_ENVELOPE = frozenset(("v", "kind", "rid"))


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every message; subclasses are registered with `@message("noun.verb")`."""

    KIND: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class _Schema:
    cls: type[Message]
    fields: tuple[tuple[str, tuple[type, ...] | None, bool], ...]  # name, types, required
    names: frozenset[str]
    order: tuple[str, ...]  # field names in declaration order, for encode()


_REGISTRY: dict[str, _Schema] = {}


def _runtime_types(annotation: Any) -> tuple[type, ...] | None:
    """The isinstance() check for an annotation; None accepts anything."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return None
    if origin in (Union, types.UnionType):
        collected: list[type] = []
        for arg in typing.get_args(annotation):
            sub = _runtime_types(arg)
            if sub is None:
                return None
            collected.extend(sub)
        return tuple(collected)
    if annotation is type(None):
        return (type(None),)
    if origin is not None:
        annotation = origin
    if annotation is float:
        return (float, int)
    if annotation is int:
        return (int,)
    if annotation in (list, tuple):
        # msgpack decodes arrays as lists; tuples are accepted on the encode side.
        return (list, tuple)
    return (annotation,)


def message(kind: str) -> Any:
    """Register a frozen dataclass as the message for `kind`."""

    def register(cls: type[Message]) -> type[Message]:
        if kind in _REGISTRY:
            raise ValueError(f"message kind {kind!r} registered twice")
        cls.KIND = kind
        hints = typing.get_type_hints(cls)
        specs = []
        for f in dataclasses.fields(cls):
            required = (f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING)
            specs.append((f.name, _runtime_types(hints[f.name]), required))
        order = tuple(f.name for f in dataclasses.fields(cls))
        _REGISTRY[kind] = _Schema(cls, tuple(specs), frozenset(order), order)
        return cls

    return register


def kinds() -> list[str]:
    return sorted(_REGISTRY)


def encode(msg: Message, rid: int | None = None) -> bytes:
    """One frame for `msg`; `rid` is echoed by replies."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "kind": msg.KIND}
    if rid is not None:
        body["rid"] = rid
    # The field order is cached at registration: dataclasses.fields() costs more than the
    # rest of encoding a small message.
    for name in _REGISTRY[msg.KIND].order:
        body[name] = getattr(msg, name)
    return msgpack.packb(body, use_bin_type=True)


def decode(data: bytes) -> Message:
    return decode_frame(data)[1]


def decode_frame(data: bytes) -> tuple[int | None, Message]:
    """Decode one frame into (rid, message), or raise `ProtocolError` saying what is wrong."""
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds the limit of {MAX_FRAME_BYTES}")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types for bad input
        raise ProtocolError(f"not a msgpack frame ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise ProtocolError("frame is not a msgpack map")
    kind = body.get("kind")
    if not isinstance(kind, str):
        raise ProtocolError("frame has no kind")
    schema = _REGISTRY.get(kind)
    if schema is None:
        raise ProtocolError("unknown message kind", kind=kind)
    version = body.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r}, expected {PROTOCOL_VERSION}",
                            kind=kind, field="v")
    rid = body.get("rid")
    if rid is not None and not isinstance(rid, int):
        raise ProtocolError("rid must be an integer", kind=kind, field="rid")
    values = {}
    for name, allowed, required in schema.fields:
        if name not in body:
            if required:
                raise ProtocolError("missing field", kind=kind, field=name)
            continue
        value = body[name]
        if allowed is not None and not isinstance(value, allowed):
            raise ProtocolError(f"expected {'/'.join(t.__name__ for t in allowed)}, "
                                f"got {type(value).__name__}", kind=kind, field=name)
        values[name] = value
    if len(body) > len(values) + 2 + ("rid" in body):  # "v" and "kind" are always there
        extra = sorted(set(body) - schema.names - _ENVELOPE)
        raise ProtocolError("unexpected field", kind=kind, field=str(extra[0]))
    return rid, schema.cls(**values)


def error_reply(code: str, text: str) -> Error:
    return Error(code=code, message=text)


def topic_of(kind: str) -> bytes:
    return kind.encode()


# --- generic ------------------------------------------------------------------------------


@message("error")
@dataclass(frozen=True, slots=True)
class Error(Message):
    """Reply to a request that could not be served. `code` is a short stable word."""

    code: str
    message: str


@message("ok")
@dataclass(frozen=True, slots=True)
class Ok(Message):
    detail: str = ""


@message("ping")
@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Any process answers a ping with a pong: a liveness check and a round-trip probe."""

    payload: bytes = b""


@message("pong")
@dataclass(frozen=True, slots=True)
class Pong(Message):
    name: str
    pid: int
    payload: bytes = b""


# --- supervisor control (control socket) ----------------------------------------------------


@message("node.status")
@dataclass(frozen=True, slots=True)
class NodeStatus(Message):
    pass


@message("node.status_reply")
@dataclass(frozen=True, slots=True)
class NodeStatusReply(Message):
    """`node`: id, name, pid, uptime_s, config path; `workers`: one dict per worker with
    name, state, pid, uptime_s, restarts, cpu_percent, rss_bytes, exit_code, exit_signal,
    last_error."""

    node: dict[str, Any]
    workers: list[dict[str, Any]]


@message("worker.start")
@dataclass(frozen=True, slots=True)
class WorkerStart(Message):
    name: str


@message("worker.stop")
@dataclass(frozen=True, slots=True)
class WorkerStop(Message):
    name: str


@message("worker.restart")
@dataclass(frozen=True, slots=True)
class WorkerRestart(Message):
    name: str


@message("node.shutdown")
@dataclass(frozen=True, slots=True)
class NodeShutdown(Message):
    pass


@message("node.reload")
@dataclass(frozen=True, slots=True)
class NodeReload(Message):
    """Re-read the config file and restart the workers whose settings changed (as SIGHUP)."""


# --- bus (topic-prefixed publish/subscribe) -------------------------------------------------


@message("worker.heartbeat")
@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """A worker is alive; `note` is what it wants an operator to know now (its mode, what
    it waits for), shown in `status`."""

    name: str
    pid: int
    ts: float
    note: str = ""


@message("worker.state")
@dataclass(frozen=True, slots=True)
class WorkerState(Message):
    """Published by the supervisor on every worker state change."""

    name: str
    state: str
    pid: int | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    detail: str = ""


@message("resource.sample")
@dataclass(frozen=True, slots=True)
class ResourceSample(Message):
    """`host`: cpu_percent, cpu_per_core, cpu_count, load_avg, memory, swap, disk (of
    data_dir), disk_io and net_io (rates, KEY_per_s; None on the first sample);
    `processes`: one dict per node process: kind (supervisor, zygote, worker, task, child),
    role (a worker's name; otherwise the kind), pid, cpu_percent (None on a process's first
    sample), rss_bytes, uss_bytes (refreshed every [sampler] uss_every samples; None when
    off), open_files (descriptors), threads. `akita.resources` holds the names."""

    ts: float
    host: dict[str, Any]
    processes: list[dict[str, Any]]


@message("resource.alert")
@dataclass(frozen=True, slots=True)
class ResourceAlert(Message):
    metric: str
    value: float
    threshold: float
    raised: bool
    subject: str = "host"


# --- ledger worker --------------------------------------------------------------------------


@message("ledger.append")
@dataclass(frozen=True, slots=True)
class LedgerAppend(Message):
    """Append events to this node's feed. Each event is a map {kind, ts, data}.

    `source` names the sender instance and `ref` numbers its appends (strictly rising); the
    writer answers `ledger.acked` with the highest ref it made durable for that source, and
    ignores a ref it has already committed, so a sender may resend after a timeout without
    writing an event twice. With `ack` false the append is fire-and-forget (still durable
    once committed, but nobody waits): such frames carry ref 0, are never deduplicated and
    never answered.

    `base` is the lowest ref the sender has not yet seen acknowledged. A writer that does not
    know the source (new, or pruned after a long silence) commits a frame only when its ref
    equals `base`, so frames that overtook lost ones after a writer restart wait for them.
    A frame beyond a gap is answered with `ledger.acked` carrying the last committed ref;
    the sender resends from there (go-back-N). `akita.ledger.client` implements the sender.
    """

    source: str
    ref: int
    events: list[dict[str, Any]]
    ack: bool = True
    base: int = 1


# How senders and the writer build these two frames by hand, on the hot path (a reused
# Packer, no dataclass per event); `decode()` reads what they build like any other frame.

LEDGER_EVENT_KEYS = ("kind", "ts", "data")  # the map of one event in `LedgerAppend.events`


def ledger_event(kind: str, ts: float, data: Any) -> dict[str, Any]:
    """One event of a `ledger.append` frame."""
    return {"kind": kind, "ts": ts, "data": data}


def ledger_append_body(source: str, ref: int, events: list[dict[str, Any]], *,
                       base: int | None = None, ack: bool = True) -> dict[str, Any]:
    """The map of a `ledger.append` frame, ready for msgpack. An acknowledged frame carries
    its ref as rid too (the writer's answer echoes it); a fire-and-forget one has ref 0, no
    rid and no base."""
    if not ack:
        return {"v": PROTOCOL_VERSION, "kind": LedgerAppend.KIND, "source": source,
                "ref": 0, "events": events, "ack": False}
    return {"v": PROTOCOL_VERSION, "kind": LedgerAppend.KIND, "rid": ref, "source": source,
            "ref": ref, "base": ref if base is None else base, "events": events, "ack": True}


@message("ledger.acked")
@dataclass(frozen=True, slots=True)
class LedgerAcked(Message):
    source: str
    ref: int
    last_seq: int


@message("ledger.committed")
@dataclass(frozen=True, slots=True)
class LedgerCommitted(Message):
    """A committed event, published on the bus under the event's own kind as topic.

    The event's kind is `event_kind`: the frame's own ``kind`` key is the message kind.
    """

    feed: str
    seq: int
    ts: float
    event_kind: str
    data: Any


def read_committed(data: bytes) -> tuple[int, float, str, Any] | None:
    """(seq, ts, event_kind, data) of a `ledger.committed` frame, or None if `data` is not
    one: for a subscriber that reads every event, without building a `LedgerCommitted`
    (a third of the cost). The checks are decode's, less the message object."""
    if len(data) > MAX_FRAME_BYTES:
        return None
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # noqa: BLE001 - msgpack raises several unrelated types for bad input
        return None
    if not isinstance(body, dict) or body.get("kind") != LedgerCommitted.KIND \
            or body.get("v") != PROTOCOL_VERSION:
        return None
    seq, ts, kind = body.get("seq"), body.get("ts"), body.get("event_kind")
    if type(seq) is not int or not isinstance(ts, float | int) or not isinstance(kind, str):
        return None
    return seq, float(ts), kind, body.get("data")


def ledger_committed_prefix(feed: str) -> bytes:
    """The fixed start of every `ledger.committed` frame of `feed`, up to the seq value.

    The writer publishes each committed event from its stored bytes without re-encoding:
    ``prefix + pack(seq) + LEDGER_COMMITTED_KEYS[0] + pack(ts) + [1] + pack(event_kind)
    + [2] + data bytes``: the msgpack map {v, kind, feed, seq, ts, event_kind, data}, keys in
    the order of `LedgerCommitted`'s fields.
    """
    packb = msgpack.packb
    return (b"\x87" + packb("v") + packb(PROTOCOL_VERSION) + packb("kind")
            + packb(LedgerCommitted.KIND) + packb("feed") + packb(feed) + packb("seq"))


LEDGER_COMMITTED_KEYS = (msgpack.packb("ts"), msgpack.packb("event_kind"), msgpack.packb("data"))


@message("ledger.head")
@dataclass(frozen=True, slots=True)
class LedgerHead(Message):
    """Request the head of this node's feed; the reply is `ledger.head_reply`."""


@message("ledger.head_reply")
@dataclass(frozen=True, slots=True)
class LedgerHeadReply(Message):
    feed: str
    seq: int
    hash: bytes


# Feed replication (akita.ledger.bundles): the gateway carries these bytes between nodes; the
# ledger worker serves ranges of every feed it holds and checks what peers send.


@message("ledger.heads")
@dataclass(frozen=True, slots=True)
class LedgerHeads(Message):
    """Request the head of every feed held (own and replicated): `ledger.heads_reply`."""


@message("ledger.heads_reply")
@dataclass(frozen=True, slots=True)
class LedgerHeadsReply(Message):
    """`feeds`: NODE_ID → [seq, hash, signed_seq] (last event, its hash, last signed
    checkpoint; a replicated feed is always signed up to its head, this node's own feed is
    signed on demand when a range of it is served). `own`: this node's feed. `forked`: feeds
    with stored proof that their author forked them."""

    own: str
    feeds: dict[str, list[Any]]
    forked: list[str]


@message("ledger.range")
@dataclass(frozen=True, slots=True)
class LedgerRange(Message):
    """Request the events of `feed` after `after_seq` as one bundle that fits `max_bytes`
    (0: 1 MiB) and `limit` events (0: no limit). The bundle always ends at a signed
    checkpoint, so it runs past both when the first one lies beyond them. `with_key` false
    leaves out the feed's public key, for a receiver that holds the feed already."""

    feed: str
    after_seq: int = 0
    max_bytes: int = 0
    limit: int = 0
    with_key: bool = True


@message("ledger.range_reply")
@dataclass(frozen=True, slots=True)
class LedgerRangeReply(Message):
    """`bundle` (b"" when nothing follows after_seq) holds seqs first_seq..last_seq;
    `head_seq` is how far this node holds the feed, so more remains while last_seq < it."""

    feed: str
    bundle: bytes
    first_seq: int
    last_seq: int
    head_seq: int


@message("ledger.ingest")
@dataclass(frozen=True, slots=True)
class LedgerIngest(Message):
    """Store a bundle that peer `sender` (NODE_ID) sent, if it verifies: `ledger.ingest_reply`."""

    bundle: bytes
    sender: str


@message("ledger.ingest_reply")
@dataclass(frozen=True, slots=True)
class LedgerIngestReply(Message):
    """`outcome`: stored, duplicate, gap, need_key, unsigned, own_feed, malformed, forgery or
    fork (see `replication.Outcome`); `stored` events were added; (head_seq, head_hash) is
    the feed's head here now: ask the peer for more after head_seq."""

    feed: str
    outcome: str
    stored: int
    head_seq: int
    head_hash: bytes
    detail: str = ""


@message("ledger.replicated")
@dataclass(frozen=True, slots=True)
class LedgerReplicated(Message):
    """Bus: events of another node's feed were stored (one message per ingested bundle; the
    events themselves are not republished, so nothing mistakes them for local events)."""

    feed: str
    sender: str
    first_seq: int
    last_seq: int



# --- executor (task.*) ----------------------------------------------------------------------


@message("task.submit")
@dataclass(frozen=True, slots=True)
class TaskSubmit(Message):
    """Submit tasks: each {"id", "name", "args", "priority", "requires"?}; the client picks the
    ids (16+ hex digits), so a resend after a lost reply is recognised and not queued twice.
    `requires`: capability names a node must declare to run the task; a task requiring one
    this node lacks waits for a peer that declares it. Args larger than ``[tasks]
    max_payload_bytes`` (encoded) are refused (code too_large).

    The reply, `task.accepted`, comes once every accepted task's ``task.submitted`` event is
    durable. With `watch`, the executor also pushes `task.results` (same rid) to this client
    as the tasks finish; only a direct connection to executor.sock can receive those.
    """

    tasks: list[dict[str, Any]]
    watch: bool = False


@message("task.accepted")
@dataclass(frozen=True, slots=True)
class TaskAccepted(Message):
    """`ids` in submit order, None where refused; `errors`: [index, code, message] for each
    refused task (codes: unknown_task, bad_args, bad_request, queue_full, too_large,
    disk_full; and for `task.run_for`, missing_capability)."""

    ids: list[str | None]
    errors: list[list[Any]]


@message("task.watch")
@dataclass(frozen=True, slots=True)
class TaskWatch(Message):
    """Ask for the outcomes of `ids`: the reply `task.results` holds those already known
    (finished, or "unknown"); the rest are pushed with the same rid as they finish."""

    ids: list[str]


@message("task.results")
@dataclass(frozen=True, slots=True)
class TaskResults(Message):
    """Outcomes: each {"id", "state", "result"} or {"id", "state", "error": {"type",
    "message", "traceback"}}; state "unknown" for an id the executor does not know."""

    results: list[dict[str, Any]]


@message("task.status")
@dataclass(frozen=True, slots=True)
class TaskStatus(Message):
    ids: list[str]


@message("task.status_reply")
@dataclass(frozen=True, slots=True)
class TaskStatusReply(Message):
    """One view per requested id (id, name, state, priority, attempts, ran_on, args,
    submitted_ts, started_ts, finished_ts, result | error), None for an unknown id."""

    tasks: list[dict[str, Any] | None]


@message("task.list")
@dataclass(frozen=True, slots=True)
class TaskList(Message):
    """The latest `limit` tasks in `state` (all states when empty), oldest first."""

    state: str = ""
    limit: int = 1000


@message("task.list_reply")
@dataclass(frozen=True, slots=True)
class TaskListReply(Message):
    tasks: list[dict[str, Any]]
    total: int


@message("task.cancel")
@dataclass(frozen=True, slots=True)
class TaskCancel(Message):
    ids: list[str]


@message("task.cancel_reply")
@dataclass(frozen=True, slots=True)
class TaskCancelReply(Message):
    """id → "cancelled" (by this request), "unknown", "finished:STATE" for a task that had
    already finished, or "finishing" (its outcome is being recorded)."""

    outcomes: dict[str, str]


@message("task.types")
@dataclass(frozen=True, slots=True)
class TaskTypes(Message):
    pass


@message("task.types_reply")
@dataclass(frozen=True, slots=True)
class TaskTypesReply(Message):
    """Each task type this node runs: {"name", "kind" (python|command), "timeout_s",
    "signature"}."""

    types: list[dict[str, Any]]


@message("task.stats")
@dataclass(frozen=True, slots=True)
class TaskStats(Message):
    pass


@message("task.stats_reply")
@dataclass(frozen=True, slots=True)
class TaskStatsReply(Message):
    """Counts by state, the pool (one {"pid", "in_flight", "running"} per task process),
    and totals since the executor started (processes_started, processes_lost, queued,
    pacing_changes, stale_results, leases_lapsed), with two figures of now among them:
    processes_starting (asked of the fork server, not forked yet) and saturated (1 while
    the pool is saturated and outcomes are sent paced).

    `load` is the compact summary a gateway puts in the node's state record: {"queued"
    (tasks this node's pool will run), "waiting" (tasks only a peer can run), "running",
    "delegated", "held" (tasks run here for peers, not finished), "pool" (task processes),
    "free" (idle processes that no queued task is waiting for), "types" (task type names),
    "caps" (declared capabilities)}."""

    counts: dict[str, int]
    pool: list[dict[str, Any]]
    totals: dict[str, int]
    load: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Queued tasks (both queues) per priority, the priority as a decimal string.
    by_priority: dict[str, int] = dataclasses.field(default_factory=dict)


# Delegation: the gateway carries tasks between the executors of two nodes. On the origin it
# takes tasks (`task.take`), renews their leases, returns outcomes or gives them back; on the
# peer it hands them in (`task.run_for`), asks what is held, and relays outcomes pushed to it.
# A delegation is named by (task id, attempt): the attempt is the fencing token, unique per
# hand-out, so nothing from an earlier one is ever taken for the current one.


@message("task.take")
@dataclass(frozen=True, slots=True)
class TaskTake(Message):
    """Origin: hand peer `peer` (NODE_ID) up to `max_tasks` queued tasks of a type in `types`
    that require nothing beyond `capabilities` and that this node's pool will not start
    soon (the rule: `akita.tasks.offer.offer`). Each is marked delegated to the peer (ledger
    ``task.delegated {id, attempt, peer, lease_s, term?}``) under a lease of `lease_s`
    seconds that `task.renew` extends; a lease that lapses re-queues the task with
    attempt + 1. The reply `task.take_reply` comes once those events are durable. `term`:
    the cluster term the gateway acts under, recorded with each delegation (0: none)."""

    peer: str
    types: list[str]
    capabilities: list[str]
    max_tasks: int
    lease_s: float
    term: int = 0


@message("task.take_reply")
@dataclass(frozen=True, slots=True)
class TaskTakeReply(Message):
    """`tasks`: one spec per task handed out, highest priority first: {"id", "name", "args",
    "priority", "attempt", "requires", "timeout"} (timeout: this node's limit for the type,
    in seconds). The peer's executor takes them as `task.run_for`."""

    tasks: list[dict[str, Any]]


@message("task.renew")
@dataclass(frozen=True, slots=True)
class TaskRenew(Message):
    """Origin: peer `peer` still holds these delegations ([id, attempt] each, as its
    `task.held_reply` lists them): each lease runs `lease_s` (of its `task.take`) from now.
    The reply `task.renew_reply` lists in `stale` those not delegated to that peer at that
    attempt any more (finished, cancelled, re-queued): the peer may drop them (`task.drop`)."""

    peer: str
    tasks: list[list[Any]]


@message("task.renew_reply")
@dataclass(frozen=True, slots=True)
class TaskRenewReply(Message):
    renewed: int
    stale: list[list[Any]]


@message("task.delegated_result")
@dataclass(frozen=True, slots=True)
class TaskDelegatedResult(Message):
    """Origin: outcomes of tasks peer `peer` ran, each as its executor pushed it: {"id",
    "attempt", "state", "result" | "error"}. State succeeded, failed or timed_out is recorded
    as the task's outcome with ran_on = `peer`; cancelled (the peer gave the task up)
    re-queues it like `task.requeue`. An outcome for anything but the current delegation
    (same id, attempt and peer) is ignored and counted (totals: stale_results). The reply
    `task.delegated_result_reply` comes once the accepted outcomes are durable."""

    peer: str
    results: list[dict[str, Any]]


@message("task.delegated_result_reply")
@dataclass(frozen=True, slots=True)
class TaskDelegatedResultReply(Message):
    accepted: list[str]
    stale: list[str]


@message("task.requeue")
@dataclass(frozen=True, slots=True)
class TaskRequeue(Message):
    """Origin: these delegations ([id, attempt] each) will not finish: the gateway saw the
    lease lapse or the link break, or the peer refused the task; `reason` (for the ledger)
    says which. Each goes back to the queue with attempt + 1 (a refusal costs an attempt
    too, so a peer chosen wrongly again and again ends in a failed task, not a loop), or
    fails once ``[tasks] max_attempts`` are spent. Reply `task.requeue_reply`."""

    tasks: list[list[Any]]
    reason: str


@message("task.requeue_reply")
@dataclass(frozen=True, slots=True)
class TaskRequeueReply(Message):
    """id → "requeued", "failed" or "stale" (not delegated at that attempt: nothing done)."""

    outcomes: dict[str, str]


@message("task.run_for")
@dataclass(frozen=True, slots=True)
class TaskRunFor(Message):
    """Peer: run these tasks for node `origin` (specs as `task.take_reply` gives them). Each
    is checked as a submit is — this node must declare the type (nothing else ever runs) and
    every capability it requires, and its args must fit — then recorded (``task.submitted``
    with origin and origin_attempt) and queued here; it is never offered on. The reply is
    `task.accepted` once durable (refusals: the submit codes and missing_capability). As
    each finishes, its outcome is pushed to this connection as `task.results` (same rid),
    the entry carrying "origin" and "attempt" (the origin's), for `task.delegated_result`.
    A spec for a task held here already takes the new attempt; for one finished here, its
    outcome is pushed again under the new attempt."""

    origin: str
    tasks: list[dict[str, Any]]


@message("task.held")
@dataclass(frozen=True, slots=True)
class TaskHeld(Message):
    """Peer: the tasks run here for peers that have not finished (for lease renewals). The
    asking connection becomes the one their outcomes are pushed to, so a restarted gateway
    asks this first. Reply `task.held_reply`."""


@message("task.held_reply")
@dataclass(frozen=True, slots=True)
class TaskHeldReply(Message):
    """`tasks`: {"id", "origin", "attempt"} each."""

    tasks: list[dict[str, Any]]


@message("task.drop")
@dataclass(frozen=True, slots=True)
class TaskDrop(Message):
    """Peer: the origin no longer wants these ([id, attempt] each, from `task.renew_reply`):
    cancel each that is still held for `origin` at that attempt. Reply `task.cancel_reply`
    ("stale" for one not held so)."""

    origin: str
    tasks: list[list[Any]]


# --- gateway (peer.*, cluster.*, state.*, service.*, message.*) ----------------------------


# Requests (akitactl and akita.Client through the control socket, which forwards them to
# run_dir/gateway.sock) and the gateway's bus events. NODE_ID is an identity hash in hex.


@message("peer.list")
@dataclass(frozen=True, slots=True)
class PeerList(Message):
    """The peers this node knows; the reply is `peer.list_reply`."""


@message("peer.list_reply")
@dataclass(frozen=True, slots=True)
class PeerListReply(Message):
    """`peers`: one dict per peer: id, name, cluster, role, last_seen_s, load, state,
    generation, takes_work."""

    self_id: str
    peers: list[dict[str, Any]]


@message("peer.stats")
@dataclass(frozen=True, slots=True)
class PeerStats(Message):
    """The gateway's counters (announces ignored by reason, probes, links, state pulls)."""


@message("peer.stats_reply")
@dataclass(frozen=True, slots=True)
class PeerStatsReply(Message):
    stats: dict[str, Any]


@message("peer.joined")
@dataclass(frozen=True, slots=True)
class PeerJoined(Message):
    """Bus: a peer was heard for the first time (or again after it had left)."""

    node: str
    name: str
    generation: int


@message("peer.left")
@dataclass(frozen=True, slots=True)
class PeerLeft(Message):
    """Bus: a peer was dropped; `reason` says why (e.g. "silent for 3.0 s")."""

    node: str
    name: str
    reason: str


@message("cluster.list")
@dataclass(frozen=True, slots=True)
class ClusterList(Message):
    """The clusters as this node sees them; the reply is `cluster.list_reply`."""


@message("cluster.list_reply")
@dataclass(frozen=True, slots=True)
class ClusterListReply(Message):
    """`clusters`: one dict per cluster: id, members (NODE_IDs), coordinator, term."""

    clusters: list[dict[str, Any]]


@message("cluster.changed")
@dataclass(frozen=True, slots=True)
class ClusterChanged(Message):
    """Bus: this node's view of the clusters changed (same shape as cluster.list_reply)."""

    clusters: list[dict[str, Any]]
    own_cluster: str
    coordinator: str
    term: int


@message("state.get")
@dataclass(frozen=True, slots=True)
class StateGet(Message):
    """One node's state record from the merged view ("" or "self": this node)."""

    node: str = ""


@message("state.reply")
@dataclass(frozen=True, slots=True)
class StateReply(Message):
    node: str
    generation: int
    version: int
    data: dict[str, Any]


@message("state.set")
@dataclass(frozen=True, slots=True)
class StateSet(Message):
    """Set a custom key in this node's own state record (replicated to its cluster)."""

    key: str
    value: Any


@message("service.list")
@dataclass(frozen=True, slots=True)
class ServiceList(Message):
    """Who offers which task types and named services; the reply is `service.list_reply`."""


@message("service.list_reply")
@dataclass(frozen=True, slots=True)
class ServiceListReply(Message):
    """`services`: one dict per service: name, kind ("task" or "service"), nodes."""

    services: list[dict[str, Any]]


# Inter-cluster messages (workers.gateway.intercluster). A message goes from the sending node's
# gateway straight to the target cluster's coordinator, which hands it to the members whose
# state advertises a matching topic prefix; each of them publishes it on its own bus under
# the topic "message.TOPIC" as `message.received`.


@message("message.send")
@dataclass(frozen=True, slots=True)
class MessageSend(Message):
    """Send `payload` (any JSON value, at most ``[cluster] max_message_bytes`` encoded) on
    `topic` to the subscribers in cluster `cluster`. Answered `message.delivered` once the
    target coordinator reports that every subscribed member acknowledged (retried with
    backoff while the route is down), or error ``undeliverable`` with the reason when
    `deadline_s` passes first (0: ``[cluster] message_deadline``). Bad input: error
    ``bad_request``; an oversized payload: ``too_large``. `id` (optional, 16–64 hex digits)
    names the message: a resend after a lost reply carries the same id and no subscriber
    gets it twice."""

    cluster: str
    topic: str
    payload: Any
    deadline_s: float = 0.0
    id: str = ""


@message("message.delivered")
@dataclass(frozen=True, slots=True)
class MessageDelivered(Message):
    """`delivered`: the NODE_IDs of the subscribed members that acknowledged (empty when
    nobody in the cluster subscribes to the topic); `coordinator` answered for the cluster;
    `attempts` counts the tries it took."""

    id: str
    cluster: str
    coordinator: str
    delivered: list[str]
    attempts: int


@message("message.subscribe")
@dataclass(frozen=True, slots=True)
class MessageSubscribe(Message):
    """Advertise topic `prefix` ("" for every topic) in this node's state for `lease_s`
    seconds, on behalf of local subscriber `subscriber` (any short name it picks); renew it
    before the lease runs out. Answered `ok`."""

    prefix: str
    subscriber: str
    lease_s: float = 30.0


@message("message.unsubscribe")
@dataclass(frozen=True, slots=True)
class MessageUnsubscribe(Message):
    """Withdraw what `message.subscribe` advertised for this subscriber. Answered `ok`."""

    prefix: str
    subscriber: str


@message("message.received")
@dataclass(frozen=True, slots=True)
class MessageReceived(Message):
    """Bus, under topic "message.TOPIC": a message for this node's subscribers. `sender`: the
    sending node (NODE_ID); `cluster`: the sender's cluster; `id` is the same on every
    receiving node."""

    id: str
    sender: str
    cluster: str
    topic: str
    payload: Any



__all__ = [name for name, value in globals().items()
           if isinstance(value, type) and issubclass(value, Message)] + [
    "PROTOCOL_VERSION", "MAX_FRAME_BYTES", "encode", "decode", "decode_frame", "message", "kinds",
    "error_reply", "topic_of",
]
