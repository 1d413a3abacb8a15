"""The interfaces this node's traffic really crosses, with their bitrates and byte counts.

Owning its interfaces, a node reads them in-process; attached to the host's shared instance,
its own process has only the local pipe to that instance (1 Gbit/s, meaningless for an
airtime budget), and the figures that matter are the shared instance's, read over its RPC
socket. `RNS.Reticulum.get_interface_stats()` does either, so one watcher serves both
modes. Over RPC the call blocks on another program, so it runs on a thread of its own and
the gateway's loop only ever reads the last snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

REFRESH_S = 5.0
MAX_INTERFACES = 64            # a host with more is summarised by its first 64
_LOCAL_TYPES = ("LocalServerInterface", "LocalClientInterface")


def summarise(stats: Any) -> list[dict[str, Any]]:
    """The network interfaces in a `get_interface_stats()` answer: the shared instance's own
    local pipes to its clients are left out, they carry no radio or LAN traffic."""
    if not isinstance(stats, dict) or not isinstance(stats.get("interfaces"), list):
        raise TypeError("the interface statistics have no list of interfaces")
    out = []
    for entry in stats["interfaces"][:MAX_INTERFACES]:
        if not isinstance(entry, dict) or entry.get("type") in _LOCAL_TYPES:
            continue
        out.append({"name": str(entry.get("name", "?")), "type": str(entry.get("type", "?")),
                    "online": bool(entry.get("status")), "bitrate": _number(entry.get("bitrate")),
                    "rxb": _number(entry.get("rxb")), "txb": _number(entry.get("txb"))})
    return out


def _number(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and value >= 0 else None


class InterfaceWatch:
    """Refreshes `fetch()` every `refresh_s` on a daemon thread; `snapshot()` never blocks."""

    def __init__(self, fetch: Callable[[], Any], refresh_s: float = REFRESH_S) -> None:
        self._fetch = fetch
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._interfaces: list[dict[str, Any]] = []
        self._error: str | None = "not read yet"
        self._read_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="akita-ifstats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def snapshot(self) -> tuple[list[dict[str, Any]], str | None, float | None]:
        """(interfaces, why they could not be read or None, monotonic time of the reading)."""
        with self._lock:
            return list(self._interfaces), self._error, self._read_at

    def slowest_bitrate(self) -> int | None:
        """The bitrate of the slowest online interface: what an airtime budget is cut from."""
        rates = [i["bitrate"] for i in self.snapshot()[0] if i["online"] and i["bitrate"]]
        return min(rates) if rates else None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self._refresh_s)

    def refresh(self) -> None:
        error: str | None = None
        try:
            interfaces = summarise(self._fetch())
        except Exception as exc:  # noqa: BLE001 - RPC to another program: whatever it raises, keep serving
            interfaces, error = [], f"{type(exc).__name__} {exc}".strip()
        with self._lock:
            if (error is None) != (self._error is None):  # log changes only, not each reading
                log.log(logging.INFO if error is None else logging.WARNING,
                        "interface statistics: %s", error or f"{len(interfaces)} interfaces")
            self._interfaces, self._error, self._read_at = interfaces, error, time.monotonic()
