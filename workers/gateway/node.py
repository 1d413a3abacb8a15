"""The gateway's network node: discovery, liveness probes, cluster formation and state sync,
wired together on the gateway's loop.

`NetNode` holds no Reticulum object itself: it drives the node's `RnsNode` (announces,
packets) and `Links` (requests) through the small surfaces they offer, and reports to the
rest of the node through two callables, `publish` (the bus) and `record` (the ledger).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from akita import identity as ident
from akita import keyring
from akita.config import Config
from akita.keyring import Keyring
from akita.mesh import budget, delegation
from akita.mesh import state as st
from akita.mesh.formation import Formation, RoundResult
from akita.mesh.pacing import Pacer
from akita.text import clean
from akita.wire import events, mesh, protocol
from workers.gateway import load as load_mod
from workers.gateway import recovery, views
from workers.gateway.defence import Defence
from workers.gateway.discovery import Admission, Discovery, DiscoveryTiming
from workers.gateway.links import IncomingRequest, Links, RequestRefused
from workers.gateway.load import LoadTracker
from workers.gateway.peers import Peer, PeerState, PeerTable, PullBackoff
from workers.gateway.probes import DirectProbe, IndirectProbe, Prober, ProbeTiming, Suspect
from workers.gateway.statepace import StatePacing
from workers.gateway.sync import StateSync, ViewSnapshots

log = logging.getLogger(__name__)

SNAPSHOT_INTERVAL_S = 10.0        # least time between two merged-view snapshots in the ledger
RESPONSE_ENVELOPE_BYTES = 40      # request id and [0, payload] around a response (links)

Publish = Callable[[str, protocol.Message], None]
Record = Callable[..., None]      # record(kind, data, *, ack=True, on_durable=None)


@dataclass
class Paths:
    """Link request paths; named after the channels, so differently configured networks
    never answer each other."""

    pull: str          # state: our summary in, the records we lack out
    push: str          # state: a changed record of the requester's own
    services: str      # what this node offers, straight from it

    @classmethod
    def from_config(cls, config: Config) -> Paths:
        state = config.channels.state_channel
        return cls(pull=f"{state}/pull", push=f"{state}/push",
                   services=f"{config.channels.service_channel}/list")


class NetNode:
    """One node's view of the network and its part in it; every method runs on the loop.

    Driven by the gateway worker: `tick()` about every `tick_interval_s`, `on_announce()` /
    `on_packet()` for what Reticulum delivers, `on_resource_sample()` / `set_task_types()`
    / `set_queue_depth()` for what the node itself reports, and the operator's queries.
    """

    def __init__(self, config: Config, identity: ident.NodeIdentity, generation: int,
                 rns: Any, links: Links, publish: Publish, record: Record,
                 restored: recovery.Restored, tick_interval_s: float = 0.1,
                 defence: Defence | None = None) -> None:
        cl, sec = config.cluster, config.security
        self.defence = defence or Defence()
        self.config = config
        self.node_id = identity.node_id
        self.identity = identity
        self.name = config.node.name
        self.generation = generation
        self.rns = rns
        self.links = links
        self.publish = publish
        self.record = record
        self.paths = Paths.from_config(config)
        self.formation = Formation(self.node_id, generation, cl.cluster_size,
                                   grace_s=cl.peer_timeout + cl.discovery_interval,
                                   seat=restored.seat, term=restored.term,
                                   mates=restored.mates)
        self.table = PeerTable(cl.peer_timeout, max_interval_s=sec.max_peer_interval,
                               max_peers=sec.max_peers,
                               max_new_per_minute=sec.max_new_peers_per_minute)
        self.prober = Prober(ProbeTiming.derive(cl.peer_timeout, cl.probe_interval,
                                                cl.probe_timeout))
        self.sync = StateSync.create(identity, generation, restored.own_record)
        self.sync.max_record_bytes = sec.max_record_bytes
        self.sync.max_record_keys = sec.max_record_keys
        self.sync.on_refused = self.defence.refused
        if restored.view:
            log.info("restored %d state records from the ledger", self.sync.restore(restored.view))
        self.sync.update_own({st.KEY_TASK_TYPES: [],
                              st.KEY_SERVICES: sorted(cl.services),
                              st.KEY_CAPABILITIES: sorted(config.tasks.capabilities)})
        self.discovery = Discovery(
            node_id=self.node_id,
            timing=DiscoveryTiming(cl.announce_interval, cl.discovery_interval),
            table=self.table, formation=self.formation,
            admission=Admission(sec.admission, sec.allowed_identities,
                                Keyring(tuple(keyring.decode(k) for k in sec.network_key))),
            rns=rns, events=self, build_app_data=self._app_data, defence=self.defence)
        # In key mode, requests are served to identities whose keyed announce we took.
        self.discovery.admission.keyed = self.table.__contains__
        self.load = LoadTracker()
        self._id_bytes = bytes.fromhex(self.node_id)
        self._pulling: set[str] = set()
        self._last_pull: dict[str, float] = {}
        self._claims_refused: set[str] = set()
        self._pull_backoff = PullBackoff(cl.announce_interval, sec.max_pull_backoff)
        self._snapshot_due = False
        self._last_snapshot = 0.0
        self._last_tick = time.monotonic()
        self._tick_interval_s = tick_interval_s
        self.snapshots = ViewSnapshots(SNAPSHOT_INTERVAL_S)
        self.pacing = StatePacing(Pacer.lan(), links.is_open)
        # Other parts of the gateway (delegation, replication, inter-cluster messages) hook in
        # here: called on the loop with the peer's id / after the clusters changed.
        self.peer_joined_hooks: list[Callable[[str], None]] = []
        self.peer_left_hooks: list[Callable[[str], None]] = []
        self.cluster_hooks: list[Callable[[], None]] = []
        # ... and after each announce of a known peer (its info in net.table is fresh).
        self.peer_updated_hooks: list[Callable[[str], None]] = []
        links.serve(self.paths.pull, self._serve_pull)
        links.serve(self.paths.push, self._serve_push)
        links.serve(self.paths.services, self._serve_services)
        self.discovery.start(time.monotonic())

    def follow_budget(self, state_refresh_s: float) -> None:
        """Refresh the own record's load figures, and snapshot the merged view into the
        ledger (which replicates to mates), no more often than the airtime budget allows."""
        self.load = LoadTracker(refresh_s=state_refresh_s,
                                min_spacing_s=max(load_mod.MIN_SPACING_S, state_refresh_s / 3))
        self.snapshots = ViewSnapshots(max(SNAPSHOT_INTERVAL_S, state_refresh_s))

    def pace(self, pacer: Pacer) -> None:
        """Reactions (prompt announces, state pulls and pushes; ledger replication reads
        `pacer` too) wait for the node's airtime bucket where the budget binds."""
        self.pacing.pacer = pacer
        self.discovery.pacer = pacer

    @property
    def pacer(self) -> Pacer:
        return self.pacing.pacer

    # --- announces --------------------------------------------------------------------------

    def _app_data(self, seq: int) -> bytes:
        return mesh.encode_announce(mesh.Announce(
            name=self.name, generation=self.generation, seq=seq,
            report=self.formation.report(), load=self.load.summary,
            state_version=self.sync.own.version, digest=self.sync.store.digest(),
            interval_s=self.config.cluster.announce_interval, id_tag=self._id_bytes,
            key_tag=self.discovery.admission.keyring.sign(self.node_id, self.generation, seq)))

    def on_announce(self, node_id: str, identity: Any, app_data: bytes | None) -> None:
        self.discovery.on_announce(node_id, identity, app_data, time.monotonic())

    # --- discovery events ---------------------------------------------------------------------

    def peer_joined(self, peer: Peer) -> None:
        log.info("peer joined: %s (%s) generation %d", peer.node_id, clean(peer.name),
                 peer.info.generation)
        self.publish("peer.joined", protocol.PeerJoined(node=peer.node_id, name=peer.name,
                                                        generation=peer.info.generation))
        self.record(*events.PeerJoined(node=peer.node_id, name=peer.name,
                                       generation=peer.info.generation).entry())
        self._maybe_pull(peer)
        for hook in self.peer_joined_hooks:
            hook(peer.node_id)

    def peer_restarted(self, peer: Peer) -> None:
        log.info("peer restarted: %s (%s) generation %d", peer.node_id, clean(peer.name),
                 peer.info.generation)
        self.links.close_peer(peer.node_id)  # its old link died with its old process
        self.record(*events.PeerRestarted(node=peer.node_id, name=peer.name,
                                          generation=peer.info.generation).entry())
        self._maybe_pull(peer)
        # A restarted peer lost whatever it held for us (leases, links): as if it left.
        for hook in self.peer_left_hooks:
            hook(peer.node_id)

    def peer_updated(self, peer: Peer) -> None:
        self._maybe_pull(peer)
        for hook in self.peer_updated_hooks:
            hook(peer.node_id)

    def peer_left(self, peer: Peer, reason: str) -> None:
        log.info("peer left: %s (%s): %s", peer.node_id, clean(peer.name), clean(reason))
        self.links.close_peer(peer.node_id)
        self._pulling.discard(peer.node_id)
        self._pull_backoff.forget(peer.node_id)
        self.pacing.forget(peer.node_id, time.monotonic())
        self.sync.forget_except(self.table.alive_ids())
        self.publish("peer.left", protocol.PeerLeft(node=peer.node_id, name=peer.name,
                                                    reason=reason))
        self.record(*events.PeerLeft(node=peer.node_id, name=peer.name, reason=reason).entry())
        for hook in self.peer_left_hooks:
            hook(peer.node_id)

    def round_done(self, result: RoundResult) -> None:
        # Counted once per episode (a peer starts claiming), not once per round.
        for node in set(result.refused) - self._claims_refused:
            self.defence.refused("claim_refused", node, "a seat or term in our cluster")
        self._claims_refused = set(result.refused)
        local = self.formation.local
        if result.seat_changed:
            self.record(*recovery.seat_event(local.seat, local.term,
                                             self.formation.mate_seats()).entry())
        if result.view_changed:
            own = self.formation.own_cluster()
            clusters = self.clusters()
            log.info("clusters: %s; own %s, coordinator %s, term %d",
                     [(c["id"], len(c["members"])) for c in clusters],
                     own.id if own else None, own.coordinator if own else None, local.term)
            change = protocol.ClusterChanged(
                clusters=clusters, own_cluster=own.id if own else "",
                coordinator=own.coordinator if own else "", term=local.term)
            self.publish("cluster.changed", change)
            self.record(*events.ClusterChanged(clusters=clusters, term=local.term).entry())
            for hook in self.cluster_hooks:
                hook()
            if self.pacer.mates_only:   # pulls from new mates were not asked for before
                for mate in self.formation.cluster_mates():
                    peer = self.table.get(mate)
                    if peer is not None:
                        self._maybe_pull(peer)

    # --- the timer ------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        lag = max(0.0, now - self._last_tick - self._tick_interval_s)
        self._last_tick = now
        self.prober.note_lag(lag)
        if self.rns.new_interfaces_online():
            self.discovery.interface_up(now)
        self.discovery.tick(now, self.prober.health)
        live_mates = self.formation.cluster_mates() & self.table.alive_ids()
        heard = {m: self.table.peers[m].last_heard for m in live_mates}
        for action in self.prober.step(now, live_mates, heard):
            self._probe(action, now)
        self.links.tick(now)
        self._paced_work(now)
        changes = self.load.due(now)
        if changes is not None:
            self.sync.update_own(changes)   # the new version rides on the next announce
        if now - self._last_snapshot >= SNAPSHOT_INTERVAL_S and self.discovery.settled:
            self._last_snapshot = now
            # Records of nodes gone while we were down (restored from the ledger) go too.
            self.sync.forget_except(self.table.alive_ids())
            if self._snapshot_due:
                view = self.snapshots.take(self.sync, now)
                self._snapshot_due = self.snapshots.pending
                if view is not None:
                    self.record(*events.StateView(records=view["records"]).entry())

    # --- probes ---------------------------------------------------------------------------------

    def _probe(self, action: DirectProbe | IndirectProbe | Suspect, now: float) -> None:
        timeout = self.prober.timing.timeout_s * self.prober.health
        if isinstance(action, DirectProbe):
            ping = mesh.ProbePacket(mesh.ProbeKind.PING, self._id_bytes, action.nonce)
            self.rns.send_packet(action.target, mesh.encode_probe(ping), timeout,
                                 on_proof=lambda: self._answered(action.target, action.nonce))
        elif isinstance(action, IndirectProbe):
            ask = mesh.ProbePacket(mesh.ProbeKind.PING_REQ, self._id_bytes, action.nonce,
                                   bytes.fromhex(action.target))
            self.rns.send_packet(action.helper, mesh.encode_probe(ask))
        elif self.table.suspect(action.target, now):
            log.info("peer %s is suspect: no answer to direct or indirect probes",
                     action.target)

    def _answered(self, target: str, nonce: int) -> None:
        now = time.monotonic()
        if self.prober.answered(target, nonce, now):
            self.table.heard(target, now)

    def on_packet(self, data: bytes) -> None:
        """A packet to our destination (Reticulum has already sent the proof)."""
        try:
            packet = mesh.decode_probe(data)
        except mesh.WireError:
            self.discovery.counters.garbage += 1
            return
        sender = packet.sender.hex()
        if sender not in self.table:
            return
        if packet.kind is mesh.ProbeKind.LEAVE:
            self._on_leave(sender, packet)
        elif packet.kind is mesh.ProbeKind.PING_REQ:
            self._probe_for(sender, packet.target.hex(), packet.nonce)
        elif packet.kind is mesh.ProbeKind.ACK:
            self._answered(packet.target.hex(), packet.nonce)

    def say_goodbye(self) -> None:
        """Shutting down: tell every peer, so they drop us now rather than after
        peer_timeout. Signed, and bound to our generation and last announce."""
        seq = self.discovery.seq
        signature = self.identity.sign(mesh.leave_message(self._id_bytes, self.generation, seq))
        leave = mesh.encode_probe(mesh.ProbePacket(
            mesh.ProbeKind.LEAVE, self._id_bytes, mesh.new_nonce(), generation=self.generation,
            seq=seq, signature=signature))
        for peer in list(self.table.peers):
            self.rns.send_packet(peer, leave)

    def _on_leave(self, sender: str, packet: mesh.ProbePacket) -> None:
        peer = self.table.get(sender)
        public_key = self.rns.public_key(sender)
        if peer is None or public_key is None:
            return
        message = mesh.leave_message(packet.sender, packet.generation, packet.seq)
        if (packet.generation, packet.seq) < peer.info.order or \
                not ident.verify(public_key, packet.signature, message):
            self.discovery.counters.garbage += 1
            return
        self.discovery.drop(sender, "left (shut down)",
                            order=(packet.generation, packet.seq))

    def _probe_for(self, asker: str, target: str, nonce: int) -> None:
        """Probe `target` on behalf of `asker` and tell it if the target answered."""
        if target not in self.table:
            return
        ack = mesh.encode_probe(mesh.ProbePacket(mesh.ProbeKind.ACK, self._id_bytes, nonce,
                                                 bytes.fromhex(target)))
        ping = mesh.ProbePacket(mesh.ProbeKind.PING, self._id_bytes, mesh.new_nonce())
        self.rns.send_packet(target, mesh.encode_probe(ping), self.prober.timing.timeout_s,
                             on_proof=lambda: self.rns.send_packet(asker, ack))

    # --- state sync -----------------------------------------------------------------------------

    def _maybe_pull(self, peer: Peer) -> None:
        own_stamp = (peer.info.generation, peer.info.state_version)
        behind = self.sync.behind(peer.node_id, own_stamp)
        mate = peer.node_id in self.formation.cluster_mates()
        differs = mate and peer.info.digest != self.sync.store.digest()
        now = time.monotonic()
        recently = now - self._last_pull.get(peer.node_id, float("-inf")) \
            < self.config.cluster.announce_interval
        # At most one pull per peer and announce interval, behind or not: on a saturated
        # radio channel a pull that failed (no link) was retried on every announce heard,
        # each retry a new link request that made the channel busier still. A peer that
        # does not serve what it announces is asked less and less often (backoff). Where
        # the budget binds, only mates are pulled from, within the airtime bucket.
        if self.pacer.mates_only and not mate:
            return
        if (behind or differs) and not recently and self._pull_backoff.due(peer.node_id, now) \
                and peer.node_id not in self._pulling \
                and self.pacing.may_pull(peer.node_id, own_stamp, now):
            self._pull(peer.node_id, own_stamp)

    def _paced_work(self, now: float) -> None:
        """Pulls and a push that waited for the airtime bucket, once it allows them."""
        mates = self.formation.cluster_mates()

        def still_wanted(node_id: str, stamp: st.Stamp) -> bool:
            peer = self.table.get(node_id)
            mate = node_id in mates
            return peer is not None and node_id not in self._pulling \
                and (mate or not self.pacer.mates_only) and (
                    self.sync.behind(node_id, stamp)
                    or (mate and peer.info.digest != self.sync.store.digest()))

        for node_id, stamp in self.pacing.due_pulls(now, still_wanted):
            self._pull(node_id, stamp)
        if self.pacing.push_pending:
            live = mates & self.table.alive_ids()
            if self.pacing.push_due(live, len(self.sync.encode_own()), now):
                self._send_own(live)

    def _pull(self, node_id: str, advertised: st.Stamp = (0, 0)) -> None:
        if node_id in self._pulling:
            return
        self._pulling.add(node_id)
        self._last_pull[node_id] = time.monotonic()
        self.sync.counters.pulls += 1

        def done(data: bytes) -> None:
            self._pulling.discard(node_id)
            self.pacer.settle(budget.RECORD_BYTES, len(data), time.monotonic())
            changed = self.sync.take(data, self._live)
            self._took(changed)
            # A peer that announces a record it does not serve is asked less and less often.
            self._pull_backoff.result(node_id, not self.sync.behind(node_id, advertised),
                                      time.monotonic())
            peer = self.table.get(node_id)
            if changed and peer is not None and peer.info.digest != self.sync.store.digest():
                self._pull(node_id, advertised)   # the delta came in pages (`_serve_pull`)

        def failed(reason: str) -> None:
            self._pulling.discard(node_id)
            self._pull_backoff.result(node_id, False, time.monotonic())
            log.debug("state pull from %s failed: %s", node_id, clean(reason))

        self.links.request(node_id, self.paths.pull, self.sync.encode_summary(), done, failed,
                           timeout_s=self._request_timeout())

    def _serve_pull(self, request: IncomingRequest) -> bytes:
        try:
            summary = st.decode_summary(request.data)
        except mesh.BAD_INPUT as exc:
            raise RequestRefused(str(exc)) from None
        if request.peer_id is not None:
            self.table.heard(request.peer_id, time.monotonic())
        room = request.link_mdu - RESPONSE_ENVELOPE_BYTES if request.link_mdu else None
        return self.sync.encode_delta(summary, self.table.alive_ids(), room)

    def _serve_push(self, request: IncomingRequest) -> bytes:
        pusher = request.peer_id
        if pusher is None or pusher not in self.table:
            raise RequestRefused("unknown peer")
        self.table.heard(pusher, time.monotonic())
        self._took(self.sync.take(request.data, lambda origin: origin == pusher))
        return b""

    def _serve_services(self, _request: IncomingRequest) -> bytes:
        """service_channel: the task types, named services and capabilities we offer."""
        own = self.sync.own
        return mesh.pack({key: own.get(key) or [] for key in
                          (st.KEY_TASK_TYPES, st.KEY_SERVICES, st.KEY_CAPABILITIES)})

    def _push_own(self) -> None:
        """Send our changed record to every cluster mate now (they would pull it anyway),
        or, where the budget binds and the bucket is short, once it allows: changes made
        meanwhile go in that one push."""
        mates = self.formation.cluster_mates() & self.table.alive_ids()
        if self.pacing.may_push(mates, len(self.sync.encode_own()), time.monotonic()):
            self._send_own(mates)

    def _send_own(self, mates: set[str]) -> None:
        data = self.sync.encode_own()
        for mate in mates:
            self.sync.counters.pushes += 1
            self.links.request(mate, self.paths.push, data, _ignore, _log_failure(mate),
                               timeout_s=self._request_timeout())

    def _took(self, changed: list[str]) -> None:
        if changed:
            self._snapshot_due = True

    def _live(self, origin: str) -> bool:
        return origin in self.table

    def _request_timeout(self) -> float:
        return max(2.0, self.config.cluster.peer_timeout)

    def _own_changed(self) -> None:
        self._push_own()
        self.discovery.announce_soon(time.monotonic())

    # --- local inputs ---------------------------------------------------------------------------

    def on_resource_sample(self, sample: protocol.ResourceSample) -> None:
        self.load.sample(sample.host)

    def set_task_types(self, names: list[str]) -> None:
        """The task types the executor runs (asked at start and now and then)."""
        if self.sync.update_own({st.KEY_TASK_TYPES: sorted(set(names))}):
            self._snapshot_due = True
            self._own_changed()

    def set_queue_depth(self, depth: int) -> None:
        self.load.queue(depth)

    def update_own(self, changes: dict[str, Any]) -> None:
        """Other gateway parts write node-owned keys of the own record (e.g. the topics
        wanted here): pushed to the cluster and announced when anything changed."""
        if self.sync.update_own(changes):
            self._snapshot_due = True
            self._own_changed()

    def state_set(self, key: str, value: Any, on_durable: Callable[[int], None]) -> None:
        """`akitactl state set`: ValueError for a bad key or value; `on_durable` once stored."""
        self.sync.set_custom(key, value)
        self.record(*events.StateOwn(record=self.sync.own.pack()).entry(),
                    on_durable=on_durable)
        self._own_changed()

    # --- who gets work ---------------------------------------------------------------------------

    def admits_work(self, node_id: str, now: float) -> bool:
        """`[security] delegate_to`: may `node_id` be handed tasks (and be trusted with the
        capabilities it declares)? members: alive and seated, in this node's view, for
        `settle_time`; allowlist: listed in `allowed_identities`."""
        sec, cl = self.config.security, self.config.cluster
        peer = self.table.get(node_id)
        return delegation.work_admitted(
            sec.delegate_to, sec.allowed_identities, node_id,
            peer is not None and peer.state is PeerState.ALIVE,
            self.formation.seated_since(node_id), now,
            sec.settle_time or cl.peer_timeout + cl.discovery_interval)

    # --- the operator's view -------------------------------------------------------------------

    def clusters(self) -> list[dict[str, Any]]:
        return self.formation.clusters(self.discovery.terms())

    def peers(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return views.peers(self.node_id, self.table, self.formation, now,
                           lambda node: self.admits_work(node, now))

    def services(self) -> list[dict[str, Any]]:
        return views.services(self.sync.store, self.table.alive_ids())

    def state_of(self, query: str) -> dict[str, Any] | None:
        node = views.resolve_node(query, self.node_id, self.table)
        if node is None and query == self.name:
            node = self.node_id
        record = self.sync.store.get(node) if node is not None else None
        return views.state(record) if record is not None else None

    def stats(self) -> dict[str, Any]:
        own = self.formation.own_cluster()
        return {
            "node": self.node_id, "generation": self.generation,
            "peers": len(self.table), "cluster": own.id if own else None,
            "term": self.formation.local.term, "rounds": self.formation.rounds,
            "reports": {node: _report(report) for node, report in
                        [(self.node_id, self.formation.report())]
                        + [(p.node_id, p.info.report) for p in self.table.peers.values()]},
            "announces": vars(self.discovery.counters).copy(),
            "peer_table": vars(self.table.counters).copy(),
            "probes": {"direct": self.prober.sent_direct, "indirect": self.prober.sent_indirect,
                       "health": self.prober.health},
            "links": vars(self.links.stats).copy(),
            "state": {**vars(self.sync.counters), "version": self.sync.own.version,
                      "records": len(self.sync.store.records)},
            "pacing": {**self.pacing.stats(time.monotonic()),
                       "announces_held": self.discovery.paced},
            "security": self.defence.snapshot(),
        }


def _ignore(_response: bytes) -> None:
    pass


def _log_failure(peer: str) -> Callable[[str], None]:
    def failed(reason: str) -> None:
        log.debug("push to %s failed: %s", peer, reason)

    return failed


def _report(report: Any) -> dict[str, Any]:
    seat = report.seat
    return {"generation": report.generation, "version": report.version, "term": report.term,
            "coordinator": report.coordinator,
            "seat": None if seat is None else [seat.cluster, seat.number, seat.high]}
