"""The supervisor's event loop: one poller over every socket, pipe and signal it watches.

Everything the supervisor reacts to arrives as a readable descriptor: the zygote's socket
(a worker exited), the requests the control thread hands over, the bus, the forwarding
sockets, the ledger client, each worker's output pipe, and a self-pipe that signal handlers
write to (they only set a flag; `signal.set_wakeup_fd` makes the loop notice at once).
Timers (backoff, stop timeouts, heartbeat deadlines) bound the poll timeout; nothing is
polled on a fixed beat.

The control socket itself is served by a thread of its own (`supervisor.control_thread`),
which answers ping and node.status without waking this loop. It reads the process table
only through the `StatusSnapshot` this loop publishes whenever the table may have changed:
after a worker changes state, after each check of the table, and after a reload.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from akita import catalogue, rundir
from akita import config as config_mod
from akita.errors import ConfigError
from akita.identity import NodeIdentity, destination_hash
from akita.ledger.client import LedgerClient
from akita.wire import events, protocol
from supervisor import commands
from supervisor.bus import Bus
from supervisor.control import ControlServer
from supervisor.logs import LogFiles, OutputPipe
from supervisor.process import WorkerProcess, WorkerState
from supervisor.signals import SignalFlags
from supervisor.status import ResourceView, StatusBoard, StatusSnapshot
from supervisor.systemd import SystemdNotifier
from supervisor.table import ProcessTable
from workers.zygote import Zygote

if TYPE_CHECKING:
    from supervisor.httpd import OperatorPages

log = logging.getLogger(__name__)

LEDGER_FLUSH_TIMEOUT_S = 2.0
_IDLE_WAKEUP_S = 1.0    # longest sleep: expiry of forwarded requests is checked this often
_LEDGER_TICK_S = 0.1    # while ledger events are unacknowledged
_UP_STATES = (WorkerState.STARTING, WorkerState.RUNNING)


class Supervisor:
    """One node's supervisor process, from its first worker start to its exit."""

    def __init__(self, config: config_mod.Config, identity: NodeIdentity,
                 zygote: Zygote, systemd: SystemdNotifier | None = None) -> None:
        self.config = config
        self.systemd = systemd or SystemdNotifier(None, None)
        self.identity = identity
        self.started_at = time.monotonic()
        self.ctx = zmq.Context()
        self.poller = zmq.Poller()
        self._readers: dict[Any, Callable[[], None]] = {}
        self.signals = SignalFlags()
        self.resources = ResourceView()
        self._table_due = 0.0
        self._ledger_due = 0.0
        self.exit_code = 0
        self.logs = LogFiles(config.node.log_dir, config.supervisor.log_max_bytes,
                             config.supervisor.log_backups)
        run_dir = config.node.run_dir
        self.bus = Bus(self.ctx, run_dir, {"worker.heartbeat": self._on_heartbeat,
                                           "resource.sample": self.resources.on_sample})
        self.status_board = StatusBoard(
            StatusSnapshot(identity.node_id, config.node.name, os.getpid(), self.started_at,
                           str(config.path), str(run_dir), workers=()),
            self.resources, self._bad_frames, _status_extra(config, identity))
        self.control = ControlServer(self.ctx, run_dir, self._verbs(), self._read_only_verbs(),
                                     self._is_up, self._watch)
        self.ledger: LedgerClient | None = None
        self.pages: OperatorPages | None = None  # /metrics and the dashboard, once running
        if catalogue.LEDGER in config.supervisor.workers:
            self._open_ledger()
        self.table = ProcessTable(config, zygote, self.logs, self)
        self.status_board.publish(self.table.ordered())
        self._watch(self.bus.sub, self.bus.on_message)
        self._watch(self.control.sock, self.control.on_request)
        self._watch(zygote.fileno(), self._on_zygote)
        self._watch(self.signals.fileno(), self.signals.drain)

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers, serve until asked to stop, stop the workers; returns the exit
        code: 0, or 1 if the node stopped because its control socket failed."""
        self.signals.install()
        names = list(self.config.supervisor.workers)
        log.info("node %s (%s) starting workers %s", self.config.node.name,
                 self.identity.node_id, ", ".join(names) or "(none)")
        self.record(events.NodeStarted(pid=os.getpid(), workers=names))
        self.table.start_all()
        self.control.start()
        if self.config.metrics.listen is not None:
            # Imported only when asked for: prometheus_client costs ~5 MB in this process.
            from supervisor.httpd import OperatorPages

            self.pages = OperatorPages.start(self.config, lambda: self.status_board.snapshot)
        try:
            while not (self.table.shutting_down and self.table.all_stopped()):
                self._step()
        finally:
            self._close()
        log.info("node %s stopped", self.config.node.name)
        return self.exit_code

    def _step(self) -> None:
        if self.signals.shutdown_requested and not self.table.shutting_down:
            log.info("stopping workers: %s", ", ".join(
                p.name for p in reversed(self.table.ordered())) or "(none)")
            self.table.stop_all()
            self.systemd.stopping()
        if self.signals.take_reload():
            self.reload()
        now = time.monotonic()
        # The table is checked when something changed it or a deadline of its came due; a
        # control request alone does neither, which keeps its round trip short.
        if self.table.dirty or now >= self._table_due:
            self._table_due = now + self.table.check()
            self.status_board.publish(self.table.ordered())
        timeout_s = min(self._table_due - now, _IDLE_WAKEUP_S)
        self._notify_systemd(now)
        watchdog_due_s = self.systemd.next_due_s(now)
        if watchdog_due_s is not None:
            timeout_s = min(timeout_s, watchdog_due_s)
        if self.ledger is not None and self.ledger.pending():
            if now >= self._ledger_due:
                self.ledger.tick()
                self._ledger_due = now + _LEDGER_TICK_S
            timeout_s = min(timeout_s, _LEDGER_TICK_S)
        if self.control.pending:
            self.control.expire(now)
        if not self.control.serving() and not self.table.shutting_down:
            log.error("the control thread has stopped; stopping the node")
            self.signals.shutdown_requested = True
            self.exit_code = 1
        if self.table.shutting_down and self.table.all_stopped():
            return
        timeout_s = max(0.0, timeout_s)
        for source, _event in self.poller.poll(int(timeout_s * 1000) + 1):
            callback = self._readers.get(source)
            if callback is not None:
                callback()

    def _notify_systemd(self, now: float) -> None:
        """READY/STATUS/WATCHDOG from this loop only: a hung loop stops the pings."""
        if self.systemd.enabled:
            self.systemd.tick(now, {p.name: p.state.value for p in self.table.ordered()},
                              self.table.shutting_down)

    def _watch(self, source: Any, callback: Callable[[], None]) -> None:
        self._readers[source] = callback
        self.poller.register(source, zmq.POLLIN)

    def _unwatch(self, source: Any) -> None:
        if self._readers.pop(source, None) is not None:
            self.poller.unregister(source)

    # --- what the process table asks of us ---------------------------------------------

    def worker_changed(self, proc: WorkerProcess) -> None:
        # Published before any reply to the request that caused the change leaves, so a
        # client that was told "restart sampler" and then asks for the status sees it.
        self.status_board.publish(self.table.ordered())
        self.bus.publish("worker.state", protocol.WorkerState(
            name=proc.name, state=proc.state.value, pid=proc.pid, exit_code=proc.exit_code,
            exit_signal=proc.exit_signal, detail=proc.last_error))
        if proc.state not in _UP_STATES:
            self.control.worker_down(proc.name)

    def record(self, event: events.Event) -> None:
        """Append a supervisor event to the ledger (queued until the ledger worker runs)."""
        if self.ledger is not None:
            self.ledger.record(event)

    def watch_output(self, pipe: OutputPipe) -> None:
        def drain() -> None:
            if not pipe.drain():
                self._unwatch(pipe.fd)
                pipe.close()

        self._watch(pipe.fd, drain)

    def zygote_replaced(self, old_fd: int, new: Zygote) -> None:
        self._unwatch(old_fd)
        self._watch(new.fileno(), self._on_zygote)

    def before_stop(self, name: str) -> None:
        if name != catalogue.LEDGER or self.ledger is None:
            return
        self.record(events.NodeStopped(pid=os.getpid()))
        if not self.ledger.flush(LEDGER_FLUSH_TIMEOUT_S):
            log.warning("%d ledger events were not acknowledged before the ledger stopped",
                        self.ledger.pending())

    def _on_zygote(self) -> None:
        self.table.on_zygote_readable()

    def _open_ledger(self) -> None:
        self.ledger = LedgerClient(self.ctx, self.config.node.run_dir, "supervisor")
        self._watch(self.ledger.sock, self.ledger.on_readable)

    # --- bus ----------------------------------------------------------------------------

    def _on_heartbeat(self, msg: protocol.Message) -> None:
        if isinstance(msg, protocol.Heartbeat):
            self.table.heartbeat(msg.name, msg.pid, msg.note)

    # --- control verbs ------------------------------------------------------------------

    def _read_only_verbs(self) -> dict[str, Callable[[Any, int | None], bytes]]:
        """Verbs the control thread answers: they read only the published status board."""
        pid = os.getpid()
        return {
            protocol.Ping.KIND: lambda msg, rid: protocol.encode(protocol.Pong(
                name="supervisor", pid=pid, payload=msg.payload), rid=rid),
            protocol.NodeStatus.KIND: lambda _msg, rid: self.status_board.encoded_reply(rid),
        }

    def _verbs(self) -> dict[str, Callable[[Any], protocol.Message]]:
        """Verbs this loop answers: they change the process table."""
        return {
            protocol.WorkerStart.KIND: lambda msg: self._operate("start", msg.name),
            protocol.WorkerStop.KIND: lambda msg: self._operate("stop", msg.name),
            protocol.WorkerRestart.KIND: lambda msg: self._operate("restart", msg.name),
            protocol.NodeShutdown.KIND: lambda _msg: self._request_shutdown(),
            protocol.NodeReload.KIND: lambda _msg: self.reload(),
        }

    def _is_up(self, worker: str) -> bool:
        proc = self.table.procs.get(worker)
        return proc is not None and proc.state in _UP_STATES

    def _request_shutdown(self) -> protocol.Message:
        self.signals.shutdown_requested = True
        return protocol.Ok(detail="shutting down")

    def _operate(self, verb: str, name: str) -> protocol.Message:
        failure = commands.operate(self.table, verb, name)
        if failure is not None:
            return protocol.Error(code=failure[0], message=failure[1])
        return protocol.Ok(detail=f"{verb} {name}")

    def _bad_frames(self) -> int:
        """Read by the control thread: two counters this loop only ever increments."""
        return self.control.counters["bad_frames"] + self.bus.bad_frames

    # --- reload -------------------------------------------------------------------------

    def reload(self) -> protocol.Message:
        """Re-read the config file; restart only the workers whose settings changed."""
        if self.table.shutting_down:
            return protocol.Error(code="shutting_down", message="the node is shutting down")
        try:
            new = config_mod.load(self.config.path)
            commands.check_compatible(self.config, new)
        except ConfigError as exc:
            log.error("reload failed, keeping the running config: %s", exc)
            self.record(events.ConfigReloadFailed(error=str(exc)))
            return protocol.Error(code="reload_failed", message=str(exc))
        changes = commands.apply(self.table, new)
        self.config = new
        self.logs.configure(new.supervisor.log_max_bytes, new.supervisor.log_backups)
        if self.ledger is None and catalogue.LEDGER in new.supervisor.workers:
            self._open_ledger()
        self.status_board.extra = _status_extra(new, self.identity)
        self.status_board.publish(self.table.ordered(), name=new.node.name)
        log.info("config reloaded: %s", changes.describe())
        self.record(changes.as_event())
        return protocol.Ok(detail=changes.describe())

    # --- exit ---------------------------------------------------------------------------

    def _close(self) -> None:
        if self.pages is not None:
            self.pages.stop()
        self.systemd.close()
        self.signals.close()
        if self.ledger is not None:
            self.ledger.close()
        self.control.close()
        self.bus.close()
        self.ctx.destroy(linger=0)
        self.logs.close()
        self.table.forks.close()
        run_dir = self.config.node.run_dir
        for name in rundir.socket_names():
            try:
                rundir.socket_path(run_dir, name).unlink()
            except FileNotFoundError:
                pass


def _status_extra(config: config_mod.Config, identity: NodeIdentity) -> dict[str, Any]:
    """Node fields of `node.status` that only the config changes: the LXMF address, when
    the gateway runs operator access (it is derived from the node identity)."""
    if catalogue.GATEWAY not in config.supervisor.workers or not config.operators.identities:
        return {}
    return {"lxmf_address": destination_hash(identity.node_id, "lxmf.delivery")}
