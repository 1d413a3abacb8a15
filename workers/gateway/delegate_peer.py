"""Task delegation, the peer's side: run tasks cluster mates hand in, send their outcomes
home, and keep their leases alive (see `workers.gateway.delegate` for the whole picture).

- ``{task_channel}/run``: served for live members of this node's cluster, only from the
  current cluster term or a later one (`akita.mesh.rounds.accepts`), and for spill-over from
  other clusters when this node is its cluster's coordinator with room
  (`workers.gateway.spillover.Admission`), through `task.run_for`;
  the executor refuses a type this node does not declare, a capability it lacks, args that
  do not fit. The answer carries our load right after.
- Outcomes the executor pushes go home per origin (``/result``), one request in flight per
  origin; one the origin does not take (no route, Link down) is sent again after a doubling
  delay, and given up after `result_keep_s` (the origin's lease lapses and the task runs
  again there or elsewhere: at least once).
- Every third of a lease, `task.held` (which also re-attaches the executor's outcome pushes
  to this gateway: asked first thing after a restart) lists what we hold; each origin gets
  one ``/renew`` with those and the outcomes still on their way to it. What the origin calls
  stale (finished, re-queued, given to another) is dropped here (`task.drop`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from akita.mesh import delegation as plan
from akita.wire import mesh, protocol
from workers.gateway import spillover
from workers.gateway.executor_requests import ExecutorRequests
from workers.gateway.links import DEFER, IncomingRequest, Links, RequestRefused

log = logging.getLogger(__name__)

MIN_RENEW_S = 0.5      # however short an origin's lease, renewals come no faster
MAX_RETRY_S = 10.0


@dataclass
class PeerCounters:
    runs_served: int = 0
    runs_refused: int = 0
    tasks_accepted: int = 0
    tasks_refused: int = 0
    results_sent: int = 0
    results_stale: int = 0
    result_failures: int = 0
    results_given_up: int = 0
    renewals_sent: int = 0
    renewal_failures: int = 0
    dropped: int = 0


@dataclass
class _Result:
    entry: dict[str, Any]
    since: float


@dataclass
class _Home:
    """Outcomes on their way to one origin."""

    pending: list[_Result] = field(default_factory=list)
    sending: bool = False
    retry_at: float = 0.0
    backoff_s: float = 0.0


class PeerOwner(spillover.SpillOwner, Protocol):
    """What the peer side asks of the gateway's delegation (`delegate.Delegator`): besides
    what spill-over admission reads, the executor, the Links, the request paths and timing,
    and the largest request body it takes."""

    @property
    def exe(self) -> ExecutorRequests: ...

    @property
    def links(self) -> Links: ...

    @property
    def paths(self) -> dict[str, str]: ...

    @property
    def timing(self) -> plan.DelegationTiming: ...

    @property
    def body_limit(self) -> int: ...

    def note_work(self, now: float) -> None: ...


class PeerSide:
    """Runs what cluster mates hand in; sends outcomes home; renews leases."""

    def __init__(self, owner: PeerOwner) -> None:
        self.d = owner
        self.counters = PeerCounters()
        self.admission = spillover.Admission(owner)
        self.homes: dict[str, _Home] = {}
        self.lease_of: dict[str, float] = {}     # origin → the lease it last gave
        self._next_renew = 0.0                   # at once: re-attach outcome pushes
        self._renewing = False

    # --- /run ---------------------------------------------------------------------------------

    def serve_run(self, request: IncomingRequest) -> Any:
        net = self.d.net
        origin = request.peer_id
        if origin is None:
            raise RequestRefused("identify first")
        try:
            body = plan.decode_run(request.data, self.d.body_limit)
        except mesh.WireError as exc:
            self.counters.runs_refused += 1
            raise RequestRefused(f"malformed run request: {exc}") from None
        refusal = self.admission.refusal(origin, body)
        if refusal is not None:
            self.counters.runs_refused += 1
            raise RequestRefused(refusal)
        now = time.monotonic()
        net.table.heard(origin, now)
        self.d.note_work(now)
        self.lease_of[origin] = body.lease_s
        self.counters.runs_served += 1

        def answered(reply: protocol.TaskAccepted) -> None:
            refused = len(reply.errors)
            self.counters.tasks_refused += refused
            self.counters.tasks_accepted += len(reply.ids) - refused
            request.respond(plan.encode_run_response(reply.ids, reply.errors,
                                                     self.d.own_load))

        self.d.exe.ask(protocol.TaskRunFor(origin=origin, tasks=body.tasks),
                       protocol.TaskAccepted, answered,
                       lambda code, text: request.fail(f"{code}: {text}"))
        return DEFER

    # --- outcomes home --------------------------------------------------------------------------

    def outcomes(self, pushed: list[dict[str, Any]]) -> None:
        """The executor pushed these outcomes of tasks run here for peers."""
        now = time.monotonic()
        for origin, entries in plan.group_by_origin(pushed).items():
            home = self.homes.setdefault(origin, _Home())
            home.pending.extend(_Result(entry, now) for entry in entries)
            if not home.sending and now >= home.retry_at:
                self._send(origin, home)

    def _send(self, origin: str, home: _Home) -> None:
        batch = plan.split([r.entry for r in home.pending],
                           lambda entry: _size(entry.get("result")))[0]
        home.sending = True
        self.counters.results_sent += len(batch)
        self.d.links.request(origin, self.d.paths["result"],
                             plan.encode_results(batch, self.d.own_load),
                             lambda data: self._delivered(origin, home, batch, data),
                             lambda reason: self._undelivered(origin, home, reason),
                             timeout_s=self.d.timing.request_timeout_s)

    def _delivered(self, origin: str, home: _Home, batch: list[dict[str, Any]],
                   data: bytes) -> None:
        home.sending = False
        try:
            _accepted, stale = plan.decode_accepted(data)
        except mesh.WireError as exc:
            self._undelivered(origin, home, f"malformed answer ({exc})")
            return
        self.counters.results_stale += len(stale)
        if stale:
            log.info("origin %s took %d outcomes as stale", origin[:12], len(stale))
        done = {id(entry) for entry in batch}
        home.pending = [r for r in home.pending if id(r.entry) not in done]
        home.backoff_s = 0.0
        if home.pending:
            self._send(origin, home)
        elif self.homes.get(origin) is home:
            del self.homes[origin]

    def _undelivered(self, origin: str, home: _Home, reason: str) -> None:
        home.sending = False
        self.counters.result_failures += 1
        home.backoff_s = min(MAX_RETRY_S, max(self.d.timing.result_retry_s, home.backoff_s * 2))
        home.retry_at = time.monotonic() + home.backoff_s
        log.info("outcomes for %s not delivered (%s); again in %.1f s", origin[:12], reason,
                 home.backoff_s)

    def _retry(self, now: float) -> None:
        keep_s = self.d.timing.result_keep_s
        for origin, home in list(self.homes.items()):
            if home.sending:
                continue
            expired = [r for r in home.pending if now - r.since > keep_s]
            if expired:
                self.counters.results_given_up += len(expired)
                log.warning("gave up %d outcomes for %s after %.0f s: the origin runs them "
                            "again", len(expired), origin[:12], keep_s)
                home.pending = [r for r in home.pending if now - r.since <= keep_s]
            if not home.pending:
                del self.homes[origin]
            elif now >= home.retry_at:
                self._send(origin, home)

    # --- leases ---------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        self._retry(now)
        if now >= self._next_renew and not self._renewing:
            self._next_renew = now + self._renew_every()
            self._renewing = True
            self.d.exe.ask(protocol.TaskHeld(), protocol.TaskHeldReply, self._held,
                           self._held_failed)

    def _renew_every(self) -> float:
        shortest = min(self.lease_of.values(), default=self.d.timing.lease_s)
        return max(MIN_RENEW_S, min(self.d.timing.renew_s, shortest / 3))

    def _held_failed(self, code: str, text: str) -> None:
        self._renewing = False
        self._next_renew = 0.0 if code == "timeout" else self._next_renew
        log.info("task.held failed: %s: %s", code, text)

    def _held(self, reply: protocol.TaskHeldReply) -> None:
        self._renewing = False
        by_origin: dict[str, list[plan.Pair]] = {}
        for task in reply.tasks:
            origin, task_id, attempt = task.get("origin"), task.get("id"), task.get("attempt")
            if isinstance(origin, str) and isinstance(task_id, str) and type(attempt) is int:
                by_origin.setdefault(origin, []).append((task_id, attempt))
        for origin, home in self.homes.items():
            by_origin.setdefault(origin, []).extend(
                (r.entry["id"], r.entry["attempt"]) for r in home.pending)
        for origin, pairs in by_origin.items():
            self.counters.renewals_sent += 1
            self.d.links.request(origin, self.d.paths["renew"], plan.encode_pairs(pairs),
                                 partial(self._renewed, origin),
                                 partial(self._renew_failed, origin),
                                 timeout_s=self.d.timing.request_timeout_s)

    def _renew_failed(self, origin: str, reason: str) -> None:
        self.counters.renewal_failures += 1
        log.info("renewing leases with %s failed: %s", origin[:12], reason)

    def _renewed(self, origin: str, data: bytes) -> None:
        try:
            _renewed, stale = plan.decode_renewed(data)
        except mesh.WireError as exc:
            log.info("malformed renewal answer from %s: %s", origin[:12], exc)
            return
        if not stale:
            return
        stale_set = set(stale)
        home = self.homes.get(origin)
        if home is not None and not home.sending:
            home.pending = [r for r in home.pending
                            if (r.entry["id"], r.entry["attempt"]) not in stale_set]
        self.counters.dropped += len(stale)
        self.d.exe.ask(protocol.TaskDrop(origin=origin, tasks=[list(p) for p in stale]),
                       protocol.TaskCancelReply, _ignore,
                       lambda code, text: log.info("task.drop failed: %s: %s", code, text))


def _size(value: Any) -> int:
    return len(mesh.pack(value))


def _ignore(_reply: Any) -> None:
    pass
