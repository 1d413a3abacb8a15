"""The gateway worker: the node's Reticulum instance and everything that crosses it.

Process wiring only; the logic lives in `workers.gateway` (see its package docstring). This is the
only process that imports RNS. Start-up order matters:

1. the mode is chosen (`shared`): attach to the host's shared Reticulum instance, own the
   interfaces, or (``shared_instance = attach`` with none running) wait for one, heartbeats
   going and `status` saying so, before anything below;
2. the boot generation is raised (before anything can be announced);
3. the Reticulum config is written from [reticulum] (or as a client of the shared instance)
   and the listen port checked, so a port already taken is reported here (log, ledger,
   `status`) instead of Reticulum's silent ``os._exit(255)``; a port another program holds
   will not free itself, so the worker exits with `EXIT_CONFIG` and is not restarted;
4. Reticulum is constructed, and our own SIGTERM/SIGINT handlers go back in right after
   (Reticulum's would ``os._exit`` and skip teardown);
5. the node restores its seat and state from the ledger and starts announcing.

Teardown closes links (peers see them close at once), flushes the ledger and runs
Reticulum's exit handler.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import signal
import time
from pathlib import Path
from typing import Any

import zmq

from akita import catalogue, exits, transport
from akita import identity as ident
from akita.ledger import chain
from akita.ledger.client import LedgerClient
from akita.mesh import budget, pacing
from akita.wire import events, protocol
from workers.base import Request, Worker
from workers.gateway import recovery, rnsconfig, shared, traffic
from workers.gateway.bridge import LoopBridge
from workers.gateway.defence import Defence
from workers.gateway.delegate import Delegator
from workers.gateway.ifstats import InterfaceWatch
from workers.gateway.intercluster import InterCluster
from workers.gateway.ledger_requests import LedgerRequests
from workers.gateway.links import Links
from workers.gateway.local import ExecutorWatch
from workers.gateway.node import NetNode
from workers.gateway.nomadpage import NomadPage
from workers.gateway.operators import OperatorAccess
from workers.gateway.replicate import ReplicationTiming, Replicator
from workers.gateway.rnsnode import InterfaceFailed, RnsNode, SharedInstanceGone

log = logging.getLogger(__name__)

EXIT_INTERFACE_FAILED = 3
LEDGER_FLUSH_S = 2.0
SHARED_PROBE_S = 1.0      # how often a waiting gateway looks for the shared instance


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
        self.ifwatch: InterfaceWatch | None = None
        self.instance = shared.locate(config.reticulum, Path.home())
        self.decision = shared.Decision(shared.Mode.OWN, "not decided yet", None)
        self._next_probe = 0.0
        self._wait_until: float | None = None  # auto, attached last time: own after this
        self._shared_online = True
        self._shared_lost = False
        self.operators: OperatorAccess | None = None
        self.page: NomadPage | None = None
        self.traffic: traffic.TrafficMeter | None = None
        self.timers: budget.Timers | None = None

    # --- start ----------------------------------------------------------------------------------

    def setup(self) -> None:
        assert self.ctx is not None
        self.ledger = LedgerClient(self.ctx, self.run_dir, "gateway")
        self.add_reader(self.ledger.sock, self.ledger.on_readable)
        self.bridge = LoopBridge()
        self.add_reader(self.bridge.fileno(), self.bridge.drain)
        ret = self.config.reticulum
        running = (ret.config_dir is None and ret.shared_instance != "own"
                   and self.instance.reachable())
        attached_before = rnsconfig.was_attached(ret, self.config.node.data_dir)
        self._set_decision(shared.decide(ret, self.instance, running, attached_before))
        if self.decision.mode is not shared.Mode.WAITING:
            self._start_network()
        elif ret.shared_instance == "auto":
            self._wait_until = time.monotonic() + shared.RETURN_WAIT_S

    def _set_decision(self, decision: shared.Decision) -> None:
        self.decision = decision
        self.note = f"reticulum {decision.mode.value}: {decision.why}"
        log.info("Reticulum mode %s: %s", decision.mode.value, decision.why)
        self._record(*events.GatewayReticulumMode(
            mode=decision.mode.value, why=decision.why,
            shared_instance=decision.instance.describe() if decision.instance else None).entry())

    def _start_network(self) -> None:
        assert self.ctx is not None and self.bridge is not None
        cfg = self.config
        data_dir = cfg.node.data_dir
        identity = ident.load_or_create(data_dir)
        generation = recovery.next_generation(data_dir)
        self.rns = self._start_reticulum(data_dir / ident.IDENTITY_FILE)
        self.defence = Defence()
        self.links = Links(self.bridge, self.rns.identity, self.rns.destination,
                           self.rns.peer_destination, self._admits,
                           cfg.security.max_request_bytes, self.defence)
        assert self.traffic is not None
        self.links.on_path = self.traffic.tag_link
        restored = recovery.load(chain.db_path(cfg))
        assert self.traffic is not None
        medium = budget.slowest(self._media())
        self.timers = budget.derive(cfg.cluster, medium)
        log.info("upkeep timers (%s): %s", self.timers.source, self.timers.as_dict())
        cfg = budget.resolve(cfg, self.timers)
        self.net = NetNode(cfg, identity, generation, self.rns, self.links, self.publish,
                           self._record, restored, self.tick_interval_s, self.defence)
        self.net.follow_budget(self.timers.state_refresh_s)
        pacer = pacing.Pacer.for_budget(self.timers, medium)
        self.net.pace(pacer)
        self.links.establish_timeout_s = pacer.establish_timeout_s
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
        self._start_operator_access()
        self._record(*events.GatewayStarted(
            node=identity.node_id, generation=generation, interfaces=self.rns.interfaces(),
            reticulum_mode=self.decision.mode.value,
            seat=recovery.seat_event(restored.seat, restored.term).to_data()).entry())
        log.info("gateway of node %s up: generation %d, destination %s", identity.node_id,
                 generation, self.rns.destination.hash.hex())

    def _start_reticulum(self, identity_path: Any) -> RnsNode:
        assert self.bridge is not None
        cfg = self.config
        rns = RnsNode(self.bridge, identity_path, cfg.channels.state_channel)
        attach = self.decision.instance if self.decision.mode is shared.Mode.ATTACHED else None
        self.traffic = traffic.for_config(cfg, rns.is_discovery_hash)
        traffic.install(self.traffic)
        try:
            if attach is None:
                rnsconfig.check_listen_port(cfg.reticulum)
            config_dir = rnsconfig.write(cfg.reticulum, cfg.node.data_dir, attach=attach)
            rns.start(config_dir,
                      on_announce=lambda *a: self._net().on_announce(*a),
                      on_packet=lambda data: self._net().on_packet(data),
                      require_shared=attach is not None, on_lost=self._on_shared_lost)
        except (rnsconfig.PortTaken, InterfaceFailed) as exc:
            self._interface_failed(str(exc))
        except SharedInstanceGone:
            self._exit_reported((
                f"the shared Reticulum instance at {self.instance.address()} stopped accepting "
                "clients while this node attached to it; starting again"), EXIT_INTERFACE_FAILED)
        # Reticulum's constructor put in handlers that os._exit(): ours only set a flag.
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.decision.mode is shared.Mode.CONFIG_DIR and rns.attached:
            self.note += " (attached to a shared instance)"
        self.ifwatch = InterfaceWatch(self._interface_stats)
        self.ifwatch.start()
        return rns

    def _media(self) -> list[budget.Medium]:
        """The interfaces the airtime budget is cut from: this instance's own or, attached
        to the host's shared instance, that instance's interfaces as it reports them (the
        node's own traffic leaves through them)."""
        assert self.traffic is not None and self.rns is not None
        if self.rns.attached and self.ifwatch is not None:
            self.ifwatch.refresh()
            slowest = self.ifwatch.slowest_bitrate()
            if slowest:
                return [budget.Medium(float(slowest),
                                      traffic.lora_for_bitrate(float(slowest), None),
                                      "the shared instance's slowest interface")]
        return traffic.media(self.traffic)

    def _interface_stats(self) -> Any:
        """Reticulum's interface statistics (on the watcher's thread). Attached, a rejected
        RPC key is read again from the instance's config directory: a shared instance that
        has just started accepts clients before it writes the identity the key comes from."""
        assert self.rns is not None
        try:
            return self.rns.interface_stats()
        except multiprocessing.AuthenticationError:
            fresh = shared.locate(self.config.reticulum, Path.home())
            if not self.rns.attached or fresh.rpc_key in (None, self.instance.rpc_key):
                raise
            assert fresh.rpc_key is not None
            self.instance = fresh
            self.rns.set_rpc_key(fresh.rpc_key)
            return self.rns.interface_stats()

    def _start_operator_access(self) -> None:
        """LXMF access when [operators] lists identities; the NomadNet page when asked."""
        assert self.bridge is not None and self.rns is not None and self.ctx is not None
        settings = self.config.operators
        if settings.identities:
            self.operators = OperatorAccess(self.config, self._net(), self.bridge,
                                            self._record)
            self.operators.start(self.rns.identity, self.ctx, self.run_dir)
            # The LXMF router, like Reticulum, put in handlers that end the process at once.
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        if settings.page != "off":
            self.page = NomadPage(self.config, self._net(), self.bridge)
            self.page.start(self.rns.identity, self.ctx, self.run_dir)
        for side in (self.operators, self.page):
            if side is not None and self.timers is not None:
                # Within the airtime budget: never announced more often than the node itself.
                side.announce_interval_s = max(side.announce_interval_s,
                                               self.timers.announce_interval_s)
            for source, callback in side.readers() if side is not None else []:
                self.add_reader(source, callback)

    def _interface_failed(self, reason: str) -> None:
        """Say which interface failed and what solves it (log, ledger, `status`), then exit:
        for the restart policy, or for good if another program holds what it needs."""
        message, permanent = shared.explain_failure(
            reason, self.config.reticulum, self.instance, self.instance.reachable())
        if permanent:
            exits.write_reason(self.run_dir, self.name, message)
        self._exit_reported(message,
                            exits.EXIT_CONFIG if permanent else EXIT_INTERFACE_FAILED)

    def _exit_reported(self, message: str, code: int) -> None:
        log.error("a Reticulum interface could not start: %s", message)
        assert self.ledger is not None
        self.ledger.record(events.GatewayInterfaceFailed(
            error=message, restarts_help=code != exits.EXIT_CONFIG))
        if not self.ledger.flush(LEDGER_FLUSH_S):
            log.warning("the ledger did not confirm the failure report in time")
        self.ledger.close()
        if self.bridge is not None:
            self.bridge.close()
        # From tick() (a waiting gateway) teardown runs next: nothing is left for it to close.
        self.ledger = self.bridge = None
        raise SystemExit(code)

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
        if self.net is None:
            if self.decision.mode is shared.Mode.WAITING and now >= self._next_probe:
                self._next_probe = now + SHARED_PROBE_S
                self._look_for_shared_instance()
            if self.ledger is not None:
                self.ledger.tick()
            return
        self._watch_shared_link()
        self._net().tick(now)
        if self.replicator is not None:
            self.replicator.tick(now)
        if self.messages is not None:
            self.messages.tick(now)
        if self.executor is not None:
            self.executor.tick(now)
        if self.delegator is not None:
            self.delegator.tick(now)
        if self.operators is not None:
            self.operators.tick(now)
        if self.page is not None:
            self.page.tick(now)
        if self.ledger is not None:
            self.ledger.tick()

    def _look_for_shared_instance(self) -> None:
        running = self.instance.reachable()
        if not running and (self._wait_until is None or time.monotonic() < self._wait_until):
            return
        self._set_decision(shared.decide(self.config.reticulum, self.instance, running))
        self._start_network()

    def _on_shared_lost(self) -> None:
        self._shared_lost = True

    def _watch_shared_link(self) -> None:
        """Attached: say when the shared instance goes and comes back. Reticulum reconnects
        by itself; the node re-announces when the link is up again (`NetNode.tick`)."""
        if self.rns is None or not self.rns.attached:
            return
        if self._shared_lost:
            message = (f"Reticulum gave up the connection to the shared instance at "
                       f"{self.instance.address()}; starting again to reattach")
            log.error("%s", message)
            self._record(*events.GatewaySharedInstance(
                address=self.instance.address(), connected=False, error=message).entry())
            raise SystemExit(EXIT_INTERFACE_FAILED)
        online = self.rns.shared_link_online()
        if online == self._shared_online:
            return
        self._shared_online = online
        where = self.instance.address()
        if online:
            log.info("reconnected to the shared Reticulum instance at %s", where)
            self.note = f"reticulum {self.decision.mode.value}: {self.decision.why}"
        else:
            log.warning("lost the shared Reticulum instance at %s; reconnecting", where)
            self.note = (f"reticulum {self.decision.mode.value}: lost the shared instance at "
                         f"{where}, reconnecting")
        self._record(*events.GatewaySharedInstance(address=where, connected=online).entry())

    def handle(self, request: Request) -> protocol.Message | None:
        msg = request.message
        if self.net is None:  # waiting for the shared instance
            if isinstance(msg, protocol.PeerStats):
                return protocol.PeerStatsReply(stats={"reticulum": self._reticulum_info()})
            return protocol.Error(code="not_ready", message=self.note)
        net = self.net
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
        stats["reticulum"] = self._reticulum_info()
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
        if self.operators is not None:
            stats["operators"] = self.operators.stats()
            stats["lxmf_address"] = self.operators.address
        if self.page is not None:
            stats["page"] = self.page.stats()
        return stats

    def _reticulum_info(self) -> dict[str, Any]:
        """Which mode is in force and why, and the interfaces the node's traffic crosses (the
        shared instance's when attached), with their bitrates as Reticulum reports them."""
        decision = self.decision
        attached = self.rns is not None and self.rns.attached
        info: dict[str, Any] = {
            "mode": "attached" if attached else decision.mode.value, "why": decision.why,
            "shared_instance": self.instance.describe() if attached else None,
            "ignored_keys": (shared.ignored_keys(self.config.reticulum)
                             if decision.mode is shared.Mode.ATTACHED else []),
            "connected": self.rns.shared_link_online() if attached and self.rns else None,
            "interfaces": [], "interfaces_error": "not started", "slowest_bitrate": None}
        if self.ifwatch is not None:
            interfaces, error, _read_at = self.ifwatch.snapshot()
            if error is not None and attached and self.instance.rpc_key is None:
                error += (": the shared instance's RPC key is unknown; set [reticulum] "
                          "shared_instance_dir to its Reticulum config directory")
            info.update(interfaces=interfaces, interfaces_error=error,
                        slowest_bitrate=self.ifwatch.slowest_bitrate())
        return info

    # --- stop -----------------------------------------------------------------------------------

    def teardown(self) -> None:
        if self.net is not None:
            self.net.say_goodbye()
        if self.links is not None:
            self.links.close()
        for operator_side in (self.operators, self.page):
            if operator_side is not None:
                operator_side.close()
        if self.ledger is not None:
            self._record(*events.GatewayStopped().entry())
            if not self.ledger.flush(LEDGER_FLUSH_S):
                log.warning("the ledger did not confirm every event before shutdown")
        if self.ifwatch is not None:
            self.ifwatch.close()
        if self.rns is not None:
            self.rns.shutdown()
        for closable in (self.executor, self.delegator, self.replicator, self.ledger,
                         self.bridge):
            if closable is not None:
                closable.close()
        if self.bus is not None:
            self.bus.close(linger=0)
