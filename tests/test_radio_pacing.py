"""Pacing of a node's reactions within its airtime budget (`akita.mesh.pacing`): prompt
announces, state pulls and pushes, and ledger exchanges wait for the node's airtime bucket
where the budget binds (LoRa), and go at once on a LAN, as before."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from akita.config import ClusterConfig
from akita.mesh import budget
from akita.mesh.airtime import profile
from akita.mesh.pacing import AirtimeBucket, Pacer
from akita.wire import mesh
from tests.test_gateway_units import announce, make_discovery
from workers.gateway.statepace import StatePacing


def pacer_for(name: str | None, budget_percent: float = 1.0, cluster_size: int = 3) -> Pacer:
    medium = budget.Medium() if name is None else budget.Medium(profile(name).bitrate,
                                                                 profile(name))
    cluster = dataclasses.replace(ClusterConfig(), airtime_budget=budget_percent,
                                  cluster_size=cluster_size)
    return Pacer.for_budget(budget.derive(cluster, medium), medium)


def peer_id(i: int) -> str:
    return f"{i + 1:02x}" * 16


# --- the bucket ---------------------------------------------------------------------------


def test_bucket_starts_full_spends_and_earns_its_rate() -> None:
    bucket = AirtimeBucket(rate=0.01, capacity_s=4.0)
    assert bucket.try_spend(3.0, 0.0)
    assert not bucket.try_spend(3.0, 0.0)
    assert bucket.ready_at(3.0, 0.0) == pytest.approx(200.0)   # 2 s missing at 1 %
    assert not bucket.try_spend(3.0, 199.0)
    assert bucket.try_spend(3.0, 200.0)
    # Never more than the capacity, however long it waited.
    bucket.ready_at(0.0, 1e6)
    assert bucket.tokens_s == pytest.approx(4.0)


def test_a_cost_above_the_capacity_waits_for_a_full_bucket_and_leaves_a_debt() -> None:
    bucket = AirtimeBucket(rate=0.01, capacity_s=4.0)
    assert bucket.try_spend(6.0, 0.0)
    assert bucket.tokens_s == pytest.approx(-2.0)
    assert bucket.ready_at(1.0, 0.0) == pytest.approx(300.0)


def test_bad_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match="must be above 0"):
        AirtimeBucket(rate=0.0, capacity_s=1.0)


def test_the_budget_binds_on_lora_and_never_on_a_lan() -> None:
    assert pacer_for("SF9").binding and pacer_for("SF12").binding
    assert pacer_for("SF9").mates_only
    lan = pacer_for(None)
    assert not lan.binding and not lan.mates_only
    # A LAN pacer lets everything through at once, however much.
    assert all(lan.try_spend(1e3, 0.0) for _ in range(1000))
    assert lan.ready_at(1e6, 5.0) == 5.0


def test_the_bucket_holds_ten_minutes_of_budget_or_more_and_earns_the_budget() -> None:
    pacer = pacer_for("SF9")
    medium = pacer.medium
    cluster = dataclasses.replace(ClusterConfig(), airtime_budget=1.0)
    timers = budget.derive(cluster, medium)
    assert pacer.bucket.rate == pytest.approx(0.01)
    assert pacer.bucket.capacity_s == pytest.approx(
        max(timers.upkeep_s, 4 * medium.cost_s(budget.ANNOUNCE_BYTES), 0.01 * 600))
    # A pull over a new link costs more than over one that is up.
    assert pacer.request_cost_s(200, 450, link_open=False) > \
        pacer.request_cost_s(200, 450, link_open=True)


def test_a_response_larger_than_estimated_is_charged_afterwards() -> None:
    pacer = pacer_for("SF9")
    full = pacer.bucket.capacity_s
    pacer.settle(450, 300, 0.0)                    # smaller than paid for: nothing back
    assert pacer.bucket.tokens_s == pytest.approx(full)
    pacer.settle(450, 4000, 0.0)                   # a ten-packet Resource
    charged = full - pacer.bucket.tokens_s
    assert charged == pytest.approx(pacer.body_cost_s(4000) - pacer.body_cost_s(450))
    assert pacer.body_cost_s(4000) == pytest.approx(10 * pacer.medium.cost_s(450))
    lan = Pacer.lan()
    lan.settle(0, 1 << 20, 0.0)
    assert lan.try_spend(1.0, 0.0)


# --- prompt announces -------------------------------------------------------------------


def hear_newcomers(pacer: Pacer, count: int, spread_s: float, until_s: float) -> list[float]:
    """A node whose interface comes up at 0 hears `count` newcomers within `spread_s`;
    the times of its announces until `until_s` (ticked every 0.5 s)."""
    discovery, rns, _events = make_discovery()
    discovery.pacer = pacer
    discovery.timing.announce_interval_s = 1e9    # no timed announce in the window
    discovery.interface_up(0.0)
    heard_at = {round(2.0 + spread_s * i / max(1, count - 1), 1): peer_id(i)
                for i in range(count)}
    sent_at: list[float] = []
    now = 0.0
    while now <= until_s:
        node = heard_at.get(round(now, 1))
        if node is not None:
            discovery.on_announce(node, None, mesh.encode_announce(announce(node=node)), now)
        before = len(rns.sent)
        discovery.tick(now)
        sent_at += [now] * (len(rns.sent) - before)
        now = round(now + 0.5, 1)
    return sent_at


def test_on_a_lan_each_newcomer_is_answered_at_once() -> None:
    sent_at = hear_newcomers(Pacer.lan(), count=5, spread_s=20.0, until_s=60.0)
    assert len(sent_at) == 6            # interface up, then one per newcomer
    assert sent_at[-1] <= 22.5


def test_on_lora_newcomers_are_answered_within_the_budget_and_none_is_left_out() -> None:
    pacer = pacer_for("SF9")
    cost = pacer.announce_cost_s()
    sent_at = hear_newcomers(pacer, count=5, spread_s=20.0, until_s=900.0)
    # The bucket's burst answers the first ones; the rest wait for it, and one announce
    # answers every newcomer heard meanwhile (later ones: the first formation round).
    assert sent_at[:4] == [0.0, 2.0, 7.0, 12.0], sent_at
    later = [t for t in sent_at if t > 22.0]
    assert later and later[0] > 30.0, sent_at   # the last two newcomers: one announce
    spent = cost * len(sent_at)
    assert spent <= pacer.bucket.capacity_s + cost + 0.01 * sent_at[-1]


# --- state pulls and pushes ---------------------------------------------------------------


def test_a_burst_of_state_changes_is_pushed_once_now_and_once_when_the_bucket_allows() -> None:
    pacing = StatePacing(pacer_for("SF9"), is_open=lambda _peer: True)
    mates = {peer_id(1), peer_id(2)}
    pushed_at = [now for now in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)   # six `state set`s
                 if pacing.may_push(mates, 450, now)]
    assert pushed_at == [0.0] and pacing.push_pending
    ticks = [t * 1.0 for t in range(6, 2000)]
    due = [now for now in ticks if pacing.push_due(mates, 450, now)]
    # One push carries every change made while it waited, about one announce interval on.
    assert len(due) == 1 and not pacing.push_pending
    assert due[0] >= pacing.pacer.push_spacing_s > 100.0    # an announce interval on
    assert pacing.held_pushes == 1


def test_pushes_are_spaced_by_an_interval_even_with_airtime_to_spare() -> None:
    pacer = pacer_for("SF9")
    pacer.bucket = AirtimeBucket(rate=1.0, capacity_s=1e6)     # plenty of airtime
    pacing = StatePacing(pacer, is_open=lambda _peer: True)
    mates = {peer_id(1)}
    assert [pacing.may_push(mates, 450, float(t)) for t in range(3)] == [True, False, False]
    assert not pacing.push_due(mates, 450, pacer.push_spacing_s - 1)
    assert pacing.push_due(mates, 450, pacer.push_spacing_s)


def test_state_changes_on_a_lan_are_pushed_at_once_every_time() -> None:
    pacing = StatePacing(Pacer.lan(), is_open=lambda _peer: False)
    assert all(pacing.may_push({peer_id(1)}, 450, float(t)) for t in range(100))
    assert not pacing.push_pending


def test_pulls_that_wait_go_in_order_and_only_while_still_wanted() -> None:
    pacing = StatePacing(pacer_for("SF9"), is_open=lambda _peer: False)
    asked = [p for p in map(peer_id, range(4)) if pacing.may_pull(p, (1, 1), 0.0)]
    assert 1 <= len(asked) < 4
    waiting = [p for p in map(peer_id, range(4)) if p not in asked]
    assert list(pacing.wanted) == waiting
    gone = waiting[-1]
    went: list[str] = []
    for now in range(1, 5000):
        went += [p for p, _stamp in pacing.due_pulls(float(now), lambda p, _s: p != gone)]
    assert went == waiting[:-1] and not pacing.wanted


# --- ledger exchanges -----------------------------------------------------------------------


def sf9_rig() -> tuple[Any, Pacer]:
    """A replicator on a fake node (`tests.test_replication_units.Rig`) paced as at SF9."""
    from tests.test_replication_units import Rig

    rig = Rig()
    rig.net.pacer = pacer_for("SF9")
    return rig, rig.net.pacer


def heads_exchanges(rig: Any, rounds: int = 1) -> int:
    """Heads exchanges the replicator of `rig` sends over `rounds` rounds, each request for
    our own heads answered at once (the replicator reads its own clock; the bucket earns
    nothing meanwhile, being filled by hand in the tests)."""
    from akita.wire import protocol
    from tests.test_replication_units import ME, _hash

    for _ in range(rounds):
        rig.tick()
        for asked in rig.ledger.take(protocol.LedgerHeads):
            asked.on_reply(protocol.LedgerHeadsReply(own=ME, feeds={ME: [1, _hash(1), 1]},
                                                     forked=[]))
    return len(rig.links.take("/heads"))


def test_ledger_exchanges_wait_for_the_bucket_and_stay_due() -> None:
    rig, pacer = sf9_rig()
    pacer.bucket.rate = 1e-12
    pacer.bucket.tokens_s = 0.0
    assert heads_exchanges(rig, 5) == 0   # both mates due, the bucket empty
    pacer.bucket.tokens_s = pacer.bucket.capacity_s
    assert heads_exchanges(rig, 5) == 1   # one exchange (with its link setup) fills the bucket
    pacer.bucket.tokens_s = pacer.bucket.capacity_s
    assert heads_exchanges(rig, 5) == 1   # the other mate stayed due
    pacer.bucket.tokens_s = pacer.bucket.capacity_s
    assert heads_exchanges(rig, 5) == 0   # nothing left to say


def test_ledger_exchanges_wait_behind_state_pulls() -> None:
    rig, pacer = sf9_rig()
    pacing = StatePacing(pacer, is_open=lambda _peer: False)
    pacer.bucket.rate, pacer.bucket.tokens_s = 1e-12, 0.0
    assert not pacing.may_pull(peer_id(7), (1, 1), 0.0) and pacer.state_waiting
    pacer.bucket.tokens_s = pacer.bucket.capacity_s
    assert heads_exchanges(rig) == 0   # the bucket is full, but a state pull comes first
    assert [p for p, _s in pacing.due_pulls(1.0, lambda _p, _s: True)] == [peer_id(7)]
    assert not pacer.state_waiting
    pacer.bucket.tokens_s = pacer.bucket.capacity_s
    assert heads_exchanges(rig) == 1


def test_ledger_exchanges_wait_behind_a_push_that_is_due() -> None:
    rig, pacer = sf9_rig()
    pacing = StatePacing(pacer, is_open=lambda _peer: True)
    mates = {peer_id(1), peer_id(2)}
    assert pacing.may_push(mates, 450, 0.0)
    assert not pacing.may_push(mates, 450, 1.0) and pacing.push_pending
    # Within the spacing the waiting push holds nothing back: the catch-up may spend.
    assert not pacer.state_waiting
    pacer.bucket.rate, pacer.bucket.tokens_s = 1e-12, 0.0
    spaced = pacer.push_spacing_s

    assert not pacing.push_due(mates, 450, spaced)   # due, but the bucket is empty ...
    assert pacer.state_waiting                        # ... so the catch-up waits behind it
    pacer.bucket.tokens_s = pacer.bucket.capacity_s
    assert heads_exchanges(rig) == 0   # an exchange would fit, but the push comes first
    assert pacing.push_due(mates, 450, spaced + 1.0) and not pacer.state_waiting
    pacer.bucket.tokens_s = pacer.bucket.capacity_s
    assert heads_exchanges(rig) == 1


def test_a_range_response_is_paid_by_the_node_that_sends_it() -> None:
    from types import SimpleNamespace

    from akita.mesh import replication as plan
    from akita.wire import protocol
    from tests.test_replication_units import ME, A

    rig, pacer = sf9_rig()
    bundle = b"x" * 2000   # a Resource of five packets at SF9: ~12 s on air

    def serve() -> tuple[list[bytes], list[str]]:
        answers: list[bytes] = []
        refusals: list[str] = []
        request = SimpleNamespace(peer_id=A, link_mdu=431, respond=answers.append,
                                  fail=refusals.append, data=plan.encode_range_request(
                                      plan.RangeRequest(ME, 0, True)))
        rig.links.handlers["akita.ledger/range"](request)
        (asked,) = rig.ledger.take(protocol.LedgerRange)
        asked.on_reply(protocol.LedgerRangeReply(feed=ME, bundle=bundle, first_seq=1,
                                                 last_seq=9, head_seq=9))
        return answers, refusals

    pacer.bucket.rate = 1e-12
    pacer.bucket.tokens_s = pacer.bucket.capacity_s
    answers, refusals = serve()
    assert len(answers) == 1 and not refusals
    cost = pacer.body_cost_s(len(answers[0]))
    assert cost > pacer.bucket.capacity_s                  # more than the bucket holds ...
    assert pacer.bucket.tokens_s == pytest.approx(pacer.bucket.capacity_s - cost)  # ... owed
    answers, refusals = serve()
    assert not answers and refusals == [plan.BUSY]         # nothing more until it is paid
    assert rig.rep.counters.busy_refusals == 1 and rig.rep.counters.ranges_served == 1


def test_a_mate_too_busy_to_answer_is_asked_again_later_not_counted_a_failure() -> None:
    from akita.mesh import replication as plan
    from tests.test_replication_units import ME, A, Rig

    rig = Rig()
    rig.round({ME: 1})
    rig.answer_heads(A, {A: 5})
    (sent,) = [s for s in rig.links.sent if s.path.endswith("/range")]
    rig.links.sent.remove(sent)
    sent.on_failure(f"akita.ledger/range refused: {plan.BUSY}")
    sync = rig.rep.mates[sent.peer]
    assert rig.rep.counters.busy == 1 and rig.rep.counters.failures == 0
    assert sync.failures == 0 and sync.pull_at > 0 and not sync.retry_at
