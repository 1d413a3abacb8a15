"""Ledger replication across the cluster: anti-entropy over Links between cluster mates.

Every node holds a copy of the feed of each member of its cluster. The ledger worker does
the ledger side (`workers.ledger.replicas`: heads, self-verifying ranges, verified ingest);
this module carries the bytes between nodes, on the gateway's loop:

- Heads exchange (``{ledger_channel}/heads``): a node sends a mate its heads for the feeds of
  its cluster's members and gets the mate's back. Each side then pulls what it lacks from
  the other — the requester from the response, the responder from the request — so one
  round trip repairs both directions. A node exchanges with each live mate when the mate
  joins or the clusters change; when a feed it speaks for moved since it last told that
  mate and the mate lacks it (its own feed, so a new event reaches the mates within a
  round; and a member's whose author is not a live mate any more); and when neither side
  of the pair exchanged for `refresh_s`. Events a node pulled from their author are not
  passed on (the author tells every mate itself; the refresh repairs what it missed): on a
  radio one new event costs one exchange per mate, and an idle cluster sends only the
  refresh.
- Pull (``{ledger_channel}/range``): the next missing range of one feed
  (`replicate_plan.next_pull`); the serving mate asks its ledger worker for a bundle that
  fits the Link (`replicate_plan.bundle_budget` of the link MDU; a larger one, such as the
  first signed piece of a copy, rides as a Resource), and the puller hands it to its own
  ledger worker (`ledger.ingest`) with the mate's authenticated node id as sender. It pages
  on while the mate holds more.

Rules: only feeds whose author is a member of our cluster are pulled (a peer cannot fill our
disk with arbitrary valid feeds); never our own, never a forked one; one request in flight
per mate, and one mate at a time sending any one feed; a pull that brings nothing new stops
until the mate's head moves. Failures are retried `max_retries` times with a doubling delay,
then left to the next refresh. A mate that sent a forged or malformed bundle (refused, and
recorded by the ledger writer) is not pulled from for `quarantine_s`.

Where the airtime budget binds (radio), each exchange and each range pull this node starts
waits for its airtime bucket (`net.pacer`, `akita.mesh.pacing`): the start-up catch-up
between mates is spread over the first intervals instead of saturating the channel; an
exchange or pull that waits stays due and goes when the bucket allows, after any state
pull or push that waits for it. A range response is paid by the node that sends it (its
transmitter's duty cycle, however many mates pull from it): one its bucket cannot pay is
answered `plan.BUSY`, and the asker asks again a round later without counting a failure.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from akita.config import Config
from akita.ledger import bundles
from akita.ledger.bundles import Head, Outcome
from akita.mesh import budget
from akita.mesh import replication as plan
from akita.wire import mesh, protocol
from workers.gateway.ledger_requests import LedgerRequests
from workers.gateway.links import DEFER, IncomingRequest, RequestRefused

log = logging.getLogger(__name__)

_REFUSED = (Outcome.FORGERY, Outcome.MALFORMED)
# A mate asks one thing at a time (see `MateSync.busy`); more in flight at once is a flood,
# refused before it reaches the ledger worker.
MAX_SERVING_PER_MATE = 4
RANGE_REQUEST_BYTES = 120     # a range request on a link, as the airtime bucket counts it


@dataclass(frozen=True)
class ReplicationTiming:
    round_s: float            # how often the own heads are read and changes told to mates
    refresh_s: float          # a full exchange with every mate at least this often
    request_timeout_s: float  # a heads request; a range request gets twice this
    retry_s: float            # first delay after a failure, doubling
    max_retries: int
    quarantine_s: float       # no pulls from a mate that sent a forgery, for this long

    @classmethod
    def from_config(cls, config: Config) -> ReplicationTiming:
        """Timers follow the announce interval: seconds on a LAN, minutes on radio."""
        cl = config.cluster
        round_s = max(1.0, cl.announce_interval)
        return cls(round_s=round_s, refresh_s=6 * round_s,
                   request_timeout_s=max(5.0, cl.peer_timeout), retry_s=round_s,
                   max_retries=3, quarantine_s=max(60.0, 6 * round_s))


@dataclass
class ReplicationCounters:
    exchanges: int = 0          # heads requests sent
    heads_served: int = 0
    ranges_served: int = 0
    pulls: int = 0              # range requests sent
    bundles_stored: int = 0
    events_stored: int = 0
    duplicates: int = 0
    stalled: int = 0            # pulls that brought nothing new
    refused: int = 0            # forged or malformed bundles (recorded by the ledger writer)
    forks: int = 0
    failures: int = 0           # link or ledger failures
    busy: int = 0               # range requests a mate refused: its airtime budget was spent
    busy_refusals: int = 0      # range requests we refused: our airtime budget was spent
    refused_requests: int = 0   # requests from non-mates or malformed
    bytes_sent: int = 0         # request and response bodies this node sent
    bytes_received: int = 0     # request and response bodies this node received


@dataclass
class MateSync:
    """Where replication with one cluster mate stands."""

    peer: str
    theirs: dict[str, Head] | None = None   # its member heads, as last heard
    busy: str = ""                          # "", "heads", "range" or "ingest"
    feed: str = ""                          # the feed being pulled
    told: dict[str, Head] | None = None     # our member heads as last sent to it
    last_exchange: float = float("-inf")    # either way: ours asked or its request answered
    due: bool = True                        # exchange on the next round, whatever changed
    failures: int = 0
    retry_at: float = 0.0
    quarantined_until: float = 0.0
    stalled: dict[str, Head] = field(default_factory=dict)
    want_key: set[str] = field(default_factory=set)
    pull_at: float = 0.0                    # a pull waits for the airtime bucket until then


class Replicator:
    """Keeps this node's copies of its cluster mates' feeds up to date, and serves its own."""

    def __init__(self, net: Any, ledger: LedgerRequests, timing: ReplicationTiming) -> None:
        """`net`: the gateway's `NetNode` (links, formation, peer table, hooks)."""
        self.net = net
        self.links = net.links
        self.ledger = ledger
        self.timing = timing
        self.node_id: str = net.node_id
        channel = net.config.channels.ledger_channel
        self.heads_path = f"{channel}/heads"
        self.range_path = f"{channel}/range"
        self.mine: dict[str, Head] = {}
        self.forked: set[str] = set()
        self.mates: dict[str, MateSync] = {}
        self.sending: dict[str, str] = {}     # feed → the mate it is being pulled from
        self._serving: Counter[str] = Counter()  # mate → its requests we are answering
        self.counters = ReplicationCounters()
        self._next_round = 0.0
        self._reading_heads = False
        self.links.serve(self.heads_path, self._serve_heads)
        self.links.serve(self.range_path, self._serve_range)
        net.peer_joined_hooks.append(self._peer_changed)
        net.peer_left_hooks.append(self._peer_left)
        net.cluster_hooks.append(self._clusters_changed)

    # --- membership -------------------------------------------------------------------------

    def members(self) -> set[str]:
        own = self.net.formation.own_cluster()
        return set(own.members) if own is not None else {self.node_id}

    def live_mates(self) -> set[str]:
        return set(self.net.formation.cluster_mates()) & set(self.net.table.alive_ids())

    def _peer_changed(self, peer: str) -> None:
        if peer in self.mates:
            self.mates[peer].due = True
        self._next_round = 0.0

    def _peer_left(self, peer: str) -> None:
        """Gone or restarted: forget where we stood; its callbacks still on the way are
        dropped (they find another `MateSync`, or none)."""
        self._forget(peer)
        self._next_round = 0.0

    def _clusters_changed(self) -> None:
        self._next_round = 0.0

    def _forget(self, peer: str) -> None:
        self.mates.pop(peer, None)
        for feed in [f for f, p in self.sending.items() if p == peer]:
            del self.sending[feed]

    # --- the round --------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        self.ledger.tick(now)
        if now >= self._next_round and not self._reading_heads:
            self._next_round = now + self.timing.round_s
            self._reading_heads = True
            self.ledger.ask(protocol.LedgerHeads(), protocol.LedgerHeadsReply,
                            self._round, self._heads_unavailable,
                            timeout_s=self.timing.request_timeout_s)
        for sync in list(self.mates.values()):
            if sync.retry_at and now >= sync.retry_at and not sync.busy:
                if not self._paid(sync, budget.HEADS_BYTES, budget.HEADS_BYTES, now):
                    sync.retry_at = self._ready_at(sync, budget.HEADS_BYTES,
                                                   budget.HEADS_BYTES, now)
                    continue
                sync.retry_at = 0.0
                self._exchange(sync, now, retry=True)
            elif sync.pull_at and now >= sync.pull_at and not sync.busy:
                sync.pull_at = 0.0
                self._advance(sync)

    # --- pacing -----------------------------------------------------------------------------

    def _paid(self, sync: MateSync, request_bytes: int, response_bytes: int,
              now: float) -> bool:
        """Does the airtime bucket pay for a request to this mate now (always, on a LAN)?
        Not while state pulls wait for it: they go first."""
        pacer = self.net.pacer
        return not pacer.state_waiting and bool(pacer.try_spend(
            self._cost_s(sync, request_bytes, response_bytes), now))

    def _ready_at(self, sync: MateSync, request_bytes: int, response_bytes: int,
                  now: float) -> float:
        return float(self.net.pacer.ready_at(
            self._cost_s(sync, request_bytes, response_bytes), now))

    def _cost_s(self, sync: MateSync, request_bytes: int, response_bytes: int) -> float:
        """Airtime of a request to this mate and its response, with a link setup if our
        link to it is not up."""
        return float(self.net.pacer.request_cost_s(request_bytes, response_bytes,
                                                   self.links.is_open(sync.peer)))

    def _heads_unavailable(self, code: str, text: str) -> None:
        self._reading_heads = False
        log.debug("own heads unavailable (%s): %s", code, text)

    def _round(self, reply: protocol.LedgerHeadsReply) -> None:
        """Our heads are fresh: tell each live mate that needs it (see the module docstring)."""
        self._reading_heads = False
        self._take_heads(reply)
        now = time.monotonic()
        mates = self.live_mates()
        for peer in [p for p in self.mates if p not in mates]:
            self._forget(peer)
        # Feeds we speak for: our own, and members' whose author is not a live mate.
        ours = {self.node_id} | (self.members() - mates)
        for peer in sorted(mates):
            sync = self.mates.setdefault(peer, MateSync(peer))
            if sync.busy or sync.retry_at or now < sync.quarantined_until:
                continue
            if (sync.due or now - sync.last_exchange >= self.timing.refresh_s
                    or plan.news_for(self.mine, sync.told, sync.theirs, ours)):
                if self._paid(sync, budget.HEADS_BYTES, budget.HEADS_BYTES, now):
                    self._exchange(sync, now)
                else:   # still due next round, which comes when the bucket allows
                    self._next_round = min(self._next_round, self._ready_at(
                        sync, budget.HEADS_BYTES, budget.HEADS_BYTES, now))

    def _take_heads(self, reply: protocol.LedgerHeadsReply) -> None:
        self.mine = bundles.heads_from_reply(reply.feeds)
        self.forked = set(reply.forked)

    # --- asking a mate ----------------------------------------------------------------------

    def _exchange(self, sync: MateSync, now: float, retry: bool = False) -> None:
        if not retry:
            sync.failures = 0  # a new attempt (a round found a reason): its own retries
        told = plan.member_heads(self.mine, self.members())
        body = bundles.encode_heads(told)
        sync.busy, sync.due, sync.told, sync.last_exchange = "heads", False, told, now
        self.counters.exchanges += 1
        self.counters.bytes_sent += len(body)
        self.links.request(sync.peer, self.heads_path, body,
                           self._guard(sync, self._exchanged), self._guard(sync, self._failed),
                           timeout_s=self.timing.request_timeout_s,
                           max_response_bytes=plan.HEADS_MAX_BYTES)

    def _guard(self, sync: MateSync, callback: Callable[..., None]) -> Callable[..., None]:
        """`callback` for `sync`, dropped if the mate was forgotten meanwhile (it left)."""
        def call(*args: Any) -> None:
            if self.mates.get(sync.peer) is sync:
                callback(sync, *args)

        return call

    def _exchanged(self, sync: MateSync, data: bytes) -> None:
        self.counters.bytes_received += len(data)
        self.net.pacer.settle(budget.HEADS_BYTES, len(data), time.monotonic())
        try:
            theirs = plan.decode_peer_heads(data)
        except mesh.WireError as exc:
            self._failed(sync, f"heads: {exc}")
            return
        sync.busy = ""
        sync.failures = 0
        self._learn(sync, theirs)

    def _learn(self, sync: MateSync, theirs: dict[str, Head]) -> None:
        for feed, head in list(sync.stalled.items()):
            if theirs.get(feed) != head:
                del sync.stalled[feed]  # its head moved: worth asking again
        sync.theirs = theirs
        self._advance(sync)

    def _advance(self, sync: MateSync) -> None:
        """Start the next pull from this mate, if it has anything we lack and is free."""
        now = time.monotonic()
        if sync.busy or sync.theirs is None or now < sync.quarantined_until or sync.pull_at:
            return
        others = {feed for feed, peer in self.sending.items() if peer != sync.peer}
        nxt = plan.next_pull(self.mine, sync.theirs, members=self.members(),
                             skip={self.node_id} | self.forked | others, stalled=sync.stalled)
        if nxt is None:
            return
        # Only the request is ours to pay: the mate pays for its response (`_serve_range`).
        if not self._paid(sync, RANGE_REQUEST_BYTES, 0, now):
            sync.pull_at = self._ready_at(sync, RANGE_REQUEST_BYTES, 0, now)
            return
        self._pull(sync, *nxt)

    def _pull(self, sync: MateSync, feed: str, after_seq: int) -> None:
        with_key = feed not in self.mine or feed in sync.want_key
        body = plan.encode_range_request(plan.RangeRequest(feed, after_seq, with_key))
        sync.busy, sync.feed = "range", feed
        self.sending[feed] = sync.peer
        self.counters.pulls += 1
        self.counters.bytes_sent += len(body)
        self.links.request(sync.peer, self.range_path, body,
                           self._guard(sync, self._ranged), self._guard(sync, self._failed),
                           timeout_s=2 * self.timing.request_timeout_s,
                           max_response_bytes=plan.RANGE_RESPONSE_MAX_BYTES)

    def _ranged(self, sync: MateSync, data: bytes) -> None:
        self.counters.bytes_received += len(data)
        try:
            bundle, head_seq = plan.decode_range_response(data)
        except mesh.WireError as exc:
            self._failed(sync, f"range: {exc}")
            return
        if not bundle:
            self._done(sync, progress=False)
            return
        if plan.bundle_feed(bundle) != sync.feed:
            # Checked before the ledger sees it: a bundle of another feed would be stored
            # if valid, and we asked for a member's feed only.
            self._refused(sync, "a bundle of another feed than the one asked for")
            self._done(sync, progress=False)
            return
        theirs = sync.theirs or {}
        if head_seq > theirs.get(sync.feed, Head(0, b"")).seq:
            theirs[sync.feed] = Head(head_seq, b"")  # it holds more now: page on to there
        sync.busy = "ingest"
        self.ledger.ask(protocol.LedgerIngest(bundle=bundle, sender=sync.peer),
                        protocol.LedgerIngestReply, self._guard(sync, self._ingested),
                        self._guard(sync, self._ledger_failed),
                        timeout_s=2 * self.timing.request_timeout_s)

    def _ingested(self, sync: MateSync, reply: protocol.LedgerIngestReply) -> None:
        feed = sync.feed
        before = self.mine.get(feed)
        if reply.head_seq:
            self.mine[feed] = Head(reply.head_seq, reply.head_hash, reply.head_seq)
        outcome = _outcome(reply.outcome)
        if outcome is Outcome.STORED:
            self.counters.bundles_stored += 1
            self.counters.events_stored += reply.stored
        elif outcome is Outcome.DUPLICATE:
            self.counters.duplicates += 1
        elif outcome is Outcome.NEED_KEY and feed not in sync.want_key:
            sync.want_key.add(feed)
            self._done(sync, progress=True)  # asked again, with the key this time
            return
        elif outcome in _REFUSED:
            self._refused(sync, f"{reply.outcome}: {reply.detail}")
        elif outcome is Outcome.FORK:
            self.counters.forks += 1
            self.forked.add(feed)
        self._done(sync, progress=self.mine.get(feed) != before)

    def _refused(self, sync: MateSync, reason: str) -> None:
        self.counters.refused += 1
        sync.quarantined_until = time.monotonic() + self.timing.quarantine_s
        log.warning("mate %s sent a bundle of feed %s that was refused (%s); no pulls from it "
                    "for %g s", sync.peer, sync.feed, reason, self.timing.quarantine_s)

    def _done(self, sync: MateSync, progress: bool) -> None:
        """The pull of `sync.feed` ended; start the next one (maybe the next page)."""
        feed = sync.feed
        if not progress and sync.theirs is not None and feed in sync.theirs:
            self.counters.stalled += 1
            sync.stalled[feed] = sync.theirs[feed]
        sync.busy, sync.feed = "", ""
        if self.sending.get(feed) == sync.peer:
            del self.sending[feed]
        self._advance(sync)
        for other in list(self.mates.values()):
            if other is not sync:
                self._advance(other)  # one may have waited for this feed

    def _ledger_failed(self, sync: MateSync, code: str, text: str = "") -> None:
        self._failed(sync, f"ledger {code}: {text}")

    def _failed(self, sync: MateSync, reason: str) -> None:
        feed = sync.feed
        if feed and self.sending.get(feed) == sync.peer:
            del self.sending[feed]
        sync.busy, sync.feed = "", ""
        if plan.BUSY in reason:
            # The mate's airtime budget is spent for now: not a failure; ask it again a
            # round later (any mate holding the feed may be asked meanwhile).
            self.counters.busy += 1
            sync.pull_at = time.monotonic() + self.timing.round_s
            return
        self.counters.failures += 1
        sync.failures += 1
        if sync.failures <= self.timing.max_retries:
            delay = self.timing.retry_s * 2 ** (sync.failures - 1)
            sync.retry_at = time.monotonic() + delay
            log.debug("replication with %s failed (%s); retry in %g s", sync.peer, reason, delay)
        else:
            sync.retry_at = 0.0
            log.info("replication with %s failed %d times (%s); next try in %g s", sync.peer,
                     sync.failures, reason, self.timing.refresh_s)

    # --- serving a mate ---------------------------------------------------------------------

    def _mate(self, request: IncomingRequest) -> str:
        peer = request.peer_id
        if peer is None or peer not in self.net.formation.cluster_mates():
            self.counters.refused_requests += 1
            raise RequestRefused("not a member of this cluster")
        if self._serving[peer] >= MAX_SERVING_PER_MATE:
            self.counters.refused_requests += 1
            raise RequestRefused("too many requests in flight")
        self.counters.bytes_received += len(request.data)
        return peer

    def _ask_then_answer(self, request: IncomingRequest, peer: str, msg: protocol.Message,
                         expect: type[protocol.Message], answer: Callable[[Any], None]) -> Any:
        """Ask our ledger worker `msg`; `answer(reply)` responds, an error fails the request."""
        self._serving[peer] += 1

        def settled() -> None:
            self._serving[peer] -= 1
            if self._serving[peer] <= 0:
                del self._serving[peer]

        def replied(reply: Any) -> None:
            settled()
            answer(reply)

        def failed(code: str, text: str) -> None:
            settled()
            request.fail(f"ledger {code}: {text}")

        self.ledger.ask(msg, expect, replied, failed, timeout_s=self.timing.request_timeout_s)
        return DEFER

    def _serve_heads(self, request: IncomingRequest) -> Any:
        peer = self._mate(request)
        try:
            theirs = plan.decode_peer_heads(request.data)
        except mesh.WireError as exc:
            self.counters.refused_requests += 1
            raise RequestRefused(f"heads: {exc}") from None

        def answer(reply: protocol.LedgerHeadsReply) -> None:
            self._take_heads(reply)
            told = plan.member_heads(self.mine, self.members())
            self._respond(request, bundles.encode_heads(told))
            self.counters.heads_served += 1
            sync = self.mates.get(peer)
            if sync is None and peer in self.live_mates():
                sync = self.mates[peer] = MateSync(peer, due=False)
            if sync is not None:
                # The answer told it our heads: this pair needs no exchange of ours now.
                sync.told, sync.last_exchange = told, time.monotonic()
                self._learn(sync, theirs)  # it may hold what we lack: pull it from there

        return self._ask_then_answer(request, peer, protocol.LedgerHeads(),
                                     protocol.LedgerHeadsReply, answer)

    def _serve_range(self, request: IncomingRequest) -> Any:
        peer = self._mate(request)
        try:
            wanted = plan.decode_range_request(request.data)
        except mesh.WireError as exc:
            self.counters.refused_requests += 1
            raise RequestRefused(f"range: {exc}") from None

        def answer(reply: protocol.LedgerRangeReply) -> None:
            body = plan.encode_range_response(reply.bundle, reply.head_seq)
            # This node's transmitter carries the response: its airtime comes out of our
            # bucket (where the budget binds), not the asker's. Without it a node serving
            # two mates' catch-up sent 3 % of an hour at a 1 % budget.
            pacer = self.net.pacer
            if not pacer.try_spend(pacer.body_cost_s(len(body)), time.monotonic()):
                self.counters.busy_refusals += 1
                request.fail(plan.BUSY)
                return
            self.counters.ranges_served += 1
            self._respond(request, body)
            self._sent(peer, reply)

        return self._ask_then_answer(request, peer, protocol.LedgerRange(
            feed=wanted.feed, after_seq=wanted.after_seq,
            max_bytes=plan.bundle_budget(request.link_mdu), with_key=wanted.with_key),
            protocol.LedgerRangeReply, answer)

    def _sent(self, peer: str, reply: protocol.LedgerRangeReply) -> None:
        """A mate is taking `reply`'s range: it holds that feed that far now (if its ingest
        fails, its own retries and the refresh repair it), so it need not be told again."""
        sync = self.mates.get(peer)
        if sync is None or sync.theirs is None or not reply.bundle:
            return
        known = sync.theirs.get(reply.feed)
        if known is None or known.seq < reply.last_seq:
            head = self.mine.get(reply.feed)
            last_hash = head.hash if head is not None and head.seq == reply.last_seq else b""
            sync.theirs[reply.feed] = Head(reply.last_seq, last_hash)

    def _respond(self, request: IncomingRequest, body: bytes) -> None:
        self.counters.bytes_sent += len(body)
        request.respond(body)

    # --- the operator's view ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {**vars(self.counters),
                "feeds": {feed: head.seq for feed, head in self.mine.items()},
                "forked": sorted(self.forked),
                "mates": {peer: {"busy": sync.busy, "feed": sync.feed, "failures": sync.failures,
                                 "quarantined": now < sync.quarantined_until,
                                 "stalled": sorted(sync.stalled)}
                          for peer, sync in self.mates.items()},
                "ledger_timeouts": self.ledger.timeouts}

    def close(self) -> None:
        self.ledger.close()


def _outcome(value: str) -> Outcome | None:
    try:
        return Outcome(value)
    except ValueError:
        return None
