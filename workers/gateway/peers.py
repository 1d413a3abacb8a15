"""The peer table: who this node has heard, what they announced, and whether they live.

Pure logic, driven by the gateway with explicit timestamps (monotonic seconds), so every
rule is tested without a network.

Ordering: a node's announces are ordered by (generation, seq) — the generation rises on
every gateway start, the seq on every announce. An announce that is not newer than the last
one accepted from that node (a replay, or an old copy forwarded late) is ignored, so it can
never roll a peer back. A peer that was dropped leaves a tombstone with its last order,
so a replayed announce cannot bring it back either.

Liveness: any sign of life (announce, probe proof, indirect ack, link traffic) refreshes
`last_heard`. A peer silent for longer than its timeout is dropped: `peer_timeout` for
members of this node's cluster, which probe each other; for other peers, whose only sign
of life is their announce, also at least `ANNOUNCE_GRACE` of their own announce intervals;
the interval a peer claims counts only up to `max_interval_s`, so a peer claiming a huge one
is not kept for months after one announce.

Quotas: the table holds at most `max_peers` peers and takes at most `max_new_per_minute`
new identities per minute; a newcomer over either is refused (counted), nobody held is
evicted for it, so identities made in bulk cannot push members out.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from akita.wire.mesh import Announce, Load

ANNOUNCE_GRACE = 2.5     # missed announce intervals before a non-member is gone
MAX_TOMBSTONES = 10_000


class PeerState(str, Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"    # failed a direct and an indirect probe; may still refute


class AnnounceOutcome(Enum):
    NEW = "new"                # first time heard (or heard again after being dropped)
    RESTARTED = "restarted"    # a new generation: the node restarted
    UPDATED = "updated"
    STALE = "stale"            # not newer than what we hold: ignored


@dataclass
class Peer:
    node_id: str
    info: Announce
    first_seen: float
    last_heard: float
    last_announce: float
    wall_last_heard: float
    state: PeerState = PeerState.ALIVE
    suspect_since: float | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def load(self) -> Load:
        return self.info.load

    @property
    def claimed_cluster(self) -> str:
        """The cluster the peer says it sits in ("" before its first seat)."""
        return self.info.cluster


@dataclass
class Counters:
    """What the table ignored, by reason; shown in the gateway's stats."""

    stale: int = 0
    revived_blocked: int = 0
    dropped: int = 0
    suspected: int = 0
    refuted: int = 0
    over_quota: int = 0


@dataclass
class PeerTable:
    peer_timeout_s: float
    max_interval_s: float = 3600.0
    max_peers: int = 256
    max_new_per_minute: int = 60
    peers: dict[str, Peer] = field(default_factory=dict)
    tombstones: dict[str, tuple[int, int]] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    _admitted_at: deque[float] = field(default_factory=deque)

    def room_for(self, node_id: str, now: float) -> str:
        """"" if an announce of `node_id` may be taken, else why not (a quota it is over)."""
        if node_id in self.peers:
            return ""
        while self._admitted_at and now - self._admitted_at[0] >= 60.0:
            self._admitted_at.popleft()
        if len(self.peers) >= self.max_peers:
            self.counters.over_quota += 1
            return f"peer table full ({self.max_peers} peers)"
        if len(self._admitted_at) >= self.max_new_per_minute:
            self.counters.over_quota += 1
            return f"more than {self.max_new_per_minute} new identities this minute"
        return ""

    def on_announce(self, node_id: str, info: Announce, now: float) -> AnnounceOutcome:
        """Apply an announce heard from `node_id` (already validated and admitted)."""
        peer = self.peers.get(node_id)
        if peer is None:
            dead_order = self.tombstones.get(node_id)
            if dead_order is not None and info.order <= dead_order:
                self.counters.revived_blocked += 1
                return AnnounceOutcome.STALE
            self.tombstones.pop(node_id, None)
            self._admitted_at.append(now)
            self.peers[node_id] = Peer(node_id, info, first_seen=now, last_heard=now,
                                       last_announce=now, wall_last_heard=time.time())
            return AnnounceOutcome.NEW
        if info.order <= peer.info.order:
            self.counters.stale += 1
            return AnnounceOutcome.STALE
        restarted = info.generation > peer.info.generation
        peer.info = info
        peer.last_announce = now
        self.heard(node_id, now)
        return AnnounceOutcome.RESTARTED if restarted else AnnounceOutcome.UPDATED

    def heard(self, node_id: str, now: float) -> bool:
        """A sign of life from `node_id`; refutes a suspicion. False if the peer is unknown."""
        peer = self.peers.get(node_id)
        if peer is None:
            return False
        peer.last_heard = max(peer.last_heard, now)
        peer.wall_last_heard = time.time()
        if peer.state is PeerState.SUSPECT:
            peer.state = PeerState.ALIVE
            peer.suspect_since = None
            self.counters.refuted += 1
        return True

    def suspect(self, node_id: str, now: float) -> bool:
        """Direct and indirect probes failed. True if the peer just became suspect."""
        peer = self.peers.get(node_id)
        if peer is None or peer.state is PeerState.SUSPECT:
            return False
        peer.state = PeerState.SUSPECT
        peer.suspect_since = now
        self.counters.suspected += 1
        return True

    def timeout_for(self, peer: Peer, is_member: bool, health: float = 1.0) -> float:
        """How long `peer` may stay silent; `health` ≥ 1 widens it when this node is slow."""
        if is_member:
            return self.peer_timeout_s * health
        interval = min(peer.info.interval_s, self.max_interval_s)
        return max(self.peer_timeout_s, ANNOUNCE_GRACE * interval) * health

    def expire(self, now: float, members: set[str], health: float = 1.0) -> list[Peer]:
        """Drop every peer silent past its timeout; returns the dropped ones."""
        gone = [peer for peer in self.peers.values()
                if now - peer.last_heard >= self.timeout_for(peer, peer.node_id in members,
                                                             health)]
        for peer in gone:
            self.drop(peer.node_id)
        return gone

    def drop(self, node_id: str, order: tuple[int, int] = (0, 0)) -> Peer | None:
        peer = self.peers.pop(node_id, None)
        if peer is not None:
            self.counters.dropped += 1
            self.tombstones[node_id] = max(peer.info.order, order)
            while len(self.tombstones) > MAX_TOMBSTONES:
                self.tombstones.pop(next(iter(self.tombstones)))
        return peer

    def alive_ids(self) -> set[str]:
        return set(self.peers)

    def get(self, node_id: str) -> Peer | None:
        return self.peers.get(node_id)

    def __len__(self) -> int:
        return len(self.peers)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.peers


class PullBackoff:
    """When a peer may be pulled again: after each failed pull (no answer, or not the record
    it announced) the wait doubles from `base_s` up to `max_s`; a good pull resets it."""

    def __init__(self, base_s: float, max_s: float) -> None:
        self.base_s, self.max_s = base_s, max_s
        self._failures: dict[str, int] = {}
        self._next: dict[str, float] = {}

    def due(self, node_id: str, now: float) -> bool:
        return now >= self._next.get(node_id, float("-inf"))

    def result(self, node_id: str, ok: bool, now: float) -> None:
        if ok:
            self.forget(node_id)
            return
        failures = self._failures[node_id] = min(self._failures.get(node_id, 0) + 1, 32)
        self._next[node_id] = now + min(self.max_s, self.base_s * 2 ** (failures - 1))

    def forget(self, node_id: str) -> None:
        self._failures.pop(node_id, None)
        self._next.pop(node_id, None)
