"""The process table: forks workers through the zygote, learns of their deaths, applies the
restart policy, enforces liveness, and starts and stops workers in order.

Deaths are learned from the zygote's exit reports (its socket becomes readable the moment it
reaps a child), never from a polling timer. The timers here are the ones the policy needs:
backoff delays, stop timeouts and heartbeat deadlines, all checked by `check()`, which the
supervisor's loop calls after every wakeup and which returns when it next needs to run.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Protocol

from akita import catalogue, exits
from akita import config as config_mod
from akita.wire import events
from supervisor.forks import ForkServers
from supervisor.logs import LogFiles, OutputPipe
from supervisor.process import ACTIVE_STATES, WorkerProcess, WorkerSpec, WorkerState
from workers.zygote import Zygote, ZygoteError

log = logging.getLogger(__name__)


def zygote_preload() -> list[str]:
    """The modules the zygote imports so a fork starts warm: the catalogue's preloads that
    are present (a worker module may be left out of an installation)."""
    import importlib.util

    return [name for name in catalogue.preload() if importlib.util.find_spec(name) is not None]


class TableHost(Protocol):
    """What the process table needs from the supervisor around it."""

    def worker_changed(self, proc: WorkerProcess) -> None: ...
    def record(self, event: events.Event) -> None: ...
    def watch_output(self, pipe: OutputPipe) -> None: ...
    def zygote_replaced(self, old_fd: int, new: Zygote) -> None: ...
    def before_stop(self, name: str) -> None: ...


class ProcessTable:
    """Every configured worker's `WorkerProcess`, and the operations on them."""

    def __init__(self, config: config_mod.Config, zygote: Zygote, logs: LogFiles,
                 host: TableHost) -> None:
        self.config = config
        self.forks = ForkServers(zygote, zygote_preload(), host.zygote_replaced,
                                 config.supervisor.workers)
        self.logs = logs
        self.host = host
        self.procs: dict[str, WorkerProcess] = {}
        self.by_pid: dict[int, WorkerProcess] = {}
        self.start_queue: list[str] = []
        self.stop_queue: list[str] = []
        self.shutting_down = False
        self.dirty = True  # something changed since the last check(): run it again
        self._gate: tuple[str, float] | None = None  # (worker started last, its deadline)
        for name in config.supervisor.workers:
            self.procs[name] = WorkerProcess(WorkerSpec(name, config.workers[name]))

    # --- ordered start and stop ---------------------------------------------------------

    def start_all(self) -> None:
        """Queue every configured worker; each starts once the previous one is running."""
        self.start_queue = [name for name in catalogue.WORKER_ORDER if name in self.procs]
        self.dirty = True

    def stop_all(self) -> None:
        """Stop every worker in reverse start order, one after the other; no more restarts."""
        self.shutting_down = True
        self.start_queue.clear()
        self.stop_queue = [name for name in reversed(catalogue.WORKER_ORDER)
                           if name in self.procs]
        self.dirty = True

    def all_stopped(self) -> bool:
        return not self.by_pid and not self.stop_queue

    def ordered(self) -> list[WorkerProcess]:
        return [self.procs[name] for name in catalogue.WORKER_ORDER if name in self.procs]

    # --- events -------------------------------------------------------------------------

    def on_zygote_readable(self) -> None:
        for zygote in self.forks.all():
            try:
                events = zygote.events()
            except ZygoteError as exc:
                self._replace_zygote(zygote, str(exc))
                continue
            for event in events:
                self.on_exit(event.pid, event.returncode)

    def on_exit(self, pid: int, returncode: int) -> None:
        self.forks.reaped(pid)
        proc = self.by_pid.pop(pid, None)
        if proc is None:
            return
        now = time.monotonic()
        self.dirty = True
        cause = proc.kill_cause or ("stop_requested" if proc.state is WorkerState.STOPPING
                                    else "exited")
        reason = (exits.take_reason(self.config.node.run_dir, proc.name)
                  if returncode == exits.EXIT_CONFIG else "")
        outcome = proc.exited(returncode, now, reason)
        # An immediate restart is forked first: the new worker starts while the exit is
        # logged, recorded and published (its own start is recorded after the exit).
        restart_now = (outcome.state is WorkerState.BACKOFF and outcome.delay_s == 0
                       and not self.shutting_down and not proc.remove_after_stop)
        new_pid = self._fork_with_retry(proc) if restart_now else None
        log.log(logging.INFO if cause == "stop_requested" else logging.WARNING,
                "%s (pid %d) %s; cause: %s; now %s", proc.name, pid,
                proc.describe_exit(returncode), cause, outcome.state.value)
        self.host.record(events.WorkerExited(
            name=proc.name, pid=pid, exit_code=proc.exit_code, signal=proc.exit_signal,
            cause=cause))
        if outcome.state is WorkerState.BACKOFF and self.shutting_down:
            proc.cancel()
        if outcome.state is WorkerState.FATAL:
            log.error("%s is FATAL: %s%s", proc.name, proc.last_error,
                      "" if proc.restart_due else "; it waits for an operator or a reload")
            self.host.record(events.WorkerFatal(
                name=proc.name, restarts=proc.restarts, window_s=proc.settings.restart_window,
                error=proc.last_error or None, retry_in_s=outcome.delay_s))
        self.host.worker_changed(proc)
        if proc.remove_after_stop:
            del self.procs[proc.name]
        elif new_pid is not None:
            self._spawned(proc, new_pid)

    def heartbeat(self, name: str, pid: int, note: str = "") -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.pid == pid and proc.note != note:
            proc.note = note
            self.host.worker_changed(proc)
        if proc is not None and proc.pid == pid and proc.heartbeat(time.monotonic()):
            log.info("%s running (pid %d)", name, pid)
            self.dirty = True  # the next worker in the start order may go now
            self.host.worker_changed(proc)

    def check(self) -> float:
        """Run what is due (restarts, kills, the next start or stop); return seconds to the
        next thing that will be due."""
        # Exits the zygote reported while we waited for a spawn reply were read off its socket
        # then, so the poller will not flag them: take them now.
        self.on_zygote_readable()
        now = time.monotonic()
        self.dirty = False
        next_due = now + 3600.0
        for proc in list(self.procs.values()):
            next_due = min(next_due, self._check_one(proc, now))
        self._advance_start(now)
        self._advance_stop(now)
        if self.start_queue and self._gate is not None:
            next_due = min(next_due, self._gate[1])
        return max(0.0, next_due - time.monotonic())

    def _check_one(self, proc: WorkerProcess, now: float) -> float:
        if proc.state is WorkerState.FATAL and proc.restart_due is not None \
                and not self.shutting_down:
            if now >= proc.restart_due:
                self._retry_fatal(proc)
                return now + proc.settings.heartbeat_timeout
            return proc.restart_due
        if proc.state is WorkerState.BACKOFF and proc.restart_due is not None:
            if now >= proc.restart_due:
                self.spawn(proc)
                return now + proc.settings.heartbeat_timeout
            return proc.restart_due
        if proc.state is WorkerState.STOPPING and proc.stop_deadline is not None:
            if now >= proc.stop_deadline and not proc.kill_cause:
                log.warning("%s did not stop within %g s; killing it", proc.name,
                            proc.settings.stop_timeout)
                self._kill(proc, "stop_timeout",
                           f"still running {proc.settings.stop_timeout:g} s after SIGTERM")
            return proc.stop_deadline if now < proc.stop_deadline else now + 1.0
        if proc.heartbeat_overdue(now):
            log.warning("%s (pid %s) sent no heartbeat for %.1f s; killing it", proc.name,
                        proc.pid, now - proc.last_heartbeat)
            self._kill(proc, "heartbeat_timeout",
                       f"no heartbeat for {proc.settings.heartbeat_timeout:g} s")
        if proc.state in (WorkerState.STARTING, WorkerState.RUNNING) and not proc.kill_cause:
            return proc.last_heartbeat + proc.settings.heartbeat_timeout
        return now + 3600.0

    def _retry_fatal(self, proc: WorkerProcess) -> None:
        cooldown_s = proc.fatal_cooldown_s()
        proc.retry_after_cooldown()
        log.warning("%s: FATAL for %g s; trying again (retry %d)", proc.name, cooldown_s,
                    proc.fatal_retries)
        self.host.record(events.WorkerFatalRetry(name=proc.name, retry=proc.fatal_retries,
                                                 after_s=cooldown_s))
        self.spawn(proc)

    def _advance_start(self, now: float) -> None:
        while self.start_queue:
            if self._gate is not None:
                gate = self.procs.get(self._gate[0])
                if (gate is not None and gate.state is WorkerState.STARTING
                        and now < self._gate[1]):
                    return
                self._gate = None
            proc = self.procs.get(self.start_queue.pop(0))
            if proc is None or proc.state in ACTIVE_STATES:
                continue
            self.spawn(proc)
            if proc.state is WorkerState.STARTING:
                self._gate = (proc.name, now + proc.settings.heartbeat_timeout)

    def _advance_stop(self, now: float) -> None:
        while self.stop_queue:
            proc = self.procs.get(self.stop_queue[0])
            if proc is None or proc.state not in ACTIVE_STATES:
                if proc is not None and proc.state is WorkerState.BACKOFF:
                    proc.cancel()
                    self.host.worker_changed(proc)
                self.stop_queue.pop(0)
                continue
            if proc.state is not WorkerState.STOPPING:
                self.host.before_stop(proc.name)
                self.terminate(proc, now)
            return

    # --- actions ------------------------------------------------------------------------

    def spawn(self, proc: WorkerProcess) -> None:
        """Fork a new incarnation of `proc` with the current config.

        If the zygote fails, it is replaced and the fork tried once more; if that fails too,
        the worker keeps its state and a pending restart is retried a second later.
        """
        pid = self._fork_with_retry(proc)
        if pid is not None:
            self._spawned(proc, pid)

    def _fork_with_retry(self, proc: WorkerProcess) -> int | None:
        """The new pid of `proc`, or None when it could not be forked (see `spawn`)."""
        for attempt in (1, 2):
            try:
                return self._fork(proc)
            except (ZygoteError, OSError) as exc:
                if attempt == 2:
                    log.error("cannot start %s: %s", proc.name, exc)
                    proc.last_error = f"cannot start: {exc}"
                    if proc.state is WorkerState.BACKOFF or proc.restart_due is not None:
                        proc.restart_due = time.monotonic() + 1.0
                    return None
                self._replace_zygote(self.forks.for_worker(proc.name),
                                     f"starting {proc.name} failed: {exc}")
                if proc.state in ACTIVE_STATES:
                    return None  # replacing the zygote restarted it already
        return None

    def _spawned(self, proc: WorkerProcess, pid: int) -> None:
        proc.spawned(pid, time.monotonic())
        self.dirty = True
        self.by_pid[pid] = proc
        log.info("%s started (pid %d, restarts %d)", proc.name, pid, proc.restarts)
        self.host.record(events.WorkerStarted(name=proc.name, pid=pid, restarts=proc.restarts))
        self.host.worker_changed(proc)

    def _fork(self, proc: WorkerProcess) -> int:
        pipe, write_fd = self.logs.pipe_for(proc.name)
        args = {"name": proc.name, "config_path": str(self.config.path),
                "config_text": self.config.text, "run_dir": str(self.config.node.run_dir)}
        zygote = self.forks.for_worker(proc.name)
        try:
            pid = zygote.spawn(catalogue.WORKER_MAIN, args, fds={1: write_fd, 2: write_fd})
            self.forks.forked(pid, zygote)
        except BaseException:
            pipe.close()
            raise
        finally:
            os.close(write_fd)
        self.host.watch_output(pipe)
        return pid

    def terminate(self, proc: WorkerProcess, now: float) -> None:
        """SIGTERM a starting or running worker; SIGKILL follows after its stop_timeout."""
        proc.stopping(now)
        self.dirty = True
        self._signal(proc, signal.SIGTERM)
        self.host.worker_changed(proc)

    def _kill(self, proc: WorkerProcess, cause: str, detail: str) -> None:
        proc.killed(cause, detail)
        self._signal(proc, signal.SIGKILL)

    @staticmethod
    def _signal(proc: WorkerProcess, sig: int) -> None:
        if proc.pid is None:
            return
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass  # already dead: its exit report is on its way

    def _replace_zygote(self, zygote: Zygote, why: str) -> None:
        """A fork server died or hangs: start a new one; its children died with it."""
        log.error("zygote (pid %d) lost: %s; starting a new one", zygote.pid, why)
        orphans = self.forks.children_of(zygote)
        self.forks.replace(zygote)
        for pid in orphans:
            proc = self.by_pid.get(pid)
            if proc is None:
                continue
            if not proc.kill_cause:
                proc.killed("zygote_exited", "the zygote exited")
            self._signal(proc, signal.SIGKILL)
            self.on_exit(pid, -signal.SIGKILL)
