"""Task delegation over Links, the pure part: timers, which peer is asked first and for how
many tasks, the request bodies, and how batches are cut.

Three Link request paths, named after the task channel (see `workers.gateway.delegate`):

- ``{task_channel}/run`` (origin → peer): ``{"term", "lease_s", "tasks": [spec…]}`` →
  ``{"ids", "errors", "load"}`` — the peer's `task.accepted`, plus its load right after.
- ``{task_channel}/result`` (peer → origin): ``{"results": [{id, attempt, state, result |
  error}…], "load"}`` → ``{"accepted", "stale"}``.
- ``{task_channel}/renew`` (peer → origin): ``{"tasks": [[id, attempt]…]}`` →
  ``{"renewed", "stale"}``.

Everything a peer sends is checked here field by field (`wire.WireError` for anything
malformed); what a task spec or outcome holds beyond that is the executors' business.

Choice of peer (`rank`), the documented rule: capability match first — while this node has
tasks only a peer can run, peers that declare a capability this node lacks are asked
first —, then the most room, then the shortest queue, then the lowest CPU, then node id (so
the order is total). A peer's room (`room`) keeps its backlog at about `WINDOW_PER_PROCESS`
tasks per task process: our tasks it holds (counted here, exactly) plus its own work (from
its latest load report, which may be a little old). Other origins' tasks there are not
counted: each origin keeps its own window. The origin's executor decides which tasks may go
(`akita.tasks.offer.offer`); this only says whom to ask, in what order, for how many.

Spill-over to another cluster (`workers.gateway.spillover`), the documented rule: when no cluster
mate has room by the rule above (`saturated`) and this node's executor still holds more
queued tasks than its pool keeps, the origin offers them to the coordinators of the other
clusters, ranked by the same rule over their loads (their state records, refreshed by their
/run answers), each for at most its `room`. The /run body then carries ``"spill": true``.
A coordinator takes a spill-over /run from a node of another cluster only when it is its
cluster's coordinator, the requester is a live peer admitted by ``[security]``, and its own
backlog, all of it, leaves room for every task asked (`spill_room`); the origin's term is
not compared with ours (clusters keep their own terms; the origin's executor fences results
by attempt). Same leases, renewals, results and re-queues as inside a cluster; a task run
for another node is never offered on, so spill-over tasks are never delegated further.

Pure: no RNS, no sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from akita.config import Config
from akita.wire import mesh

# Tasks per task process a peer should have waiting or running. Enough to keep it busy
# through one hand-out cycle (result home, take, /run: four ledger commits, ~5-20 ms), so
# short tasks do not leave it idle; few enough that what sits queued on a peer when a batch
# ends, or is lost with it, stays small (bench/delegation.py measured 2, 4 and 8).
WINDOW_PER_PROCESS = 4
MAX_TAKE = 64               # tasks asked of the executor per peer and round
BATCH_BYTES = 256 << 10     # a /run or /result body is cut here (one task may go alone)
ENTRY_OVERHEAD_BYTES = 512  # a spec or outcome beyond its args or result (id, name, error…)
MIN_LEASE_S = 3.0
LOAD_KEYS = ("pool", "free", "queued", "running", "held", "waiting")

T = TypeVar("T")
Pair = tuple[str, int]


@dataclass(frozen=True)
class DelegationTiming:
    lease_s: float             # a delegation's lease; the peer renews every third of it
    renew_s: float
    request_timeout_s: float   # one Link request (run, result, renew)
    result_retry_s: float      # first delay before an undelivered outcome is sent again
    result_keep_s: float       # an outcome nobody takes is given up after this long
    own_load_s: float          # how often our own executor's load is read
    record_s: float            # least time between two load updates of the state record

    @classmethod
    def from_config(cls, config: Config) -> DelegationTiming:
        """Leases follow peer_timeout: a peer that is gone is dropped at about the time its
        leases lapse, and a peer that lives renews two or three times per lease."""
        cl = config.cluster
        lease_s = max(MIN_LEASE_S, cl.peer_timeout)
        return cls(lease_s=lease_s, renew_s=lease_s / 3,
                   request_timeout_s=max(5.0, cl.peer_timeout), result_retry_s=0.5,
                   result_keep_s=4 * lease_s, own_load_s=0.5,
                   record_s=max(5.0, cl.announce_interval))


# --- load and choice of peer -------------------------------------------------------------------


@dataclass(frozen=True)
class PeerLoad:
    """What a node's executor reports of its load (`task.stats_reply.load`), compacted."""

    pool: int = 1
    free: int = 0
    queued: int = 0
    running: int = 0
    held: int = 0
    waiting: int = 0

    def pack(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in LOAD_KEYS}


def parse_load(obj: Any) -> PeerLoad | None:
    """A load from an executor's reply, a state record or a peer; None if malformed."""
    if not isinstance(obj, dict):
        return None
    values = {key: obj.get(key, 0) for key in LOAD_KEYS}
    if not all(type(v) is int and 0 <= v < 1 << 31 for v in values.values()):
        return None
    return PeerLoad(**values)


@dataclass(frozen=True)
class Candidate:
    """A cluster mate as a possible delegate, as this node sees it now."""

    node_id: str
    types: frozenset[str]
    capabilities: frozenset[str]
    load: PeerLoad
    outstanding: int     # our tasks it holds (sent and not answered)
    cpu_percent: float = 0.0


def own_work(load: PeerLoad) -> int:
    """A node's own tasks queued or running there: all of them less those held for peers."""
    return max(0, load.queued + load.running - load.held)


def room(candidate: Candidate) -> int:
    """How many more of our tasks `candidate` should get now (see the module docstring)."""
    window = WINDOW_PER_PROCESS * max(1, candidate.load.pool)
    return max(0, window - candidate.outstanding - own_work(candidate.load))


def rank(candidates: Iterable[Candidate], own_capabilities: Iterable[str], waiting: int
         ) -> list[Candidate]:
    """The peers with room, in the order they are asked (the rule in the module docstring)."""
    own = frozenset(own_capabilities)

    def key(c: Candidate) -> tuple[int, int, int, float, str]:
        match = 0 if waiting > 0 and c.capabilities - own else 1
        return (match, -room(c), c.load.queued, c.cpu_percent, c.node_id)

    return sorted((c for c in candidates if room(c) > 0 and c.types), key=key)


def work_admitted(policy: str, allowed: Collection[str], node: str, alive: bool,
                  seated_since: float | None, now: float, settle_s: float) -> bool:
    """`[security] delegate_to`: may `node` be handed tasks, and be trusted with the
    capabilities it declares? "allowlist": only the listed identities; "members": a live
    peer that has held its seat (in this node's view) for `settle_s`, so an identity that
    just appeared, whatever it claims, gets no work and no task's arguments."""
    if policy == "allowlist":
        return node in allowed
    return alive and seated_since is not None and now - seated_since >= settle_s


def saturated(mates: Iterable[Candidate]) -> bool:
    """No cluster mate that runs anything has room for more of our tasks (none at all counts)."""
    return not any(room(c) > 0 for c in mates if c.types)


def spill_room(load: PeerLoad | None, taken_lately: int = 0) -> int:
    """How many spill-over tasks a coordinator with `load` takes now: its whole backlog
    (own tasks and those held for others) stays within the window, less what it accepted
    since that load was read (`taken_lately`)."""
    if load is None:
        return 0
    window = WINDOW_PER_PROCESS * max(1, load.pool)
    return max(0, window - load.queued - load.running - taken_lately)


# --- batches ----------------------------------------------------------------------------------


def split(items: Sequence[T], size_of: Callable[[T], int], max_bytes: int = BATCH_BYTES
          ) -> list[list[T]]:
    """`items` in order, cut into batches of about `max_bytes` at most; an item larger than
    that goes alone."""
    batches: list[list[T]] = []
    current: list[T] = []
    used = 0
    for item in items:
        size = size_of(item) + ENTRY_OVERHEAD_BYTES
        if current and used + size > max_bytes:
            batches.append(current)
            current, used = [], 0
        current.append(item)
        used += size
    if current:
        batches.append(current)
    return batches


def body_limit(max_payload_bytes: int) -> int:
    """The largest /run or /result body this node reads: a batch, or one task at the payload
    limit, whichever is larger."""
    return max(BATCH_BYTES, max_payload_bytes) + 2 * ENTRY_OVERHEAD_BYTES + 1024


def group_by_origin(outcomes: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Outcomes the executor pushed, per origin, each without its origin key (the origin
    knows who it is)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for outcome in outcomes:
        origin = outcome.get("origin")
        if isinstance(origin, str) and origin:
            entry = {key: value for key, value in outcome.items() if key != "origin"}
            grouped.setdefault(origin, []).append(entry)
    return grouped


# --- bodies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRequest:
    term: int
    lease_s: float
    tasks: list[dict[str, Any]]
    spill: bool = False     # spill-over from another cluster (see the module docstring)


@dataclass(frozen=True)
class RunResponse:
    ids: list[str | None]
    errors: list[tuple[int, str, str]]
    load: PeerLoad | None


@dataclass(frozen=True)
class ResultRequest:
    results: list[dict[str, Any]]
    load: PeerLoad | None


def encode_run(term: int, lease_s: float, tasks: list[dict[str, Any]], spill: bool = False
               ) -> bytes:
    body: dict[str, Any] = {"term": term, "lease_s": float(lease_s), "tasks": tasks}
    if spill:
        body["spill"] = True
    return mesh.pack(body)


def decode_run(data: bytes, max_bytes: int) -> RunRequest:
    body = _map(data, max_bytes)
    term, lease_s, tasks = body.get("term"), body.get("lease_s"), body.get("tasks")
    if type(term) is not int or not 0 <= term < 1 << 63:
        raise mesh.WireError("term: expected an integer >= 0")
    if not isinstance(lease_s, (int, float)) or isinstance(lease_s, bool) or \
            not 0 < lease_s <= 86400:
        raise mesh.WireError("lease_s: expected seconds above 0")
    if type(tasks) is not list or not tasks or len(tasks) > MAX_TAKE or \
            not all(isinstance(spec, dict) for spec in tasks):
        raise mesh.WireError(f"tasks: expected 1 to {MAX_TAKE} task specs")
    spill = body.get("spill", False)
    if type(spill) is not bool:
        raise mesh.WireError("spill: expected true or false")
    return RunRequest(term, float(lease_s), tasks, spill)


def encode_run_response(ids: list[str | None], errors: list[list[Any]],
                        load: PeerLoad | None) -> bytes:
    return mesh.pack({"ids": ids, "errors": errors,
                      "load": load.pack() if load is not None else None})


def decode_run_response(data: bytes, expected: int) -> RunResponse:
    """The peer's answer to a /run of `expected` tasks."""
    body = _map(data, 1 << 20)
    ids, errors = body.get("ids"), body.get("errors")
    if type(ids) is not list or len(ids) != expected or \
            not all(i is None or isinstance(i, str) for i in ids):
        raise mesh.WireError(f"ids: expected {expected} ids or nulls")
    if type(errors) is not list:
        raise mesh.WireError("errors: expected a list")
    parsed: list[tuple[int, str, str]] = []
    for error in errors:
        if type(error) is not list or len(error) != 3 or type(error[0]) is not int or \
                not 0 <= error[0] < expected or not all(isinstance(e, str) for e in error[1:]):
            raise mesh.WireError("errors: expected [index, code, message] entries")
        parsed.append((error[0], error[1], error[2]))
    return RunResponse(ids, parsed, parse_load(body.get("load")))


def encode_results(results: list[dict[str, Any]], load: PeerLoad | None) -> bytes:
    return mesh.pack({"results": results, "load": load.pack() if load is not None else None})


def decode_results(data: bytes, max_bytes: int) -> ResultRequest:
    body = _map(data, max_bytes)
    results = body.get("results")
    if type(results) is not list or not results or not all(
            isinstance(r, dict) and isinstance(r.get("id"), str)
            and type(r.get("attempt")) is int and isinstance(r.get("state"), str)
            for r in results):
        raise mesh.WireError("results: expected {id, attempt, state, …} entries")
    return ResultRequest(results, parse_load(body.get("load")))


def encode_pairs(pairs: Iterable[Pair]) -> bytes:
    return mesh.pack({"tasks": [[task_id, attempt] for task_id, attempt in pairs]})


def decode_pairs(data: bytes, max_bytes: int = 1 << 20) -> list[Pair]:
    """The [id, attempt] list of a /renew request."""
    return _pairs(_map(data, max_bytes).get("tasks"), "tasks")


def encode_outcome(first: Any, stale: Any, first_key: str) -> bytes:
    """A /result answer ({"accepted", "stale"}) or a /renew answer ({"renewed", "stale"})."""
    return mesh.pack({first_key: first, "stale": stale})


def decode_accepted(data: bytes) -> tuple[list[str], list[str]]:
    body = _map(data, 1 << 20)
    accepted, stale = body.get("accepted"), body.get("stale")
    if type(accepted) is not list or type(stale) is not list or \
            not all(isinstance(i, str) for i in accepted + stale):
        raise mesh.WireError("accepted, stale: expected lists of task ids")
    return accepted, stale


def decode_renewed(data: bytes) -> tuple[int, list[Pair]]:
    body = _map(data, 1 << 20)
    renewed = body.get("renewed")
    if type(renewed) is not int or renewed < 0:
        raise mesh.WireError("renewed: expected an integer >= 0")
    return renewed, _pairs(body.get("stale"), "stale")


def _pairs(value: Any, name: str) -> list[Pair]:
    if type(value) is not list or not all(
            type(p) is list and len(p) == 2 and isinstance(p[0], str) and type(p[1]) is int
            for p in value):
        raise mesh.WireError(f"{name}: expected [id, attempt] entries")
    return [(p[0], p[1]) for p in value]


def _map(data: bytes, max_bytes: int) -> dict[str, Any]:
    body = mesh.unpack(data, max_bytes)
    if not isinstance(body, dict):
        raise mesh.WireError("expected a msgpack map")
    return body
