"""Cluster formation and coordinator terms: pure rules from the shared view to the assignment.

Every `discovery_interval` each node runs `advance()` over its view of the live peers. Nodes
whose views agree compute the same assignment, without a vote. Nothing here reads a clock,
a socket or a random source: time comes in as an argument.

The shared view
    Each node reports, in its announce (see `PeerView.pack`), its boot generation, a report
    version, its seat, its term and whether it coordinates. A seat is (cluster id, seat
    number, highest seat number seen in that cluster). The seat number is the join order
    inside a cluster that every node sees alike, unlike local arrival times. A node only ever
    changes its *own* seat; the seats computed for other nodes are predictions that come true
    when those nodes compute the same and announce it.

The rules, in the order `form_clusters` applies them
    1. One report per node: the highest (generation, version); a tie is broken by content,
       so the order reports arrived in never matters.
    2. The claimants of a cluster in join order (seat number, then node id): the first
       `cluster_size` keep their seats; the latest joiners of a cluster over size (a
       partition healed, or two nodes took the last free seat at once) are displaced.
    3. While there are more clusters than k = ceil(N / cluster_size), the smallest clusters
       below full size whose grace period expired (`Grace`) dissolve into the others.
    4. If fewer than k clusters remain, the first nodes waiting for a seat found new ones;
       a cluster id is a hash of its founder's report, so every node derives the same.
    5. The other waiting nodes (displaced ones by seat number, then newcomers by node id)
       take, one by one, the cluster with free room scoring highest on hash(node, cluster):
       rendezvous hashing, so a node's choice does not depend on the other clusters.
    6. The coordinator of a cluster is its member with the highest hash(cluster, node).

Claims are checked against this node's own view (`akita.mesh.rounds` keeps it)
    A report is a claim. A node remembers the seat it computed for every live node in its
    last round and since when. A claimant that this node has seated in the cluster it claims
    for a settling period (`SETTLE_GRACES` grace periods) is established: it ranks before
    every other claimant of that cluster (a newcomer, whatever seat number it claims), and a
    newcomer's claimed number already held by an established member is replaced by a fresh
    one. Surplus clusters with no established member dissolve first. So a member is never
    displaced by a newcomer. Among claimants not yet established (nodes starting together,
    two nodes that took the last free seat at once) the shared order by claimed number
    decides, so views that differed for a moment still converge. A member that comes back
    from a partition in the same boot generation is still established; a restarted node is
    a newcomer (it gets its seat back only while there is room). A node returning to a
    saved seat takes, in its first round, the saved mates and the claims it hears as
    established: it has nothing else to go by. The price of all this: after a partition,
    nodes that joined a cluster on both sides, which is over size once it heals, each keep
    their seat. Seat numbers and terms are bounded (`MAX_SEAT`, `MAX_TERM`) on the wire and
    in every computation.

Terms (fencing without a vote)
    Only a coordinator issues a term; members adopt the highest *credible* term reported by
    a member of their cluster: a term more than `MAX_TERM_STEP` above the lower median of
    the members' terms (this node's own included when it stayed) contradicts the cluster's
    view and is ignored, so a minority of members cannot drag the others' terms up. A node
    that becomes coordinator takes max(seen) + 1, and bumps again if a rival in its cluster
    claims to coordinate at a term not below its own, or if anyone reports a higher term. A
    node that changes cluster drops its old cluster's term. So the term every member holds
    rises on every change of coordinator, and `accepts` refuses a command from an older term.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from akita.errors import ProtocolError

NodeId = str
ClusterId = str

# Cluster ids are 4 bytes (8 hex characters): short enough for announce app_data. Two
# clusters founded with the same id on both sides of a partition merge into one over-size
# cluster when it heals, which rule 2 already resolves.
CLUSTER_ID_BYTES = 4

# Bounds on what a report may claim. Honest terms rise by one per change of coordinator and
# seat numbers by one per join, so neither bound is reached in practice; a claim above them
# is malformed, and computations clamp to them, so no term or seat ever leaves its range.
MAX_SEAT = 2**32 - 1
MAX_TERM = 2**48 - 1
# How far above the cluster's (lower median) term a member's term may be and still be adopted.
MAX_TERM_STEP = 64
# A member is established once this node has seated it in its cluster for this many grace
# periods: long enough for two nodes that took one seat at once to be told apart by the
# shared order first, even when announces arrive a few rounds late.
SETTLE_GRACES = 2
# Departed members remembered (most recent first): one that comes back from a partition in
# the same boot generation is still established; a restarted one is a newcomer.
GONE_LIMIT = 1024


# --- hashing --------------------------------------------------------------------------------


# Cached: every round recomputes the same few thousand scores.
@functools.lru_cache(maxsize=1 << 16)
def _score(purpose: str, first: str, second: str) -> int:
    """A stable 64-bit hash; Python's hash() is salted per process, so never used here."""
    data = f"akita.{purpose}\x1f{first}\x1f{second}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def seat_score(node: NodeId, cluster: ClusterId) -> int:
    """Rendezvous score of `cluster` for `node`: a waiting node takes the highest with room."""
    return _score("seat", node, cluster)


def coordinator_score(cluster: ClusterId, node: NodeId) -> int:
    """Coordinator rank of `node` in `cluster`: the highest-ranked live member coordinates."""
    return _score("coordinator", cluster, node)


def new_cluster_id(founder: NodeId, generation: int, version: int = 0,
                   taken: Collection[ClusterId] = ()) -> str:
    """The id of the cluster `founder` founds, from its id and report (generation, version).

    The version makes a second founding by the same node in one generation a new cluster.
    Skips ids in `taken` (the clusters in the view) by rehashing with a counter, so every node
    with the same view derives the same id.
    """
    attempt = 0
    while True:
        data = f"akita.cluster\x1f{founder}\x1f{generation}\x1f{version}\x1f{attempt}".encode()
        cluster_id = hashlib.blake2b(data, digest_size=CLUSTER_ID_BYTES).hexdigest()
        if cluster_id not in taken:
            return cluster_id
        attempt += 1


# --- what nodes report -------------------------------------------------------------------


def _check_int(value: Any, field: str, limit: int = (1 << 63) - 1) -> int:
    # bool is an int subclass; a report with True for a number is malformed.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ProtocolError(f"expected a whole number from 0 to {limit}, got {value!r}",
                            kind="cluster.report", field=field)
    return value


@dataclass(frozen=True, slots=True, order=True)
class Seat:
    """Where a node sits: its cluster, its join order there, the highest seat number it saw.

    `high` exists so that a seat number is never given twice in one cluster even after its
    holder left: a node that restarts and comes back then still ranks before anyone who
    joined while it was away.
    """

    cluster: ClusterId
    number: int
    high: int = 0

    def pack(self) -> list[Any]:
        """Compact msgpack-ready form: [cluster id bytes, number, high] (about 12 bytes)."""
        return [bytes.fromhex(self.cluster), self.number, self.high]

    @classmethod
    def unpack(cls, obj: Any) -> Seat:
        """The seat from `pack()` output; raises ProtocolError for anything malformed."""
        if not isinstance(obj, (list, tuple)) or len(obj) != 3:
            raise ProtocolError(f"expected [cluster, number, high], got {obj!r}",
                                kind="cluster.report", field="seat")
        raw, number, high = obj
        if not isinstance(raw, bytes) or len(raw) != CLUSTER_ID_BYTES:
            raise ProtocolError(f"expected {CLUSTER_ID_BYTES} bytes, got {raw!r}",
                                kind="cluster.report", field="seat.cluster")
        return cls(raw.hex(), _check_int(number, "seat.number", MAX_SEAT),
                   _check_int(high, "seat.high", MAX_SEAT))


_NO_SEAT: tuple[Any, ...] = (0, "", 0, 0)


@dataclass(frozen=True, slots=True)
class PeerView:
    """One node's report as another node last heard it (or a node's report of itself).

    `version` is a counter the node raises whenever its report changes within a generation
    (`Local.version`); (generation, version) orders two reports of the same node.
    """

    node: NodeId
    generation: int
    version: int = 0
    seat: Seat | None = None
    term: int = 0
    coordinator: bool = False

    def rank(self) -> tuple[Any, ...]:
        """Total order of reports of one node: newest last; content breaks ties."""
        seat = _NO_SEAT if self.seat is None else (1, *_seat_tuple(self.seat))
        return (self.generation, self.version, seat, self.term, self.coordinator)

    def pack(self) -> list[Any]:
        """Compact msgpack-ready form without the node id (the announce carries that)."""
        seat = None if self.seat is None else self.seat.pack()
        return [self.generation, self.version, seat, self.term, self.coordinator]

    @classmethod
    def unpack(cls, node: NodeId, obj: Any) -> PeerView:
        """The report of `node` from `pack()` output; ProtocolError for anything malformed."""
        if not isinstance(obj, (list, tuple)) or len(obj) != 5:
            raise ProtocolError(f"expected 5 fields, got {obj!r}", kind="cluster.report")
        generation, version, seat, term, coordinator = obj
        if not isinstance(coordinator, bool):
            raise ProtocolError(f"expected true or false, got {coordinator!r}",
                                kind="cluster.report", field="coordinator")
        return cls(node, _check_int(generation, "generation"), _check_int(version, "version"),
                   None if seat is None else Seat.unpack(seat),
                   _check_int(term, "term", MAX_TERM),
                   coordinator)


def _seat_tuple(seat: Seat) -> tuple[str, int, int]:
    return (seat.cluster, seat.number, seat.high)


def latest_reports(view: Iterable[PeerView]) -> dict[NodeId, PeerView]:
    """One report per node: the one with the highest rank, whatever the input order."""
    latest: dict[NodeId, PeerView] = {}
    for report in view:
        held = latest.get(report.node)
        if held is None or report.rank() > held.rank():
            latest[report.node] = report
    return latest


# --- the assignment ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cluster:
    """One cluster of the assignment: members in join order, and its coordinator."""

    id: ClusterId
    members: tuple[NodeId, ...]
    coordinator: NodeId


@dataclass(frozen=True)
class Assignment:
    """Every live node's seat and every cluster, as computed from one view."""

    clusters: tuple[Cluster, ...]  # sorted by id
    seats: Mapping[NodeId, Seat]
    _by_id: Mapping[ClusterId, Cluster] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {cluster.id: cluster for cluster in self.clusters})

    def seat_of(self, node: NodeId) -> Seat:
        """The seat computed for `node`; KeyError if it was not in the view."""
        return self.seats[node]

    def cluster(self, cluster_id: ClusterId) -> Cluster:
        """The cluster with this id; KeyError if there is none."""
        return self._by_id[cluster_id]

    def cluster_of(self, node: NodeId) -> Cluster:
        """The cluster `node` is in."""
        return self.cluster(self.seats[node].cluster)

    def membership(self) -> dict[NodeId, ClusterId]:
        """node → cluster id, for comparing two assignments."""
        return {node: seat.cluster for node, seat in self.seats.items()}


def cluster_count(nodes: int, cluster_size: int) -> int:
    """k = ceil(N / cluster_size): how many clusters N live nodes need."""
    return math.ceil(nodes / cluster_size)


def under_full(size: int, cluster_size: int) -> bool:
    """A cluster below full size may dissolve after its grace period, if there is a surplus.

    Any size below full, not only half or less: with the half threshold, clusters of 2 at
    cluster_size 3 never merge, and bench/cluster_sim.py measured up to 7 % more clusters
    than k after churn (0.02 members moved per event); with this rule there are exactly k
    once quiet, for 0.2 moved per event.
    """
    return size < cluster_size


def _check_size(cluster_size: int) -> None:
    if cluster_size < 1:
        raise ValueError(f"cluster_size must be at least 1, got {cluster_size}")


Known = Mapping[NodeId, Seat]


def _incumbent(report: PeerView, known: Known) -> bool:
    """Is `report.node` established (in `known`) in the cluster it now claims?"""
    held = known.get(report.node)
    return report.seat is not None and held is not None and held.cluster == report.seat.cluster


def _rank(report: PeerView, known: Known) -> tuple[int, int, NodeId]:
    """Join order in a cluster: established members first, each part by claimed number."""
    assert report.seat is not None
    return (0 if _incumbent(report, known) else 1, report.seat.number, report.node)


def _join_order(report: PeerView) -> tuple[int, NodeId]:
    assert report.seat is not None
    return (report.seat.number, report.node)


def _claims(reports: Iterable[PeerView], known: Known) -> dict[ClusterId, list[PeerView]]:
    """Claimants of each cluster, incumbents first, each part in join order."""
    claims: dict[ClusterId, list[PeerView]] = {}
    for report in reports:
        if report.seat is not None:
            claims.setdefault(report.seat.cluster, []).append(report)
    for members in claims.values():
        members.sort(key=lambda r: _rank(r, known))
    return claims


def _kept(claims: Mapping[ClusterId, list[PeerView]],
          cluster_size: int) -> tuple[dict[ClusterId, list[PeerView]], list[PeerView]]:
    """Rule 2: the first `cluster_size` claimants keep their seats; the rest are displaced."""
    kept = {cid: members[:cluster_size] for cid, members in claims.items()}
    displaced = [report for members in claims.values() for report in members[cluster_size:]]
    return kept, displaced


def _dissolving(kept: Mapping[ClusterId, list[PeerView]], nodes: int, cluster_size: int,
                expired: Collection[ClusterId], protected: Collection[ClusterId]
                ) -> list[ClusterId]:
    """Rule 3: expired under-full clusters while there are more than k: unprotected ones
    first (clusters that appeared with the surplus cannot make an established one
    dissolve), then the smallest."""
    surplus = len(kept) - cluster_count(nodes, cluster_size)
    candidates = sorted((cid in protected, len(kept[cid]), cid) for cid in expired
                        if cid in kept and under_full(len(kept[cid]), cluster_size))
    return [cid for _protected, _size, cid in candidates[:max(0, surplus)]]


def _numbered(cid: ClusterId, kept: list[PeerView], known: Known,
              high: dict[ClusterId, int]) -> list[tuple[int, NodeId]]:
    """Seat numbers of a cluster's kept claimants: each keeps its claimed number, unless a
    newcomer claims one an established member holds (then it gets a fresh one)."""
    taken = {r.seat.number for r in kept if r.seat is not None and _incumbent(r, known)}
    out = []
    for report in kept:
        assert report.seat is not None
        number = report.seat.number
        if not _incumbent(report, known) and number in taken:
            number = high[cid] = min(MAX_SEAT, high[cid] + 1)
            taken.add(number)
        out.append((number, report.node))
    return out


def _highs(claims: Mapping[ClusterId, list[PeerView]]) -> dict[ClusterId, int]:
    """The highest seat number claimed in each cluster (bounded by MAX_SEAT on the wire)."""
    return {cid: max(max(r.seat.number, r.seat.high) for r in members if r.seat)
            for cid, members in claims.items()}


def form_clusters(view: Iterable[PeerView], cluster_size: int,
                  expired: Collection[ClusterId] = (),
                  known: Known | None = None,
                  protected: Collection[ClusterId] = ()) -> Assignment:
    """The assignment for the live nodes in `view` (rules 1–6 of the module docstring).

    `expired`: clusters whose grace period has run out (`Grace.expired`); only those below
    full size, and only while there are more clusters than k, dissolve. `known`: the seats
    this node computed itself and that are established (see the module docstring); claims
    are checked against them. `protected`: clusters with a member established before the
    current surplus of clusters began; they dissolve only after all others.
    """
    _check_size(cluster_size)
    known = known or {}
    reports = latest_reports(view)
    claims = _claims(reports.values(), known)
    kept, displaced = _kept(claims, cluster_size)
    for cid in _dissolving(kept, len(reports), cluster_size, expired, protected):
        displaced.extend(kept.pop(cid))
    newcomers = sorted((r for r in reports.values() if r.seat is None), key=lambda r: r.node)
    waiting = sorted(displaced, key=_join_order) + newcomers
    high = _highs(claims)
    members = {cid: _numbered(cid, ms, known, high) for cid, ms in kept.items()}
    _seat_waiting(members, high, waiting, len(reports), cluster_size, taken=set(claims))
    return _assignment(members, high)


def _seat_waiting(members: dict[ClusterId, list[tuple[int, NodeId]]], high: dict[ClusterId, int],
                  waiting: list[PeerView], nodes: int, cluster_size: int,
                  taken: set[ClusterId]) -> None:
    """Rules 4 and 5: found the clusters still needed, then seat the rest by rendezvous."""
    founders = min(len(waiting), max(0, cluster_count(nodes, cluster_size) - len(members)))
    for report in waiting[:founders]:
        cid = new_cluster_id(report.node, report.generation, report.version, taken)
        taken.add(cid)
        members[cid] = [(0, report.node)]
        high[cid] = 0
    room = {cid for cid, seated in members.items() if len(seated) < cluster_size}
    for report in waiting[founders:]:
        # Never empty: there are at least k clusters, and k * cluster_size >= N.
        cid = max(room, key=lambda c: (seat_score(report.node, c), c))
        high[cid] = min(MAX_SEAT, high[cid] + 1)
        members[cid].append((high[cid], report.node))
        if len(members[cid]) >= cluster_size:
            room.discard(cid)


def _assignment(members: Mapping[ClusterId, list[tuple[int, NodeId]]],
                high: Mapping[ClusterId, int]) -> Assignment:
    """Rule 6, and the assignment in canonical order."""
    clusters = []
    seats: dict[NodeId, Seat] = {}
    for cid in sorted(members):
        seated = sorted(members[cid])
        nodes = tuple(node for _number, node in seated)
        coordinator = max(nodes, key=lambda n: (coordinator_score(cid, n), n))
        clusters.append(Cluster(cid, nodes, coordinator))
        for number, node in seated:
            seats[node] = Seat(cid, number, high[cid])
    return Assignment(tuple(clusters), seats)


# --- grace periods ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grace:
    """When each cluster that may dissolve was first seen under-full, by this node.

    A cluster may dissolve when it is below full size while there are more clusters than
    needed. Each node times this on its own clock; nodes disagree only for as long as their
    views of it differ, and the members of the dissolving cluster act on their own timers.
    """

    since: tuple[tuple[ClusterId, float], ...] = ()  # sorted by cluster id

    def update(self, view: Iterable[PeerView], cluster_size: int, now: float,
               known: Known | None = None) -> Grace:
        """The timers after observing `view` at time `now`: new ones start, met ones stop."""
        _check_size(cluster_size)
        reports = latest_reports(view)
        kept, _displaced = _kept(_claims(reports.values(), known or {}), cluster_size)
        if len(kept) <= cluster_count(len(reports), cluster_size):
            return Grace()
        started = dict(self.since)
        return Grace(tuple(sorted((cid, started.get(cid, now)) for cid, members in kept.items()
                                  if under_full(len(members), cluster_size))))

    def expired(self, now: float, grace_s: float) -> frozenset[ClusterId]:
        """Clusters under-full (and surplus) for at least `grace_s` seconds at `now`."""
        return frozenset(cid for cid, since in self.since if now - since >= grace_s)
