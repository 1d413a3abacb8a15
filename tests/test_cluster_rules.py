"""Cluster formation rules, grace periods, coordinators and terms (pure, no network)."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from akita.errors import ProtocolError
from akita.mesh.cluster import (
    Assignment,
    Grace,
    PeerView,
    Seat,
    cluster_count,
    coordinator_score,
    form_clusters,
    new_cluster_id,
    under_full,
)
from akita.mesh.rounds import Local, accepts, advance

FAST = settings(max_examples=60, deadline=None)

POOL = [f"{random.Random(7).getrandbits(128) ^ (i * 0x9E3779B97F4A7C15):032x}"
        for i in range(64)]
CLUSTERS = ["0000aaaa", "1111bbbb", "2222cccc", "3333dddd", "4444eeee"]
GRACE_S = 10.0

node_sets = st.lists(st.sampled_from(POOL), min_size=1, max_size=24, unique=True)
sizes = st.integers(1, 5)
seats = st.builds(Seat, st.sampled_from(CLUSTERS), st.integers(0, 6), st.integers(0, 8))
reports = st.builds(PeerView, st.sampled_from(POOL[:30]), st.integers(0, 3), st.integers(0, 3),
                    st.none() | seats, st.integers(0, 5), st.booleans())
views = st.lists(reports, min_size=1, max_size=30)


# --- helpers ------------------------------------------------------------------------------


def run_rounds(locals_: dict[str, Local], cluster_size: int, now: float = 0.0,
               max_rounds: int = 12) -> tuple[dict[str, Local], Assignment]:
    """Every node runs `advance` over the full view until nothing changes; all must agree."""
    assignment = None
    for _ in range(max_rounds):
        view = [local.report() for local in locals_.values()]
        rounds = {n: advance(local, view, cluster_size, now, GRACE_S)
                  for n, local in locals_.items()}
        outcomes = {r.assignment.clusters for r in rounds.values()}
        assert len(outcomes) == 1, "nodes with the same view computed different clusters"
        assignment = next(iter(rounds.values())).assignment
        changed = any(r.local != locals_[n] for n, r in rounds.items())
        locals_ = {n: r.local for n, r in rounds.items()}
        if not changed:
            return locals_, assignment
    raise AssertionError(f"no fixed point within {max_rounds} rounds: {assignment}")


def settled(nodes: Iterable[str], cluster_size: int) -> tuple[dict[str, Local], Assignment]:
    return run_rounds({n: Local(n, 1) for n in nodes}, cluster_size)


def join_one_by_one(nodes: list[str], cluster_size: int) -> tuple[dict[str, Local], Assignment]:
    locals_: dict[str, Local] = {}
    assignment = None
    for node in nodes:
        locals_[node] = Local(node, 1)
        locals_, assignment = run_rounds(locals_, cluster_size)
    assert assignment is not None
    return locals_, assignment


def check_partition(assignment: Assignment, nodes: Iterable[str], cluster_size: int) -> None:
    listed = [n for cluster in assignment.clusters for n in cluster.members]
    assert sorted(listed) == sorted(set(nodes)), "every live node in exactly one cluster"
    assert all(1 <= len(c.members) <= cluster_size for c in assignment.clusters)
    for cluster in assignment.clusters:
        assert cluster.coordinator in cluster.members
        assert all(assignment.seat_of(n).cluster == cluster.id for n in cluster.members)


# --- the examples from the issue --------------------------------------------------------


@pytest.mark.parametrize("count, expected", [(1, [1]), (3, [3]), (6, [3, 3]), (9, [3, 3, 3])])
def test_cluster_size_three_examples(count: int, expected: list[int]) -> None:
    for build in (settled, join_one_by_one):
        locals_, assignment = build(POOL[:count], 3)
        assert sorted(len(c.members) for c in assignment.clusters) == expected
        for cluster in assignment.clusters:
            leaders = [n for n in cluster.members if locals_[n].coordinator]
            assert leaders == [cluster.coordinator]
            assert len({locals_[n].term for n in cluster.members}) == 1


def _coordinator_rank(cluster: str, node: str) -> int:
    """The rank as defined (every node, of every version, must compute the same): the first
    8 bytes, big-endian, of BLAKE2b-64 over "akita.coordinator" 0x1f cluster 0x1f node."""
    data = b"akita.coordinator\x1f" + cluster.encode() + b"\x1f" + node.encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def test_coordinator_is_the_member_with_the_highest_score() -> None:
    _locals, assignment = settled(POOL[:6], 3)
    for cluster in assignment.clusters:
        best = max(cluster.members, key=lambda n: _coordinator_rank(cluster.id, n))
        assert cluster.coordinator == best


def test_coordinator_rank_is_pinned() -> None:
    """Known answers, so that a change of the rank is a visible decision."""
    one, two, three = ("0" * 31 + d for d in "123")
    assert coordinator_score("c0ffee01", one) == 0xD3194CDA5C47C14E
    assert coordinator_score("c0ffee01", two) == 0x5B7997EBEA87D556
    assert coordinator_score("c0ffee01", three) == 0x9F65DEB970243003
    assert new_cluster_id(one, 1, 0) == _cluster_id(one, 1, 0) == "44f07f19"


def _cluster_id(founder: str, generation: int, version: int) -> str:
    """As defined: BLAKE2b-32 over "akita.cluster" 0x1f founder 0x1f generation 0x1f version
    0x1f attempt (0 unless the id is taken), in lower-case hex."""
    data = f"akita.cluster\x1f{founder}\x1f{generation}\x1f{version}\x1f0".encode()
    return hashlib.blake2b(data, digest_size=4).hexdigest()


def test_cluster_ids_are_short_and_derived_from_the_founder() -> None:
    _locals, assignment = settled(POOL[:6], 3)
    for cluster in assignment.clusters:
        assert re.fullmatch(r"[0-9a-f]{8}", cluster.id), cluster.id
    founder_ids = {new_cluster_id(n, 1, 0) for n in POOL[:6]}
    assert {c.id for c in assignment.clusters} <= founder_ids
    taken = new_cluster_id(POOL[0], 1, 0)
    assert new_cluster_id(POOL[0], 1, 0, taken={taken}) != taken
    assert new_cluster_id(POOL[0], 1, 1) != taken, "a second founding is a new cluster"
    assert new_cluster_id(POOL[0], 2, 0) != taken


def test_cluster_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        form_clusters([PeerView(POOL[0], 1)], 0)


# --- properties over arbitrary views -------------------------------------------------


@FAST
@given(views, sizes)
def test_every_node_in_exactly_one_cluster_never_over_size(view: list[PeerView],
                                                           size: int) -> None:
    assignment = form_clusters(view, size)
    check_partition(assignment, {r.node for r in view}, size)
    assert len(assignment.clusters) >= cluster_count(len({r.node for r in view}), size)


@FAST
@given(views, sizes, st.randoms(use_true_random=False), st.sets(st.sampled_from(CLUSTERS)))
def test_result_does_not_depend_on_input_order(view: list[PeerView], size: int,
                                               rng: random.Random, expired: set[str]) -> None:
    shuffled = list(view)
    rng.shuffle(shuffled)
    expected = form_clusters(view, size, expired)
    assert form_clusters(shuffled, size, expired) == expected
    assert form_clusters(reversed(view), size, sorted(expired)) == expected


@FAST
@given(views, sizes)
def test_stale_duplicate_reports_are_ignored(view: list[PeerView], size: int) -> None:
    # A replayed, older report of a node (lower generation or version) changes nothing.
    stale = [PeerView(r.node, r.generation - 1, 9, None, 0, False)
             for r in view if r.generation > 0]
    assert form_clusters([*stale, *view], size) == form_clusters([*view, *stale], size)
    assert form_clusters([*stale, *view], size) == form_clusters(view, size)


@FAST
@given(views, sizes)
def test_same_view_same_assignment_on_every_node(view: list[PeerView], size: int) -> None:
    nodes = sorted({r.node for r in view})[:3]
    # Each node replaces its own entry by its local report: make those the shared ones.
    shared = [r for r in view if r.node not in nodes] + [PeerView(n, 9) for n in nodes]
    outcomes = [advance(Local(n, 9), shared, size, 0.0, GRACE_S).assignment for n in nodes]
    assert all(outcome == outcomes[0] for outcome in outcomes)


@FAST
@given(views, sizes)
def test_the_assignment_is_a_fixed_point_once_adopted(view: list[PeerView], size: int) -> None:
    assignment = form_clusters(view, size)
    adopted = [PeerView(n, 5, 0, seat) for n, seat in assignment.seats.items()]
    assert form_clusters(adopted, size) == assignment


# --- joins, leaves, restarts ----------------------------------------------------------


@FAST
@given(node_sets, st.integers(1, 4), sizes)
def test_a_join_never_moves_an_existing_member(nodes: list[str], newcomers: int,
                                               size: int) -> None:
    _locals, before = settled(nodes, size)
    fresh = [n for n in POOL if n not in nodes][:newcomers]
    view = [PeerView(n, 1, 1, seat) for n, seat in before.seats.items()]
    after = form_clusters([*view, *(PeerView(n, 1) for n in fresh)], size)
    for node, cluster in before.membership().items():
        assert after.seat_of(node).cluster == cluster
    check_partition(after, [*nodes, *fresh], size)


@FAST
@given(node_sets, sizes, st.randoms(use_true_random=False))
def test_joins_after_leaves_fill_holes_without_moving_anyone(
        nodes: list[str], size: int, rng: random.Random) -> None:
    locals_, before = settled(nodes, size)
    for gone in rng.sample(nodes, len(nodes) // 2):
        del locals_[gone]
    survivors = {n: before.seat_of(n).cluster for n in locals_}
    locals_, _ = run_rounds(locals_, size, now=0.0)  # inside the grace period
    newcomer = next(n for n in POOL if n not in nodes)
    locals_[newcomer] = Local(newcomer, 1)
    locals_, after = run_rounds(locals_, size, now=1.0)
    assert {n: after.seat_of(n).cluster for n in survivors} == survivors


@FAST
@given(node_sets, sizes, st.randoms(use_true_random=False))
def test_under_full_clusters_merge_after_the_grace_period(
        nodes: list[str], size: int, rng: random.Random) -> None:
    locals_, before = settled(nodes, size)
    for gone in rng.sample(nodes, rng.randrange(len(nodes))):
        del locals_[gone]
    remaining = {n: before.seat_of(n).cluster for n in locals_}
    locals_, early = run_rounds(locals_, size, now=100.0)
    assert early.membership() == remaining, "nobody moves before the grace period ends"
    locals_, after = run_rounds(locals_, size, now=100.0 + GRACE_S)
    check_partition(after, remaining, size)
    assert len(after.clusters) == cluster_count(len(remaining), size)
    assert not any(local.grace.since for local in locals_.values())
    # Only members of dissolved clusters moved.
    dissolved = {c for c in remaining.values()} - {c.id for c in after.clusters}
    for node, cluster in remaining.items():
        if cluster not in dissolved:
            assert after.seat_of(node).cluster == cluster


@FAST
@given(node_sets, sizes, st.data())
def test_a_restarted_node_returns_to_its_cluster(nodes: list[str], size: int,
                                                 data: st.DataObject) -> None:
    locals_, before = settled(nodes, size)
    node = data.draw(st.sampled_from(nodes))
    saved = locals_[node]
    locals_[node] = Local(node, saved.generation + 1, seat=saved.seat, term=saved.term)
    locals_, after = run_rounds(locals_, size)
    assert after.membership() == before.membership()


def test_a_returning_node_does_not_displace_a_later_joiner() -> None:
    # The cluster filled while the node was away: whatever seat it claims, it is a newcomer
    # to the members now, and goes where they seat it.
    nodes = POOL[:3]
    locals_, before = settled(nodes, 3)
    (cluster,) = before.clusters
    away = cluster.members[-1]
    saved = locals_.pop(away)
    locals_, _ = run_rounds(locals_, 3)  # the others dropped it
    newcomer = POOL[10]
    locals_[newcomer] = Local(newcomer, 1)
    locals_, during = run_rounds(locals_, 3)
    assert during.seat_of(newcomer).cluster == cluster.id
    assert saved.seat is not None
    assert during.seat_of(newcomer).number > saved.seat.number, "seat numbers never reused"
    locals_[away] = Local(away, saved.generation + 1, seat=saved.seat, term=saved.term)
    # Later: the newcomer has been a member for the settling period.
    locals_, after = run_rounds(locals_, 3, now=10 * GRACE_S)
    assert after.seat_of(newcomer).cluster == cluster.id, "a member is never displaced"
    assert after.seat_of(away).cluster != cluster.id
    check_partition(after, locals_, 3)


def test_a_returning_node_gets_its_seat_back_while_there_is_room() -> None:
    locals_, before = settled(POOL[:3], 3)
    (cluster,) = before.clusters
    away = cluster.members[-1]
    saved = locals_.pop(away)
    locals_, _ = run_rounds(locals_, 3)
    locals_[away] = Local(away, saved.generation + 1, seat=saved.seat, term=saved.term)
    locals_, after = run_rounds(locals_, 3)
    assert after.membership() == before.membership()


@FAST
@given(node_sets, st.integers(2, 5), st.randoms(use_true_random=False))
def test_a_healed_partition_moves_nobody(nodes: list[str], size: int,
                                          rng: random.Random) -> None:
    locals_, before = settled(nodes, size)
    side_a = {n: l for n, l in locals_.items() if rng.random() < 0.5}
    side_b = {n: l for n, l in locals_.items() if n not in side_a}
    # No newcomers during the split: a member is never displaced, so nodes that took seats
    # freed by the other side stay where they are (see akita.mesh.cluster's docstring).
    side_a, _ = run_rounds(side_a, size, now=0.0) if side_a else (side_a, None)
    side_b, _ = run_rounds(side_b, size, now=0.0) if side_b else (side_b, None)
    healed, after = run_rounds({**side_a, **side_b}, size, now=0.0)
    check_partition(after, healed, size)
    # The members from before the split joined first: none of them was displaced.
    for node, cluster in before.membership().items():
        assert after.seat_of(node).cluster == cluster


# --- grace timers -----------------------------------------------------------------------


def _seated(assignment: Assignment) -> list[PeerView]:
    return [PeerView(n, 1, 1, seat) for n, seat in assignment.seats.items()]


def test_grace_starts_runs_and_stops() -> None:
    _locals, full = settled(POOL[:6], 3)
    first, second = full.clusters
    view = [r for r in _seated(full) if r.node not in second.members[1:]]  # 3 + 1 left
    assert Grace().update(view, 3, now=40.0).since == (), "two clusters are needed for 4"
    view = [r for r in view if r.node != first.members[0]]  # 2 + 1: one cluster is enough
    grace = Grace().update(view, 3, now=50.0)
    assert grace.since == tuple(sorted([(first.id, 50.0), (second.id, 50.0)]))
    grace = grace.update(view, 3, now=55.0)
    assert grace.expired(now=59.9, grace_s=GRACE_S) == frozenset()
    assert grace.expired(now=60.0, grace_s=GRACE_S) == {first.id, second.id}
    merged = form_clusters(view, 3, grace.expired(now=60.0, grace_s=GRACE_S))
    assert [c.id for c in merged.clusters] == [first.id], "only the smaller one dissolved"
    back = [*view, PeerView(first.members[0], 2, 0, full.seat_of(first.members[0]))]
    assert grace.update(back, 3, 61.0).since == (), "timers stop when the clusters are needed"


def test_only_needed_dissolutions_happen() -> None:
    # Two clusters of one with cluster_size 3: one dissolves into the other, not both.
    _locals, full = settled(POOL[:6], 3)
    first, second = full.clusters
    lone = [PeerView(first.members[0], 1, 1, full.seat_of(first.members[0])),
            PeerView(second.members[0], 1, 1, full.seat_of(second.members[0]))]
    after = form_clusters(lone, 3, expired={first.id, second.id})
    assert len(after.clusters) == 1 and len(after.clusters[0].members) == 2


def test_no_dissolution_without_a_surplus_of_clusters() -> None:
    _locals, full = settled(POOL[:6], 3)
    first, second = full.clusters
    view = [r for r in _seated(full) if r.node != second.members[0]]  # 3 + 2: k = 2
    after = form_clusters(view, 3, expired={first.id, second.id})
    assert after.membership() == {r.node: r.seat.cluster for r in view if r.seat}
    assert under_full(2, 3) and not under_full(3, 3)


# --- terms and fencing -----------------------------------------------------------------


def test_term_rises_when_the_coordinator_leaves() -> None:
    locals_, before = settled(POOL[:3], 3)
    (cluster,) = before.clusters
    old_term = locals_[cluster.coordinator].term
    del locals_[cluster.coordinator]
    locals_, after = run_rounds(locals_, 3)
    (cluster_after,) = after.clusters
    assert cluster_after.id == cluster.id and cluster_after.coordinator != cluster.coordinator
    assert {local.term for local in locals_.values()} == {old_term + 1}


def test_term_rises_when_a_joiner_becomes_coordinator_and_holds_otherwise() -> None:
    locals_, before = settled(POOL[:2], 3)
    (cluster,) = before.clusters
    term = locals_[cluster.coordinator].term
    outranks = [n for n in POOL[2:] if coordinator_score(cluster.id, n)
                > coordinator_score(cluster.id, cluster.coordinator)]
    outranked = [n for n in POOL[2:] if n not in outranks]
    locals_[outranked[0]] = Local(outranked[0], 1)
    locals_, same = run_rounds(locals_, 3)
    assert same.clusters[0].coordinator == cluster.coordinator
    assert {local.term for local in locals_.values()} == {term}
    locals_.pop(outranked[0])
    locals_, _ = run_rounds(locals_, 3)
    locals_[outranks[0]] = Local(outranks[0], 1)
    locals_, changed = run_rounds(locals_, 3)
    assert changed.clusters[0].coordinator == outranks[0]
    assert {local.term for local in locals_.values()} == {term + 1}


def test_a_rival_claiming_the_same_term_is_outbid() -> None:
    locals_, before = settled(POOL[:3], 3)
    (cluster,) = before.clusters
    rightful = locals_[cluster.coordinator]
    other = next(n for n in cluster.members if n != cluster.coordinator)
    # `other` saw a partial view and proclaimed itself at the coordinator's term.
    rival = PeerView(other, 1, 99, locals_[other].seat, rightful.term, True)
    view = [local.report() for n, local in locals_.items() if n != other] + [rival]
    outcome = advance(rightful, view, 3, 0.0, GRACE_S)
    assert outcome.local.coordinator and outcome.local.term == rightful.term + 1
    assert not accepts(rival.term, outcome.local.term)


def test_a_node_that_moves_drops_its_old_clusters_term() -> None:
    seat = Seat("0000aaaa", 0, 0)
    high = Local(POOL[0], 1, seat=Seat("1111bbbb", 0, 0), term=40, coordinator=True)
    view = [PeerView(POOL[1], 1, 1, seat, 3, True)]
    outcome = advance(high, view, 1, 0.0, GRACE_S)
    # cluster_size 1: it stays alone in its cluster, coordinating, and keeps its term.
    assert outcome.local.seat == Seat("1111bbbb", 0, 0) and outcome.local.term == 40
    mover = Local(POOL[0], 1, seat=None, term=40)
    joined = advance(mover, [PeerView(POOL[1], 1, 1, seat, 3, True)], 2, 0.0, GRACE_S)
    assert joined.local.seat is not None and joined.local.seat.cluster == "0000aaaa"
    assert joined.moved
    # Its old term (40) is gone: it holds the new cluster's 3, or 4 if it now coordinates.
    assert joined.local.term == 3 + int(joined.local.coordinator)


@FAST
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(POOL[:10])), min_size=1,
                max_size=12), st.integers(2, 4))
def test_terms_never_fall_and_rise_on_every_change_of_coordinator(
        events: list[tuple[bool, str]], size: int) -> None:
    locals_: dict[str, Local] = {}
    boots: dict[str, int] = {}
    history: dict[str, tuple[str, int]] = {}
    for joins, node in events:
        if joins and node not in locals_:
            boots[node] = boots.get(node, 0) + 1  # a node that comes back has restarted
            locals_[node] = Local(node, boots[node])
        elif not joins:
            locals_.pop(node, None)
        if not locals_:
            continue
        locals_, assignment = run_rounds(locals_, size)
        for cluster in assignment.clusters:
            term = locals_[cluster.coordinator].term
            assert {locals_[n].term for n in cluster.members} == {term}
            if cluster.id in history:
                coordinator, old = history[cluster.id]
                assert term >= old
                assert coordinator == cluster.coordinator or term > old
            history[cluster.id] = (cluster.coordinator, term)


def test_accepts_fences_older_terms() -> None:
    assert accepts(5, 5) and accepts(6, 5)
    assert not accepts(4, 5)


# --- announce encoding ----------------------------------------------------------------


@FAST
@given(reports)
def test_reports_survive_msgpack_and_stay_small(report: PeerView) -> None:
    data = msgpack.packb(report.pack(), use_bin_type=True)
    assert PeerView.unpack(report.node, msgpack.unpackb(data)) == report
    assert len(data) <= 40


@pytest.mark.parametrize("obj", [
    None, [], [1, 2, 3, 4], [1, 1, [b"\x00" * 3, 1, 1], 0, False],
    [1, 1, [b"\x00" * 4, -1, 1], 0, False], [1, 1, None, 0, "yes"], [True, 1, None, 0, False],
    [1, 1, "seat", 0, False], [2**64, 1, None, 0, False],
])
def test_malformed_reports_raise_protocol_error(obj: object) -> None:
    with pytest.raises(ProtocolError):
        PeerView.unpack(POOL[0], obj)
