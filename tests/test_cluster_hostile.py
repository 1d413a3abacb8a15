"""Cluster rules under adversarial claims: up to k hostile identities reporting anything the
wire allows never move an honest member and never drive a term out of range (pure)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from akita.errors import ProtocolError
from akita.mesh.cluster import MAX_SEAT, MAX_TERM, MAX_TERM_STEP, PeerView, Seat
from akita.mesh.rounds import Local, advance
from tests.test_cluster_rules import CLUSTERS, GRACE_S, POOL, check_partition, settled

HOSTILE = settings(max_examples=80, deadline=None)
HONEST = POOL[:24]
INTRUDERS = POOL[40:]
ROUNDS = 12
START = 1000.0  # the honest nodes settled at 0: the intruders appear later
ROUND_S = GRACE_S / 4  # a round every discovery interval, several per grace period

# Anything a hostile report may carry: any cluster (including the honest ones, filled in per
# example), any seat number and term up to the bounds, coordinator or not.
numbers = st.one_of(st.integers(0, 4), st.just(MAX_SEAT), st.integers(0, MAX_SEAT))
terms = st.one_of(st.integers(0, 4), st.just(MAX_TERM), st.integers(0, MAX_TERM))


@st.composite
def hostile_reports(draw: st.DrawFn, honest_clusters: list[str]) -> list[PeerView]:
    count = draw(st.integers(1, 8))
    clusters = st.sampled_from(honest_clusters + CLUSTERS)
    seat = st.none() | st.builds(Seat, clusters, numbers, numbers)
    return [PeerView(node, draw(st.integers(0, 2**62)), draw(st.integers(0, 9)), draw(seat),
                     draw(terms), draw(st.booleans()))
            for node in INTRUDERS[:count]]


def play(locals_: dict[str, Local], hostile: list[PeerView], size: int,
         rounds: int = ROUNDS) -> dict[str, Local]:
    """Every honest node runs rounds over the honest reports plus the hostile ones; the
    clock passes the grace period, so dissolutions happen if the rules allow them."""
    for step in range(rounds):
        view = [local.report() for local in locals_.values()] + hostile
        now = START + step * ROUND_S
        locals_ = {n: advance(local, view, size, now, GRACE_S).local
                   for n, local in locals_.items()}
    return locals_


@HOSTILE
@given(st.lists(st.sampled_from(HONEST), min_size=1, max_size=12, unique=True),
       st.integers(1, 4), st.data())
def test_hostile_claims_never_move_an_honest_member(nodes: list[str], size: int,
                                                    data: st.DataObject) -> None:
    locals_, before = settled(nodes, size)
    hostile = data.draw(hostile_reports([c.id for c in before.clusters]))
    after = play(locals_, hostile, size)
    for node, local in after.items():
        assert local.seat is not None
        assert local.seat.cluster == before.seat_of(node).cluster, f"{node} was moved"
        assert local.seat.number <= MAX_SEAT and local.seat.high <= MAX_SEAT


@HOSTILE
@given(st.lists(st.sampled_from(HONEST), min_size=1, max_size=12, unique=True),
       st.integers(1, 4), st.data())
def test_hostile_claims_never_raise_a_term_past_the_bound(nodes: list[str], size: int,
                                                          data: st.DataObject) -> None:
    locals_, before = settled(nodes, size)
    hostile = data.draw(hostile_reports([c.id for c in before.clusters]))
    after = play(locals_, hostile, size)
    for node, local in after.items():
        held = locals_[node].term
        assert local.term <= MAX_TERM
        assert local.seat is not None
        cluster = local.seat.cluster
        claimants = sum(1 for r in hostile if r.seat is not None and r.seat.cluster == cluster)
        honest = sum(1 for l in after.values() if l.seat is not None and l.seat.cluster == cluster)
        if claimants < honest:
            # While the honest members are the majority, each round adds at most one step
            # above the members' median, plus a coordinator's bump.
            assert local.term <= held + ROUNDS * (MAX_TERM_STEP + 1), (held, local.term)
        cluster = before.cluster_of(node)
        if len(cluster.members) == size:
            # A full cluster takes nobody in: its seats, coordinator and term hold.
            assert local.term == held, "a full cluster's term moved"
            assert local.coordinator == locals_[node].coordinator


@HOSTILE
@given(st.lists(st.sampled_from(HONEST), min_size=2, max_size=12, unique=True),
       st.integers(1, 4), st.data())
def test_the_honest_nodes_still_agree_and_stay_within_size(nodes: list[str], size: int,
                                                           data: st.DataObject) -> None:
    locals_, before = settled(nodes, size)
    hostile = data.draw(hostile_reports([c.id for c in before.clusters]))
    after = play(locals_, hostile, size)
    view = [local.report() for local in after.values()] + hostile
    rounds = [advance(local, view, size, START + ROUNDS * ROUND_S, GRACE_S)
              for local in after.values()]
    honest = {n: r.assignment.seat_of(n).cluster for n, r in zip(after, rounds, strict=True)}
    check_partition(rounds[0].assignment, {r.node for r in view}, size)
    assert honest == {n: before.seat_of(n).cluster for n in nodes}


def test_three_intruders_claiming_seat_zero_do_not_take_a_full_cluster() -> None:
    locals_, before = settled(POOL[:3], 3)
    (cluster,) = before.clusters
    hostile = [PeerView(node, 1, 0, Seat(cluster.id, 0, 0), 0, True) for node in INTRUDERS[:3]]
    after = play(locals_, hostile, 3)
    assert {n: l.seat.cluster for n, l in after.items() if l.seat} == before.membership()
    assert {l.term for l in after.values()} == {l.term for l in locals_.values()}


def test_a_member_claiming_a_huge_term_is_not_followed() -> None:
    locals_, before = settled(POOL[:3], 3)
    (cluster,) = before.clusters
    rogue = next(n for n in cluster.members if n != cluster.coordinator)
    honest = {n: l for n, l in locals_.items() if n != rogue}
    claim = locals_[rogue].report()
    poisoned = PeerView(rogue, claim.generation, claim.version + 1, claim.seat, MAX_TERM,
                        False)
    after = play(honest, [poisoned], 3)
    for node, local in after.items():
        assert local.term == locals_[node].term, "one member's term claim was adopted"


def test_a_node_restored_with_a_poisoned_term_heals_from_its_mates() -> None:
    locals_, _before = settled(POOL[:3], 3)
    node = POOL[0]
    saved = locals_[node]
    locals_[node] = Local(node, saved.generation + 1, seat=saved.seat, term=MAX_TERM)
    after = play(locals_, [], 3)
    assert max(l.term for l in after.values()) <= saved.term + 1 + MAX_TERM_STEP


@pytest.mark.parametrize("report", [
    [1, 0, None, MAX_TERM + 1, False],
    [1, 0, [b"\x00\x00\x00\x01", MAX_SEAT + 1, 0], 0, False],
    [1, 0, [b"\x00\x00\x00\x01", 0, MAX_SEAT + 1], 0, False],
    [1, 0, None, 2**63 - 1, True],
])
def test_out_of_range_claims_are_malformed(report: list[object]) -> None:
    packed = msgpack.unpackb(msgpack.packb(report, use_bin_type=True), raw=False)
    with pytest.raises(ProtocolError):
        PeerView.unpack(POOL[0], packed)
