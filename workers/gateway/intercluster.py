"""Inter-cluster messages: send to another cluster, have its coordinator hand the message to
the members that want it, and learn end to end that they got it.

Route. The sending node's gateway sends straight to the target cluster's coordinator over a
Link (path ``{inter_cluster_channel}/send``). Every node hears every announce, so every
node computes the same assignment, with every cluster's coordinator, and can reach it;
relaying through the sender's own coordinator would add a hop and a second point of
failure without adding knowledge. A node that is itself the target coordinator routes
without a Link.

Subscriptions. Local subscribers (`akitactl subscribe`, `Client.subscribe`) hold a topic
prefix under a lease they renew (`message.subscribe`); the node advertises the distinct
prefixes in its own state record under the reserved key ``subscriptions``. State records
reach the cluster's coordinator by state sync, so the coordinator delivers only to members
whose record matches the topic (path ``{inter_cluster_channel}/deliver``), and a member
refuses deliveries from anyone but its current coordinator.

Acknowledgement. The coordinator answers the sender once every subscribed member answered
(or its share of the sender's wait ran out): {delivered, failed}. The message is done when
nothing failed; otherwise, and whenever the route is down (no coordinator known, the Link
fails, the coordinator refuses because it no longer coordinates, or it died and no new one
is known yet), the sender tries again after an exponential backoff, until the deadline,
then reports it undeliverable with the last reason. Each attempt waits at most
`attempt_s` (a quarter of peer_timeout, at least 1 s), so a dead coordinator costs one
attempt, not the whole deadline.

Exactly once per subscriber. A message carries an id; each member remembers (sender, id)
for longer than any deadline (`messaging.DedupWindow`) and answers a repeat as delivered
without publishing it again, so retries and a client's resend never reach a subscriber
twice. The window is in memory: a member whose gateway restarts between two tries of the
same message may publish it twice.

On a receiving node the message goes on the bus under topic ``message.TOPIC`` as
`protocol.MessageReceived`. The ledger gets one compact event per step (no payload):
``intercluster.sent|delivered|failed`` on the sender, ``intercluster.routed`` on the
coordinator, ``intercluster.received`` on each member.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from akita.mesh import messaging as msgs
from akita.mesh import state as st
from akita.wire import events, mesh, protocol
from workers.gateway.links import DEFER, IncomingRequest, RequestRefused
from workers.gateway.node import NetNode

log = logging.getLogger(__name__)

MAX_DEADLINE_S = 3600.0
DEDUP_WINDOW_S = MAX_DEADLINE_S + 60.0
MIN_ATTEMPT_S = 1.0
MEMBER_SHARE = 0.6        # of the sender's wait, what the coordinator gives its members
LATE_GRACE_S = 0.5        # an attempt still open at the deadline gets this much longer
ATTEMPT_GRACE_S = 0.2     # past its wait, an attempt Reticulum has not failed yet is over
MIN_LEASE_S, MAX_LEASE_S = 1.0, 3600.0
MAX_OUTBOX = 10_000       # messages of this node on their way at once

Reply = Callable[[protocol.Message], None]
OutcomeCallback = Callable[[msgs.Outcome], None]
FailCallback = Callable[[str], None]


@dataclass
class Counters:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    attempts: int = 0
    routed: int = 0
    received: int = 0
    duplicates: int = 0
    refused: int = 0


@dataclass
class _Outgoing:
    """A message this node sends, until it is delivered or its deadline passes."""

    body: msgs.SendBody
    deadline: float
    replies: list[Reply]
    backoff: msgs.Backoff = field(default_factory=msgs.Backoff)
    attempts: int = 0
    in_flight: bool = False
    attempt_ends: float = 0.0      # our own bound on the attempt in flight
    coordinator: str = ""          # where the attempt in flight went
    next_try: float = 0.0
    reason: str = "not tried yet"


@dataclass
class _Fanout:
    """A message this coordinator is handing to its cluster's subscribers."""

    body: msgs.DeliverBody
    waiting: set[str]
    callbacks: list[tuple[OutcomeCallback, FailCallback]]
    delivered: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


class InterCluster:
    """The gateway's inter-cluster messaging; every method runs on the gateway's loop."""

    def __init__(self, net: NetNode, publish: Callable[[str, protocol.Message], None],
                 record: Callable[..., None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        config = net.config
        self.net = net
        self.clock = clock
        self.publish = publish
        self.record = record
        self.max_payload_bytes = config.cluster.max_message_bytes
        self.default_deadline_s = config.cluster.message_deadline
        self.attempt_s = max(MIN_ATTEMPT_S, config.cluster.peer_timeout / 4)
        channel = config.channels.inter_cluster_channel
        self.send_path = f"{channel}/send"
        self.deliver_path = f"{channel}/deliver"
        self.counters = Counters()
        self.subscriptions = msgs.Subscriptions()
        self.dedup = msgs.DedupWindow(DEDUP_WINDOW_S)
        self._outbox: dict[str, _Outgoing] = {}
        self._fanouts: dict[tuple[str, str], _Fanout] = {}
        net.links.serve(self.send_path, self._serve_send)
        net.links.serve(self.deliver_path, self._serve_deliver)
        # A restarted gateway has no subscribers until they renew: advertise none meanwhile.
        net.update_own({st.KEY_SUBSCRIPTIONS: []})

    @property
    def node_id(self) -> str:
        return self.net.node_id

    # --- local requests -------------------------------------------------------------------

    def handle(self, msg: protocol.Message, reply: Reply) -> protocol.Message | None:
        """message.send / subscribe / unsubscribe: a reply now, or None (answered later)."""
        try:
            if isinstance(msg, protocol.MessageSend):
                return self._send(msg, reply)
            if isinstance(msg, protocol.MessageSubscribe):
                return self._subscribe(msg)
            if isinstance(msg, protocol.MessageUnsubscribe):
                self.subscriptions.remove(msg.subscriber, msg.prefix)
                self._advertise()
                return protocol.Ok()
        except msgs.PayloadTooLarge as exc:
            return protocol.Error(code="too_large", message=str(exc))
        except msgs.MessageError as exc:
            return protocol.Error(code="bad_request", message=str(exc))
        return protocol.Error(code="unknown_request", message=f"not a message verb: {msg.KIND}")

    def _send(self, msg: protocol.MessageSend, reply: Reply) -> protocol.Message | None:
        message_id = msgs.check_id(msg.id) if msg.id else msgs.new_id()
        msgs.check_topic(msg.topic)
        if not isinstance(msg.cluster, str) or not msg.cluster:
            raise msgs.MessageError("cluster: expected a cluster id")
        deadline_s = msg.deadline_s or self.default_deadline_s
        if not 0 < deadline_s <= MAX_DEADLINE_S:
            raise msgs.MessageError(f"deadline_s: expected more than 0 and at most "
                                    f"{MAX_DEADLINE_S:g} s, got {deadline_s:g}")
        size = msgs.payload_size(msg.payload, self.max_payload_bytes)
        pending = self._outbox.get(message_id)
        if pending is not None:  # a resend while the first is still on its way
            if pending.body.to != msg.cluster or pending.body.topic != msg.topic:
                raise msgs.MessageError(f"message id {message_id} is in use by another message")
            pending.replies.append(reply)
            return None
        if len(self._outbox) >= MAX_OUTBOX:
            return protocol.Error(code="busy", message=f"{MAX_OUTBOX} messages are already "
                                  f"on their way; try again later")
        body = msgs.SendBody(message_id, msg.topic, msg.payload, msg.cluster,
                             self.net.formation.cluster_of(self.node_id), 0.0)
        now = self.clock()
        self._outbox[message_id] = _Outgoing(body, now + deadline_s, [reply], next_try=now)
        self.counters.sent += 1
        self.record(*events.InterclusterSent(id=message_id, to=msg.cluster, topic=msg.topic,
                                             bytes=size).entry())
        self._attempt(self._outbox[message_id], now)
        return None

    def _subscribe(self, msg: protocol.MessageSubscribe) -> protocol.Message:
        if not isinstance(msg.subscriber, str) or not 1 <= len(msg.subscriber) <= 64:
            raise msgs.MessageError("subscriber: expected 1 to 64 characters")
        if not MIN_LEASE_S <= msg.lease_s <= MAX_LEASE_S:
            raise msgs.MessageError(f"lease_s: expected {MIN_LEASE_S:g} to {MAX_LEASE_S:g} s")
        self.subscriptions.add(msg.subscriber, msg.prefix, self.clock() + msg.lease_s)
        self._advertise()
        return protocol.Ok()

    def _advertise(self) -> None:
        self.net.update_own({st.KEY_SUBSCRIPTIONS: self.subscriptions.prefixes()})

    # --- the timer ------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        before = self.subscriptions.prefixes()
        self.subscriptions.expire(now)
        if self.subscriptions.prefixes() != before:
            self._advertise()
        for out in list(self._outbox.values()):
            if now >= out.deadline and (not out.in_flight or now >= out.deadline + LATE_GRACE_S):
                self._give_up(out)
            elif out.in_flight and now >= out.attempt_ends + ATTEMPT_GRACE_S:
                # Reticulum notices a lost request late when the host is busy; do not let
                # one silent try eat the time left for the next.
                self._retry_later(out, out.attempts, f"no answer from coordinator "
                                  f"{out.coordinator} in time")
            elif not out.in_flight and now >= out.next_try:
                self._attempt(out, now)

    # --- sending --------------------------------------------------------------------------

    def _attempt(self, out: _Outgoing, now: float) -> None:
        out.attempts += 1
        self.counters.attempts += 1
        attempt = out.attempts
        out.in_flight = True
        coordinator, why = self._coordinator_of(out.body.to)
        if coordinator is None:
            self._retry_later(out, attempt, why)
            return
        wait_s = max(msgs.MIN_WAIT_S, min(self.attempt_s, out.deadline - now))
        body = msgs.SendBody(out.body.id, out.body.topic, out.body.payload, out.body.to,
                             self.net.formation.cluster_of(self.node_id), wait_s)
        out.attempt_ends = now + wait_s
        out.coordinator = coordinator

        def answered(outcome: msgs.Outcome) -> None:
            self._answered(out, attempt, outcome)

        def failed(reason: str) -> None:
            self._retry_later(out, attempt, reason)

        if coordinator == self.node_id:
            self._fan_out(body, self.node_id, answered, failed)
            return

        def response(data: bytes) -> None:
            try:
                outcome = msgs.decode_outcome(data)
            except mesh.WireError as exc:
                failed(f"malformed answer from coordinator {coordinator}: {exc}")
                return
            answered(outcome)

        self.net.links.request(coordinator, self.send_path, body.encode(), response, failed,
                               timeout_s=wait_s)

    def _coordinator_of(self, cluster_id: str) -> tuple[str | None, str]:
        assignment = self.net.formation.assignment
        if assignment is None:
            return None, "no clusters formed yet"
        try:
            return assignment.cluster(cluster_id).coordinator, ""
        except KeyError:
            return None, f"no cluster {cluster_id} known (nor its coordinator)"

    def _answered(self, out: _Outgoing, attempt: int, outcome: msgs.Outcome) -> None:
        if self._outbox.get(out.body.id) is not out or attempt != out.attempts:
            return  # settled already, or an answer to an earlier attempt
        if outcome.failed:
            missing = ", ".join(f"{node}: {why}" for node, why in outcome.failed)
            self._retry_later(out, attempt, f"coordinator {outcome.coordinator} reached "
                              f"{len(outcome.delivered)} of "
                              f"{len(outcome.delivered) + len(outcome.failed)} subscribers "
                              f"({missing})")
            return
        del self._outbox[out.body.id]
        self.counters.delivered += 1
        self.record(*events.InterclusterDelivered(
            id=out.body.id, to=out.body.to, subscribers=len(outcome.delivered),
            attempts=out.attempts).entry())
        done = protocol.MessageDelivered(id=out.body.id, cluster=out.body.to,
                                         coordinator=outcome.coordinator,
                                         delivered=sorted(outcome.delivered),
                                         attempts=out.attempts)
        for reply in out.replies:
            reply(done)

    def _retry_later(self, out: _Outgoing, attempt: int, reason: str) -> None:
        if (self._outbox.get(out.body.id) is not out or attempt != out.attempts
                or not out.in_flight):
            return  # settled, superseded, or already given up on by our own timer
        out.in_flight = False
        out.reason = reason
        out.next_try = self.clock() + out.backoff.next_delay()
        log.debug("message %s to cluster %s, attempt %d: %s", out.body.id, out.body.to,
                  attempt, reason)

    def _give_up(self, out: _Outgoing) -> None:
        del self._outbox[out.body.id]
        self.counters.failed += 1
        reason = (f"not delivered to cluster {out.body.to} within the deadline "
                  f"({out.attempts} attempt{'s' if out.attempts != 1 else ''}); "
                  f"last: {out.reason}")
        log.info("message %s: %s", out.body.id, reason)
        self.record(*events.InterclusterFailed(id=out.body.id, to=out.body.to,
                                               attempts=out.attempts, reason=out.reason).entry())
        for reply in out.replies:
            reply(protocol.Error(code="undeliverable", message=reason))

    # --- coordinating -----------------------------------------------------------------------

    def _serve_send(self, request: IncomingRequest) -> Any:
        sender = request.peer_id
        if sender is None:
            raise RequestRefused("identify first")
        try:
            body = msgs.decode_send(request.data, self.max_payload_bytes)
        except mesh.WireError as exc:
            self.counters.refused += 1
            raise RequestRefused(f"malformed message: {exc}") from None
        self._fan_out(body, sender, lambda outcome: request.respond(outcome.encode()),
                      request.fail)
        return DEFER

    def _fan_out(self, body: msgs.SendBody, sender: str, on_outcome: OutcomeCallback,
                 on_failure: FailCallback) -> None:
        """As coordinator of `body.to`: deliver to its subscribed members, then answer."""
        own = self.net.formation.own_cluster()
        if own is None or own.id != body.to or own.coordinator != self.node_id:
            self.counters.refused += 1
            on_failure(f"{self.node_id} is not the coordinator of cluster {body.to}")
            return
        key = (sender, body.id)
        running = self._fanouts.get(key)
        if running is not None:  # a retry while the first try is still being delivered
            running.callbacks.append((on_outcome, on_failure))
            return
        from_cluster = self.net.formation.cluster_of(sender) or body.from_cluster
        deliver = msgs.DeliverBody(body.id, body.topic, body.payload, sender, from_cluster)
        targets = self._subscribed(own.members, body.topic)
        fanout = _Fanout(deliver, set(targets), [(on_outcome, on_failure)])
        self._fanouts[key] = fanout
        member_wait_s = max(msgs.MIN_WAIT_S, body.wait_s * MEMBER_SHARE)
        for member in targets:
            if member == self.node_id:
                self._deliver_here(deliver)
                self._member_done(key, member, None)
            else:
                self._ask_member(key, member, deliver, member_wait_s)
        if not targets:
            self._finish(key)

    def _ask_member(self, key: tuple[str, str], member: str, deliver: msgs.DeliverBody,
                    wait_s: float) -> None:
        def acknowledged(_data: bytes) -> None:
            self._member_done(key, member, None)

        def failed(reason: str) -> None:
            self._member_done(key, member, reason)

        self.net.links.request(member, self.deliver_path, deliver.encode(), acknowledged,
                               failed, timeout_s=wait_s)

    def _subscribed(self, members: tuple[str, ...], topic: str) -> list[str]:
        """The live members (this node included) whose state advertises `topic`."""
        alive = self.net.table.alive_ids() | {self.node_id}
        wanted = []
        for member in members:
            record = self.net.sync.store.get(member)
            prefixes = record.get(st.KEY_SUBSCRIPTIONS) if record is not None else None
            if member in alive and isinstance(prefixes, list) and msgs.matches(
                    [p for p in prefixes if isinstance(p, str)], topic):
                wanted.append(member)
        return wanted

    def _member_done(self, key: tuple[str, str], member: str, failure: str | None) -> None:
        fanout = self._fanouts.get(key)
        if fanout is None or member not in fanout.waiting:
            return
        fanout.waiting.discard(member)
        if failure is None:
            fanout.delivered.append(member)
        else:
            fanout.failed.append((member, failure))
        if not fanout.waiting:
            self._finish(key)

    def _finish(self, key: tuple[str, str]) -> None:
        fanout = self._fanouts.pop(key)
        self.counters.routed += 1
        self.record(*events.InterclusterRouted(
            id=fanout.body.id, from_=fanout.body.sender, topic=fanout.body.topic,
            delivered=len(fanout.delivered), failed=len(fanout.failed)).entry())
        outcome = msgs.Outcome(tuple(fanout.delivered), tuple(fanout.failed), self.node_id,
                               self.net.formation.local.term)
        for on_outcome, _on_failure in fanout.callbacks:
            on_outcome(outcome)

    # --- receiving ----------------------------------------------------------------------------

    def _serve_deliver(self, request: IncomingRequest) -> bytes:
        own = self.net.formation.own_cluster()
        if own is None or request.peer_id is None or own.coordinator != request.peer_id:
            self.counters.refused += 1
            raise RequestRefused(f"{request.peer_id} is not this node's coordinator")
        try:
            body = msgs.decode_deliver(request.data, self.max_payload_bytes)
        except mesh.WireError as exc:
            self.counters.refused += 1
            raise RequestRefused(f"malformed message: {exc}") from None
        self._deliver_here(body)
        return b""

    def _deliver_here(self, body: msgs.DeliverBody) -> None:
        """Publish on this node's bus, once per (sender, id) within the dedup window."""
        if not self.dedup.first_time((body.sender, body.id), self.clock()):
            self.counters.duplicates += 1
            return
        self.counters.received += 1
        self.publish(f"message.{body.topic}", protocol.MessageReceived(
            id=body.id, sender=body.sender, cluster=body.from_cluster, topic=body.topic,
            payload=body.payload))
        self.record(*events.InterclusterReceived(id=body.id, from_=body.sender,
                                                 topic=body.topic).entry())

    # --- the operator's view ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {**vars(self.counters), "outbox": len(self._outbox),
                "fanouts": len(self._fanouts), "subscriptions": self.subscriptions.prefixes(),
                "dedup_entries": len(self.dedup)}
