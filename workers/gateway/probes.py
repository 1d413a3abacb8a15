"""SWIM-style liveness between the members of a cluster: who to probe, and when to suspect.

Announces are for discovery; on a radio mesh they may be minutes apart. Between them each
member probes every other member of its cluster directly, with a packet that asks for a
proof (Reticulum signs proofs, so an answer cannot be forged). A probe that goes unanswered
for `probe_timeout` is followed by an indirect probe through up to `INDIRECT_HELPERS` other
members — a lost packet or a broken route between two nodes must not make one accuse the
other — and only when that fails too does the target become suspect. A suspect keeps being
probed; any sign of life refutes the suspicion. The peer table drops it once it has been
silent for `peer_timeout`.

Lifeguard's point is kept: a node that is itself slow (its loop late) widens its own
timeouts (`health`) rather than accuse healthy peers.

Pure logic with explicit time: the gateway turns the returned actions into packets and
feeds answers back with `answered()`.
"""

from __future__ import annotations

import random
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from akita.wire.mesh import new_nonce

INDIRECT_HELPERS = 2
MAX_HEALTH = 4.0
LAG_SAMPLES = 25           # ticks over which the loop lag is judged (the median)
LAG_NOISE_S = 0.05         # lag a busy host shows anyway: not a reason to widen timers


@dataclass(frozen=True)
class ProbeTiming:
    """Probe timers; derived from peer_timeout unless configured."""

    interval_s: float
    timeout_s: float

    @classmethod
    def derive(cls, peer_timeout_s: float, interval_s: float = 0.0,
               timeout_s: float = 0.0) -> ProbeTiming:
        # A dead member must fail a direct and an indirect probe well inside peer_timeout:
        # interval + 3 timeouts ≤ half of it leaves room for a lost packet and a retry.
        interval = interval_s or max(0.1, peer_timeout_s / 5)
        timeout = timeout_s or max(0.05, min(interval, peer_timeout_s / 10))
        return cls(interval_s=interval, timeout_s=timeout)


class Stage(Enum):
    DIRECT = "direct"
    INDIRECT = "indirect"


@dataclass(frozen=True)
class DirectProbe:
    target: str
    nonce: int


@dataclass(frozen=True)
class IndirectProbe:
    helper: str
    target: str
    nonce: int


@dataclass(frozen=True)
class Suspect:
    target: str


Action = DirectProbe | IndirectProbe | Suspect


@dataclass
class _Outstanding:
    stage: Stage
    nonces: set[int]
    deadline: float


@dataclass
class Prober:
    timing: ProbeTiming
    rng: random.Random = field(default_factory=random.Random)
    next_probe: dict[str, float] = field(default_factory=dict)
    outstanding: dict[str, _Outstanding] = field(default_factory=dict)
    health: float = 1.0
    sent_direct: int = 0
    sent_indirect: int = 0
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=LAG_SAMPLES))
    _late: int = 0        # lags in the window above LAG_NOISE_S

    def step(self, now: float, members: set[str],
             last_heard: Mapping[str, float] | None = None) -> list[Action]:
        """What to send now to probe `members` (this node's cluster, without itself).

        With `last_heard` (member → when it last gave a sign of life, e.g. an announce),
        only a member silent for a probe interval is probed: on a shared radio channel
        every probe and its proof cost airtime, and an announce already said it lives."""
        self._forget_non_members(members)
        actions: list[Action] = []
        for target in sorted(members):
            pending = self.outstanding.get(target)
            if pending is not None:
                if now >= pending.deadline:
                    actions.extend(self._escalate(target, pending, now, members))
                continue
            due = self.next_probe.setdefault(target, now + self._jitter())
            heard = last_heard.get(target) if last_heard is not None else None
            if heard is not None and now < heard + self.timing.interval_s * self.health:
                self.next_probe[target] = max(due, heard + self.timing.interval_s * self.health)
                continue
            if now >= due:
                actions.append(self._direct(target, now))
        return actions

    def answered(self, target: str, nonce: int, now: float) -> bool:
        """A proof or an indirect ack for `nonce` arrived; True if it was one we waited for."""
        pending = self.outstanding.get(target)
        if pending is None or nonce not in pending.nonces:
            return False
        del self.outstanding[target]
        self.next_probe[target] = now + self.timing.interval_s * self.health
        return True

    def note_lag(self, loop_lag_s: float) -> None:
        """Widen timers when this node's own loop keeps running late (1.0 = healthy).

        The median over the last ticks, so one late tick (a collection, a burst of
        callbacks) does not count, a node that stays slow does."""
        lags = self.lags
        if len(lags) == lags.maxlen and lags[0] > LAG_NOISE_S:
            self._late -= 1      # the oldest is about to leave the window
        lags.append(loop_lag_s)
        if loop_lag_s > LAG_NOISE_S:
            self._late += 1
        if 2 * self._late < len(lags):
            # Most ticks were on time, so the median is within the noise: healthy, without
            # sorting the window every tick.
            self.health = 1.0
            return
        lag = max(0.0, statistics.median(lags) - LAG_NOISE_S)
        lag_ratio = lag / max(self.timing.timeout_s, 1e-3)
        self.health = min(MAX_HEALTH, 1.0 + lag_ratio)

    def _direct(self, target: str, now: float) -> DirectProbe:
        nonce = new_nonce()
        self.outstanding[target] = _Outstanding(Stage.DIRECT, {nonce},
                                                now + self.timing.timeout_s * self.health)
        self.sent_direct += 1
        return DirectProbe(target, nonce)

    def _escalate(self, target: str, pending: _Outstanding, now: float,
                  members: set[str]) -> list[Action]:
        if pending.stage is Stage.DIRECT:
            helpers = sorted(members - {target})
            self.rng.shuffle(helpers)
            helpers = helpers[:INDIRECT_HELPERS]
            # A second direct probe rides along: the first may simply have been lost.
            retry = new_nonce()
            actions: list[Action] = [DirectProbe(target, retry)]
            nonces = {retry}
            for helper in helpers:
                nonce = new_nonce()
                nonces.add(nonce)
                actions.append(IndirectProbe(helper, target, nonce))
            self.sent_direct += 1
            self.sent_indirect += len(helpers)
            # The indirect round trip crosses two hops.
            self.outstanding[target] = _Outstanding(
                Stage.INDIRECT, nonces, now + 2 * self.timing.timeout_s * self.health)
            return actions
        del self.outstanding[target]
        self.next_probe[target] = now + self.timing.interval_s * self.health
        return [Suspect(target)]

    def _forget_non_members(self, members: set[str]) -> None:
        for table in (self.next_probe, self.outstanding):
            for target in [t for t in table if t not in members]:
                del table[target]

    def _jitter(self) -> float:
        """Spread first probes so members do not probe in lock-step."""
        return self.rng.uniform(0, self.timing.interval_s)
