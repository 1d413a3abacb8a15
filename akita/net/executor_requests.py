"""Requests from the gateway's loop to the node's own executor (``run_dir/executor.sock``)
for delegation: take, renew, results, requeue on the origin; run_for, held, drop on a peer.

A DEALER of its own, registered on the worker's loop like any other reader, so the loop never
waits on the executor. Every request has a deadline, and exactly one of its two callbacks
runs, on the loop: the reply (of the type asked for), or an error (code, text) — the
executor's own error reply, a reply of the wrong kind, a full queue, or no answer in time.

Outcomes the executor pushes to this connection (`task.results`, for tasks handed in with
`task.run_for` or listed by `task.held`) are never taken for a reply, whatever their rid: they
go to `on_push`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from akita import protocol, transport
from akita.errors import ProtocolError

log = logging.getLogger(__name__)

EXECUTOR = "executor"
DEFAULT_TIMEOUT_S = 10.0
MAX_PER_DRAIN = 1000  # bounded, so a burst of replies cannot starve the loop

ReplyCallback = Callable[[Any], None]
ErrorCallback = Callable[[str, str], None]
PushCallback = Callable[[list[dict[str, Any]]], None]


@dataclass
class _Pending:
    expect: type[protocol.Message]
    on_reply: ReplyCallback
    on_error: ErrorCallback
    deadline: float


class ExecutorRequests:
    """A DEALER to the executor; replies are matched to requests by rid."""

    def __init__(self, ctx: zmq.Context, run_dir: Path, on_push: PushCallback,
                 hwm: int = 1000) -> None:
        self.sock = transport.make_socket(ctx, zmq.DEALER, hwm=hwm)
        self.sock.connect(transport.endpoint(run_dir, EXECUTOR))
        self.on_push = on_push
        self._rids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self.timeouts = 0

    def ask(self, msg: protocol.Message, expect: type[protocol.Message],
            on_reply: ReplyCallback, on_error: ErrorCallback,
            timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Send `msg`; `on_reply(reply)` with a reply of type `expect`, else `on_error`."""
        rid = next(self._rids)
        try:
            self.sock.send(protocol.encode(msg, rid=rid), zmq.NOBLOCK)
        except zmq.Again:
            on_error("executor_unavailable", "the executor's queue is full")
            return
        self._pending[rid] = _Pending(expect, on_reply, on_error, time.monotonic() + timeout_s)

    def pending(self) -> int:
        return len(self._pending)

    def on_readable(self) -> None:
        for _ in range(MAX_PER_DRAIN):
            try:
                data = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                rid, reply = protocol.decode_frame(data)
            except ProtocolError as exc:
                log.warning("undecodable message from the executor: %s", exc)
                continue
            if isinstance(reply, protocol.TaskResults):
                self.on_push(reply.results)
                continue
            pending = self._pending.pop(rid, None) if rid is not None else None
            if pending is None:
                continue  # its deadline passed already: the error callback has run
            if isinstance(reply, pending.expect):
                pending.on_reply(reply)
            elif isinstance(reply, protocol.Error):
                pending.on_error(reply.code, reply.message)
            else:
                pending.on_error("bad_reply", f"expected {pending.expect.KIND}, got {reply.KIND}")

    def tick(self, now: float) -> None:
        """Fail the requests whose deadline passed (an executor that died or restarted)."""
        expired = [rid for rid, pending in self._pending.items() if now >= pending.deadline]
        for rid in expired:
            self.timeouts += 1
            self._pending.pop(rid).on_error("timeout", "the executor did not answer in time")

    def close(self) -> None:
        self._pending.clear()
        self.sock.close(linger=0)
