"""Discovery: when to announce, what an announce heard does to the peer table, and when the
clusters are re-formed.

Announces are one-shot: one sent before an interface is up is lost, and a node that joins
late learns nothing until the others announce again. So besides the timer (every
`announce_interval`, with jitter so nodes do not announce in lock-step), a node announces
when one of its interfaces comes up and when it hears a peer for the first time (or a
restarted one); with these a late joiner knows everyone within a second or two. Two
announces of one destination in the same second are not both taken by receivers, so
announces are spaced by at least `MIN_SPACING_S`. Where the airtime budget binds (radio),
those prompt announces also wait for the node's airtime bucket (`akita.mesh.pacing`): one
announce then answers every newcomer heard meanwhile, and the timed announce is charged to
the same bucket.

Everything here runs on the gateway's loop; the RNS side (sending, remembering a peer's
destination) goes through the `rns` object, and what the rest of the node should learn
(joined, left, restarted, report changed) goes to `DiscoveryEvents`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from akita.keyring import Keyring
from akita.mesh.formation import Formation, RoundResult
from akita.mesh.pacing import Pacer
from akita.wire import mesh
from workers.gateway.defence import Defence
from workers.gateway.peers import AnnounceOutcome, Peer, PeerTable

log = logging.getLogger(__name__)

MIN_SPACING_S = 1.05
# A timed announce comes after 100-125 % of the interval: never sooner, since a hub counts
# announces closer than its rate target (1 s) against the sender.
JITTER = 0.25
MIN_ROUND_SPACING_S = 0.1
# A starting node listens before its first formation round: a node that placed itself before
# it heard the others would found a cluster of its own, only to dissolve it after the grace
# period. Once it has heard a peer, it waits until no new peer has appeared for
# SETTLE_QUIET_INTERVALS announce intervals; a node that has heard nobody waits
# SETTLE_ALONE_INTERVALS (at least SETTLE_ALONE_MIN_S: the answer to its first announce takes
# a spacing plus a hub's forwarding cycle) before it founds a cluster of its own.
SETTLE_QUIET_INTERVALS = 1.0
SETTLE_ALONE_INTERVALS = 3.0
SETTLE_ALONE_MIN_S = 3.0
MAX_SETTLE_S = 120.0


class Admission:
    """`[security] admission`: open, only the identities in the allowlist, or (key) only
    identities whose announces carry a tag of the shared network key (`akita.keyring`)."""

    def __init__(self, mode: str, allowed: tuple[str, ...],
                 keys: Keyring | None = None) -> None:
        self.mode = mode
        self.allowed = frozenset(allowed)
        self.keyring = keys or Keyring(())
        self.keyed: Callable[[str], bool] = lambda _node: False   # in the peer table
        self.old_key_used = 0

    def admits(self, node_id: str | None) -> bool:
        """May this identity be served (requests) and its announces be read?"""
        if self.mode == "open":
            return True
        if self.mode == "key":
            return node_id is not None and self.keyed(node_id)
        return node_id is not None and node_id in self.allowed

    def announce_admitted(self, node_id: str, info: mesh.Announce) -> bool:
        """In key mode, does the announce carry a valid tag of a key of the ring?"""
        if self.mode != "key":
            return self.admits(node_id)
        used = self.keyring.verify(info.key_tag, node_id, info.generation, info.seq)
        if used is not None and used > 0:
            self.old_key_used += 1
        return used is not None


class RnsPort(Protocol):
    """What discovery needs from the node's Reticulum instance."""

    def announce(self, app_data: bytes) -> None: ...
    def remember_peer(self, node_id: str, identity: Any) -> None: ...
    def forget_peer(self, node_id: str) -> None: ...


class DiscoveryEvents(Protocol):
    def peer_joined(self, peer: Peer) -> None: ...
    def peer_restarted(self, peer: Peer) -> None: ...
    def peer_updated(self, peer: Peer) -> None: ...
    def peer_left(self, peer: Peer, reason: str) -> None: ...
    def round_done(self, result: RoundResult) -> None: ...


@dataclass
class AnnounceCounters:
    heard: int = 0
    sent: int = 0
    garbage: int = 0
    oversized: int = 0
    impersonating: int = 0
    not_admitted: int = 0
    own_echo: int = 0
    last_app_data_bytes: int = 0


@dataclass
class DiscoveryTiming:
    announce_interval_s: float
    discovery_interval_s: float


@dataclass
class Discovery:
    node_id: str
    timing: DiscoveryTiming
    table: PeerTable
    formation: Formation
    admission: Admission
    rns: RnsPort
    events: DiscoveryEvents
    build_app_data: Callable[[int], bytes]        # seq → app_data
    defence: Defence = field(default_factory=Defence)
    rng: random.Random = field(default_factory=random.Random)
    counters: AnnounceCounters = field(default_factory=AnnounceCounters)
    pacer: Pacer = field(default_factory=Pacer.lan)
    seq: int = 0
    last_announce_at: float = float("-inf")
    next_announce_at: float = 0.0
    timed_announce_at: float = float("inf")   # the timer's; next_announce_at may be sooner
    paced: int = 0                            # prompt announces held back by the bucket
    next_round_at: float = 0.0
    round_dirty: bool = True
    started_at: float = 0.0
    online_at: float | None = None
    last_newcomer_at: float = float("-inf")
    settled: bool = False

    def start(self, now: float) -> None:
        """The node is up; it announces once an interface is (see `interface_up`)."""
        self.started_at = now
        # An announce sent before an interface is up is lost; wait for one.
        self.next_announce_at = float("inf")

    def interface_up(self, now: float) -> None:
        """An interface came up (a dialled connection, a client of our listener): announce."""
        if self.online_at is None:
            self.online_at = now
        self.announce_soon(now)

    def _settled(self, now: float) -> bool:
        """Listened long enough to place this node (see SETTLE_* above)."""
        if self.settled:
            return True
        interval = self.timing.announce_interval_s
        alone = min(MAX_SETTLE_S, max(SETTLE_ALONE_MIN_S, SETTLE_ALONE_INTERVALS * interval))
        since = self.online_at if self.online_at is not None else self.started_at
        quiet = min(MAX_SETTLE_S, SETTLE_QUIET_INTERVALS * interval)
        heard = self.last_newcomer_at > float("-inf")
        self.settled = now >= since + alone or (
            heard and self.online_at is not None and now >= self.online_at + quiet
            and now >= self.last_newcomer_at + quiet)
        return self.settled

    # --- announcing ---------------------------------------------------------------------------

    def announce_soon(self, now: float) -> None:
        """Announce as soon as spacing and the airtime bucket allow (a peer or an interface
        just appeared, or our report changed)."""
        ready = self.pacer.ready_at(self.pacer.announce_cost_s(), now)
        self.next_announce_at = min(self.next_announce_at,
                                    max(ready, self.last_announce_at + MIN_SPACING_S))

    def _announce_due(self, now: float) -> None:
        """`next_announce_at` has come: the timer's announce goes (it is charged to the
        bucket); a prompt one goes if the bucket still allows it, else later."""
        cost = self.pacer.announce_cost_s()
        if now >= self.timed_announce_at:
            self.pacer.spend(cost, now)
        elif not self.pacer.try_spend(cost, now):
            self.paced += 1
            self.next_announce_at = min(self.timed_announce_at,
                                        self.pacer.ready_at(cost, now))
            return
        self._announce(now)

    def _announce(self, now: float) -> None:
        self.seq += 1
        app_data = self.build_app_data(self.seq)
        self.rns.announce(app_data)
        self.counters.sent += 1
        self.counters.last_app_data_bytes = len(app_data)
        self.last_announce_at = now
        interval = self.timing.announce_interval_s
        self.next_announce_at = now + max(MIN_SPACING_S,
                                          interval * self.rng.uniform(1.0, 1.0 + JITTER))
        self.timed_announce_at = self.next_announce_at

    # --- hearing --------------------------------------------------------------------------------

    def on_announce(self, node_id: str, identity: Any, app_data: bytes | None,
                    now: float) -> None:
        """An announce of the discovery aspect, signature already checked by Reticulum."""
        self.counters.heard += 1
        if node_id == self.node_id:
            self.counters.own_echo += 1
            return
        if self.admission.mode == "allowlist" and not self.admission.admits(node_id):
            self.counters.not_admitted += 1
            self.defence.refused("not_admitted", node_id, "announce")
            return
        info = self._decode(node_id, app_data)
        if info is None:
            return
        if not self.admission.announce_admitted(node_id, info):
            self.counters.not_admitted += 1
            self.defence.refused("bad_key", node_id, "announce without a valid network key tag")
            return
        full = self.table.room_for(node_id, now)
        if full:
            self.defence.refused("over_quota", node_id, full)
            return
        outcome = self.table.on_announce(node_id, info, now)
        peer = self.table.get(node_id)
        if outcome is AnnounceOutcome.STALE or peer is None:
            return
        if outcome is AnnounceOutcome.NEW:
            self.last_newcomer_at = now
            self.rns.remember_peer(node_id, identity)
            self.announce_soon(now)
            self.round_dirty = True
            self.events.peer_joined(peer)
        elif outcome is AnnounceOutcome.RESTARTED:
            self.announce_soon(now)
            self.round_dirty = True
            self.events.peer_restarted(peer)
        else:
            self.round_dirty = True
            self.events.peer_updated(peer)

    def _decode(self, node_id: str, app_data: bytes | None) -> mesh.Announce | None:
        if app_data is not None and len(app_data) > mesh.MAX_APP_DATA_BYTES:
            self.counters.oversized += 1
            self.defence.refused("oversized", node_id, f"app_data of {len(app_data)} bytes")
            return None
        try:
            return mesh.decode_announce(node_id, app_data)
        except mesh.Impersonation:
            self.counters.impersonating += 1
            self.defence.refused("impersonating", node_id, "another node's app_data")
        except mesh.WireError as exc:
            self.counters.garbage += 1
            # A claim out of range (a term or seat past its bound) is a refused claim.
            reason = "claim_refused" if "whole number from 0 to" in str(exc) else "garbage"
            self.defence.refused(reason, node_id, str(exc))
        return None

    # --- the timer --------------------------------------------------------------------------------

    def tick(self, now: float, health: float = 1.0) -> None:
        """Announce when due, drop silent peers, and run a formation round when due."""
        if now >= self.next_announce_at:
            self._announce_due(now)
        mates = self.formation.cluster_mates()
        for peer in self.table.expire(now, mates, health):
            self.rns.forget_peer(peer.node_id)
            self.round_dirty = True
            silent = now - peer.last_heard
            self.events.peer_left(peer, f"silent for {silent:.1f} s")
        if not self._settled(now):
            return
        due = now >= self.next_round_at
        if due or (self.round_dirty and now >= self.next_round_at
                   - self.timing.discovery_interval_s + MIN_ROUND_SPACING_S):
            self._round(now)

    def _round(self, now: float) -> None:
        self.round_dirty = False
        self.next_round_at = now + self.timing.discovery_interval_s
        reports = [peer.info.report for peer in self.table.peers.values()]
        result = self.formation.evaluate(reports, now)
        if result.report_changed:
            self.announce_soon(now)
        self.events.round_done(result)

    def drop(self, node_id: str, reason: str, order: tuple[int, int] = (0, 0)) -> None:
        """Remove a peer for a reason other than silence (it said it leaves); announces up to
        `order` are not taken from it afterwards."""
        peer = self.table.drop(node_id, order)
        if peer is not None:
            self.rns.forget_peer(node_id)
            self.round_dirty = True
            self.events.peer_left(peer, reason)

    def terms(self) -> dict[str, int]:
        return {node_id: peer.info.report.term for node_id, peer in self.table.peers.items()}
