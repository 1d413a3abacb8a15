"""The `node.status` reply: the process table's view plus each worker's CPU and memory.

CPU and RSS come from the sampler's latest `resource.sample` on the bus, so a status request
costs no /proc reads. A worker the sampler has not seen yet (just restarted, or no sampler
configured) gets its RSS from psutil, cached briefly, and no CPU figure: CPU % needs two
readings over an interval, which is the sampler's job.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from akita import protocol
from supervisor.process import WorkerProcess

_RSS_CACHE_S = 1.0
_RSS_CACHE_ENTRIES = 64

Resources = tuple[float | None, int | None]  # (cpu_percent, rss_bytes)


class ResourceView:
    """The latest per-process figures, by pid."""

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


def status_reply(node: dict[str, Any], procs: list[WorkerProcess],
                 resources: ResourceView) -> protocol.NodeStatusReply:
    """`node` as given; one entry per worker, in start order."""
    now = time.monotonic()
    workers = []
    for proc in procs:
        entry = proc.snapshot(now)
        entry["cpu_percent"], entry["rss_bytes"] = resources.of(proc.pid)
        workers.append(entry)
    return protocol.NodeStatusReply(node=node, workers=workers)
