"""What the operator pages show: a thread in the supervisor that watches the node.

The supervisor serves `/metrics` and the dashboard because it is the one process that
outlives every worker: a worker that dies shows up as down, with its last known figures
gone, while everything else stays readable. The observer never touches the supervisor's
event loop: it reads the published `StatusSnapshot` (immutable, swapped atomically), opens
its own ZeroMQ context with a SUB socket on the bus, and asks the executor and gateway for
their figures directly on their request sockets once per step: the sampler's interval
(`[sampler] interval`, 5 s by default, at least `MIN_STEP_S`).

From the bus it counts committed ledger events (tasks by type and outcome, run times,
delegated and received tasks, events by kind, the delay from an event's creation to its
commit) and keeps the sampler's latest per-process USS. It reads the bus in batches, at
most every `GATHER_S`: under load a wake-up per event would take the cores from the tasks
(three events a task), and the figures are only shown once per step anyway. Per-process CPU seconds, RSS,
descriptors and threads it reads itself from /proc at each step, so they do not depend on
the sampler either.

A one-hour history (one point per step) feeds the dashboard's plots. It is written to
`data_dir/operator-history.msgpack` every minute and at exit, and read back at start;
task throughput missing from it is refilled from the ledger, so a restart keeps the hour.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import msgpack
import psutil
import zmq

from akita import transport
from akita.errors import AkitaError, ProtocolError
from akita.ledger import chain
from akita.wire import events, protocol
from supervisor.observed import FINAL_STATES, LAST_EVENTS, Observations

log = logging.getLogger(__name__)

MIN_STEP_S = 0.5
HISTORY_S = 3600.0
HISTORY_FILE = "operator-history.msgpack"
SAVE_EVERY_S = 60.0
REQUEST_TIMEOUT_S = 1.0
_REFILL_EVENTS = 50_000     # most task events read back from the ledger at start
_TASK_NAMES = 100_000       # task id → type remembered for outcome events
GATHER_S = 0.05             # events gather this long on the bus between two reads
BUS_HWM = 20_000            # events the bus holds for the observer between reads
SAMPLE_TOPIC = protocol.topic_of(protocol.ResourceSample.KIND)


def subscribe(sub: zmq.Socket) -> None:
    """To what the pages show, and nothing else: every worker's heartbeat (one a second
    each) would wake the observer four to six times a second on an idle node."""
    for topic in (*map(protocol.topic_of, events.kinds()), SAMPLE_TOPIC):
        sub.setsockopt(zmq.SUBSCRIBE, topic)


class Observer:
    """The watching thread and the figures it keeps; `observations` is read by HTTP threads."""

    def __init__(self, config: Any, snapshot: Callable[[], Any]) -> None:
        self.config = config
        self.run_dir: Path = config.node.run_dir
        self.snapshot = snapshot  # () -> the supervisor's current StatusSnapshot
        self.step_s = max(MIN_STEP_S, float(config.sampler.interval))
        self.observations = Observations()
        self.history_path = Path(config.node.data_dir) / HISTORY_FILE
        self._task_names: OrderedDict[str, str] = OrderedDict()
        self._finished_in_step = 0
        self._cpu_seen: dict[int, tuple[float, float]] = {}  # pid: (monotonic, cpu seconds)
        self._stop = threading.Event()
        self._loaded = False  # the saved history is read: saving may replace the file
        self._requesters: dict[str, transport.Requester] = {}  # observer thread only
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.step_s + 4 * REQUEST_TIMEOUT_S + 1)
        self._save_history()

    # --- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        # Here rather than in start(): refilling reads up to _REFILL_EVENTS ledger events,
        # which the supervisor's own start must not wait for.
        self._load_history()
        ctx = zmq.Context()
        sub = transport.make_socket(ctx, zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, BUS_HWM)
        subscribe(sub)
        sub.connect(transport.endpoint(self.run_dir, transport.BUS_OUT))
        try:
            self._loop(ctx, sub)
        except Exception:  # the node runs on without its pages; say why, loudly
            log.exception("the operator observer failed; /metrics and the dashboard are stale")
        finally:
            sub.close(linger=0)
            for req in self._requesters.values():
                req.close()
            self._requesters.clear()
            ctx.term()

    def _loop(self, ctx: zmq.Context, sub: zmq.Socket) -> None:
        next_step = time.monotonic()
        next_save = time.monotonic() + SAVE_EVERY_S
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_step:
                self.step(ctx)
                next_step = now + self.step_s
            if now >= next_save:
                self._save_history()
                next_save = now + SAVE_EVERY_S
            if sub.poll(int(max(0.0, next_step - time.monotonic()) * 1000) + 1):
                batch = []
                for _ in range(BUS_HWM):
                    try:
                        batch.append(sub.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
                self.on_bus(batch)
                self._stop.wait(GATHER_S)

    # --- the bus ------------------------------------------------------------------------

    def on_bus(self, batch: list[list[bytes]]) -> None:
        """Frames read from the bus, in order: committed ledger events and resource samples;
        anything else, or malformed, is skipped."""
        committed = []
        for frames in batch:
            if len(frames) != 2:
                continue
            if frames[0] == SAMPLE_TOPIC:
                self._on_sample(frames[1])
                continue
            event = protocol.read_committed(frames[1])
            if event is not None:
                committed.append(event)
        if not committed:
            return
        obs = self.observations
        now = time.time()
        with obs.lock:
            for seq, ts, kind, data in committed:
                self._on_event(kind, data if isinstance(data, dict) else {}, now - ts)
            # only the newest are kept: their summaries are all that is worth building
            for seq, ts, kind, data in committed[-LAST_EVENTS:]:
                obs.last_events.append({"seq": seq, "ts": ts, "kind": kind, "summary":
                                        _summary(data if isinstance(data, dict) else {})})

    def _on_sample(self, raw: bytes) -> None:
        try:
            msg = protocol.decode(raw)
        except ProtocolError:
            return
        if isinstance(msg, protocol.ResourceSample):
            uss = {e["pid"]: e.get("uss_bytes") for e in msg.processes
                   if isinstance(e, dict) and isinstance(e.get("pid"), int)}
            with self.observations.lock:
                self.observations.uss = uss

    def _on_event(self, kind: str, data: dict[str, Any], latency_s: float) -> None:
        """One committed event; the caller holds the observations' lock."""
        obs = self.observations
        obs.events_by_kind[kind] = obs.events_by_kind.get(kind, 0) + 1
        obs.commit_latency.observe(max(0.0, latency_s))
        if kind == "task.submitted":
            self._on_submitted(data)
        elif kind == "task.delegated":
            obs.delegated += 1
        elif kind in FINAL_STATES:
            name = self._task_names.pop(str(data.get("id")), "unknown")
            key = (name, FINAL_STATES[kind])
            obs.finished[key] = obs.finished.get(key, 0) + 1
            self._finished_in_step += 1
            duration = data.get("duration_s")
            if isinstance(duration, (int, float)):
                obs.run_time.observe(float(duration))

    def _on_submitted(self, data: dict[str, Any]) -> None:
        obs = self.observations
        name = str(data.get("name", "unknown"))[:64]
        obs.submitted[name] = obs.submitted.get(name, 0) + 1
        if "origin" in data:
            obs.received += 1
        self._task_names[str(data.get("id"))] = name
        if len(self._task_names) > _TASK_NAMES:
            self._task_names.popitem(last=False)

    # --- the periodic step --------------------------------------------------------------

    def step(self, ctx: zmq.Context) -> None:
        """Ask the workers for their figures, read /proc, add a history point."""
        snap = self.snapshot()
        processes = self._processes(snap)
        executor = self._ask(ctx, "executor", protocol.TaskStats())
        gateway = {kind: self._ask(ctx, "gateway", request) for kind, request in (
            ("stats", protocol.PeerStats()), ("peers", protocol.PeerList()),
            ("clusters", protocol.ClusterList()))}
        ledger = self._ledger_figures()
        obs = self.observations
        with obs.lock:
            obs.node = {"id": snap.node_id, "name": snap.name,
                        "uptime_s": time.monotonic() - snap.started_at}
            obs.workers = [{"name": w.name, "state": w.state, "pid": w.pid,
                            "restarts": w.restarts, "last_error": w.last_error}
                           for w in snap.workers]
            obs.processes = processes
            obs.executor = executor
            obs.gateway = gateway
            obs.ledger = ledger
            obs.steps += 1
            obs.history.append(self._point(processes, executor))
            self._finished_in_step = 0
            cutoff = time.time() - HISTORY_S
            while obs.history and obs.history[0]["ts"] < cutoff:
                obs.history.popleft()

    def _point(self, processes: dict[str, dict[str, Any]], executor: Any) -> dict[str, Any]:
        queued = sum(executor.by_priority.values()) if executor is not None else None
        return {"ts": time.time(), "finished": self._finished_in_step, "queued": queued,
                "cpu": {n: p.get("cpu_percent") for n, p in processes.items()},
                "rss": {n: p.get("rss_bytes") for n, p in processes.items()}}

    def _processes(self, snap: Any) -> dict[str, dict[str, Any]]:
        pids = {"supervisor": snap.pid}
        pids.update({w.name: w.pid for w in snap.workers if w.pid is not None})
        now = time.monotonic()
        found: dict[str, dict[str, Any]] = {}
        with self.observations.lock:
            uss = dict(self.observations.uss)
        for name, pid in pids.items():
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    times = proc.cpu_times()
                    figures = {"pid": pid, "cpu_seconds": times.user + times.system,
                               "rss_bytes": proc.memory_info().rss, "open_fds": proc.num_fds(),
                               "threads": proc.num_threads(), "uss_bytes": uss.get(pid)}
            except psutil.Error:
                continue
            seen = self._cpu_seen.get(pid)
            if seen is not None and now > seen[0]:
                figures["cpu_percent"] = 100 * (figures["cpu_seconds"] - seen[1]) / (now - seen[0])
            self._cpu_seen[pid] = (now, figures["cpu_seconds"])
            found[name] = figures
        live = {f["pid"] for f in found.values()}
        self._cpu_seen = {pid: v for pid, v in self._cpu_seen.items() if pid in live}
        return found

    def _ask(self, ctx: zmq.Context, worker: str, request: protocol.Message) -> Any:
        """One request on a connection kept between steps (ZeroMQ reconnects it when the
        worker restarts); a connection that failed is dropped, with any late reply."""
        if not transport.socket_path(self.run_dir, worker).exists():
            return None
        req = self._requesters.get(worker)
        if req is None:
            req = self._requesters[worker] = transport.Requester(self.run_dir, worker, ctx=ctx)
        try:
            return req.request(request, REQUEST_TIMEOUT_S)
        except (AkitaError, zmq.ZMQError) as exc:
            log.debug("no %s from %s: %s", request.KIND, worker, exc)
            self._requesters.pop(worker).close()
            return None

    def _ledger_figures(self) -> dict[str, Any]:
        path = chain.db_path(self.config)
        size = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                size += os.stat(f"{path}{suffix}").st_size
            except OSError:
                pass
        return {"database_bytes": size, "checkpoint_ts": _last_checkpoint(path)}

    # --- history across restarts --------------------------------------------------------

    def _save_history(self) -> None:
        if not self._loaded:
            return
        with self.observations.lock:
            points = list(self.observations.history)
        tmp = self.history_path.with_suffix(".tmp")
        try:
            tmp.write_bytes(msgpack.packb(points, use_bin_type=True))
            tmp.replace(self.history_path)
        except OSError as exc:
            log.warning("cannot save the dashboard history to %s: %s", self.history_path, exc)

    def _load_history(self) -> None:
        cutoff = time.time() - HISTORY_S
        points: list[dict[str, Any]] = []
        try:
            loaded = msgpack.unpackb(self.history_path.read_bytes(), raw=False,
                                     strict_map_key=False)
            if isinstance(loaded, list):
                points = [p for p in loaded if _valid_point(p) and p["ts"] >= cutoff]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, msgpack.UnpackException) as exc:
            log.warning("ignoring the dashboard history in %s: %s", self.history_path, exc)
        refill_throughput(points, chain.db_path(self.config), cutoff, self.step_s)
        with self.observations.lock:
            self.observations.history = deque(points, maxlen=int(HISTORY_S / self.step_s) + 1)
        self._loaded = True


def refill_throughput(points: list[dict[str, Any]], db: Path, cutoff: float,
                      step_s: float) -> None:
    """Add points for finished tasks of the last hour that the saved history lacks (the
    ledger is the record: a node that was down or had no history file still gets them)."""
    try:
        events = chain.tail(db, _REFILL_EVENTS, kind_prefix="task.")
    except (AkitaError, OSError) as exc:
        log.debug("no ledger to refill the history from: %s", exc)
        return
    covered_from = points[0]["ts"] if points else float("inf")
    buckets: dict[int, int] = {}
    for event in events:
        if event.kind in FINAL_STATES and cutoff <= event.ts < covered_from:
            slot = int(event.ts // step_s)
            buckets[slot] = buckets.get(slot, 0) + 1
    refilled: list[dict[str, Any]] = [{"ts": slot * step_s, "finished": count, "queued": None, "cpu": {}, "rss": {}}
                for slot, count in sorted(buckets.items())]
    points[:0] = refilled


def _valid_point(point: Any) -> bool:
    return (isinstance(point, dict) and isinstance(point.get("ts"), (int, float))
            and isinstance(point.get("cpu"), dict) and isinstance(point.get("rss"), dict))


def _last_checkpoint(path: Path) -> float | None:
    try:
        conn = chain.open_reader(path)
    except (AkitaError, OSError):
        return None
    try:
        # the newest by key, not max(ts) over every checkpoint the node ever wrote
        for (ts,) in conn.execute("SELECT ts FROM checkpoints WHERE feed = (SELECT id FROM "
                                  "feeds WHERE local = 1) ORDER BY seq DESC LIMIT 1"):
            return float(ts) if ts is not None else None
        return None
    except apsw.Error as exc:  # e.g. a file the writer has not initialised yet
        log.debug("no checkpoint age: %s", exc)
        return None
    finally:
        conn.close()


def _summary(data: dict[str, Any]) -> str:
    """A short, safe one-liner of an event's data for the dashboard (no payloads)."""
    parts = []
    for key in ("name", "id", "state", "peer", "cause", "node", "reason"):
        if key in data and isinstance(data[key], (str, int, float)):
            parts.append(f"{key}={str(data[key])[:40]}")
    return " ".join(parts)

