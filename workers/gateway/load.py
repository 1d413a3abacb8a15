"""This node's load: what its announces carry at once, and what goes into its state record.

Every announce carries the current load summary (CPU %, memory %, queued tasks), so peers
choosing a delegate see fresh figures at no cost. The state record holds fuller figures
(resources from the sampler, queue depth), but every change of the record raises its version
and makes every peer pull it, so the record is refreshed only now and then
(`refresh_s`, from the airtime budget), or sooner (never more often than `min_spacing_s`)
when the load moved a lot. A new version is not announced at once: it rides on the next
timed announce, and mates pull it from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from akita.mesh import state as st
from akita.wire import mesh

REFRESH_S = 30.0
MIN_SPACING_S = 5.0
JUMP_PERCENT = 15.0        # a resource figure that moved this much is worth a new version
QUEUE_JUMP = 10            # …and so is a queue that grew or shrank by this many tasks
_FIGURES = ("cpu_percent", "memory_percent", "disk_percent")


@dataclass
class LoadTracker:
    resources: dict[str, Any] = field(default_factory=dict)
    queue_depth: int = 0
    stored: dict[str, Any] = field(default_factory=dict)
    stored_at: float = float("-inf")
    refresh_s: float = REFRESH_S
    min_spacing_s: float = MIN_SPACING_S

    @property
    def summary(self) -> mesh.Load:
        """What the next announce carries."""
        return mesh.Load(round(_number(self.resources.get("cpu_percent"))),
                         round(_number(self.resources.get("memory_percent"))), self.queue_depth)

    def sample(self, host: dict[str, Any]) -> None:
        """Take the host figures of a `resource.sample` from the sampler."""
        self.resources = {
            "cpu_percent": _number(host.get("cpu_percent")),
            "memory_percent": _number((host.get("memory") or {}).get("percent")),
            "disk_percent": _number((host.get("disk") or {}).get("percent")),
            "load_avg": host.get("load_avg"), "cpu_count": host.get("cpu_count")}

    def queue(self, depth: int) -> None:
        self.queue_depth = max(0, depth)

    def due(self, now: float) -> dict[str, Any] | None:
        """The keys to write into the state record now, or None (see the module docstring)."""
        current = {st.KEY_RESOURCES: self.resources, st.KEY_QUEUE_DEPTH: self.queue_depth}
        if not self.resources or current == self.stored:
            return None
        age = now - self.stored_at
        if age < self.refresh_s and not (age >= self.min_spacing_s and self._moved()):
            return None
        self.stored, self.stored_at = current, now
        return current

    def _moved(self) -> bool:
        before = self.stored.get(st.KEY_RESOURCES) or {}
        jump = max(abs(_number(self.resources.get(k)) - _number(before.get(k)))
                   for k in _FIGURES)
        queued = abs(self.queue_depth - int(self.stored.get(st.KEY_QUEUE_DEPTH) or 0))
        return jump >= JUMP_PERCENT or queued >= QUEUE_JUMP


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
