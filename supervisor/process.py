"""One supervised worker: what to run (`WorkerSpec`) and how it is doing (`WorkerProcess`).

This module holds the state machine and the restart policy and does no I/O: the process
table (`supervisor.table`) forks, signals and reaps, and tells a `WorkerProcess` what
happened; the `WorkerProcess` answers what to do next. That keeps every rule here testable
with a clock passed in.

States and their transitions (each transition method checks where it starts):

    stopped ──spawned──▶ starting ──heartbeat──▶ running
    starting/running ──stop──▶ stopping
    starting/running/stopping ──exited──▶ backoff (restart due) | stopped | fatal
    backoff ──spawned──▶ starting;  backoff/fatal ──stop──▶ stopped;  fatal ──spawned──▶ starting

A FATAL worker has a way back without an operator: after `fatal_cooldown` the table spawns
it again (`restart_due` is set), and while it keeps failing within `restart_window` of such
a retry it goes straight back to FATAL with the cooldown doubled. A worker that exited with
a configuration error (`EXIT_CONFIG`) is FATAL with no retry: the same config would fail
the same way, so it waits for a reload or an operator.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from enum import Enum

from akita.config import RestartPolicy, WorkerConfig
from akita.exits import EXIT_CONFIG

# A run shorter than this counts as a quick failure, and consecutive quick failures back off.
# A worker that ran longer had started properly, so it is restarted at once (supervisord's
# `startsecs` plays the same part, with the same default).
STABLE_AFTER_S = 1.0
FATAL_COOLDOWN_MAX_S = 86400.0  # the doubling cooldown stops growing at a day


class WorkerState(str, Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FATAL = "fatal"


ACTIVE_STATES = frozenset((WorkerState.STARTING, WorkerState.RUNNING, WorkerState.STOPPING))


class TransitionError(RuntimeError):
    """A transition was asked of a worker in a state it cannot leave that way (a bug)."""


@dataclass(frozen=True)
class WorkerSpec:
    """What to run and how to treat its exits: a worker name and its [worker:NAME] settings."""

    name: str
    settings: WorkerConfig


@dataclass(frozen=True)
class ExitOutcome:
    """What the supervisor does after an exit: restart after `delay_s`, or nothing."""

    state: WorkerState
    delay_s: float = 0.0


@dataclass
class WorkerProcess:
    """The supervisor's record of one worker across its incarnations."""

    spec: WorkerSpec
    state: WorkerState = WorkerState.STOPPED
    pid: int | None = None
    started_at: float = 0.0          # monotonic time of the current spawn
    running_since: float | None = None
    last_heartbeat: float = 0.0      # monotonic
    restarts: int = 0                # spawns after the first, whatever asked for them
    exit_code: int | None = None
    exit_signal: int | None = None
    last_error: str = ""
    note: str = ""                   # what the current incarnation last said about itself
    restart_due: float | None = None  # monotonic time of a scheduled restart (backoff)
    stop_deadline: float | None = None  # when a stopping worker gets SIGKILL
    kill_cause: str = ""             # why the supervisor killed it, reported with the exit
    kill_detail: str = ""            # the same for an operator: "no heartbeat for 5 s"
    restart_after_stop: bool = False  # an operator restart or a reload: start again on exit
    remove_after_stop: bool = False   # no longer configured: forget it once it has exited
    quick_failures: int = 0
    recent_restarts: collections.deque[float] = field(default_factory=collections.deque)
    spawned_once: bool = False
    fatal_retries: int = 0           # cooldown retries since the worker last ran stably

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def settings(self) -> WorkerConfig:
        return self.spec.settings

    def _expect(self, action: str, *allowed: WorkerState) -> None:
        if self.state not in allowed:
            raise TransitionError(f"{self.name}: cannot {action} from {self.state.value}")

    # --- transitions --------------------------------------------------------------------

    def spawned(self, pid: int, now: float) -> None:
        """A new incarnation was forked with `pid`."""
        self._expect("spawn", WorkerState.STOPPED, WorkerState.BACKOFF, WorkerState.FATAL)
        if self.spawned_once:
            self.restarts += 1
        self.spawned_once = True
        self.state = WorkerState.STARTING
        self.pid = pid
        self.started_at = now
        self.last_heartbeat = now
        self.running_since = None
        self.restart_due = None
        self.kill_cause = ""
        self.kill_detail = ""
        self.restart_after_stop = False
        self.note = ""

    def heartbeat(self, now: float) -> bool:
        """A heartbeat arrived from the current pid; True if the worker just became running."""
        self.last_heartbeat = now
        if self.state is WorkerState.STARTING:
            self.state = WorkerState.RUNNING
            self.running_since = now
            return True
        return False

    def stopping(self, now: float) -> None:
        """SIGTERM was sent; SIGKILL follows at `stop_deadline` unless it exits first."""
        self._expect("stop", WorkerState.STARTING, WorkerState.RUNNING)
        self.state = WorkerState.STOPPING
        self.stop_deadline = now + self.settings.stop_timeout

    def killed(self, cause: str, detail: str = "") -> None:
        """The supervisor sent SIGKILL for `cause` (a word) and `detail` (for the operator)."""
        self._expect("kill", *ACTIVE_STATES)
        self.kill_cause = cause
        self.kill_detail = detail

    def cancel(self) -> None:
        """An operator stopped a worker that is not running (waiting to restart, or fatal)."""
        self._expect("cancel", WorkerState.BACKOFF, WorkerState.FATAL, WorkerState.STOPPED)
        self.state = WorkerState.STOPPED
        self.restart_due = None

    def exited(self, returncode: int, now: float, reason: str = "") -> ExitOutcome:
        """The current incarnation is gone; decide between restart, stopped and fatal.

        `reason` is what a worker that exited with `EXIT_CONFIG` said, in its own words: a
        cause restarting cannot fix, so it goes FATAL at once (no cooldown retry) instead of
        looping until the intensity limit.
        """
        self._expect("exit", *ACTIVE_STATES)
        requested = self.state is WorkerState.STOPPING
        self.exit_code = returncode if returncode >= 0 else None
        self.exit_signal = -returncode if returncode < 0 else None
        self.pid = None
        self.stop_deadline = None
        ran_s = now - self.started_at
        if not requested and returncode != 0:
            self.last_error = self.describe_exit(returncode)
            if self.kill_detail:
                self.last_error = f"{self.kill_detail}; {self.last_error}"
        if requested or self.remove_after_stop:
            return self._after_requested_stop()
        if returncode == EXIT_CONFIG:
            self.state = WorkerState.FATAL
            self.restart_due = None
            self.last_error = reason or "configuration error: see the worker's log"
            return ExitOutcome(self.state)
        self.quick_failures = (self.quick_failures + 1
                               if self.running_since is None or ran_s < STABLE_AFTER_S else 0)
        if not self._policy_restarts(returncode):
            self.state = WorkerState.STOPPED
            return ExitOutcome(self.state)
        if self.fatal_retries and ran_s < self.settings.restart_window:
            return self._fatal(now, f"failed again {ran_s:.1f} s after retry "
                                    f"{self.fatal_retries}; last: {self.last_error}")
        self.fatal_retries = 0
        if self._intensity_exceeded(now):
            return self._fatal(now, f"{self.settings.max_restarts} restarts within "
                                    f"{self.settings.restart_window:g} s; last: {self.last_error}")
        self.recent_restarts.append(now)
        self.state = WorkerState.BACKOFF
        delay_s = self.backoff_delay_s()
        self.restart_due = now + delay_s
        return ExitOutcome(self.state, delay_s)

    def reset_for_operator_start(self) -> None:
        """An operator start: forget the restart history that made the worker fatal."""
        self.recent_restarts.clear()
        self.quick_failures = 0
        self.fatal_retries = 0

    def retry_after_cooldown(self) -> None:
        """The cooldown of a FATAL worker ran out: it is about to be spawned again."""
        self._expect("retry", WorkerState.FATAL)
        self.fatal_retries += 1
        self.recent_restarts.clear()
        self.quick_failures = 0

    # --- policy -------------------------------------------------------------------------

    def _fatal(self, now: float, why: str) -> ExitOutcome:
        self.state = WorkerState.FATAL
        cooldown_s = self.fatal_cooldown_s()
        self.restart_due = now + cooldown_s if cooldown_s else None
        self.last_error = why + (f"; retry in {cooldown_s:g} s" if cooldown_s else "")
        return ExitOutcome(self.state, cooldown_s)

    def fatal_cooldown_s(self) -> float:
        """The wait before the next retry: fatal_cooldown, doubled for each failed retry."""
        base_s = self.settings.fatal_cooldown
        if not base_s:
            return 0.0
        return float(min(base_s * 2 ** self.fatal_retries, max(base_s, FATAL_COOLDOWN_MAX_S)))

    def _after_requested_stop(self) -> ExitOutcome:
        if self.restart_after_stop and not self.remove_after_stop:
            self.state = WorkerState.BACKOFF
            self.restart_due = 0.0
            return ExitOutcome(self.state, 0.0)
        self.state = WorkerState.STOPPED
        return ExitOutcome(self.state)

    def _policy_restarts(self, returncode: int) -> bool:
        policy = self.settings.restart
        if policy is RestartPolicy.NEVER:
            return False
        if policy is RestartPolicy.ON_FAILURE:
            return returncode != 0
        return True

    def _intensity_exceeded(self, now: float) -> bool:
        window_start = now - self.settings.restart_window
        while self.recent_restarts and self.recent_restarts[0] < window_start:
            self.recent_restarts.popleft()
        return len(self.recent_restarts) >= self.settings.max_restarts

    def backoff_delay_s(self) -> float:
        """No delay after a stable run; then backoff_initial, doubling up to backoff_max."""
        if self.quick_failures <= 1:
            return 0.0
        delay_s = self.settings.backoff_initial * 2 ** (self.quick_failures - 2)
        return float(min(delay_s, self.settings.backoff_max))

    def heartbeat_overdue(self, now: float) -> bool:
        return (self.state in (WorkerState.STARTING, WorkerState.RUNNING)
                and not self.kill_cause
                and now - self.last_heartbeat > self.settings.heartbeat_timeout)

    @staticmethod
    def describe_exit(returncode: int) -> str:
        if returncode < 0:
            return f"killed by signal {-returncode}"
        return f"exited with code {returncode}"
