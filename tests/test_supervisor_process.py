"""The worker state machine and restart policy, with the clock passed in (no processes)."""

from __future__ import annotations

import pytest

from akita.config import RestartPolicy, WorkerConfig
from supervisor.process import (
    STABLE_AFTER_S,
    TransitionError,
    WorkerProcess,
    WorkerSpec,
    WorkerState,
)


def make(**settings: object) -> WorkerProcess:
    return WorkerProcess(WorkerSpec("sampler", WorkerConfig(**settings)))  # type: ignore[arg-type]


def run_then_crash(proc: WorkerProcess, start: float, ran_s: float, code: int = -9) -> float:
    """Spawn at `start`, heartbeat at once, exit after `ran_s`; returns the restart delay."""
    proc.spawned(1000, start)
    proc.heartbeat(start)
    outcome = proc.exited(code, start + ran_s)
    return outcome.delay_s


def test_first_heartbeat_makes_it_running() -> None:
    proc = make()
    proc.spawned(10, 0.0)
    assert proc.state is WorkerState.STARTING
    assert proc.heartbeat(0.1) is True
    assert proc.state is WorkerState.RUNNING
    assert proc.heartbeat(0.2) is False


def test_crash_after_a_stable_run_restarts_at_once() -> None:
    proc = make(backoff_initial=1.0)
    assert run_then_crash(proc, 0.0, STABLE_AFTER_S + 5) == 0.0
    assert proc.state is WorkerState.BACKOFF
    assert proc.exit_signal == 9 and proc.exit_code is None


def test_quick_failures_back_off_exponentially_up_to_the_max() -> None:
    proc = make(backoff_initial=0.5, backoff_max=3.0, max_restarts=100)
    delays = []
    now = 0.0
    for _ in range(6):
        delays.append(run_then_crash(proc, now, 0.01))
        now += 10
    assert delays == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]
    # A stable run resets the sequence.
    assert run_then_crash(proc, now, STABLE_AFTER_S + 1) == 0.0
    assert run_then_crash(proc, now + 100, 0.01) == 0.0


def test_more_than_max_restarts_within_the_window_is_fatal() -> None:
    proc = make(max_restarts=3, restart_window=10.0, backoff_initial=0)
    for second in range(3):
        run_then_crash(proc, float(second), 2.0)
        assert proc.state is WorkerState.BACKOFF
    run_then_crash(proc, 3.0, 2.0)
    assert proc.state is WorkerState.FATAL
    assert "3 restarts within 10 s" in proc.last_error
    # Fatal until an operator starts it; then the history is forgotten.
    proc.reset_for_operator_start()
    run_then_crash(proc, 4.0, 2.0)
    assert proc.state is WorkerState.BACKOFF


def test_restarts_outside_the_window_do_not_count() -> None:
    proc = make(max_restarts=2, restart_window=5.0)
    for start in (0.0, 10.0, 20.0, 30.0):
        run_then_crash(proc, start, 2.0)
        assert proc.state is WorkerState.BACKOFF


@pytest.mark.parametrize("policy, code, state", [
    (RestartPolicy.ALWAYS, 0, WorkerState.BACKOFF),
    (RestartPolicy.ON_FAILURE, 0, WorkerState.STOPPED),
    (RestartPolicy.ON_FAILURE, 3, WorkerState.BACKOFF),
    (RestartPolicy.ON_FAILURE, -9, WorkerState.BACKOFF),
    (RestartPolicy.NEVER, 3, WorkerState.STOPPED),
])
def test_restart_policies(policy: RestartPolicy, code: int, state: WorkerState) -> None:
    proc = make(restart=policy)
    run_then_crash(proc, 0.0, 5.0, code)
    assert proc.state is state


def test_requested_stop_is_not_a_failure() -> None:
    proc = make(stop_timeout=2.0)
    proc.spawned(10, 0.0)
    proc.heartbeat(0.0)
    proc.stopping(1.0)
    assert proc.stop_deadline == 3.0
    outcome = proc.exited(0, 1.5)
    assert outcome.state is WorkerState.STOPPED and proc.last_error == ""
    assert not proc.recent_restarts


def test_operator_restart_starts_again_after_the_stop() -> None:
    proc = make()
    proc.spawned(10, 0.0)
    proc.stopping(1.0)
    proc.restart_after_stop = True
    outcome = proc.exited(-15, 1.2)
    assert outcome.state is WorkerState.BACKOFF and outcome.delay_s == 0.0
    proc.spawned(11, 1.3)
    assert proc.restarts == 1


def test_heartbeat_deadline_and_kill_cause() -> None:
    proc = make(heartbeat_timeout=2.0)
    proc.spawned(10, 0.0)
    assert not proc.heartbeat_overdue(1.9)
    assert proc.heartbeat_overdue(2.1)
    proc.killed("heartbeat_timeout", "no heartbeat for 2 s")
    assert not proc.heartbeat_overdue(5.0), "killed once, not again"
    proc.exited(-9, 2.2)
    assert proc.last_error == "no heartbeat for 2 s; killed by signal 9"


def test_transitions_check_their_start_state() -> None:
    proc = make()
    with pytest.raises(TransitionError):
        proc.exited(0, 1.0)
    with pytest.raises(TransitionError):
        proc.stopping(1.0)
    proc.spawned(10, 0.0)
    with pytest.raises(TransitionError):
        proc.spawned(11, 0.1)
    with pytest.raises(TransitionError):
        proc.cancel()


def test_state_values_are_the_documented_words() -> None:
    assert [s.value for s in WorkerState] == [
        "starting", "running", "backoff", "stopping", "stopped", "fatal"]


def test_fatal_is_retried_after_the_cooldown_doubling_while_it_fails() -> None:
    proc = make(max_restarts=1, restart_window=10.0, backoff_initial=0, fatal_cooldown=30.0)
    run_then_crash(proc, 0.0, 2.0)
    run_then_crash(proc, 3.0, 2.0)
    assert proc.state is WorkerState.FATAL and proc.restart_due == 35.0
    assert "retry in 30 s" in proc.last_error
    proc.retry_after_cooldown()
    run_then_crash(proc, 35.0, 2.0)   # fails again soon after the retry: FATAL, 60 s now
    assert proc.state is WorkerState.FATAL and proc.restart_due == 97.0
    proc.retry_after_cooldown()
    run_then_crash(proc, 97.0, 50.0)  # ran past restart_window: recovered, plain restart
    assert proc.state is WorkerState.BACKOFF and proc.fatal_retries == 0


def test_fatal_cooldown_zero_keeps_fatal_until_an_operator() -> None:
    proc = make(max_restarts=1, backoff_initial=0, fatal_cooldown=0)
    run_then_crash(proc, 0.0, 2.0)
    run_then_crash(proc, 3.0, 2.0)
    assert proc.state is WorkerState.FATAL and proc.restart_due is None


def test_a_configuration_error_is_fatal_at_once_without_retry() -> None:
    proc = make(fatal_cooldown=1.0)
    proc.spawned(5, 0.0)
    outcome = proc.exited(78, 0.1, "configuration error: [tasks] modules: cannot import 'x'")
    assert outcome.state is WorkerState.FATAL and proc.restart_due is None
    assert proc.last_error == "configuration error: [tasks] modules: cannot import 'x'"
