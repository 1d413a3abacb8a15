"""Delegation's pure rules (`akita.mesh.delegation`): whom to ask first and for how many,
how batches are cut, and what a peer may send."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from akita.mesh import delegation as plan
from akita.wire import mesh


def mate(node_id: str, *, pool: int = 1, queued: int = 0, running: int = 0, held: int = 0,
         outstanding: int = 0, caps: tuple[str, ...] = (), cpu: float = 0.0,
         types: tuple[str, ...] = ("t",)) -> plan.Candidate:
    load = plan.PeerLoad(pool=pool, queued=queued, running=running, held=held)
    return plan.Candidate(node_id, frozenset(types), frozenset(caps), load, outstanding, cpu)


def order(candidates: list[plan.Candidate], waiting: int = 0,
          own_caps: tuple[str, ...] = ()) -> list[str]:
    return [c.node_id for c in plan.rank(candidates, own_caps, waiting)]


# --- room and rank ------------------------------------------------------------------------------


def test_room_keeps_a_window_per_process_counting_ours_and_its_own_work() -> None:
    w = plan.WINDOW_PER_PROCESS
    assert plan.room(mate("a")) == w
    assert plan.room(mate("a", pool=3)) == 3 * w
    assert plan.room(mate("a", outstanding=1)) == w - 1
    # Its own work counts: queued and running, less what it holds for peers (ours among them).
    assert plan.room(mate("a", queued=w - 1, running=1)) == 0
    assert plan.room(mate("a", pool=2, queued=3, running=2, held=4, outstanding=4)) == \
        2 * w - 4 - 1
    assert plan.room(mate("a", pool=2, queued=1, running=2, held=3, outstanding=3)) == 2 * w - 3
    assert plan.room(mate("a", outstanding=w + 3)) == 0


def test_rank_puts_capability_match_first_then_room_queue_cpu_and_id() -> None:
    plain = mate("p", pool=4)
    gpu = mate("g", caps=("gpu",))         # less room: one process
    busy = mate("b", pool=4, queued=2, held=2)
    hot = mate("h", pool=4, cpu=90.0)
    # Nothing waits for a peer's capability: the most room first, then queue, cpu, id.
    assert order([gpu, hot, busy, plain]) == ["p", "h", "b", "g"]
    assert order([mate("z"), mate("y")]) == ["y", "z"]
    # Tasks wait for a capability this node lacks: peers that declare one we lack go first.
    assert order([plain, gpu], waiting=1) == ["g", "p"]
    # ...but not for a capability we have ourselves.
    assert order([plain, gpu], waiting=1, own_caps=("gpu",)) == ["p", "g"]


def test_rank_leaves_out_peers_without_room_or_types() -> None:
    full = mate("f", outstanding=plan.WINDOW_PER_PROCESS)
    nothing = mate("n", types=())
    assert order([full, nothing, mate("ok")]) == ["ok"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 8), st.integers(0, 20), st.integers(0, 20),
                          st.integers(0, 10), st.booleans(), st.integers(0, 100)),
                min_size=0, max_size=8), st.integers(0, 3))
def test_rank_is_a_total_order_independent_of_input_order(
        specs: list[tuple[int, int, int, int, bool, int]], waiting: int) -> None:
    candidates = [mate(f"n{i}", pool=pool, queued=queued, running=running,
                       outstanding=outstanding, caps=("gpu",) if gpu else (), cpu=cpu)
                  for i, (pool, queued, running, outstanding, gpu, cpu) in enumerate(specs)]
    forward = order(candidates, waiting)
    assert forward == order(list(reversed(candidates)), waiting)
    assert set(forward) == {c.node_id for c in candidates if plan.room(c) > 0}
    rooms = [plan.room(c) for c in plan.rank(candidates, (), 0)]
    assert rooms == sorted(rooms, reverse=True)


# --- loads ----------------------------------------------------------------------------------------


def test_parse_load_takes_the_executor_summary_and_refuses_nonsense() -> None:
    summary = {"queued": 3, "waiting": 1, "running": 1, "delegated": 0, "held": 2, "pool": 2,
               "free": 0, "types": ["t"], "caps": []}
    load = plan.parse_load(summary)
    assert load == plan.PeerLoad(pool=2, free=0, queued=3, running=1, held=2, waiting=1)
    assert load is not None and plan.parse_load(load.pack()) == load
    assert plan.own_work(load) == 2
    assert plan.parse_load({"pool": -1}) is None
    assert plan.parse_load({"pool": True}) is None
    assert plan.parse_load({"queued": "3"}) is None
    assert plan.parse_load([1, 2]) is None
    assert plan.parse_load({}) == plan.PeerLoad(pool=0)


# --- batches ----------------------------------------------------------------------------------


def test_split_cuts_by_bytes_and_sends_a_large_item_alone() -> None:
    sizes = [100, 100, 300_000, 100, 1000]
    batches = plan.split(sizes, lambda n: n, max_bytes=plan.BATCH_BYTES)
    assert batches == [[100, 100], [300_000], [100, 1000]]
    assert plan.split([], lambda n: n) == []
    many = plan.split([10] * 2000, lambda n: n)
    assert sum(len(b) for b in many) == 2000
    assert all(len(b) * (10 + plan.ENTRY_OVERHEAD_BYTES) <= plan.BATCH_BYTES for b in many)


def test_outcomes_are_grouped_by_origin_without_the_origin_key() -> None:
    pushed = [{"id": "a", "state": "succeeded", "result": 1, "origin": "o1", "attempt": 1},
              {"id": "b", "state": "failed", "error": {}, "origin": "o2", "attempt": 2},
              {"id": "c", "state": "succeeded", "result": 3, "origin": "o1", "attempt": 1},
              {"id": "d", "state": "succeeded", "result": 4}]   # not run for a peer
    grouped = plan.group_by_origin(pushed)
    assert sorted(grouped) == ["o1", "o2"]
    assert [e["id"] for e in grouped["o1"]] == ["a", "c"]
    assert all("origin" not in e for entries in grouped.values() for e in entries)


def test_timing_follows_peer_timeout() -> None:
    class Cluster:
        peer_timeout = 30.0
        announce_interval = 10.0

    class Config:
        cluster = Cluster()

    timing = plan.DelegationTiming.from_config(Config())  # type: ignore[arg-type]
    assert (timing.lease_s, timing.renew_s, timing.record_s) == (30.0, 10.0, 10.0)
    Cluster.peer_timeout = 1.0
    assert plan.DelegationTiming.from_config(Config()).lease_s == plan.MIN_LEASE_S  # type: ignore[arg-type]


# --- bodies -------------------------------------------------------------------------------------


def spec(task_id: str = "a" * 16) -> dict[str, Any]:
    return {"id": task_id, "name": "t", "args": [1], "priority": 5, "attempt": 1,
            "requires": [], "timeout": 10.0}


def test_run_round_trip_and_what_a_peer_may_not_send() -> None:
    request = plan.decode_run(plan.encode_run(3, 4.0, [spec()]), 1 << 20)
    assert (request.term, request.lease_s, request.tasks) == (3, 4.0, [spec()])
    bad: list[Any] = [
        {"term": -1, "lease_s": 4.0, "tasks": [spec()]},
        {"term": True, "lease_s": 4.0, "tasks": [spec()]},
        {"term": 1, "lease_s": 0, "tasks": [spec()]},
        {"term": 1, "lease_s": 4.0, "tasks": []},
        {"term": 1, "lease_s": 4.0, "tasks": [1]},
        {"term": 1, "lease_s": 4.0, "tasks": [spec()] * (plan.MAX_TAKE + 1)},
        [1, 2, 3],
    ]
    for body in bad:
        with pytest.raises(mesh.WireError):
            plan.decode_run(msgpack.packb(body), 1 << 20)
    with pytest.raises(mesh.WireError, match="exceeds the limit"):
        plan.decode_run(plan.encode_run(1, 4.0, [spec()]), 16)
    with pytest.raises(mesh.WireError):
        plan.decode_run(b"\xc1garbage", 1 << 20)


def test_run_response_is_checked_against_what_was_sent() -> None:
    load = plan.PeerLoad(pool=2, free=1)
    data = plan.encode_run_response(["x", None], [[1, "unknown_task", "no such type"]], load)
    answer = plan.decode_run_response(data, 2)
    assert answer.ids == ["x", None] and answer.errors == [(1, "unknown_task", "no such type")]
    assert answer.load == load
    with pytest.raises(mesh.WireError, match="ids"):
        plan.decode_run_response(data, 3)
    with pytest.raises(mesh.WireError, match="errors"):
        plan.decode_run_response(plan.encode_run_response(["x"], [[5, "c", "m"]], None), 1)
    assert plan.decode_run_response(plan.encode_run_response(["x"], [], None), 1).load is None


def test_results_renewals_and_answers_round_trip() -> None:
    results = [{"id": "a", "attempt": 2, "state": "succeeded", "result": [1, 2]}]
    body = plan.decode_results(plan.encode_results(results, plan.PeerLoad()), 1 << 20)
    assert body.results == results and body.load == plan.PeerLoad()
    for bad in ([], [{"id": "a", "attempt": "2", "state": "succeeded"}], [{"attempt": 1}]):
        with pytest.raises(mesh.WireError):
            plan.decode_results(plan.encode_results(bad, None), 1 << 20)
    assert plan.decode_pairs(plan.encode_pairs([("a", 1), ("b", 2)])) == [("a", 1), ("b", 2)]
    with pytest.raises(mesh.WireError):
        plan.decode_pairs(msgpack.packb({"tasks": [["a", "1"]]}))
    assert plan.decode_accepted(plan.encode_outcome(["a"], ["b"], "accepted")) == (["a"], ["b"])
    assert plan.decode_renewed(plan.encode_outcome(2, [["b", 1]], "renewed")) == (2, [("b", 1)])
    with pytest.raises(mesh.WireError):
        plan.decode_renewed(plan.encode_outcome(-1, [], "renewed"))
