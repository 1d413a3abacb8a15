"""The `node.status` reply: the process table's view plus each worker's CPU and memory.

The reply is built in the control thread (`supervisor.control_thread`), away from the main
loop, from two things the main loop keeps up to date:

- a `StatusSnapshot`: what the process table looked like when it last changed. It is
  immutable; the main loop publishes a new one (one reference assignment, atomic in Python)
  whenever a worker changes state, the table is checked, or the config is reloaded. The
  control thread reads whichever snapshot is current, so it never sees a half-updated
  worker, and it works out uptimes from the start times the snapshot holds.
- a `ResourceView`: CPU and RSS from the sampler's latest `resource.sample` on the bus, so a
  status request costs no /proc reads. A worker the sampler has not seen yet (just
  restarted, or no sampler configured) gets its RSS from psutil, cached briefly, and no CPU
  figure: CPU % needs two readings over an interval, which is the sampler's job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psutil

from akita.wire import protocol
from supervisor.process import WorkerProcess

_RSS_CACHE_S = 1.0
_RSS_CACHE_ENTRIES = 64

Resources = tuple[float | None, int | None]  # (cpu_percent, rss_bytes)


class ResourceView:
    """The latest per-process figures, by pid.

    Shared by two threads: the main loop calls `on_sample`, which replaces the whole table
    of sampled figures with one assignment; the control thread calls `of`, and it alone uses
    the RSS cache. Neither ever changes a dict the other may be reading.
    """

    def __init__(self) -> None:
        self._sampled: dict[int, Resources] = {}
        self._rss_cache: dict[int, tuple[float, int | None]] = {}  # pid: (when, rss)

    def on_sample(self, msg: protocol.Message) -> None:
        """Take the figures from a `resource.sample` (replacing the previous ones)."""
        if not isinstance(msg, protocol.ResourceSample):
            return
        sampled: dict[int, Resources] = {}
        for entry in msg.processes:
            pid = entry.get("pid") if isinstance(entry, dict) else None
            if isinstance(pid, int):
                sampled[pid] = (entry.get("cpu_percent"), entry.get("rss_bytes"))
        self._sampled = sampled

    def of(self, pid: int | None) -> Resources:
        if pid is None:
            return None, None
        sampled = self._sampled.get(pid)
        if sampled is not None:
            return sampled
        now = time.monotonic()
        cached = self._rss_cache.get(pid)
        if cached is not None and now - cached[0] < _RSS_CACHE_S:
            return None, cached[1]
        try:
            rss_bytes: int | None = int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            rss_bytes = None
        if len(self._rss_cache) >= _RSS_CACHE_ENTRIES:
            self._rss_cache.clear()
        self._rss_cache[pid] = (now, rss_bytes)
        return None, rss_bytes


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker's status fields as of a snapshot; uptime is worked out when asked."""

    name: str
    state: str
    pid: int | None
    started_at: float  # monotonic time of the current spawn
    restarts: int
    exit_code: int | None
    exit_signal: int | None
    last_error: str
    note: str

    @classmethod
    def of(cls, proc: WorkerProcess) -> WorkerView:
        return cls(proc.name, proc.state.value, proc.pid, proc.started_at, proc.restarts,
                   proc.exit_code, proc.exit_signal, proc.last_error, proc.note)

    def entry(self) -> dict[str, Any]:
        """The reply's entry, with the fields that change over time left empty."""
        return {
            "name": self.name, "state": self.state, "pid": self.pid, "uptime_s": None,
            "restarts": self.restarts, "exit_code": self.exit_code,
            "exit_signal": self.exit_signal, "last_error": self.last_error, "note": self.note,
            "cpu_percent": None, "rss_bytes": None,
        }


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """The node's identity and every worker's view, in start order, at one moment."""

    node_id: str
    name: str
    pid: int
    started_at: float  # monotonic time the supervisor started
    config: str
    run_dir: str
    workers: tuple[WorkerView, ...]


class StatusBoard:
    """The current `StatusSnapshot`: published by the main loop, read by the control thread.

    `bad_frames()` is read live rather than snapshotted: it sums counters that only grow and
    are bumped in the middle of handling a frame, so a client told "bad_frame" sees the count
    include its frame without waiting for the next publish. Reading an int another thread
    writes is safe under the GIL, and the two counters share no invariant a torn sum breaks.
    """

    def __init__(self, snapshot: StatusSnapshot, resources: ResourceView,
                 bad_frames: Callable[[], int], extra: dict[str, Any] | None = None) -> None:
        self.snapshot = snapshot
        self.extra = extra or {}  # fixed node fields, e.g. lxmf_address
        self.resources = resources
        self.bad_frames = bad_frames
        # Control thread only: the reply built from `_built_from`. Between two publishes
        # only uptimes, CPU, RSS and the bad-frame count change, so each request refreshes
        # those in place: building every dict again cost 1.5 µs more, a fifth of the Python
        # in a status round trip.
        self._built_from: StatusSnapshot | None = None
        self._reply = protocol.NodeStatusReply(node={}, workers=[])

    def publish(self, procs: Iterable[WorkerProcess], *, name: str | None = None) -> None:
        """Main loop: replace the snapshot with the table as it is now (and a new node name
        after a reload)."""
        old = self.snapshot
        self.snapshot = StatusSnapshot(
            old.node_id, old.name if name is None else name, old.pid, old.started_at,
            old.config, old.run_dir, tuple(WorkerView.of(proc) for proc in procs))

    def encoded_reply(self, rid: int | None) -> bytes:
        """Control thread only: the encoded `node.status` reply from the current snapshot.

        The message it encodes is reused by the next call, which is why this returns bytes
        and the message never leaves this object.
        """
        snap = self.snapshot  # one read: everything below comes from the same snapshot
        if snap is not self._built_from:
            self._rebuild(snap)
        now = time.monotonic()
        node = self._reply.node
        node["uptime_s"] = _to_ms(now - snap.started_at)
        node["bad_frames"] = self.bad_frames()
        for entry, view in zip(self._reply.workers, snap.workers):
            if view.pid is not None:  # a worker without a process keeps its None fields
                entry["uptime_s"] = _to_ms(now - view.started_at)
                entry["cpu_percent"], entry["rss_bytes"] = self.resources.of(view.pid)
        return protocol.encode(self._reply, rid=rid)

    def _rebuild(self, snap: StatusSnapshot) -> None:
        self._reply = protocol.NodeStatusReply(
            node={"id": snap.node_id, "name": snap.name, "pid": snap.pid, "uptime_s": None,
                  "config": snap.config, "run_dir": snap.run_dir, "bad_frames": None,
                  **self.extra},
            workers=[view.entry() for view in snap.workers])
        self._built_from = snap


def _to_ms(seconds: float) -> float:
    """`seconds` to the millisecond, as round(x, 3) would give it, without the decimal
    conversion inside round(x, 3) that costs five times as much (once per worker, per
    status request)."""
    return round(seconds * 1000) / 1000
