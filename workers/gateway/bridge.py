"""Hand work from Reticulum's threads to the gateway's own loop.

Reticulum calls back on its own threads (one short-lived thread per announce, the interface
reader for packets and link traffic). The gateway keeps all of its state on one thread: a
callback only posts a closure here, and a byte written to a socketpair wakes the worker's
poll loop, which runs the closures in order. No lock guards the gateway's state because
nothing but the loop touches it.
"""

from __future__ import annotations

import logging
import queue
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MAX_PER_DRAIN = 10_000  # bounded, so a flood of callbacks cannot starve the loop


class LoopBridge:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = (
            queue.SimpleQueue())
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.errors = 0

    def fileno(self) -> int:
        """The descriptor that becomes readable when work is waiting (for add_reader)."""
        return self._wake_r.fileno()

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` on the loop; safe from any thread."""
        self._queue.put((fn, args))
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # the buffer is full of wake bytes already, or we are closing: both fine

    def drain(self) -> None:
        """Run what was posted (on the loop)."""
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        for _ in range(MAX_PER_DRAIN):
            try:
                fn, args = self._queue.get_nowait()
            except queue.Empty:
                return
            self._run(fn, args)
        self.post(lambda: None)  # more is waiting: come back on the next poll

    def _run(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception:
            # One bad callback (a peer's odd input reaching a bug) must not end the gateway;
            # it is logged with its traceback and counted.
            self.errors += 1
            log.exception("error in %s", getattr(fn, "__qualname__", fn))

    def close(self) -> None:
        self._wake_r.close()
        self._wake_w.close()
