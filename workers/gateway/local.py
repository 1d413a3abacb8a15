"""What the gateway learns from the node's own executor: task types and queue depth.

The gateway asks the executor (``run_dir/executor.sock``) rather than importing the task
modules itself: user code runs in the executor's task processes, never in the gateway.
Asked again now and then, so an executor restarted with other types is noticed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import zmq

from akita import transport
from akita.catalogue import EXECUTOR
from akita.errors import ProtocolError
from akita.wire import protocol

log = logging.getLogger(__name__)

TYPES_EVERY_S = 30.0


class ExecutorWatch:
    """A DEALER to the executor; replies are handled when the worker loop sees it readable."""

    def __init__(self, ctx: zmq.Context, run_dir: Path, stats_every_s: float,
                 on_types: Callable[[list[str]], None], on_queue: Callable[[int], None]) -> None:
        self.sock = transport.make_socket(ctx, zmq.DEALER, hwm=100)
        self.sock.connect(transport.endpoint(run_dir, EXECUTOR))
        self.stats_every_s = stats_every_s
        self.on_types = on_types
        self.on_queue = on_queue
        self._next_types = 0.0
        self._next_stats = 0.0
        self._types_known = False

    def tick(self, now: float) -> None:
        if now >= self._next_types:
            # Until the first answer, ask every second: the executor may start after us.
            self._next_types = now + (TYPES_EVERY_S if self._types_known else 1.0)
            self._send(protocol.TaskTypes())
        if now >= self._next_stats:
            self._next_stats = now + self.stats_every_s
            self._send(protocol.TaskStats())

    def _send(self, msg: protocol.Message) -> None:
        try:
            self.sock.send(protocol.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            pass  # the executor is not there: asked again on the next tick that is due

    def on_readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = protocol.decode(data)
            except ProtocolError as exc:
                log.warning("undecodable reply from the executor: %s", exc)
                continue
            if isinstance(reply, protocol.TaskTypesReply):
                self._types_known = True
                self.on_types([t["name"] for t in reply.types
                               if isinstance(t, dict) and isinstance(t.get("name"), str)])
            elif isinstance(reply, protocol.TaskStatsReply):
                queued = reply.totals.get("queued", reply.counts.get("queued", 0))
                self.on_queue(int(queued) if isinstance(queued, int) else 0)

    def close(self) -> None:
        self.sock.close(linger=0)
