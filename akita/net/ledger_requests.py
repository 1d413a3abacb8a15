"""Requests from the gateway's loop to the node's own ledger worker (``run_dir/ledger.sock``)
that need an answer: feed heads, ranges to serve, bundles to ingest.

The gateway's `LedgerClient` only appends; these go over a DEALER of their own, registered
on the worker's loop like any other reader, so the loop never waits on the ledger. Every
request has a deadline, and exactly one of its two callbacks runs, on the loop: the reply
(of the type asked for), or an error (code, text) — the ledger's own error reply, a reply of
the wrong kind, a full queue, or no answer in time.
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

LEDGER = "ledger"
DEFAULT_TIMEOUT_S = 10.0
MAX_PER_DRAIN = 1000  # bounded, so a burst of replies cannot starve the loop

ReplyCallback = Callable[[Any], None]
ErrorCallback = Callable[[str, str], None]


@dataclass
class _Pending:
    expect: type[protocol.Message]
    on_reply: ReplyCallback
    on_error: ErrorCallback
    deadline: float


class LedgerRequests:
    """A DEALER to the ledger worker; replies are matched to requests by rid."""

    def __init__(self, ctx: zmq.Context, run_dir: Path, hwm: int = 1000) -> None:
        self.sock = transport.make_socket(ctx, zmq.DEALER, hwm=hwm)
        self.sock.connect(transport.endpoint(run_dir, LEDGER))
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
            on_error("ledger_unavailable", "the ledger worker's queue is full")
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
                log.warning("undecodable reply from the ledger worker: %s", exc)
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
        """Fail the requests whose deadline passed (a ledger worker that died or restarted)."""
        expired = [rid for rid, pending in self._pending.items() if now >= pending.deadline]
        for rid in expired:
            self.timeouts += 1
            self._pending.pop(rid).on_error("timeout", "the ledger worker did not answer in time")

    def close(self) -> None:
        self._pending.clear()
        self.sock.close(linger=0)
