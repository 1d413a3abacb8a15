"""Cross-cluster spill-over of tasks: when this node's whole cluster is saturated, its
queued tasks go to the coordinator of another cluster with spare capacity, over the same
delegation paths and under the same lease rules (the rule is in `akita.mesh.delegation`).

Origin side: `targets` names the other clusters' coordinators worth asking, as delegation
candidates; `workers.gateway.delegate.OriginSide` takes tasks for them as for a mate and marks the
/run as spill-over (`is_spill`). Peer side: `Admission.refusal` decides whether a /run may
be served at all — from a live cluster mate as before, or, as spill-over, by a coordinator
with room from a live peer of another cluster.

What these ask of the gateway's delegation is stated here (`SpillOwner`, `SpillOrigin`):
this module never imports its owner, which imports it.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Protocol

from akita.config import Config
from akita.mesh import delegation as plan
from akita.mesh import state as st
from akita.mesh.rounds import accepts
from workers.gateway.node import NetNode
from workers.gateway.peers import PeerState

# What a coordinator accepted for spill-over counts against its room this long: about the
# time until its next own-load reading (`own_load_s`) shows those tasks.
TAKEN_WINDOW_S = 1.0


class SpillOwner(Protocol):
    """What spill-over reads of the gateway's delegation (`delegate.Delegator`)."""

    @property
    def net(self) -> NetNode: ...

    @property
    def config(self) -> Config: ...

    @property
    def node_id(self) -> str: ...

    @property
    def own_load(self) -> plan.PeerLoad | None: ...


class SpillOrigin(Protocol):
    """What `targets` asks of the origin side (`delegate.OriginSide`): whether a node may be
    asked now, and a node as a delegation candidate, as the origin side sees it."""

    def may_ask(self, node_id: str, now: float) -> bool: ...

    def candidate(self, node_id: str, record: st.Record, cpu_percent: float, now: float
                  ) -> plan.Candidate: ...


def is_spill(owner: SpillOwner, peer: str) -> bool:
    """A /run to `peer` is spill-over when `peer` is not one of our cluster mates."""
    return peer not in owner.net.formation.cluster_mates()


def targets(d: SpillOwner, origin: SpillOrigin, now: float) -> list[plan.Candidate]:
    """The live coordinators of the other clusters with room, in the order they are asked."""
    formation = d.net.formation
    assignment = formation.assignment
    own = formation.own_cluster()
    if assignment is None or own is None:
        return []
    found = []
    for other in assignment.clusters:
        head = other.coordinator
        if other.id == own.id or not head or head == d.node_id or \
                not origin.may_ask(head, now):
            continue
        peer = d.net.table.get(head)
        record = d.net.sync.store.get(head)
        if peer is None or peer.state is not PeerState.ALIVE or record is None \
                or not d.net.admits_work(head, now):   # [security] delegate_to
            continue
        found.append(origin.candidate(head, record, float(peer.load.cpu_percent), now))
    own_load = d.own_load
    return plan.rank(found, d.config.tasks.capabilities,
                     own_load.waiting if own_load is not None else 0)


class Admission:
    """Who may hand this node tasks (/run), and how many spill-over tasks it took lately."""

    def __init__(self, owner: SpillOwner) -> None:
        self.d = owner
        self.taken: deque[tuple[float, int]] = deque()   # (when, tasks) of spill-over accepted
        self.spill_accepted = 0
        self.spill_refused = 0

    def refusal(self, origin: str, body: plan.RunRequest) -> str | None:
        """Why a /run of `body` from `origin` is refused, or None if it may be served."""
        net = self.d.net
        peer = net.table.get(origin)
        if peer is None:
            return f"{origin} is not a member of this node's cluster (nor a known peer)"
        if origin in net.formation.cluster_mates():
            term = net.formation.local.term
            if not accepts(body.term, term):
                return f"term {body.term} is older than this cluster's term {term}"
            return None
        if not body.spill:
            return f"{origin} is not a member of this node's cluster"
        reason = self._spill_refusal(peer.state, len(body.tasks))
        if reason is not None:
            self.spill_refused += 1
            return reason
        self.spill_accepted += len(body.tasks)
        self.taken.append((time.monotonic(), len(body.tasks)))
        return None

    def _spill_refusal(self, state: PeerState, count: int) -> str | None:
        net = self.d.net
        if net.formation.role_of(self.d.node_id) != "coordinator":
            return "spill-over is taken by a cluster's coordinator only"
        if state is not PeerState.ALIVE:
            return "the requester is suspected of having left"
        room = plan.spill_room(self.d.own_load, self._taken_lately())
        if room < count:
            return f"no room for {count} spill-over tasks (room for {room})"
        return None

    def _taken_lately(self) -> int:
        limit = time.monotonic() - TAKEN_WINDOW_S
        while self.taken and self.taken[0][0] < limit:
            self.taken.popleft()
        return sum(count for _when, count in self.taken)
