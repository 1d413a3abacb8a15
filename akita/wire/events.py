"""The ledger's vocabulary: every event kind a node writes to its feed, and its data.

An event in the feed is ``{kind, ts, data}`` (see `protocol.LedgerAppend`); `data` is a
msgpack map. Each kind is a dataclass here, registered under its ``noun.verb`` kind:
writers build one and append it (`LedgerClient.record`), readers that interpret data get
it back with `decode()`. The stored bytes are what the feed's hashes, signatures and
replicas cover, so the layout is fixed: keys in field order, the same value types as
always; a field named ``from_`` is the key ``from`` (a Python keyword).

Fields with a default of None are optional: left out of the data when None (that is how
writers have always written them), absent in older events. `decode()` raises one
`ProtocolError` naming the kind and the field for a missing required field or a value of
the wrong type; it ignores keys it does not know, so an older reader can still read a newer
node's feed. Readers that replay a feed skip (and count) events that do not decode: a feed
may be old, damaged or a peer's.

Validation happens only on decode: building an event and `to_data()` cost no more than a
small object and a dict, because the executor writes several events per task. For the same
reason the classes are not frozen (a frozen init costs three times as much): an event is a
value all the same, never changed once built.

Kinds are grouped by noun; add new ones in their group.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from akita.errors import ProtocolError
from akita.wire.protocol import _runtime_types


@dataclass(slots=True, kw_only=True)
class Event:
    """Base of every ledger event; subclasses are registered with `@event("noun.verb")`."""

    KIND: ClassVar[str] = ""
    # (attribute, data key, optional, allowed types or None for any), in field order.
    LAYOUT: ClassVar[tuple[tuple[str, str, bool, tuple[type, ...] | None], ...]] = ()

    def to_data(self) -> dict[str, Any]:
        """The event's data map, exactly as it is stored."""
        data: dict[str, Any] = {}
        for attr, key, optional, _types in self.LAYOUT:
            value = getattr(self, attr)
            if value is None and optional:
                continue
            data[key] = value
        return data

    def entry(self) -> tuple[str, dict[str, Any]]:
        """(kind, data): the arguments of a sink that takes the pair (the gateway's)."""
        return self.KIND, self.to_data()

    @classmethod
    def from_data(cls, data: Any) -> Self:
        """The event for a stored data map; `ProtocolError` naming kind and field if the
        map does not have this kind's shape."""
        if not isinstance(data, dict):
            raise ProtocolError(f"data is a {type(data).__name__}, not a map", kind=cls.KIND)
        values: dict[str, Any] = {}
        for attr, key, optional, allowed in cls.LAYOUT:
            if key not in data:
                if optional:
                    continue
                raise ProtocolError("missing field", kind=cls.KIND, field=key)
            value = data[key]
            if value is None and optional:
                continue
            if allowed is not None and not isinstance(value, allowed):
                raise ProtocolError(f"expected {'/'.join(t.__name__ for t in allowed)}, "
                                    f"got {type(value).__name__}", kind=cls.KIND, field=key)
            values[attr] = value
        return cls(**values)


_REGISTRY: dict[str, type[Event]] = {}


def event(kind: str) -> Any:
    """Register a dataclass as the ledger event `kind`."""

    def register(cls: type[Event]) -> type[Event]:
        if kind in _REGISTRY:
            raise ValueError(f"event kind {kind!r} registered twice")
        hints = typing.get_type_hints(cls)
        layout = []
        for f in dataclasses.fields(cls):
            optional = f.default is None
            layout.append((f.name, f.name.removesuffix("_"), optional,
                           _runtime_types(hints[f.name])))
        cls.KIND = kind
        cls.LAYOUT = tuple(layout)
        _REGISTRY[kind] = cls
        return cls

    return register


def kinds() -> list[str]:
    return sorted(_REGISTRY)


def lookup(kind: str) -> type[Event] | None:
    """The class of `kind`, or None for a kind this version does not know."""
    return _REGISTRY.get(kind)


def decode(kind: str, data: Any) -> Event:
    """The event stored as (`kind`, `data`); `ProtocolError` for an unknown kind or a bad
    shape."""
    cls = _REGISTRY.get(kind)
    if cls is None:
        raise ProtocolError("unknown event kind", kind=kind)
    return cls.from_data(data)


# --- node: the supervisor -------------------------------------------------------------------


@event("node.started")
@dataclass(slots=True, kw_only=True)
class NodeStarted(Event):
    pid: int
    workers: list[str]


@event("node.stopped")
@dataclass(slots=True, kw_only=True)
class NodeStopped(Event):
    pid: int


@event("config.reloaded")
@dataclass(slots=True, kw_only=True)
class ConfigReloaded(Event):
    """Worker names per what a reload did to them."""

    restarted: list[str]
    started: list[str]
    stopped: list[str]


@event("config.reload_failed")
@dataclass(slots=True, kw_only=True)
class ConfigReloadFailed(Event):
    error: str


# --- worker: the supervisor's process table -------------------------------------------------


@event("worker.started")
@dataclass(slots=True, kw_only=True)
class WorkerStarted(Event):
    name: str
    pid: int
    restarts: int


@event("worker.exited")
@dataclass(slots=True, kw_only=True)
class WorkerExited(Event):
    """`exit_code` or `signal` is None (always written); `cause` says why it stopped."""

    name: str
    pid: int
    exit_code: int | None
    signal: int | None
    cause: str


@event("worker.fatal")
@dataclass(slots=True, kw_only=True)
class WorkerFatal(Event):
    """Too many restarts in the window, or a cause restarting cannot fix (`error`): the
    worker stays stopped, for `retry_in_s` (its fatal cooldown) or until an operator or a
    reload starts it."""

    name: str
    restarts: int
    window_s: float
    error: str | None = None
    retry_in_s: float | None = None


@event("worker.fatal_retry")
@dataclass(slots=True, kw_only=True)
class WorkerFatalRetry(Event):
    """A FATAL worker is tried again after `after_s` of cooldown (its `retry`-th try)."""

    name: str
    retry: int
    after_s: float


# --- resource: the sampler ------------------------------------------------------------------


@event("resource.alert")
@dataclass(slots=True, kw_only=True)
class ResourceAlert(Event):
    """An alert raised or cleared (also published on the bus as `protocol.ResourceAlert`)."""

    metric: str
    subject: str
    value: float
    threshold: float
    raised: bool


# --- task: the executor ---------------------------------------------------------------------
#
# One event per state change (akita.tasks.queue); replay rebuilds the task book from them.
# Readers tolerate fields older events lack, so most fields past the id are optional.


@event("task.submitted")
@dataclass(slots=True, kw_only=True)
class TaskSubmitted(Event):
    """A task accepted here; `origin`… are set when a peer delegated it to us."""

    id: str
    name: str | None = None
    args: Any = None
    priority: int | None = None
    origin: str | None = None
    origin_attempt: int | None = None
    requires: list[str] | None = None  # left out when the task requires nothing
    timeout: float | None = None       # the origin's timeout, when shorter


@event("task.started")
@dataclass(slots=True, kw_only=True)
class TaskStarted(Event):
    id: str
    attempt: int | None = None
    pid: int | None = None


@event("task.delegated")
@dataclass(slots=True, kw_only=True)
class TaskDelegated(Event):
    """Leased to `peer` for `lease_s`, under the cluster `term` that admitted it."""

    id: str
    attempt: int | None = None
    peer: str | None = None
    lease_s: float | None = None
    term: int | None = None


@event("task.requeued")
@dataclass(slots=True, kw_only=True)
class TaskRequeued(Event):
    id: str
    attempts: int | None = None
    reason: str | None = None


@event("task.succeeded")
@dataclass(slots=True, kw_only=True)
class TaskSucceeded(Event):
    """`result` is always written (None is a result); `ran_on` for a delegated task."""

    id: str
    attempt: int | None = None
    ran_on: str | None = None
    result: Any
    duration_s: float | None = None


@event("task.failed")
@dataclass(slots=True, kw_only=True)
class TaskFailed(Event):
    """`error` is {type, message, …} and always written."""

    id: str
    attempt: int | None = None
    ran_on: str | None = None
    error: dict[str, Any] | None
    duration_s: float | None = None


@event("task.timed_out")
@dataclass(slots=True, kw_only=True)
class TaskTimedOut(Event):
    id: str
    attempt: int | None = None
    ran_on: str | None = None
    error: dict[str, Any] | None
    duration_s: float | None = None


@event("task.cancelled")
@dataclass(slots=True, kw_only=True)
class TaskCancelled(Event):
    """`reason` says why the node itself withdrew a task (e.g. the disk was full when it
    was submitted); an operator's cancel has none."""

    id: str
    attempt: int | None = None
    ran_on: str | None = None
    error: dict[str, Any] | None = None
    duration_s: float | None = None
    reason: str | None = None


TaskOutcome = TaskSucceeded | TaskFailed | TaskTimedOut | TaskCancelled
_FAILURES: dict[str, type[TaskFailed | TaskTimedOut | TaskCancelled]] = {
    "failed": TaskFailed, "timed_out": TaskTimedOut, "cancelled": TaskCancelled}


def task_outcome(state: str, *, id: str, attempt: int, ran_on: str | None = None,
                 result: Any = None, error: dict[str, Any] | None = None,
                 duration_s: float | None = None) -> TaskOutcome:
    """The event that ends a run in `state` (a `TaskState` value): `result` for
    "succeeded", else `error`."""
    if state == "succeeded":
        return TaskSucceeded(id=id, attempt=attempt, ran_on=ran_on, result=result,
                             duration_s=duration_s)
    return _FAILURES[state](id=id, attempt=attempt, ran_on=ran_on, error=error,
                            duration_s=duration_s)


# --- peer: discovery in the gateway ---------------------------------------------------------


@event("peer.joined")
@dataclass(slots=True, kw_only=True)
class PeerJoined(Event):
    node: str
    name: str
    generation: int


@event("peer.restarted")
@dataclass(slots=True, kw_only=True)
class PeerRestarted(Event):
    node: str
    name: str
    generation: int


@event("peer.left")
@dataclass(slots=True, kw_only=True)
class PeerLeft(Event):
    node: str
    name: str
    reason: str


# --- cluster and state: what a restarted gateway returns to ---------------------------------


@event("cluster.seat")
@dataclass(slots=True, kw_only=True)
class ClusterSeat(Event):
    """This node's seat (`Seat.pack()`, or None: always written) and term, and the seat
    numbers of the mates it saw: [[node, number], ...]."""

    seat: list[Any] | None
    term: int
    mates: list[Any] | None = None


@event("cluster.changed")
@dataclass(slots=True, kw_only=True)
class ClusterChanged(Event):
    clusters: list[dict[str, Any]]
    term: int


@event("state.own")
@dataclass(slots=True, kw_only=True)
class StateOwn(Event):
    """This node's own state record (`Record.pack()`), custom keys included."""

    record: Any


@event("state.view")
@dataclass(slots=True, kw_only=True)
class StateView(Event):
    """The merged view: the other nodes' signed records (`StateSync.snapshot()`)."""

    records: list[Any]


# --- gateway --------------------------------------------------------------------------------


@event("gateway.started")
@dataclass(slots=True, kw_only=True)
class GatewayStarted(Event):
    """`seat` is the data of the `cluster.seat` event it starts from."""

    node: str
    generation: int
    interfaces: list[dict[str, Any]]
    reticulum_mode: str | None = None
    seat: dict[str, Any]


@event("gateway.stopped")
@dataclass(slots=True, kw_only=True)
class GatewayStopped(Event):
    pass


@event("gateway.interface_failed")
@dataclass(slots=True, kw_only=True)
class GatewayInterfaceFailed(Event):
    """`restarts_help` is False when another program holds what the interface needs: the
    worker then stays stopped (FATAL) until its configuration changes."""

    error: str
    restarts_help: bool | None = None


@event("gateway.reticulum_mode")
@dataclass(slots=True, kw_only=True)
class GatewayReticulumMode(Event):
    """Whether the gateway owns its interfaces or attaches to the host's shared instance."""

    mode: str
    why: str
    shared_instance: dict[str, Any] | None = None


@event("gateway.shared_instance")
@dataclass(slots=True, kw_only=True)
class GatewaySharedInstance(Event):
    """The connection to the host's shared Reticulum instance went down or came back."""

    address: str
    connected: bool
    error: str | None = None


# --- operator: commands from operators across the mesh --------------------------------------


@event("operator.command")
@dataclass(slots=True, kw_only=True)
class OperatorCommand(Event):
    """An accepted operator command: who sent it (identity hash), through what (`via`:
    lxmf), the command as understood, and the message hash it arrived in."""

    from_: str
    via: str
    command: str
    message: str


# --- intercluster: messages between clusters ------------------------------------------------


@event("intercluster.sent")
@dataclass(slots=True, kw_only=True)
class InterclusterSent(Event):
    id: str
    to: str
    topic: str
    bytes: int


@event("intercluster.delivered")
@dataclass(slots=True, kw_only=True)
class InterclusterDelivered(Event):
    id: str
    to: str
    subscribers: int
    attempts: int


@event("intercluster.failed")
@dataclass(slots=True, kw_only=True)
class InterclusterFailed(Event):
    id: str
    to: str
    attempts: int
    reason: str


@event("intercluster.routed")
@dataclass(slots=True, kw_only=True)
class InterclusterRouted(Event):
    """A coordinator handed a message to the members of its cluster."""

    id: str
    from_: str
    topic: str
    delivered: int
    failed: int


@event("intercluster.received")
@dataclass(slots=True, kw_only=True)
class InterclusterReceived(Event):
    id: str
    from_: str
    topic: str


# --- ledger: replication, written by the ledger worker itself -------------------------------


@event("ledger.forgery_refused")
@dataclass(slots=True, kw_only=True)
class LedgerForgeryRefused(Event):
    """A bundle that did not verify; `suppressed` counts refusals not recorded since."""

    feed: str
    from_: str
    reason: str
    suppressed: int | None = None


@event("ledger.fork_detected")
@dataclass(slots=True, kw_only=True)
class LedgerForkDetected(Event):
    """Two signed entries with the same `seq` in `feed`: proof its author misbehaved."""

    feed: str
    seq: int
    from_: str
