"""Task delegation across the cluster, the gateway's part: tasks travel from an origin's
executor to a cluster mate's executor through both gateways, and their outcomes come back.

The executors decide everything about tasks (`workers.executor.delegation`): which may go, the
leases, the fencing by attempt, what a node may run. The gateway carries them, over three
Link request paths named after the task channel (bodies in `akita.mesh.delegation`):

Origin side (`OriginSide`, this module)
    Whenever this node has work a peer could take — its executor's load shows tasks only a
    peer can run or more queued than the pool keeps, or a task was just submitted or
    re-queued (the bus says so at once) — each tick it asks its executor, for every cluster
    mate with room in the order of `delegate_plan.rank`, for the tasks that mate may take
    (`task.take`, with the mate's task types and capabilities from its state record, and the
    cluster term) and sends them to it: ``{task_channel}/run``. Tasks the mate refuses, and
    every task of a /run whose Link request fails, go back to the executor at once
    (`task.requeue`, attempt + 1). It serves ``/result`` (`task.delegated_result`) and
    ``/renew`` (`task.renew`) for its mates. A mate that leaves (dropped by liveness, not
    merely restarted) has every task it held for us re-queued at once instead of waiting
    for the leases to lapse; a restarted mate's executor may still hold them, so their
    leases decide. When no mate has room and tasks still wait here, the coordinators of the
    other clusters are asked the same way, the /run marked spill-over (`workers.gateway.spillover`).

Peer side (`workers.gateway.delegate_peer.PeerSide`)
    Serves ``/run`` for members of its own cluster, from the current term (`accepts`), and
    as its cluster's coordinator for spill-over from other clusters (`workers.gateway.spillover`),
    through `task.run_for` (its executor refuses a type this node does not declare, a
    capability it lacks, args that do not fit); relays each pushed outcome to its origin
    (``/result``, retried until taken or stale); renews the leases of what it holds every
    third of a lease (``/renew``) and drops what an origin no longer wants (`task.drop`).

The executor's compact load (`task.stats_reply.load`) goes into this node's state record
under ``task_load`` (at most every `record_s`), and rides on every /run answer and /result
request, so mates see each other's spare capacity. Large args and results travel as
Resources (`links` does it) up to ``[tasks] max_payload_bytes``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from akita import transport
from akita.errors import ProtocolError
from akita.mesh import delegation as plan
from akita.mesh import state as st
from akita.tasks.offer import KEEP_PER_PROCESS
from akita.wire import events, mesh, protocol
from workers.gateway import spillover
from workers.gateway.delegate_peer import PeerSide
from workers.gateway.executor_requests import ExecutorRequests
from workers.gateway.links import DEFER, IncomingRequest, RequestRefused
from workers.gateway.peers import PeerState

log = logging.getLogger(__name__)

HOT_S = 1.0                   # rounds keep running this long after a submit or re-queue
LOAD_FRESH_S = 2.0            # a mate's load from its last answer counts this long
# Our executor's load is read every `own_load_s` while there is work about, and this often
# when the node has been idle for IDLE_AFTER_S: a task queued here or a /run served makes
# the next tick read it again at once.
IDLE_LOAD_S = 5.0
IDLE_AFTER_S = 5.0
PAUSE_S = 1.0                 # a mate whose /run failed is not asked again for this long
REFUSED_TYPE_S = 30.0         # a type a mate said it does not run is not offered it for this
TAKE_REPLY_BYTES = 8 << 20    # what one take reply may carry (below the 16 MiB frame limit)
_TRIGGERS = (events.TaskSubmitted.KIND.encode(), events.TaskRequeued.KIND.encode())


def _own_task_queued(msg: protocol.Message) -> bool:
    """A committed event saying a task of ours was queued (one run here for a peer never
    is offered on); an event that does not decode says nothing."""
    if not isinstance(msg, protocol.LedgerCommitted):
        return False
    try:
        event = events.decode(msg.event_kind, msg.data)
    except ProtocolError:
        return False
    return not isinstance(event, events.TaskSubmitted) or event.origin is None


@dataclass
class OriginCounters:
    rounds: int = 0
    takes: int = 0
    tasks_sent: int = 0
    refused: int = 0
    run_failures: int = 0
    requeued: int = 0
    requeued_peer_left: int = 0
    results: int = 0
    results_stale: int = 0
    renewals: int = 0
    spilled: int = 0      # tasks sent to another cluster's coordinator


@dataclass
class _Out:
    """One of our tasks out on a peer, as this gateway knows it."""

    attempt: int
    renewed_at: float


class OriginSide:
    """Hands this node's tasks to cluster mates and takes back their outcomes."""

    def __init__(self, owner: Delegator) -> None:
        self.d = owner
        self.counters = OriginCounters()
        self.out: dict[str, dict[str, _Out]] = {}
        self.loads: dict[str, tuple[plan.PeerLoad, float]] = {}   # peer → (load, when)
        self.taking: set[str] = set()
        self.hot_until = 0.0
        self.triggered_at = float("-inf")
        # A mate's record may be behind its executor (a type withdrawn): what it refused is
        # not offered to it again for a while, and a mate that failed a /run gets a pause,
        # since every hand-out that comes back costs the task an attempt.
        self.refused_types: dict[tuple[str, str], float] = {}
        self.paused_until: dict[str, float] = {}

    # --- rounds -------------------------------------------------------------------------------

    def trigger(self, now: float) -> None:
        """A task was submitted or re-queued here: offer now, and for a little while."""
        self.hot_until = now + HOT_S
        self.triggered_at = now
        self.round(now, retry_empty=True)

    def tick(self, now: float) -> None:
        own = self.d.own_load
        busy = own is not None and (own.waiting > 0 or
                                    own.queued > KEEP_PER_PROCESS * max(1, own.pool))
        if busy or now < self.hot_until:
            self.round(now)
        self._forget_lapsed(now)

    def round(self, now: float, retry_empty: bool = False) -> None:
        mates = self._candidates(now)
        candidates = [c for c in mates if self.may_ask(c.node_id, now)]
        own = self.d.own_load
        ranked = plan.rank(candidates, self.d.config.tasks.capabilities,
                           own.waiting if own is not None else 0)
        if own is not None and own.queued > KEEP_PER_PROCESS * max(1, own.pool) and \
                plan.saturated(mates):
            ranked += spillover.targets(self.d, self, now)   # the whole cluster is saturated
        if ranked:
            self.counters.rounds += 1
        for candidate in ranked:
            self._take(candidate, plan.room(candidate), retry_empty)

    def _candidates(self, now: float) -> list[plan.Candidate]:
        net = self.d.net
        found = []
        for mate in sorted(net.formation.cluster_mates()):
            peer = net.table.get(mate)
            record = net.sync.store.get(mate)
            if peer is None or peer.state is not PeerState.ALIVE or record is None \
                    or not net.admits_work(mate, now):   # [security] delegate_to
                continue
            found.append(self.candidate(mate, record, float(peer.load.cpu_percent), now))
        return found

    def may_ask(self, node_id: str, now: float) -> bool:
        """`node_id` may be asked to take tasks now: no take for it is out, no pause on it."""
        return node_id not in self.taking and now >= self.paused_until.get(node_id, 0.0)

    def candidate(self, node_id: str, record: st.Record, cpu_percent: float, now: float
                  ) -> plan.Candidate:
        """`node_id` as a delegation candidate: the types and capabilities its state
        `record` offers (less the types it refused lately), its load, what it holds of ours."""
        types = frozenset(name for name in _names(record.get(st.KEY_TASK_TYPES))
                          if now >= self.refused_types.get((node_id, name), 0.0))
        return plan.Candidate(node_id, types, frozenset(_names(record.get(st.KEY_CAPABILITIES))),
                              self._load_of(node_id, record), len(self.out.get(node_id, ())),
                              cpu_percent)

    def _load_of(self, mate: str, record: st.Record) -> plan.PeerLoad:
        """The mate's latest direct report while fresh, else what its state record says."""
        direct = self.loads.get(mate)
        if direct is not None and time.monotonic() - direct[1] < LOAD_FRESH_S:
            return direct[0]
        return plan.parse_load(record.get(st.KEY_TASK_LOAD)) or plan.PeerLoad()

    def note_load(self, peer: str, load: plan.PeerLoad | None) -> None:
        if load is not None:
            self.loads[peer] = (load, time.monotonic())

    def _take(self, candidate: plan.Candidate, count: int, retry_empty: bool = False) -> None:
        """Ask the executor for up to `count` tasks for `candidate`, and send them to it.

        A trigger can race the take it causes (the bus may bring the submit before the
        executor has queued the task) or arrive while a take is out (and the mate is skipped):
        a take that came back empty although a trigger sent it (`retry_empty`), or during
        which a trigger arrived, is asked once more."""
        max_tasks = min(count, plan.MAX_TAKE,
                        max(1, TAKE_REPLY_BYTES // self.d.config.tasks.max_payload_bytes))
        peer = candidate.node_id
        self.taking.add(peer)
        self.counters.takes += 1
        term = self.d.net.formation.local.term
        msg = protocol.TaskTake(peer=peer, types=sorted(candidate.types),
                                capabilities=sorted(candidate.capabilities),
                                max_tasks=max_tasks, lease_s=self.d.timing.lease_s, term=term)

        def failed(code: str, text: str) -> None:
            self.taking.discard(peer)
            log.warning("task.take for %s failed: %s: %s", peer[:12], code, text)

        issued_at = time.monotonic()

        def taken(reply: protocol.TaskTakeReply) -> None:
            self.taking.discard(peer)
            if reply.tasks:
                self._send(peer, term, reply.tasks)
            if self.triggered_at > issued_at or (retry_empty and not reply.tasks):
                self._take_again(peer)

        self.d.exe.ask(msg, protocol.TaskTakeReply, taken, failed)

    def _take_again(self, peer: str) -> None:
        now = time.monotonic()
        for candidate in self._candidates(now):
            if candidate.node_id == peer and plan.room(candidate) > 0 and \
                    peer not in self.taking:
                self._take(candidate, plan.room(candidate))

    def _send(self, peer: str, term: int, specs: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        held = self.out.setdefault(peer, {})
        for spec in specs:
            held[spec["id"]] = _Out(spec["attempt"], now)
        self.counters.tasks_sent += len(specs)
        spill = spillover.is_spill(self.d, peer)
        if spill:
            self.counters.spilled += len(specs)
        for batch in plan.split(specs, lambda spec: _payload_size(spec.get("args"))):
            self.d.links.request(
                peer, self.d.paths["run"],
                plan.encode_run(term, self.d.timing.lease_s, batch, spill),
                lambda data, b=batch: self._run_answered(peer, b, data),
                lambda reason, b=batch: self._run_failed(peer, b, reason),
                timeout_s=self.d.timing.request_timeout_s)

    def _run_answered(self, peer: str, batch: list[dict[str, Any]], data: bytes) -> None:
        try:
            answer = plan.decode_run_response(data, len(batch))
        except mesh.WireError as exc:
            self._run_failed(peer, batch, f"malformed answer ({exc})")
            return
        self.note_load(peer, answer.load)
        refused = {index: f"{code}: {text}" for index, code, text in answer.errors}
        missing = [i for i, task_id in enumerate(answer.ids) if task_id is None]
        for index in missing:
            reason = refused.get(index, "no id and no reason")
            spec = batch[index]
            self.counters.refused += 1
            if reason.startswith("unknown_task"):
                self.refused_types[(peer, spec["name"])] = time.monotonic() + REFUSED_TYPE_S
            log.info("peer %s refused task %s (%s): %s", peer[:12], spec["id"], spec["name"],
                     reason)
            self.requeue(peer, [(spec["id"], spec["attempt"])], f"peer {peer} refused it: "
                         f"{reason}")

    def _run_failed(self, peer: str, batch: list[dict[str, Any]], reason: str) -> None:
        self.counters.run_failures += 1
        self.paused_until[peer] = time.monotonic() + PAUSE_S
        log.info("handing %d tasks to %s failed: %s", len(batch), peer[:12], reason)
        self.requeue(peer, [(spec["id"], spec["attempt"]) for spec in batch],
                     f"the Link to peer {peer} failed: {reason}")

    def requeue(self, peer: str, pairs: list[plan.Pair], reason: str) -> None:
        """Give these delegations back to the executor now (attempt + 1, or failed)."""
        held = self.out.get(peer, {})
        for task_id, _attempt in pairs:
            held.pop(task_id, None)
        self.counters.requeued += len(pairs)
        self.d.exe.ask(protocol.TaskRequeue(tasks=[list(p) for p in pairs], reason=reason),
                       protocol.TaskRequeueReply, _ignore,
                       lambda code, text: log.warning("task.requeue failed: %s: %s", code, text))

    # --- what peers send back -------------------------------------------------------------------

    def serve_result(self, request: IncomingRequest) -> Any:
        peer = _requester(request)
        try:
            body = plan.decode_results(request.data, self.d.body_limit)
        except mesh.WireError as exc:
            raise RequestRefused(f"malformed results: {exc}") from None
        self.d.net.table.heard(peer, time.monotonic())
        self.counters.results += len(body.results)

        def answered(reply: protocol.TaskDelegatedResultReply) -> None:
            held = self.out.get(peer, {})
            for task_id in (*reply.accepted, *reply.stale):
                held.pop(task_id, None)
            self.counters.results_stale += len(reply.stale)
            self.note_load(peer, body.load)
            request.respond(plan.encode_outcome(reply.accepted, reply.stale, "accepted"))
            self.round(time.monotonic())   # room freed there

        self.d.exe.ask(protocol.TaskDelegatedResult(peer=peer, results=body.results),
                       protocol.TaskDelegatedResultReply, answered,
                       lambda code, text: request.fail(f"{code}: {text}"))
        return DEFER

    def serve_renew(self, request: IncomingRequest) -> Any:
        peer = _requester(request)
        try:
            pairs = plan.decode_pairs(request.data)
        except mesh.WireError as exc:
            raise RequestRefused(f"malformed renewal: {exc}") from None
        self.d.net.table.heard(peer, time.monotonic())
        self.counters.renewals += 1

        def answered(reply: protocol.TaskRenewReply) -> None:
            now, held = time.monotonic(), self.out.get(peer, {})
            stale = {pair[0] for pair in reply.stale if pair}
            for task_id, _attempt in pairs:
                if task_id in stale:
                    held.pop(task_id, None)
                elif task_id in held:
                    held[task_id].renewed_at = now
            request.respond(plan.encode_outcome(reply.renewed, reply.stale, "renewed"))

        self.d.exe.ask(protocol.TaskRenew(peer=peer, tasks=[list(p) for p in pairs]),
                       protocol.TaskRenewReply, answered,
                       lambda code, text: request.fail(f"{code}: {text}"))
        return DEFER

    # --- peers that go ----------------------------------------------------------------------------

    def peer_left(self, peer: str) -> None:
        self.loads.pop(peer, None)
        self.paused_until.pop(peer, None)
        for key in [key for key in self.refused_types if key[0] == peer]:
            del self.refused_types[key]
        if peer in self.d.net.table:
            return  # it restarted: its executor may still hold our tasks; the leases decide
        held = self.out.pop(peer, {})
        if held:
            log.info("peer %s left holding %d of our tasks: re-queued", peer[:12], len(held))
            self.counters.requeued_peer_left += len(held)
            self.requeue(peer, [(task_id, out.attempt) for task_id, out in held.items()],
                         f"peer {peer} left")

    def _forget_lapsed(self, now: float) -> None:
        """Our record of tasks whose lease the executor has let lapse by now (no renewal for
        longer than a lease): they no longer count against the peer's room."""
        limit = self.d.timing.lease_s * 1.5
        for peer, held in list(self.out.items()):
            for task_id in [t for t, out in held.items() if now - out.renewed_at > limit]:
                del held[task_id]
            if not held:
                del self.out[peer]

    def outstanding(self) -> dict[str, int]:
        return {peer[:12]: len(held) for peer, held in self.out.items() if held}


class Delegator:
    """Delegation on the gateway's loop: wires `OriginSide` and `PeerSide` to the executor,
    the bus, the Links and the peer events. Driven by `tick()`; readers from `readers()`."""

    def __init__(self, net: Any, ctx: zmq.Context, run_dir: Path,
                 timing: plan.DelegationTiming | None = None) -> None:
        """`net`: the gateway's `NetNode`."""
        self.net = net
        self.config = net.config
        self.links = net.links
        self.node_id: str = net.node_id
        self.timing = timing or plan.DelegationTiming.from_config(self.config)
        self.body_limit = plan.body_limit(self.config.tasks.max_payload_bytes)
        channel = self.config.channels.task_channel
        self.paths = {verb: f"{channel}/{verb}" for verb in ("run", "result", "renew")}
        self.own_load: plan.PeerLoad | None = None
        self._recorded: dict[str, int] | None = None
        self._recorded_at = float("-inf")
        self._next_stats = 0.0
        self._last_work = float("-inf")
        self.exe = ExecutorRequests(ctx, run_dir, self._pushed)
        self.bus = transport.make_socket(ctx, zmq.SUB, hwm=10_000)
        for topic in _TRIGGERS:
            self.bus.setsockopt(zmq.SUBSCRIBE, topic)
        self.bus.connect(transport.endpoint(run_dir, transport.BUS_OUT))
        self.origin = OriginSide(self)
        self.peer = PeerSide(self)
        self.links.serve(self.paths["run"], self.peer.serve_run)
        self.links.serve(self.paths["result"], self.origin.serve_result)
        self.links.serve(self.paths["renew"], self.origin.serve_renew)
        net.peer_left_hooks.append(self.origin.peer_left)

    def readers(self) -> list[tuple[zmq.Socket, Any]]:
        return [(self.exe.sock, self.exe.on_readable), (self.bus, self._on_bus)]

    def tick(self, now: float) -> None:
        self.exe.tick(now)
        if now >= self._next_stats:
            self._next_stats = now + (IDLE_LOAD_S if self._idle(now) else self.timing.own_load_s)
            self.exe.ask(protocol.TaskStats(), protocol.TaskStatsReply, self._own_stats,
                         _ignore_error)
        self.origin.tick(now)
        self.peer.tick(now)

    # --- own executor -----------------------------------------------------------------------------

    def _own_stats(self, reply: protocol.TaskStatsReply) -> None:
        self.own_load = plan.parse_load(reply.load)
        if self.own_load is None:
            return
        packed = self.own_load.pack()
        now = time.monotonic()
        if packed != self._recorded and (self._recorded is None or
                                         now - self._recorded_at >= self.timing.record_s):
            self._recorded, self._recorded_at = packed, now
            self.net.update_own({st.KEY_TASK_LOAD: packed})

    def _pushed(self, outcomes: list[dict[str, Any]]) -> None:
        self.peer.outcomes(outcomes)

    def note_work(self, now: float) -> None:
        """Work came to our executor: read its load at the next tick, and often for a while."""
        self._last_work = now
        self._next_stats = min(self._next_stats, now)

    def _idle(self, now: float) -> bool:
        load = self.own_load
        return (load is not None and not (load.queued or load.running or load.held
                                          or load.waiting)
                and not self.origin.out and not self.origin.taking
                and now - self._last_work >= IDLE_AFTER_S)

    def _on_bus(self) -> None:
        messages, _bad = transport.drain_bus(self.bus)
        # A task run here for a peer is never offered on: only our own ones count.
        if any(_own_task_queued(msg) for msg in messages):
            now = time.monotonic()
            self.note_work(now)
            self.origin.trigger(now)

    # --- the operator's view ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {"origin": vars(self.origin.counters).copy(),
                "peer": vars(self.peer.counters).copy(),
                "spill": {"accepted": self.peer.admission.spill_accepted,
                          "refused": self.peer.admission.spill_refused},
                "outstanding": self.origin.outstanding(),
                "own_load": self.own_load.pack() if self.own_load is not None else None,
                "lease_s": self.timing.lease_s, "executor_timeouts": self.exe.timeouts}

    def close(self) -> None:
        self.exe.close()
        self.bus.close(linger=0)


def _requester(request: IncomingRequest) -> str:
    if request.peer_id is None:
        raise RequestRefused("identify first")
    return request.peer_id


def _names(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _payload_size(value: Any) -> int:
    return len(mesh.pack(value))


def _ignore(_reply: Any) -> None:
    pass


def _ignore_error(_code: str, _text: str) -> None:
    pass
