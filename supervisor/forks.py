"""The supervisor's fork servers: one for every worker but the gateway, one for the gateway.

Why two: a worker forked from a zygote starts warm, its modules already imported. Only the
gateway process may import Reticulum, so the common zygote leaves the gateway out, and
every gateway start paid for importing RNS and cryptography (130-250 ms, most of a gateway
restart without AutoInterface). The gateway's own zygote imports them once. Like the
common one it holds nothing: no Reticulum instance, socket or thread exists in it (an
import of RNS starts none). It is started with the supervisor when a gateway is configured
(so its imports overlap the other workers' start), else with the first gateway start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from akita import catalogue
from workers.zygote import Zygote

log = logging.getLogger(__name__)

GATEWAY = catalogue.GATEWAY
GATEWAY_MODULE = catalogue.BY_NAME[GATEWAY].module

Started = Callable[[int, Zygote], None]  # (the fd of the zygote it replaces or -1, new one)


class ForkServers:
    """Which zygote forks which worker, and which worker each one forked."""

    def __init__(self, main: Zygote, preload: list[str], on_started: Started,
                 workers: tuple[str, ...] = ()) -> None:
        self.main = main
        self.gateway: Zygote | None = None
        self._preload = preload
        self._on_started = on_started
        self._forked_by: dict[int, Zygote] = {}
        if GATEWAY in workers:
            self.for_worker(GATEWAY)

    def all(self) -> list[Zygote]:
        return [self.main] + ([self.gateway] if self.gateway is not None else [])

    def for_worker(self, name: str) -> Zygote:
        """The zygote that forks `name` (the gateway's is started on first use)."""
        if name != GATEWAY:
            return self.main
        if self.gateway is None:
            self.gateway = self._start(GATEWAY)
            self._on_started(-1, self.gateway)
        return self.gateway

    def forked(self, pid: int, zygote: Zygote) -> None:
        self._forked_by[pid] = zygote

    def reaped(self, pid: int) -> None:
        self._forked_by.pop(pid, None)

    def children_of(self, zygote: Zygote) -> list[int]:
        return [pid for pid, owner in self._forked_by.items() if owner is zygote]

    def replace(self, old: Zygote) -> Zygote:
        """Kill `old` (dead, stopped or hung alike) and start its successor."""
        old_fd = old.fileno()
        try:
            old.kill()
        except OSError:
            pass
        if old is self.gateway:
            self.gateway = new = self._start(GATEWAY)
        else:
            self.main = new = self._start(None)
        self._on_started(old_fd, new)
        return new

    def close(self) -> None:
        for zygote in self.all():
            zygote.close()

    def _start(self, worker: str | None) -> Zygote:
        if worker == GATEWAY:
            return Zygote.start([*self._preload, GATEWAY_MODULE], title="gateway-zygote")
        return Zygote.start(self._preload)
