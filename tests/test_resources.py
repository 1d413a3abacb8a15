"""The sampler's pure rules: alert hysteresis, counter rates, process roles."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from akita import resources
from akita.config import SamplerConfig
from akita.resources import Alert, AlertState, Role, Threshold

MEMORY = Threshold(resources.MEMORY, limit=90.0, clear_below=85.0)


def feed(state: AlertState, values: list[float], threshold: Threshold = MEMORY,
         subject: str = "host") -> list[Alert | None]:
    return [state.update(threshold, subject, value) for value in values]


# --- alerts -----------------------------------------------------------------------------


def test_alert_is_raised_once_when_the_limit_is_crossed() -> None:
    changes = feed(AlertState(), [50, 89.9, 90, 95, 99, 91])
    assert changes[:2] == [None, None]
    assert changes[2] == Alert(resources.MEMORY, "host", 90, 90.0, True)
    assert changes[3:] == [None, None, None]


def test_alert_clears_only_below_the_hysteresis_margin() -> None:
    state = AlertState()
    feed(state, [95])
    # Hovering between the clear level and the limit neither clears nor re-raises.
    assert feed(state, [89, 86, 85, 89.99, 85.5]) == [None] * 5
    cleared = state.update(MEMORY, "host", 84.9)
    assert cleared == Alert(resources.MEMORY, "host", 84.9, 90.0, False)
    assert state.raised == set()


def test_value_flapping_around_the_limit_raises_once() -> None:
    changes = feed(AlertState(), [89, 91, 89, 91, 89, 91, 88, 90])
    assert [c.raised for c in changes if c is not None] == [True]


def test_alerts_are_kept_per_subject_and_metric() -> None:
    state = AlertState()
    rss = Threshold(resources.RSS, 1000, 900)
    assert state.update(rss, "ledger", 2000) is not None
    assert state.update(rss, "sampler", 500) is None
    assert state.update(MEMORY, "host", 95) is not None
    assert state.update(rss, "ledger", 1500) is None
    assert state.raised == {(resources.RSS, "ledger"), (resources.MEMORY, "host")}


def test_forget_clears_the_alerts_of_subjects_that_are_gone() -> None:
    state = AlertState()
    rss = Threshold(resources.RSS, 1000, 900)
    feed(state, [2000], rss, "task[11]")
    feed(state, [2000], rss, "ledger")
    feed(state, [95])
    cleared = state.forget(resources.RSS, ["ledger"], {resources.RSS: rss})
    assert cleared == [Alert(resources.RSS, "task[11]", 0.0, 1000, False)]
    assert state.raised == {(resources.RSS, "ledger"), (resources.MEMORY, "host")}


@given(st.lists(st.floats(min_value=0, max_value=100), max_size=60))
def test_alert_changes_always_alternate_raise_and_clear(values: list[float]) -> None:
    changes = [c for c in feed(AlertState(), values) if c is not None]
    assert [c.raised for c in changes] == [i % 2 == 0 for i in range(len(changes))]
    for change in changes:
        assert change.value >= 90 if change.raised else change.value < 85


CPU = Threshold(resources.CPU, limit=95.0, clear_below=90.0)
BUSY_HOST = resources.AlertPolicy(hold_samples=3, min_raise_interval_s=300.0)


def feed_at(state: AlertState, samples: list[tuple[float, float]],
            threshold: Threshold = CPU) -> list[Alert | None]:
    """(time, value) samples of the host subject."""
    return [state.update(threshold, "host", value, now) for now, value in samples]


def test_cpu_swinging_every_sample_raises_nothing() -> None:
    # A busy host: full, idle, full ... every 5 s for 45 s (it used to raise 5 alerts).
    state = AlertState(policy=BUSY_HOST)
    changes = feed_at(state, [(5.0 * i, 100.0 if i % 2 else 40.0) for i in range(10)])
    assert changes == [None] * 10


def test_an_alert_is_raised_only_once_the_condition_held() -> None:
    state = AlertState(policy=BUSY_HOST)
    changes = feed_at(state, [(0, 99), (5, 99), (10, 50), (15, 99), (20, 96), (25, 97)])
    assert changes[:5] == [None] * 5
    assert changes[5] == Alert(resources.CPU, "host", 97, 95.0, True)


def test_an_alert_clears_only_after_as_many_samples_under_the_clear_level() -> None:
    state = AlertState(policy=BUSY_HOST)
    feed_at(state, [(0, 99), (5, 99), (10, 99)])
    # Under the limit but above the clear level does not count; a dip back up restarts.
    assert feed_at(state, [(15, 92), (20, 80), (25, 80), (30, 99), (35, 80), (40, 80)]) == \
        [None] * 6
    cleared = state.update(CPU, "host", 70, 45)
    assert cleared is not None and not cleared.raised and cleared.value == 70
    assert state.raised == set()


def test_an_alert_is_raised_again_at_most_once_per_interval() -> None:
    state = AlertState(policy=BUSY_HOST)
    high, low = 99.0, 10.0
    raised = feed_at(state, [(0, high), (5, high), (10, high)])[-1]
    assert raised is not None and raised.raised
    cleared = feed_at(state, [(15, low), (20, low), (25, low)])[-1]
    assert cleared is not None and not cleared.raised
    # The condition holds again within the interval: not raised until the interval is up,
    # then raised at once if it still holds.
    # (raised at 10 s, so not before 310 s).
    assert feed_at(state, [(t, high) for t in range(30, 310, 5)]) == [None] * 56
    again = state.update(CPU, "host", high, 310)
    assert again is not None and again.raised


@given(st.lists(st.tuples(st.floats(min_value=0, max_value=30),
                          st.floats(min_value=0, max_value=100)), max_size=80),
       st.integers(min_value=1, max_value=5), st.floats(min_value=0, max_value=120))
def test_held_alerts_alternate_and_respect_the_interval(
        samples: list[tuple[float, float]], hold: int, interval_s: float) -> None:
    state = AlertState(policy=resources.AlertPolicy(hold, interval_s))
    now, raises_at, kinds = 0.0, [], []
    for step, value in samples:
        now += step
        change = state.update(CPU, "host", value, now)
        if change is not None:
            kinds.append(change.raised)
            if change.raised:
                raises_at.append(now)
    assert kinds == [i % 2 == 0 for i in range(len(kinds))]
    assert all(b - a >= interval_s for a, b in itertools.pairwise(raises_at))


def test_alert_policy_from_config_and_bounds() -> None:
    config = dataclasses.replace(SamplerConfig(), alert_samples=4, alert_min_interval=60.0)
    assert resources.AlertPolicy.from_config(config) == resources.AlertPolicy(4, 60.0)
    assert resources.AlertPolicy.from_config(SamplerConfig()) == resources.AlertPolicy(3, 300.0)
    with pytest.raises(ValueError, match="hold_samples 0"):
        resources.AlertPolicy(0, 1.0)


def test_raised_alerts_are_recovered_from_their_history() -> None:
    history = [Alert("memory_percent", "host", 95, 90, True).as_dict(),
               Alert("rss_bytes", "ledger", 2e9, 1e9, True).as_dict(),
               Alert("cpu_percent", "host", 99, 95, True).as_dict(),
               Alert("memory_percent", "host", 80, 90, False).as_dict()]
    state = AlertState(resources.raised_in_history(history))
    assert state.raised == {("rss_bytes", "ledger"), ("cpu_percent", "host")}
    # Still high after the restart: nothing new to report.
    cpu = Threshold(resources.CPU, 95, 90)
    assert state.update(cpu, "host", 97) is None
    assert state.update(cpu, "host", 50) == Alert(resources.CPU, "host", 50, 95, False)


def test_a_threshold_cannot_clear_above_its_limit() -> None:
    with pytest.raises(ValueError, match="clear_below"):
        Threshold(resources.CPU, limit=50, clear_below=60)


def test_thresholds_from_config() -> None:
    config = dataclasses.replace(SamplerConfig(), cpu_alert_percent=0, memory_alert_percent=3,
                                 disk_alert_percent=80, process_rss_alert_bytes=1000,
                                 alert_hysteresis=10)
    thresholds = resources.thresholds_from_config(config)
    assert resources.CPU not in thresholds  # 0 turns it off
    assert thresholds[resources.MEMORY] == Threshold(resources.MEMORY, 3, 0)
    assert thresholds[resources.DISK] == Threshold(resources.DISK, 80, 70)
    assert thresholds[resources.RSS] == Threshold(resources.RSS, 1000, 900)
    assert resources.RSS not in resources.thresholds_from_config(SamplerConfig())


# --- rates ------------------------------------------------------------------------------


def test_rates_are_per_second_since_the_previous_reading() -> None:
    out = resources.rates({"read_bytes": 1000, "write_bytes": 0},
                          {"read_bytes": 5000, "write_bytes": 300}, elapsed_s=2.0)
    assert out == {"read_bytes_per_s": 2000.0, "write_bytes_per_s": 150.0}


def test_rates_are_unknown_without_a_previous_reading_or_time() -> None:
    assert resources.rates(None, {"bytes_sent": 10}, 1.0) == {"bytes_sent_per_s": None}
    assert resources.rates({"bytes_sent": 1}, {"bytes_sent": 10}, 0.0) == {
        "bytes_sent_per_s": None}


def test_a_counter_that_went_backwards_has_no_rate() -> None:
    out = resources.rates({"bytes_recv": 10_000, "bytes_sent": 5, "errin": 0},
                          {"bytes_recv": 400, "bytes_sent": 5, "packets_recv": 3}, 1.0)
    assert out == {"bytes_recv_per_s": None, "bytes_sent_per_s": 0.0,
                   "packets_recv_per_s": None}


# --- roles ------------------------------------------------------------------------------


def test_roles_of_a_node_tree() -> None:
    # supervisor 1 → zygote 2 → ledger 3, sampler 4, executor 5 → task zygote 6 → tasks 7, 8
    #                          → 9 (forked, no heartbeat yet); sampler 4 → helper 10
    children = {1: [2], 2: [3, 4, 5, 9], 4: [10], 5: [6], 6: [7, 8]}
    workers = {3: "ledger", 4: "sampler", 5: "executor"}
    roles = resources.assign_roles(1, children, workers, zygotes=[2, 6])
    assert roles == {
        1: Role("supervisor", "supervisor"),
        2: Role("zygote", "zygote"),
        3: Role("worker", "ledger"),
        4: Role("worker", "sampler"),
        5: Role("worker", "executor"),
        6: Role("zygote", "executor.zygote"),
        7: Role("task", "task"),
        8: Role("task", "task"),
        9: Role("worker", "worker"),
        10: Role("child", "sampler.child"),
    }


def test_roles_ignore_processes_outside_the_tree_and_survive_cycles() -> None:
    roles = resources.assign_roles(1, {1: [2], 2: [1, 3], 7: [8]}, {3: "ledger", 8: "gateway"})
    assert set(roles) == {1, 2, 3}
    assert roles[3] == Role("worker", "ledger")


def test_process_alert_subjects() -> None:
    assert resources.process_subject(Role("worker", "ledger"), 42) == "ledger"
    assert resources.process_subject(Role("supervisor", "supervisor"), 1) == "supervisor"
    assert resources.process_subject(Role("task", "task"), 7) == "task[7]"
    assert resources.process_subject(Role("worker", "worker"), 9) == "worker[9]"
    assert resources.process_subject(Role("zygote", "zygote"), 2) == "zygote[2]"


def test_sort_key_lists_supervisor_first_and_tasks_last() -> None:
    procs = [{"kind": "task", "role": "task", "pid": 9},
             {"kind": "worker", "role": "sampler", "pid": 4},
             {"kind": "supervisor", "role": "supervisor", "pid": 1},
             {"kind": "worker", "role": "ledger", "pid": 5},
             {"kind": "zygote", "role": "zygote", "pid": 2}]
    ordered = [p["pid"] for p in sorted(procs, key=resources.sort_key)]
    assert ordered == [1, 2, 5, 4, 9]
