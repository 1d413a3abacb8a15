"""Spill-over rules without a network: when a cluster counts as saturated, how much room a
coordinator has, the /run body's spill mark, and who may hand a node tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from akita.mesh import delegation as plan
from workers.gateway import spillover
from workers.gateway.peers import PeerState

SPEC = {"id": "t1", "name": "akita.sleep", "args": [0.1], "attempt": 1}
IDLE = plan.PeerLoad(pool=1)


def candidate(node: str, load: plan.PeerLoad, outstanding: int = 0,
              types: frozenset[str] = frozenset({"akita.sleep"})) -> plan.Candidate:
    return plan.Candidate(node, types, frozenset(), load, outstanding)


def test_a_cluster_is_saturated_when_no_mate_has_room() -> None:
    full = plan.PeerLoad(pool=1, queued=3, running=1)
    assert plan.saturated([candidate("a", full), candidate("b", plan.PeerLoad(), 4)])
    assert plan.saturated([])
    assert not plan.saturated([candidate("a", full), candidate("b", plan.PeerLoad())])
    # A mate that runs nothing does not count as room.
    assert plan.saturated([candidate("a", plan.PeerLoad(), types=frozenset())])


def test_spill_room_counts_the_whole_backlog_and_what_was_just_taken() -> None:
    assert plan.spill_room(None) == 0
    assert plan.spill_room(plan.PeerLoad(pool=1)) == plan.WINDOW_PER_PROCESS
    # Tasks held for other origins count too (unlike `room`, which sees one origin's window).
    busy = plan.PeerLoad(pool=2, queued=5, running=2, held=7)
    assert plan.spill_room(busy) == 2 * plan.WINDOW_PER_PROCESS - 7
    assert plan.spill_room(plan.PeerLoad(pool=1), taken_lately=3) == 1
    assert plan.spill_room(plan.PeerLoad(pool=1), taken_lately=9) == 0


def test_the_spill_mark_travels_in_the_run_body() -> None:
    plain = plan.decode_run(plan.encode_run(3, 5.0, [SPEC]), 1 << 20)
    assert plain.spill is False and plain.term == 3
    assert plan.decode_run(plan.encode_run(3, 5.0, [SPEC], spill=True), 1 << 20).spill
    bad = plan.mesh.pack({"term": 1, "lease_s": 5.0, "tasks": [SPEC], "spill": 1})
    with pytest.raises(plan.mesh.WireError, match="spill"):
        plan.decode_run(bad, 1 << 20)


# --- admission -------------------------------------------------------------------------------


@dataclass
class FakeFormation:
    role: str
    mates: set[str]
    local: Any = field(default_factory=lambda: SimpleNamespace(term=4))

    def cluster_mates(self) -> set[str]:
        return self.mates

    def role_of(self, _node: str) -> str:
        return self.role


def admission(role: str, load: plan.PeerLoad | None = IDLE,
              peers: dict[str, PeerState] | None = None) -> spillover.Admission:
    known = peers if peers is not None else {"mate": PeerState.ALIVE, "far": PeerState.ALIVE}
    table = SimpleNamespace(get=lambda node: SimpleNamespace(state=known[node])
                            if node in known else None)
    net = SimpleNamespace(table=table, formation=FakeFormation(role, {"mate"}))
    owner = SimpleNamespace(net=net, node_id="me", own_load=load)
    return spillover.Admission(owner)  # type: ignore[arg-type]


def run(count: int = 1, spill: bool = True, term: int = 4) -> plan.RunRequest:
    return plan.RunRequest(term, 5.0, [dict(SPEC, id=f"t{i}") for i in range(count)], spill)


def test_a_coordinator_with_room_takes_spill_over_from_another_cluster() -> None:
    gate = admission("coordinator")
    # The origin's term belongs to its own cluster: not compared with ours.
    assert gate.refusal("far", run(2, term=0)) is None
    assert gate.spill_accepted == 2
    # What it just took counts against its room until its load shows it.
    assert gate.refusal("far", run(2)) is None
    refusal = gate.refusal("far", run(1))
    assert refusal is not None and "no room" in refusal
    assert (gate.spill_accepted, gate.spill_refused) == (4, 1)


def test_a_member_that_does_not_coordinate_refuses_spill_over() -> None:
    gate = admission("member")
    refusal = gate.refusal("far", run())
    assert refusal is not None and "coordinator only" in refusal
    assert gate.spill_accepted == 0


def test_spill_over_needs_the_mark_a_live_requester_and_room() -> None:
    assert "not a member" in str(admission("coordinator").refusal("far", run(spill=False)))
    assert "not a member" in str(admission("coordinator").refusal("stranger", run()))
    suspect = admission("coordinator", peers={"far": PeerState.SUSPECT})
    assert "suspected" in str(suspect.refusal("far", run()))
    busy = admission("coordinator", plan.PeerLoad(pool=1, queued=3, running=1))
    assert "no room" in str(busy.refusal("far", run()))
    assert "no room" in str(admission("coordinator", None).refusal("far", run()))


def test_cluster_mates_keep_the_term_rule() -> None:
    gate = admission("member")
    assert gate.refusal("mate", run(spill=False)) is None
    assert "older than this cluster's term" in str(gate.refusal("mate", run(spill=False,
                                                                             term=3)))
