"""Pure helpers of the sampler: alert thresholds with hysteresis, counter rates, and the role
of each process in a node's process tree.

Nothing here touches psutil or the operating system, so every rule is tested directly; the
sampler worker (`workers/sampler.py`) feeds these functions what it measured.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from akita import catalogue
from akita.config import SamplerConfig

# Host metrics, as named in alerts and in `resource.sample`'s host map.
CPU = "cpu_percent"
MEMORY = "memory_percent"
DISK = "disk_percent"
RSS = "rss_bytes"

HOST_SUBJECT = "host"

# Process kinds, in the order `top` lists them.
SUPERVISOR = "supervisor"
ZYGOTE = "zygote"
WORKER = "worker"
TASK = "task"
CHILD = "child"
KIND_ORDER = (SUPERVISOR, ZYGOTE, WORKER, TASK, CHILD)


# --- alerts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """An alert on `metric`: raised when a value reaches `limit`, cleared only once it falls
    below `clear_below`, so a value hovering at the limit does not flap."""

    metric: str
    limit: float
    clear_below: float

    def __post_init__(self) -> None:
        if self.clear_below > self.limit:
            raise ValueError(f"{self.metric}: clear_below {self.clear_below} is above the "
                             f"limit {self.limit}")


@dataclass(frozen=True)
class Alert:
    """A change of alert state: `raised` true when crossed, false when cleared."""

    metric: str
    subject: str
    value: float
    threshold: float
    raised: bool

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "subject": self.subject, "value": self.value,
                "threshold": self.threshold, "raised": self.raised}


@dataclass(frozen=True)
class AlertPolicy:
    """How sure the sampler must be before an alert changes state.

    A busy host's CPU swings between idle and full from one sample to the next; were every
    crossing an alert, each would be a ledger event replicated to every cluster mate (over
    a radio, a share of the air). So an alert is raised only after its value held at or
    over the limit for `hold_samples` samples in a row, clears only after `hold_samples`
    samples in a row below the clear level, and is raised again at most once per
    `min_raise_interval_s` (a condition still holding when that time is up raises then).
    """

    hold_samples: int = 1
    min_raise_interval_s: float = 0.0

    def __post_init__(self) -> None:
        if self.hold_samples < 1:
            raise ValueError(f"hold_samples {self.hold_samples}: expected 1 or more")
        if self.min_raise_interval_s < 0:
            raise ValueError(f"min_raise_interval_s {self.min_raise_interval_s}: expected 0 "
                             "or more")

    @classmethod
    def from_config(cls, config: SamplerConfig) -> AlertPolicy:
        return cls(config.alert_samples, config.alert_min_interval)


@dataclass
class AlertState:
    """Which (metric, subject) alerts are raised; `update` reports only the changes, as
    `policy` allows (the default: at the first sample that crosses or clears)."""

    raised: set[tuple[str, str]] = field(default_factory=set)
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    # (metric, subject) → samples in a row that argue for a change of state.
    streak: dict[tuple[str, str], int] = field(default_factory=dict)
    raised_at: dict[tuple[str, str], float] = field(default_factory=dict)

    def update(self, threshold: Threshold, subject: str, value: float,
               now: float | None = None) -> Alert | None:
        """Feed one measurement (taken at `now`, monotonic seconds; default: the clock);
        returns an `Alert` when the alert is raised or cleared by it."""
        key = (threshold.metric, subject)
        raised = key in self.raised
        arguing = value < threshold.clear_below if raised else value >= threshold.limit
        if not arguing:
            self.streak.pop(key, None)
            return None
        held = self.streak[key] = self.streak.get(key, 0) + 1
        if held < self.policy.hold_samples:
            return None
        if raised:
            self.raised.discard(key)
            self.streak.pop(key, None)
            return Alert(threshold.metric, subject, value, threshold.limit, False)
        at = time.monotonic() if now is None else now
        last = self.raised_at.get(key)
        if last is not None and at - last < self.policy.min_raise_interval_s:
            return None
        self.raised.add(key)
        self.raised_at[key] = at
        self.streak.pop(key, None)
        return Alert(threshold.metric, subject, value, threshold.limit, True)

    def forget(self, metric: str, present: Iterable[str],
               thresholds: Mapping[str, Threshold]) -> list[Alert]:
        """Clear the `metric` alerts of subjects no longer `present` (a process that exited):
        a raised alert must not stay raised for something that is gone."""
        keep = set(present)
        for table in (self.streak, self.raised_at):
            for key in [k for k in table if k[0] == metric and k[1] not in keep]:
                del table[key]
        gone = [key for key in self.raised if key[0] == metric and key[1] not in keep]
        alerts = []
        for key in sorted(gone):
            self.raised.discard(key)
            alerts.append(Alert(metric, key[1], 0.0, thresholds[metric].limit, False))
        return alerts


def raised_in_history(history: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """The (metric, subject) alerts still raised after `history`, the data of past alert
    events oldest first: a restarted sampler carries on from there instead of raising again."""
    raised: set[tuple[str, str]] = set()
    for alert in history:
        key = (str(alert.get("metric")), str(alert.get("subject")))
        if alert.get("raised"):
            raised.add(key)
        else:
            raised.discard(key)
    return raised


def thresholds_from_config(config: SamplerConfig) -> dict[str, Threshold]:
    """The alerts a sampler config enables, by metric. A limit of 0 turns an alert off.

    Percentages clear `alert_hysteresis` points below their limit; the RSS alert clears
    `alert_hysteresis` percent below its limit.
    """
    margin = config.alert_hysteresis
    out: dict[str, Threshold] = {}
    for metric, limit in ((CPU, config.cpu_alert_percent), (MEMORY, config.memory_alert_percent),
                          (DISK, config.disk_alert_percent)):
        if limit > 0:
            out[metric] = Threshold(metric, limit, max(0.0, limit - margin))
    if config.process_rss_alert_bytes > 0:
        limit = float(config.process_rss_alert_bytes)
        out[RSS] = Threshold(RSS, limit, limit * (1 - margin / 100))
    return out


# --- rates ------------------------------------------------------------------------------


def rates(previous: Mapping[str, float] | None, current: Mapping[str, float],
          elapsed_s: float) -> dict[str, float | None]:
    """Per-second rate of each counter in `current` since `previous`, named KEY_per_s.

    None where no rate can be told: no previous reading, no time elapsed, or a counter that
    went backwards (a reset, or a network interface that went away).
    """
    out: dict[str, float | None] = {}
    for key, value in current.items():
        before = None if previous is None else previous.get(key)
        if before is None or elapsed_s <= 0 or value < before:
            out[f"{key}_per_s"] = None
        else:
            out[f"{key}_per_s"] = (value - before) / elapsed_s
    return out


# --- process roles ------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """What a process is to the node: `kind` (supervisor, zygote, worker, task, child) and
    `role`, its label: the worker's name for a worker; OWNER.zygote or OWNER.child for a
    worker's fork server or other child; otherwise the kind (a worker that has not announced
    itself yet is "worker")."""

    kind: str
    role: str


def assign_roles(supervisor_pid: int, children: Mapping[int, Sequence[int]],
                 workers: Mapping[int, str], zygotes: Iterable[int] = ()) -> dict[int, Role]:
    """The role of the supervisor and every descendant of it.

    `children` maps a pid to its child pids, `workers` a worker's pid to its name (learnt
    from its heartbeats), `zygotes` the pids that run a fork server (a forked copy of a
    zygote is not one itself). Descendants of the executor are tasks, unless they are its
    fork server; descendants of any other worker are that worker's children.
    """
    zygote_pids = set(zygotes)
    roles = {supervisor_pid: Role(SUPERVISOR, SUPERVISOR)}
    # (pid, the worker it descends from or None); iterative so a deep tree cannot recurse.
    stack: list[tuple[int, str | None]] = [(pid, None) for pid in children.get(supervisor_pid, ())]
    while stack:
        pid, owner = stack.pop()
        if pid in roles:
            continue  # a cycle in a racy snapshot of /proc
        roles[pid] = _role_of(pid, owner, workers, zygote_pids)
        below = workers.get(pid, owner)
        stack.extend((child, below) for child in children.get(pid, ()))
    return roles


def _role_of(pid: int, owner: str | None, workers: Mapping[int, str],
             zygotes: set[int]) -> Role:
    if pid in zygotes:  # the node's own, or a worker's (the executor's task pool)
        return Role(ZYGOTE, ZYGOTE if owner is None else f"{owner}.{ZYGOTE}")
    if owner is None:
        return Role(WORKER, workers.get(pid, WORKER))
    if owner == catalogue.TASK_RUNNER:
        return Role(TASK, TASK)
    return Role(CHILD, f"{owner}.child")


def process_subject(role: Role, pid: int) -> str:
    """The subject of a per-process alert: the role when it names one process for the
    node's life (a worker keeps its alert across restarts), the role and pid otherwise."""
    if role.kind in (SUPERVISOR, WORKER) and role.role != WORKER:
        return role.role
    return f"{role.role}[{pid}]"


def sort_key(process: Mapping[str, Any]) -> tuple[int, str, int]:
    """Order for listing processes: supervisor, zygotes, workers, tasks, others."""
    kind = process.get("kind", CHILD)
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    return rank, str(process.get("role", "")), int(process.get("pid", 0))
