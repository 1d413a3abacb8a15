"""The sampler worker: measures the host and every node process with psutil, publishes a
`resource.sample` on the bus every `interval` seconds, and raises or clears alerts.

Processes are found from the supervisor down its process tree, so a task process appears
without anyone telling the sampler about it; worker names come from their heartbeats on the
bus. `psutil.Process` objects are kept between samples because a process's CPU percentage is
measured against its previous reading. An alert goes on the bus and into the ledger; the
samples themselves only go on the bus.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import apsw
import psutil
import zmq

from akita import catalogue, resources, rundir, transport
from akita.errors import ProtocolError
from akita.ledger import chain
from akita.ledger.client import LedgerClient
from akita.wire import events, protocol
from workers.base import Worker

log = logging.getLogger(__name__)

ALERT_KIND = events.ResourceAlert.KIND  # published on the bus as protocol.ResourceAlert too
# The module a fork server runs: its command line tells a zygote from the children it forks.
_ZYGOTE_MODULE = "workers.zygote"
BUSY_TICK_S = 0.1  # the tick while ledger events wait for their acknowledgement
BUS_BATCH = 1000
# Worker states after which its pid no longer names that worker.
_GONE_STATES = {"stopped", "exited", "fatal", "backoff"}

_DISK_COUNTERS = ("read_bytes", "write_bytes", "read_count", "write_count")
_NET_COUNTERS = ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "errin", "errout",
                 "dropin", "dropout")


class HostSampler:
    """Host-wide figures: CPU, load, memory, swap, disk usage of one directory, I/O rates."""

    def __init__(self, disk_path: Path) -> None:
        self.disk_path = disk_path
        self._last_io: tuple[float, dict[str, float], dict[str, float]] | None = None
        psutil.cpu_percent(percpu=True)  # the first reading only starts the measurement
        self._io_rates()

    def sample(self) -> dict[str, Any]:
        per_core = psutil.cpu_percent(percpu=True)
        memory = psutil.virtual_memory()
        swap = psutil.swap_memory()
        disk = psutil.disk_usage(str(_existing(self.disk_path)))
        disk_io, net_io = self._io_rates()
        return {
            resources.CPU: round(sum(per_core) / len(per_core), 1) if per_core else 0.0,
            "cpu_per_core": per_core,
            "cpu_count": len(per_core),
            "load_avg": list(os.getloadavg()),
            "memory": {"total": memory.total, "available": memory.available,
                       "used": memory.used, "percent": memory.percent},
            "swap": {"total": swap.total, "used": swap.used, "percent": swap.percent},
            "disk": {"path": str(self.disk_path), "total": disk.total, "used": disk.used,
                     "free": disk.free, "percent": disk.percent},
            "disk_io": disk_io,
            "net_io": net_io,
        }

    def _io_rates(self) -> tuple[dict[str, float | None], dict[str, float | None]]:
        now = time.monotonic()
        disk = _counters(psutil.disk_io_counters(), _DISK_COUNTERS)
        net = _counters(psutil.net_io_counters(), _NET_COUNTERS)
        last = self._last_io
        self._last_io = (now, disk, net)
        elapsed = now - last[0] if last else 0.0
        return (resources.rates(last[1] if last else None, disk, elapsed),
                resources.rates(last[2] if last else None, net, elapsed))


def _counters(reading: Any, names: tuple[str, ...]) -> dict[str, float]:
    # psutil returns None where the host has no such counters (some containers).
    return {} if reading is None else {name: float(getattr(reading, name)) for name in names}


def _existing(path: Path) -> Path:
    """`path` or its nearest existing parent: the data directory may not exist yet."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class ProcessSampler:
    """Per-process figures for the supervisor and all its descendants."""

    def __init__(self, supervisor_pid: int, uss_every: int) -> None:
        self.supervisor_pid = supervisor_pid
        self.uss_every = uss_every
        self.workers: dict[int, str] = {}  # pid → worker name, from the bus
        self._procs: dict[int, psutil.Process] = {}
        self._zygote: dict[int, bool] = {}
        self._uss: dict[int, int] = {}
        self._count = 0

    def sample(self) -> list[dict[str, Any]]:
        children = self._tree()
        alive = set(children)
        for gone in set(self._procs) - alive:
            self._drop(gone)
        for gone in set(self.workers) - alive:
            del self.workers[gone]
        zygotes = [pid for pid in alive if self._is_zygote(pid, children)]
        roles = resources.assign_roles(self.supervisor_pid, children, self.workers, zygotes)
        measure_uss = self.uss_every > 0 and self._count % self.uss_every == 0
        self._count += 1
        out = []
        for pid, role in roles.items():
            figures = self._measure(pid, measure_uss)
            if figures is not None:
                out.append({"kind": role.kind, "role": role.role, "pid": pid, **figures})
        out.sort(key=resources.sort_key)
        return out

    def _tree(self) -> dict[int, list[int]]:
        """pid → child pids for the supervisor and everything below it."""
        tree: dict[int, list[int]] = {}
        pending = [self.supervisor_pid]
        while pending:
            pid = pending.pop()
            if pid in tree:
                continue
            tree[pid] = _children(pid)
            pending.extend(tree[pid])
        return tree

    def _process(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
            proc.cpu_percent(None)  # starts its CPU measurement; the first figure is None
        return proc

    def _measure(self, pid: int, measure_uss: bool) -> dict[str, Any] | None:
        first = pid not in self._procs
        try:
            proc = self._process(pid)
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:  # dead, its parent has not reaped it
                    self._drop(pid)
                    return None
                cpu = proc.cpu_percent(None)
                rss = proc.memory_info().rss
                fds = proc.num_fds()
                threads = proc.num_threads()
            if measure_uss or (self.uss_every > 0 and pid not in self._uss):
                self._uss[pid] = proc.memory_full_info().uss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self._drop(pid)
            return None
        return {"cpu_percent": None if first else cpu, "rss_bytes": rss,
                "uss_bytes": self._uss.get(pid), "open_files": fds, "threads": threads}

    def _is_zygote(self, pid: int, children: dict[int, list[int]]) -> bool:
        """A process running the fork server module with a command line of its own: the
        children it forks inherit its command line unchanged, while a zygote was exec'ed
        (a worker that starts a zygote of its own hands it other arguments)."""
        if pid not in self._zygote:
            parent = next((p for p, kids in children.items() if pid in kids), None)
            command = _cmdline(pid)
            self._zygote[pid] = (_ZYGOTE_MODULE in command
                                 and (parent is None or command != _cmdline(parent)))
        return self._zygote[pid]

    def _drop(self, pid: int) -> None:
        self._procs.pop(pid, None)
        self._zygote.pop(pid, None)
        self._uss.pop(pid, None)


def _children(pid: int) -> list[int]:
    """Child pids of `pid`, read from /proc (cheap: no scan of every process on the host)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    out: list[int] = []
    for tid in tids:  # a child belongs to the thread that forked it
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                out.extend(int(child) for child in f.read().split())
        except FileNotFoundError:
            if tid != str(pid):
                continue  # a thread that just ended
            if not os.path.exists(f"/proc/{pid}"):
                return []
            return _children_by_scan(pid)  # a kernel without CONFIG_PROC_CHILDREN
    return out


def _children_by_scan(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def _cmdline(pid: int) -> list[str]:
    try:
        return list(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def find_supervisor(run_dir: Path) -> int:
    """The supervisor's pid: from its pid file when that names one of our ancestors,
    otherwise the nearest ancestor that is not a fork server."""
    try:
        recorded: int | None = int(rundir.pid_path(run_dir).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        recorded = None
    # Walked up only as far as needed: the supervisor is usually our grandparent (we were
    # forked by its zygote), and each step reads /proc, which a restart waits for.
    ancestors: list[int] = []
    pid = os.getppid()
    while pid > 1 and len(ancestors) < 8:
        if pid == recorded:
            return pid
        ancestors.append(pid)
        try:
            pid = psutil.Process(pid).ppid()
        except psutil.Error:
            break
    for parent in ancestors:
        if _ZYGOTE_MODULE not in _cmdline(parent):
            return parent
    return os.getppid()


class SamplerWorker(Worker):
    name = catalogue.SAMPLER

    def setup(self) -> None:
        assert self.ctx is not None
        settings = self.config.sampler
        self.interval_s = settings.interval
        self.thresholds = resources.thresholds_from_config(settings)
        # Read from the ledger at the first sample, the first time it is needed: a restarted
        # sampler answers requests without waiting for that read.
        self._alert_state: resources.AlertState | None = None
        self._alert_policy = resources.AlertPolicy.from_config(settings)
        self.bus = transport.make_socket(self.ctx, zmq.SUB)
        for topic in ("worker.heartbeat", "worker.state"):
            self.bus.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.bus.connect(transport.endpoint(self.run_dir, transport.BUS_OUT))
        # Not polled: the names are needed only at a sample, so the heartbeats (every worker,
        # every second) wait on the socket and are read then, without waking this process.
        self.ledger = LedgerClient(self.ctx, self.run_dir, self.name)
        self.add_reader(self.ledger.sock, self.ledger.on_readable)
        self.host = HostSampler(self.config.node.data_dir)
        supervisor_pid = find_supervisor(self.run_dir)
        self.processes = ProcessSampler(supervisor_pid, settings.uss_every)
        self.processes.workers[os.getpid()] = self.name
        log.info("sampling every %g s from supervisor pid %d; alerts: %s", self.interval_s,
                 supervisor_pid, ", ".join(f"{t.metric} ≥ {t.limit:g}"
                                           for t in self.thresholds.values()) or "none")
        # The first sample comes one heartbeat in, once the workers have announced themselves.
        self._next_sample = time.monotonic() + min(self.interval_s, self.heartbeat_interval_s)
        self._samples_taken = 0

    @property
    def alerts(self) -> resources.AlertState:
        if self._alert_state is None:
            self._alert_state = resources.AlertState(self._raised_before(), self._alert_policy)
        return self._alert_state

    def _raised_before(self) -> set[tuple[str, str]]:
        """Alerts a previous incarnation raised and did not clear, from the ledger."""
        if not self.thresholds:
            return set()  # no alert can be judged: nothing to read
        path = chain.db_path(self.config)
        try:
            stored = [event.data for event in chain.read_events(path, kind_prefix=ALERT_KIND)
                      if event.kind == ALERT_KIND]
        except (chain.LedgerNotFound, apsw.Error) as exc:
            log.warning("alerts raised before this start are unknown: %s", exc)
            return set()
        history = []
        for data in stored:
            try:
                history.append(events.ResourceAlert.from_data(data).to_data())
            except ProtocolError as exc:
                log.warning("skipping an unreadable alert event in the ledger: %s", exc)
        raised = resources.raised_in_history(history)
        # An alert whose threshold is now off cannot be judged again: let it go.
        return {key for key in raised if key[0] in self.thresholds}

    def tick(self) -> None:
        self.ledger.tick()
        now = time.monotonic()
        if now >= self._next_sample:
            # Keep the cadence, but never queue up samples missed while the host was busy.
            self._next_sample = max(self._next_sample + self.interval_s,
                                    now + self.interval_s / 2)
            self.sample()
        # Woken for the next sample, not ten times a second; sooner while the ledger client
        # holds events (an alert) whose acknowledgement may need a resend.
        self.tick_interval_s = (BUSY_TICK_S if self.ledger.pending()
                                else max(BUSY_TICK_S, self._next_sample - time.monotonic()))

    def sample(self) -> protocol.ResourceSample:
        started = time.process_time()
        self._on_bus()
        msg = protocol.ResourceSample(ts=time.time(), host=self.host.sample(),
                                      processes=self.processes.sample())
        self.publish(msg.KIND, msg)
        for alert in self._alerts(msg):
            self._report(alert)
        self._samples_taken += 1
        if self._samples_taken == 2:  # the first one that measures every process's CPU
            log.info("a sample of %d processes costs %.2f ms of CPU", len(msg.processes),
                     (time.process_time() - started) * 1000)
        return msg

    def _alerts(self, msg: protocol.ResourceSample) -> list[resources.Alert]:
        host = msg.host
        values = {resources.CPU: host[resources.CPU], resources.MEMORY: host["memory"]["percent"],
                  resources.DISK: host["disk"]["percent"]}
        out = []
        for metric, value in values.items():
            threshold = self.thresholds.get(metric)
            if threshold is not None:
                out.append(self.alerts.update(threshold, resources.HOST_SUBJECT, value))
        rss = self.thresholds.get(resources.RSS)
        if rss is not None:
            subjects = []
            for proc in msg.processes:
                if proc["role"] == resources.WORKER:
                    continue  # not named yet: its alert would change subject once it is
                subject = resources.process_subject(
                    resources.Role(proc["kind"], proc["role"]), proc["pid"])
                subjects.append(subject)
                out.append(self.alerts.update(rss, subject, proc["rss_bytes"]))
            out.extend(self.alerts.forget(resources.RSS, subjects, self.thresholds))
        return [alert for alert in out if alert is not None]

    def _report(self, alert: resources.Alert) -> None:
        log.warning("%s %s %s: %g (threshold %g)", "raised" if alert.raised else "cleared",
                    alert.subject, alert.metric, alert.value, alert.threshold)
        self.publish(ALERT_KIND, protocol.ResourceAlert(
            metric=alert.metric, value=float(alert.value), threshold=float(alert.threshold),
            raised=alert.raised, subject=alert.subject))
        self.ledger.record(events.ResourceAlert(
            metric=alert.metric, subject=alert.subject, value=alert.value,
            threshold=alert.threshold, raised=alert.raised), ack=True)

    def _on_bus(self) -> None:
        """Learn from every heartbeat and state change queued since the last sample."""
        while True:
            messages, bad = transport.drain_bus(self.bus, BUS_BATCH)
            self.bad_frames += bad
            for msg in messages:
                self._learn(msg)
            if len(messages) + bad < BUS_BATCH:
                return

    def _learn(self, msg: protocol.Message) -> None:
        """Keep pid → worker name current from heartbeats and state changes."""
        workers = self.processes.workers
        if isinstance(msg, protocol.Heartbeat):
            workers[msg.pid] = msg.name
        elif isinstance(msg, protocol.WorkerState) and msg.pid is not None:
            if msg.state in _GONE_STATES:
                workers.pop(msg.pid, None)
            else:
                workers[msg.pid] = msg.name

    def teardown(self) -> None:
        self.ledger.close()
