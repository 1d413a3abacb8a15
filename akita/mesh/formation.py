"""This node's side of cluster formation: runs `akita.mesh.rounds.advance` over the peer table.

The rules themselves live in `akita.mesh.cluster` (pure, property-tested). This adapter keeps the
node's `Local` between rounds, turns a round into what the gateway acts on (announce a
changed report, persist a new seat, publish a changed view), and renders the operator view.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from akita.mesh import cluster as rules
from akita.mesh import rounds


@dataclass(frozen=True)
class RoundResult:
    report_changed: bool       # our report (seat, term, coordinator) changed: announce it
    seat_changed: bool         # our seat, term or mates changed: persist them
    view_changed: bool         # the clusters as we see them changed: publish
    moved: bool                # we changed cluster (or got our first seat)
    refused: tuple[str, ...] = ()   # peers whose claim on our cluster was not adopted


class Formation:
    """The node's `Local` and the latest assignment it computed."""

    def __init__(self, node_id: str, generation: int, cluster_size: int, grace_s: float,
                 seat: rules.Seat | None = None, term: int = 0,
                 mates: tuple[tuple[str, rules.Seat], ...] = ()) -> None:
        self.cluster_size = cluster_size
        self.grace_s = grace_s
        # The saved mates are what this node's first round checks claims against.
        self.local = rounds.Local(node_id, generation, seat=seat, term=term, known=mates)
        self.assignment: rules.Assignment | None = None
        self.rounds = 0

    @property
    def node_id(self) -> str:
        return self.local.node

    def report(self) -> rules.PeerView:
        return self.local.report()

    def evaluate(self, reports: Iterable[rules.PeerView], now: float) -> RoundResult:
        """One discovery round over the latest reports of the live peers."""
        before = self.local
        old_view = self._view_key()
        old_mates = self.cluster_mates()
        reports = list(reports)
        result = rounds.advance(self.local, reports, self.cluster_size, now, self.grace_s)
        self.local = result.local
        self.assignment = result.assignment
        self.rounds += 1
        return RoundResult(
            refused=self._refused(reports),
            report_changed=self.local.version != before.version,
            seat_changed=((self.local.seat, self.local.term) != (before.seat, before.term)
                          or self.cluster_mates() != old_mates),
            view_changed=self._view_key() != old_view,
            moved=result.moved)

    def _refused(self, reports: list[rules.PeerView]) -> tuple[str, ...]:
        """Peers claiming a seat in our cluster that we did not give them, or a term the
        cluster's members contradict."""
        own = self.own_cluster()
        if own is None:
            return ()
        claims = [r for r in reports if r.seat is not None and r.seat.cluster == own.id
                  and r.node != self.node_id]
        ceiling = rounds.credible_terms([r.term for r in claims if r.node in own.members]
                                       + [self.local.term])
        return tuple(sorted(r.node for r in claims
                            if r.node not in own.members or r.term > ceiling))

    def _view_key(self) -> Any:
        if self.assignment is None:
            return None
        return (self.assignment.clusters, self.local.term)

    # --- queries ------------------------------------------------------------------------------

    def mate_seats(self) -> list[tuple[str, rules.Seat]]:
        """The other members of this node's cluster with their seats (saved with the seat)."""
        if self.assignment is None:
            return []
        return [(node, self.assignment.seats[node]) for node in sorted(self.cluster_mates())]

    def seated_since(self, node_id: str) -> float | None:
        """When this node first saw `node_id` in the cluster it sits in (its own clock)."""
        return dict(self.local.since).get(node_id)

    def own_cluster(self) -> rules.Cluster | None:
        if self.assignment is None or self.node_id not in self.assignment.seats:
            return None
        return self.assignment.cluster_of(self.node_id)

    def cluster_mates(self) -> set[str]:
        """The other members of this node's cluster."""
        own = self.own_cluster()
        return set(own.members) - {self.node_id} if own is not None else set()

    def cluster_of(self, node_id: str) -> str:
        if self.assignment is None or node_id not in self.assignment.seats:
            return ""
        return self.assignment.seats[node_id].cluster

    def role_of(self, node_id: str) -> str:
        """"coordinator", "member", or "none" (not placed yet)."""
        cluster_id = self.cluster_of(node_id)
        if not cluster_id:
            return "none"
        assert self.assignment is not None
        own = self.assignment.cluster(cluster_id)
        return "coordinator" if own.coordinator == node_id else "member"

    def clusters(self, terms: dict[str, int]) -> list[dict[str, Any]]:
        """The operator view: id, members, coordinator, term of every cluster.

        `terms`: node → the term it last reported; a cluster's term is the highest one its
        members report (this node's own term for its own cluster).
        """
        if self.assignment is None:
            return []
        out = []
        for found in self.assignment.clusters:
            known = [terms.get(node, 0) for node in found.members]
            if self.node_id in found.members:
                known.append(self.local.term)
            ceiling = rounds.credible_terms(known)   # a term its members contradict is a claim
            out.append({"id": found.id, "members": list(found.members),
                        "coordinator": found.coordinator,
                        "term": max((t for t in known if t <= ceiling), default=0)})
        return out
