"""Signals for the supervisor: handlers that only set a flag, and a descriptor to poll.

`signal.set_wakeup_fd` writes a byte into a socketpair whenever a signal arrives, so the
poll loop wakes at once and reads the flags; nothing else happens inside a handler.
"""

from __future__ import annotations

import signal
import socket
from typing import Any


class SignalFlags:
    """SIGTERM/SIGINT ask for a shutdown, SIGHUP for a reload."""

    def __init__(self) -> None:
        self.shutdown_requested = False
        self.reload_requested = False
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    def install(self) -> None:
        """Install the handlers (main thread only) and route wakeups to `fileno()`."""
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def fileno(self) -> int:
        return self._read.fileno()

    def drain(self) -> None:
        """Empty the wakeup bytes; the flags say what arrived."""
        try:
            while self._read.recv(512):
                pass
        except BlockingIOError:
            pass

    def take_reload(self) -> bool:
        """True once per SIGHUP (several before the loop noticed count as one)."""
        requested, self.reload_requested = self.reload_requested, False
        return requested

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._read.close()
        self._write.close()

    def _on_stop(self, _signum: int, _frame: Any) -> None:
        self.shutdown_requested = True

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        self.reload_requested = True
