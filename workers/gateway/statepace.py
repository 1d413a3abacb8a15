"""State pulls and pushes within the airtime bucket (`akita.mesh.pacing`).

A pull is asked for when a peer announces a newer record; a push when the own record
changes (`akitactl state set`, new task types). Where the budget binds, each waits for the
node's airtime bucket: a pull that waits is remembered (with the newest stamp heard) and
sent from the loop's tick once the bucket allows it. Pushes go at most once per
`Pacer.push_spacing_s` (an announce interval) and when the bucket pays: those that wait
are coalesced into one, which carries the record's latest version when it goes. A pull
that waits, or a push whose spacing has passed, holds the ledger's catch-up back
(`Pacer.state_waiting`): a mate's record says where work may go, its ledger copy can lag,
and at 1 % on SF9 the catch-up of a six-node start-up would take the bucket for hours. On
a LAN everything goes at once, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from akita.mesh import budget
from akita.mesh import state as st
from akita.mesh.pacing import Pacer

PUSH_REPLY_BYTES = 60         # an empty response on the link


@dataclass
class StatePacing:
    pacer: Pacer
    is_open: Callable[[str], bool]                  # is a link to this peer up already?
    wanted: dict[str, st.Stamp] = field(default_factory=dict)   # pulls waiting
    push_pending: bool = False
    last_push_at: float = float("-inf")
    held_pulls: int = 0
    held_pushes: int = 0

    def pull_cost_s(self, node_id: str) -> float:
        return self.pacer.request_cost_s(budget.PULL_BYTES, budget.RECORD_BYTES,
                                         self.is_open(node_id))

    def may_pull(self, node_id: str, advertised: st.Stamp, now: float) -> bool:
        """True: pull now (paid for). False: it waits for the bucket (see `due_pulls`)."""
        if self.pacer.try_spend(self.pull_cost_s(node_id), now):
            self.wanted.pop(node_id, None)
            return True
        if node_id not in self.wanted:
            self.held_pulls += 1
        self.wanted[node_id] = max(advertised, self.wanted.get(node_id, advertised))
        self._hold(now)
        return False

    def due_pulls(self, now: float, still_wanted: Callable[[str, st.Stamp], bool]
                  ) -> list[tuple[str, st.Stamp]]:
        """Waiting pulls the bucket now pays for, oldest first; those no longer wanted
        (the peer left, or its record came another way) are dropped."""
        due = []
        for node_id, stamp in list(self.wanted.items()):
            if not still_wanted(node_id, stamp):
                del self.wanted[node_id]
            elif self.pacer.try_spend(self.pull_cost_s(node_id), now):
                del self.wanted[node_id]
                due.append((node_id, stamp))
            else:
                break   # in order: a later one must not overtake a waiting one
        self._hold(now)
        return due

    def push_cost_s(self, mates: Iterable[str], record_bytes: int) -> float:
        return sum(self.pacer.request_cost_s(record_bytes, PUSH_REPLY_BYTES, self.is_open(m))
                   for m in mates)

    def may_push(self, mates: set[str], record_bytes: int, now: float) -> bool:
        """True: push the own record to `mates` now (paid for). False: one push waits
        (see `push_due`), whatever else changes meanwhile."""
        if not mates or (self._spaced(now) and self.pacer.try_spend(
                self.push_cost_s(mates, record_bytes), now)):
            self.push_pending = False
            if mates:
                self.last_push_at = now
            self._hold(now)
            return True
        if not self.push_pending:
            self.held_pushes += 1
        self.push_pending = True
        self._hold(now)
        return False

    def push_due(self, mates: set[str], record_bytes: int, now: float) -> bool:
        """Is a waiting push paid for now?"""
        return self.push_pending and self.may_push(mates, record_bytes, now)

    def forget(self, node_id: str, now: float) -> None:
        self.wanted.pop(node_id, None)
        self._hold(now)

    def _hold(self, now: float) -> None:
        """Let the ledger's catch-up spend from the bucket only while no state work waits."""
        self.pacer.state_waiting = bool(self.wanted) or (self.push_pending and self._spaced(now))

    def _spaced(self, now: float) -> bool:
        """A push may go as far as its spacing goes (one per `Pacer.push_spacing_s`)."""
        return now >= self.last_push_at + self.pacer.push_spacing_s

    def stats(self, now: float) -> dict[str, Any]:
        return {**self.pacer.as_dict(now), "pulls_waiting": len(self.wanted),
                "push_waiting": self.push_pending, "held_pulls": self.held_pulls,
                "held_pushes": self.held_pushes}
