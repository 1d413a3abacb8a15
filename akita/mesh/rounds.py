"""One node's discovery round: what it carries between rounds, its seat, role and term.

The pure rules from a view to an assignment live in `akita.mesh.cluster` (whose docstring
states them, with how claims are checked); this module runs them for one node, keeps what
it checks the next claims against (`Local.known`, `Local.since`, `Local.gone`) and derives
its term. Nothing here reads a clock, a socket or a random source.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from akita.mesh.cluster import (
    GONE_LIMIT,
    MAX_TERM,
    MAX_TERM_STEP,
    SETTLE_GRACES,
    Assignment,
    Cluster,
    ClusterId,
    Grace,
    Known,
    NodeId,
    PeerView,
    Seat,
    _claims,
    form_clusters,
    latest_reports,
)

# --- one node's round ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Local:
    """What one node carries from one discovery round to the next.

    Persist `seat` (and `term`) with the node's data: a restarted node starts from
    `Local(node, new_generation, seat=saved_seat, term=saved_term)` and so returns to its
    cluster (if it still has room there). `report()` is what the node announces about
    itself. `known` is the seat this node computed for each live node in its last round,
    `since` when it first seated each there, `generations` their boot generations, `gone`
    the departed members (bounded): claims are checked against these, never stored as
    claimed. Before its first round (`placed` false) a node returning to a saved seat
    takes the mates it saved, and the claims of the others that do not contradict them:
    it has nothing else to go by, and its own saved seat gets no precedence.
    """

    node: NodeId
    generation: int
    version: int = 0
    seat: Seat | None = None
    term: int = 0
    coordinator: bool = False
    grace: Grace = field(default_factory=Grace)
    known: tuple[tuple[NodeId, Seat], ...] = ()
    placed: bool = False
    since: tuple[tuple[NodeId, float], ...] = ()
    generations: tuple[tuple[NodeId, int], ...] = ()
    # Departed members: node, generation, seat, since, when they left.
    gone: tuple[tuple[NodeId, int, Seat, float, float], ...] = ()

    def known_seats(self, view: Iterable[PeerView] = ()) -> dict[NodeId, Seat]:
        """What claims are checked against in this node's next round (see the class doc)."""
        known = dict(self.known)
        if self.placed or self.seat is None:
            if self.seat is not None:
                known[self.node] = self.seat
            return known
        known.pop(self.node, None)
        held = {(seat.cluster, seat.number) for seat in known.values()}
        for report in sorted(view, key=lambda r: r.node):
            seat = report.seat
            if (report.node != self.node and report.node not in known and seat is not None
                    and (seat.cluster, seat.number) not in held):
                known[report.node] = seat
                held.add((seat.cluster, seat.number))
        return known

    def report(self) -> PeerView:
        """This node's own entry in the view, as it announces it."""
        return PeerView(self.node, self.generation, self.version, self.seat, self.term,
                        self.coordinator)


@dataclass(frozen=True, slots=True)
class Round:
    """The outcome of one discovery round on one node."""

    local: Local  # carry into the next round; announce local.report()
    assignment: Assignment  # every node's seat and every cluster (for peers/clusters views)
    moved: bool  # this node's cluster changed (or it got its first seat): persist, announce

    @property
    def cluster(self) -> Cluster:
        """This node's cluster."""
        return self.assignment.cluster_of(self.local.node)


def advance(local: Local, view: Iterable[PeerView], cluster_size: int, now: float,
            grace_s: float) -> Round:
    """Run one discovery round for `local.node` over its view of the live peers at `now`.

    `view` holds the latest report of each live peer; an entry for this node itself is
    replaced by `local.report()`. `now` is any monotonic clock in seconds; `grace_s` is how
    long clusters may stay below full size, while there are more than needed, before the
    smallest dissolve.
    """
    reports = latest_reports(report for report in view if report.node != local.node)
    reports[local.node] = local.report()
    known = local.known_seats(reports.values())
    # A node returning to a saved seat takes, in its first round, what it saved and heard
    # as established: the members decide whether it still has its seat.
    since = dict(local.since) if local.placed or local.seat is None \
        else dict.fromkeys(known, -math.inf)
    _returning(local, reports, known, since)
    established = {n: seat for n, seat in known.items()
                   if now - since.get(n, now) >= SETTLE_GRACES * grace_s}
    grace = local.grace.update(reports.values(), cluster_size, now, established)
    assignment = form_clusters(reports.values(), cluster_size, grace.expired(now, grace_s),
                               established, {seat.cluster for seat in established.values()})
    contested = {cid for cid, members in _claims(reports.values(), {}).items()
                 if len(members) > cluster_size}
    unsettled = {r.node for r in reports.values() if r.seat is not None
                 and r.seat.cluster in contested and r.node not in established}
    history = _History(known, since, unsettled, _gone(local, reports, now))
    return settle(local, assignment, grace, reports.values(), now, history)


def _returning(local: Local, reports: Mapping[NodeId, PeerView], known: dict[NodeId, Seat],
               since: dict[NodeId, float]) -> None:
    """Take back departed members that return in the same boot generation (a partition
    healed): established in their old seat, or in the seat they claim now if its number is
    above every member that this node knew there before they left (they took it while
    away, as the other side of the partition saw); a restarted node is a newcomer."""
    for node, generation, seat, was, left_at in local.gone:
        back = reports.get(node)
        if back is None or back.generation != generation or node in known or back.seat is None:
            continue
        if back.seat.cluster == seat.cluster:
            known[node], since[node] = seat, was
            continue
        before = [known[m].number for m in known if known[m].cluster == back.seat.cluster
                  and since.get(m, math.inf) <= left_at]
        if back.seat.number > max(before, default=-1):
            known[node], since[node] = back.seat, was


@dataclass(frozen=True)
class _History:
    """What `advance` checked claims against, for `settle` to carry into the next round."""

    known: Known
    since: Mapping[NodeId, float]
    unsettled: Collection[NodeId]  # not established, in a cluster with too many claimants
    gone: tuple[tuple[NodeId, int, Seat, float, float], ...] = ()


def _gone(local: Local, reports: Mapping[NodeId, PeerView], now: float
          ) -> tuple[tuple[NodeId, int, Seat, float, float], ...]:
    """Departed members remembered after this round: those that left now, then the older."""
    known, since, generations = dict(local.known), dict(local.since), dict(local.generations)
    left = tuple((node, generations[node], seat, since.get(node, math.inf), now)
                 for node, seat in sorted(known.items())
                 if node not in reports and node in generations)
    kept = tuple(entry for entry in local.gone if entry[0] not in reports)
    return (left + kept)[:GONE_LIMIT]


def settle(local: Local, assignment: Assignment, grace: Grace,
           view: Iterable[PeerView], now: float = 0.0,
           history: _History | None = None) -> Round:
    """The second half of `advance`: this node's seat, role and term from an assignment.

    `view` must hold the reports of at least every node in this node's cluster (the rest is
    ignored); `advance` passes the whole view, and `history`: the seats and times it
    checked claims against (by default `local.known` and `local.since`).
    """
    view = list(view)
    seat = assignment.seat_of(local.node)
    coordinator = assignment.cluster(seat.cluster).coordinator
    members = set(assignment.cluster(seat.cluster).members)
    term = next_term(local, seat.cluster, coordinator,
                     [r for r in view if r.node in members])
    leads = coordinator == local.node
    changed = (seat, term, leads) != (local.seat, local.term, local.coordinator)
    moved = local.seat is None or local.seat.cluster != seat.cluster
    after = Local(local.node, local.generation, local.version + int(changed), seat, term, leads,
                  grace, tuple(sorted(assignment.seats.items())), placed=True,
                  since=_since(history or _History(dict(local.known), dict(local.since), ()),
                               assignment, now),
                  generations=tuple(sorted((r.node, r.generation) for r in view)),
                  gone=history.gone if history is not None else local.gone)
    return Round(after, assignment, moved)


def _since(history: _History, assignment: Assignment,
           now: float) -> tuple[tuple[NodeId, float], ...]:
    """When this node first seated each node in the cluster it sits in now (kept while it
    stays and, until it is established, while nobody else claims that cluster's seats too:
    two nodes that took the last free seat at once are settled by the shared order first)."""
    known, since, unsettled = history.known, history.since, history.unsettled
    return tuple(sorted(
        (node, since[node] if node in since and node in known and node not in unsettled
         and known[node].cluster == seat.cluster else now)
        for node, seat in assignment.seats.items()))


def credible_terms(terms: Iterable[int]) -> int:
    """The highest term a member may hold without contradicting the rest of its cluster:
    the lower median of `terms` plus `MAX_TERM_STEP` (so one member in a cluster of two or
    more honest ones cannot drag their terms up)."""
    ordered = sorted(terms)
    if not ordered:
        return MAX_TERM_STEP
    return min(MAX_TERM, ordered[(len(ordered) - 1) // 2] + MAX_TERM_STEP)


def next_term(local: Local, cluster_id: ClusterId, coordinator: NodeId,
              view: Iterable[PeerView]) -> int:
    """The term `local.node` holds in `cluster_id` after this round (see module docstring).

    `view`: the reports of the members of `cluster_id` as this node seated them; only those
    that claim a seat there count, and only with a credible term (`credible_terms`).
    """
    stayed = local.seat is not None and local.seat.cluster == cluster_id
    mates = [r for r in view if r.node != local.node and r.seat is not None
             and r.seat.cluster == cluster_id]
    ceiling = credible_terms([r.term for r in mates] + ([local.term] if stayed else []))
    mates = [r for r in mates if r.term <= ceiling]
    own = min(local.term, ceiling) if stayed else 0
    seen = max((r.term for r in mates), default=0)
    base = max(seen, own)
    if coordinator != local.node:
        return base
    rival = any(r.coordinator and r.term >= own for r in mates)
    if not (stayed and local.coordinator) or rival or seen > own or own != local.term:
        return min(MAX_TERM, base + 1)
    return own


def accepts(term_of_command: int, current_term: int) -> bool:
    """Fencing: a command (or lease, or result) is accepted only from the current term or later."""
    return term_of_command >= current_term
