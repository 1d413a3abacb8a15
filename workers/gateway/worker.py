"""The gateway worker: the node's Reticulum instance and everything that crosses it.

Process wiring only; the logic lives in `workers.gateway` (see its package docstring). This is the
only process that imports RNS. Start-up order matters:

1. the boot generation is raised (before anything can be announced);
2. the Reticulum config is written from [reticulum] and the listen port checked, so a port
   already taken is reported here (log, ledger, exit status) instead of Reticulum's silent
   ``os._exit(255)``;
3. Reticulum is constructed, and our own SIGTERM/SIGINT handlers go back in right after
   (Reticulum's would ``os._exit`` and skip teardown);
4. the node restores its seat and state from the ledger and starts announcing.

Teardown closes links (peers see them close at once), flushes the ledger and runs
Reticulum's exit handler.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from typing import Any

import zmq

from akita import catalogue, transport
from akita import identity as ident
from akita.ledger import chain
from akita.ledger.client import LedgerClient
from akita.mesh import budget
from akita.wire import protocol
from workers.base import Request, Worker
from workers.gateway import recovery, rnsconfig, traffic
from workers.gateway.bridge import LoopBridge
from workers.gateway.delegate import Delegator
from workers.gateway.intercluster import InterCluster
from workers.gateway.ledger_requests import LedgerRequests
from workers.gateway.links import Links
from workers.gateway.local import ExecutorWatch
from workers.gateway.node import NetNode
from workers.gateway.replicate import ReplicationTiming, Replicator
from workers.gateway.rnsnode import InterfaceFailed, RnsNode

log = logging.getLogger(__name__)

EXIT_INTERFACE_FAILED = 3
LEDGER_FLUSH_S = 2.0


class GatewayWorker(Worker):
    name = catalogue.GATEWAY

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.ledger: LedgerClient | None = None
        self.bridge: LoopBridge | None = None
        self.rns: RnsNode | None = None
        self.links: Links | None = None
        self.net: NetNode | None = None
        self.bus: zmq.Socket | None = None
        self.executor: ExecutorWatch | None = None
        self.delegator: Delegator | None = None
        self.replicator: Replicator | None = None
        self.messages: InterCluster | None = None
        self.traffic: traffic.TrafficMeter | None = None
        self.timers: budget.Timers | None = None

    # --- start ----------------------------------------------------------------------------------

    def setup(self) -> None:
        assert self.ctx is not None
        cfg = self.config
        data_dir = cfg.node.data_dir
        identity = ident.load_or_create(data_dir)
        generation = recovery.next_generation(data_dir)
        self.ledger = LedgerClient(self.ctx, self.run_dir, "gateway")
        self.add_reader(self.ledger.sock, self.ledger.on_readable)
        self.bridge = LoopBridge()
        self.add_reader(self.bridge.fileno(), self.bridge.drain)
        self.rns = self._start_reticulum(data_dir / ident.IDENTITY_FILE)
        self.links = Links(self.bridge, self.rns.identity, self.rns.destination,
                           self.rns.peer_destination, self._admits)
        assert self.traffic is not None
        self.links.on_path = self.traffic.tag_link
        restored = recovery.load(chain.db_path(cfg))
        assert self.traffic is not None
        self.timers = budget.derive(cfg.cluster, budget.slowest(traffic.media(self.traffic)))
        log.info("upkeep timers (%s): %s", self.timers.source, self.timers.as_dict())
        cfg = budget.resolve(cfg, self.timers)
        self.net = NetNode(cfg, identity, generation, self.rns, self.links, self.publish,
                           self._record, restored, self.tick_interval_s)
        self.net.follow_budget(self.timers.state_refresh_s)
        self.links.keepalive_s = self.timers.announce_interval_s
        self.messages = InterCluster(self.net, self.publish, self._record)
        self.replicator = Replicator(self.net, LedgerRequests(self.ctx, self.run_dir),
                                     dataclasses.replace(
                                         ReplicationTiming.from_config(cfg),
                                         refresh_s=self.timers.replication_refresh_s))
        self.add_reader(self.replicator.ledger.sock, self.replicator.ledger.on_readable)
        self._subscribe_bus()
        if catalogue.EXECUTOR in cfg.supervisor.workers:
            self.executor = ExecutorWatch(self.ctx, self.run_dir,
                                          max(1.0, cfg.cluster.announce_interval),
                                          self.net.set_task_types, self.net.set_queue_depth)
            self.add_reader(self.executor.sock, self.executor.on_readable)
            self.delegator = Delegator(self.net, self.ctx, self.run_dir)
            for source, callback in self.delegator.readers():
                self.add_reader(source, callback)
        self._record("gateway.started", {"node": identity.node_id, "generation": generation,
                                         "interfaces": self.rns.interfaces(),
                                         "seat": recovery.seat_event(restored.seat,
                                                                     restored.term)})
        log.info("gateway of node %s up: generation %d, destination %s", identity.node_id,
                 generation, self.rns.destination.hash.hex())

    def _start_reticulum(self, identity_path: Any) -> RnsNode:
        assert self.bridge is not None
        cfg = self.config
        rns = RnsNode(self.bridge, identity_path, cfg.channels.state_channel)
        self.traffic = traffic.for_config(cfg, rns.is_discovery_hash)
        traffic.install(self.traffic)
        try:
            rnsconfig.check_listen_port(cfg.reticulum)
            config_dir = rnsconfig.write(cfg.reticulum, cfg.node.data_dir)
            rns.start(config_dir,
                      on_announce=lambda *a: self._net().on_announce(*a),
                      on_packet=lambda data: self._net().on_packet(data))
        except (rnsconfig.PortTaken, InterfaceFailed) as exc:
            self._interface_failed(str(exc))
        # Reticulum's constructor put in handlers that os._exit(): ours only set a flag.
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        return rns

    def _interface_failed(self, reason: str) -> None:
        """Say which interface failed (log and ledger), then exit for the restart policy."""
        log.error("a Reticulum interface could not start: %s", reason)
        assert self.ledger is not None
        self.ledger.append("gateway.interface_failed", {"error": reason})
        if not self.ledger.flush(LEDGER_FLUSH_S):
            log.warning("the ledger did not confirm the failure report in time")
        self.ledger.close()
        if self.bridge is not None:
            self.bridge.close()
        raise SystemExit(EXIT_INTERFACE_FAILED)

    def _subscribe_bus(self) -> None:
        assert self.ctx is not None
        self.bus = transport.make_socket(self.ctx, zmq.SUB, hwm=1000)
        self.bus.setsockopt(zmq.SUBSCRIBE, protocol.ResourceSample.KIND.encode())
        self.bus.connect(transport.endpoint(self.run_dir, transport.BUS_OUT))
        self.add_reader(self.bus, self._on_bus)

    # --- helpers --------------------------------------------------------------------------------

    def _net(self) -> NetNode:
        assert self.net is not None
        return self.net

    def _admits(self, node_id: str | None) -> bool:
        return self._net().discovery.admission.admits(node_id)

    def _record(self, kind: str, data: dict[str, Any], *, ack: bool = True,
                on_durable: Any = None) -> None:
        if self.ledger is not None:
            self.ledger.append(kind, data, ack=ack, on_durable=on_durable)

    def _on_bus(self) -> None:
        assert self.bus is not None
        messages, _bad = transport.drain_bus(self.bus, limit=100)
        for msg in messages:
            if isinstance(msg, protocol.ResourceSample):
                self._net().on_resource_sample(msg)

    # --- the loop -------------------------------------------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        self._net().tick(now)
        if self.replicator is not None:
            self.replicator.tick(now)
        if self.messages is not None:
            self.messages.tick(now)
        if self.executor is not None:
            self.executor.tick(now)
        if self.delegator is not None:
            self.delegator.tick(now)
        if self.ledger is not None:
            self.ledger.tick()

    def handle(self, request: Request) -> protocol.Message | None:
        net = self._net()
        msg = request.message
        if isinstance(msg, protocol.PeerList):
            return protocol.PeerListReply(self_id=net.node_id, peers=net.peers())
        if isinstance(msg, protocol.ClusterList):
            return protocol.ClusterListReply(clusters=net.clusters())
        if isinstance(msg, protocol.ServiceList):
            return protocol.ServiceListReply(services=net.services())
        if isinstance(msg, protocol.StateGet):
            found = net.state_of(msg.node)
            if found is None:
                return protocol.Error(code="unknown_node",
                                      message=f"no state known for node {msg.node!r}")
            return protocol.StateReply(**found)
        if isinstance(msg, protocol.StateSet):
            return self._state_set(request, msg)
        if isinstance(msg, (protocol.MessageSend, protocol.MessageSubscribe,
                            protocol.MessageUnsubscribe)) and self.messages is not None:
            return self.messages.handle(msg, request.reply)
        if isinstance(msg, protocol.PeerStats):
            return protocol.PeerStatsReply(stats=self._stats())
        return super().handle(request)

    def _state_set(self, request: Request, msg: protocol.StateSet) -> protocol.Message | None:
        try:
            self._net().state_set(msg.key, msg.value,
                                  on_durable=lambda _seq: request.reply(protocol.Ok()))
        except ValueError as exc:
            return protocol.Error(code="bad_request", message=str(exc))
        return None  # answered once the new record is durable in the ledger

    def _stats(self) -> dict[str, Any]:
        stats = self._net().stats()
        assert self.rns is not None and self.bridge is not None and self.ledger is not None
        stats["interfaces"] = self.rns.interfaces()
        stats["callback_errors"] = self.bridge.errors
        stats["ledger_pending"] = self.ledger.pending()
        stats["link_traffic"] = self.links.traffic() if self.links is not None else {}
        if self.traffic is not None:
            stats["traffic"] = self.traffic.snapshot()
        if self.timers is not None:
            stats["budget"] = self.timers.as_dict()
        if self.replicator is not None:
            stats["replication"] = self.replicator.stats()
        if self.messages is not None:
            stats["messages"] = self.messages.stats()
        if self.delegator is not None:
            stats["delegation"] = self.delegator.stats()
        return stats

    # --- stop -----------------------------------------------------------------------------------

    def teardown(self) -> None:
        if self.net is not None:
            self.net.say_goodbye()
        if self.links is not None:
            self.links.close()
        if self.ledger is not None:
            self._record("gateway.stopped", {})
            if not self.ledger.flush(LEDGER_FLUSH_S):
                log.warning("the ledger did not confirm every event before shutdown")
        if self.rns is not None:
            self.rns.shutdown()
        for closable in (self.executor, self.delegator, self.replicator, self.ledger,
                         self.bridge):
            if closable is not None:
                closable.close()
        if self.bus is not None:
            self.bus.close(linger=0)
