"""Operator commands on the process table: start, stop, restart one worker; apply a reload.

They change what the table will do and return at once; the table's `check()` carries the
change out (forks, signals) in the supervisor's loop, so a command never blocks the node.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from akita import catalogue
from akita import config as config_mod
from akita.errors import ConfigError
from akita.wire import events
from supervisor.process import WorkerProcess, WorkerSpec, WorkerState
from supervisor.table import ProcessTable

log = logging.getLogger(__name__)

Failure = tuple[str, str]  # (error code, message)


def operate(table: ProcessTable, verb: str, name: str) -> Failure | None:
    """Carry out `verb` (start | stop | restart) on worker `name`; a failure or None."""
    if table.shutting_down:
        return "shutting_down", "the node is shutting down"
    proc = table.procs.get(name)
    if proc is None or proc.remove_after_stop:
        configured = ", ".join(table.config.supervisor.workers) or "(none)"
        return "unknown_worker", f"no worker {name!r}; configured: {configured}"
    if verb == "start":
        return _start(table, proc)
    if verb == "stop":
        return _stop(table, proc)
    if verb == "restart":
        return _restart(table, proc)
    return "unknown_request", f"unknown verb {verb!r}"


def _start(table: ProcessTable, proc: WorkerProcess) -> Failure | None:
    if proc.state in (WorkerState.STARTING, WorkerState.RUNNING):
        return "already_running", f"{proc.name} is {proc.state.value} (pid {proc.pid})"
    if proc.state is WorkerState.STOPPING:
        proc.restart_after_stop = True
        return None
    if proc.state is WorkerState.FATAL:
        log.info("%s: operator start after FATAL; restart history cleared", proc.name)
    proc.reset_for_operator_start()
    log.info("%s: started by the operator", proc.name)
    table.spawn(proc)
    return None


def _stop(table: ProcessTable, proc: WorkerProcess) -> Failure | None:
    if proc.state in (WorkerState.BACKOFF, WorkerState.FATAL):
        proc.cancel()
        table.host.worker_changed(proc)
        return None
    if proc.state is WorkerState.STOPPED:
        return "not_running", f"{proc.name} is not running"
    proc.restart_after_stop = False
    if proc.state is not WorkerState.STOPPING:
        log.info("%s: stopped by the operator", proc.name)
        stop(table, proc)
    return None


def _restart(table: ProcessTable, proc: WorkerProcess) -> Failure | None:
    if proc.state in (WorkerState.STARTING, WorkerState.RUNNING, WorkerState.STOPPING):
        log.info("%s: restarted by the operator", proc.name)
        if proc.state is not WorkerState.STOPPING:
            stop(table, proc)
        proc.restart_after_stop = True
        return None
    return _start(table, proc)


def stop(table: ProcessTable, proc: WorkerProcess) -> None:
    """SIGTERM a starting or running worker; SIGKILL follows after its stop_timeout."""
    table.terminate(proc, time.monotonic())


# --- reload -------------------------------------------------------------------------------


@dataclass
class Changes:
    restarted: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)

    def as_event(self) -> events.ConfigReloaded:
        return events.ConfigReloaded(restarted=self.restarted, started=self.started,
                                     stopped=self.stopped)

    def describe(self) -> str:
        parts = [f"{what}: {', '.join(names)}" for what, names in self.as_event().to_data().items()
                 if names and isinstance(names, list)]
        return "; ".join(parts) or "no worker changed"


def check_compatible(old: config_mod.Config, new: config_mod.Config) -> None:
    """Refuse a reload that moves the directories the running supervisor holds open."""
    for key in ("data_dir", "run_dir", "log_dir"):
        if getattr(old.node, key) != getattr(new.node, key):
            raise ConfigError(f"changing {key} needs a restart of the node, not a reload",
                              path=str(new.path), section="node", key=key)


def apply(table: ProcessTable, new: config_mod.Config) -> Changes:
    """Switch the table to `new`: restart changed workers, start added, stop removed ones."""
    old = table.config
    table.config = new
    changes = Changes()
    wanted = set(new.supervisor.workers)
    for name in catalogue.WORKER_ORDER:
        proc = table.procs.get(name)
        if name in wanted and (proc is None or proc.remove_after_stop):
            _add(table, new, name, proc)
            changes.started.append(name)
        elif name not in wanted and proc is not None and not proc.remove_after_stop:
            _remove(table, proc)
            changes.stopped.append(name)
        elif proc is not None and old.worker_settings(name) != new.worker_settings(name):
            proc.spec = WorkerSpec(name, new.workers[name])
            if proc.state in (WorkerState.STARTING, WorkerState.RUNNING):
                stop(table, proc)
                proc.restart_after_stop = True
                changes.restarted.append(name)
            elif proc.state is WorkerState.FATAL and not table.shutting_down:
                # A new config may have removed the cause (a configuration error waits
                # for exactly this): try it at once.
                proc.reset_for_operator_start()
                table.spawn(proc)
                changes.restarted.append(name)
    return changes


def _add(table: ProcessTable, new: config_mod.Config, name: str,
         proc: WorkerProcess | None) -> None:
    if proc is None:
        proc = WorkerProcess(WorkerSpec(name, new.workers[name]))
        table.procs[name] = proc
    else:  # removed by an earlier reload and still stopping: keep it after all
        proc.remove_after_stop = False
        proc.spec = WorkerSpec(name, new.workers[name])
        proc.restart_after_stop = True
        return
    table.start_queue.append(name)
    table.dirty = True


def _remove(table: ProcessTable, proc: WorkerProcess) -> None:
    proc.remove_after_stop = True
    if proc.state in (WorkerState.STARTING, WorkerState.RUNNING):
        stop(table, proc)
    elif proc.state is not WorkerState.STOPPING:
        if proc.state is not WorkerState.STOPPED:
            proc.cancel()
            table.host.worker_changed(proc)
        del table.procs[proc.name]
