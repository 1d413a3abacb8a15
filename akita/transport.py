"""Local transport: the ipc endpoints of a node and the socket conventions they follow.

Every endpoint is a fixed path under the node's run directory, so a restarted process binds
the same path and its peers reconnect by themselves. Every socket has a high-water mark and
a linger, so closing never hangs and a stuck peer can slow a node but never stall it.
The socket names and paths live in `akita.rundir`, with the node's other file names; they
are re-exported here for the code that opens sockets.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import zmq

from akita.errors import NodeNotResponding, NodeNotRunning, ProtocolError, RequestFailed
from akita.rundir import BUS_IN, BUS_OUT, CONTROL, endpoint, socket_path  # noqa: F401
from akita.wire import protocol

log = logging.getLogger(__name__)

DEFAULT_HWM = 10_000
LINGER_MS = 500


def make_socket(ctx: zmq.Context, kind: int, *, hwm: int = DEFAULT_HWM) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    return sock


def bind(sock: zmq.Socket, run_dir: Path, name: str) -> None:
    """Bind at the fixed path of `name`, replacing a stale socket file left by a dead process."""
    path = socket_path(run_dir, name)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    sock.bind(endpoint(run_dir, name))
    os.chmod(path, 0o600)


def drain_bus(sock: zmq.Socket, limit: int = 1000) -> tuple[list[protocol.Message], int]:
    """What is waiting on a bus SUB socket, read without blocking: the decoded messages and
    how many frames were malformed (not [topic, message], or not decodable). At most
    `limit` frames, so a flood cannot starve the caller's loop."""
    messages: list[protocol.Message] = []
    bad = 0
    for _ in range(limit):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            break
        if len(frames) != 2:
            bad += 1
            continue
        try:
            messages.append(protocol.decode(frames[1]))
        except ProtocolError:
            bad += 1
    return messages, bad


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700: file permissions guard local clients."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


class Requester:
    """A client for one request/reply endpoint, with a deadline on every request.

    A DEALER socket, so several requests may be in flight; replies are matched by `rid`.
    Not thread-safe: one Requester per thread.
    """

    _rids = itertools.count(1)

    def __init__(self, run_dir: Path, name: str, *, ctx: zmq.Context | None = None,
                 hwm: int = DEFAULT_HWM) -> None:
        self.run_dir = run_dir
        self.name = name
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = make_socket(self.ctx, zmq.DEALER, hwm=hwm)
        self.sock.connect(endpoint(run_dir, name))
        self.early: dict[int, protocol.Message] = {}

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, msg: protocol.Message) -> int:
        """Send `msg` without waiting; returns its rid for `receive`."""
        rid = next(self._rids)
        self.sock.send(protocol.encode(msg, rid=rid))
        return rid

    def receive(self, rid: int, timeout_s: float) -> protocol.Message:
        """Wait for the reply to `rid`; replies to other rids are kept for their callers."""
        if rid in self.early:
            return self.early.pop(rid)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(int(remaining * 1000) + 1):
                if not socket_path(self.run_dir, self.name).exists():
                    raise NodeNotRunning(f"no node is running (no socket at "
                                         f"{socket_path(self.run_dir, self.name)})")
                raise NodeNotResponding(f"{self.name} did not answer within {timeout_s:g} s")
            got_rid, reply = protocol.decode_frame(self.sock.recv())
            if got_rid == rid:
                return reply
            if got_rid is not None:
                self.early[got_rid] = reply

    def request(self, msg: protocol.Message, timeout_s: float = 5.0) -> protocol.Message:
        """Send `msg` and return its reply; an `error` reply raises `RequestFailed`."""
        if not socket_path(self.run_dir, self.name).exists():
            raise NodeNotRunning(f"no node is running (no socket at "
                                 f"{socket_path(self.run_dir, self.name)})")
        reply = self.receive(self.send(msg), timeout_s)
        if isinstance(reply, protocol.Error):
            raise RequestFailed(reply.code, reply.message)
        return reply


ReplyCallback = Callable[[Any], None]
ErrorCallback = Callable[[str, str], None]
PushHandler = Callable[[protocol.Message], bool]


@dataclass
class _Pending:
    expect: type[protocol.Message]
    on_reply: ReplyCallback
    on_error: ErrorCallback
    deadline: float


class AsyncRequester:
    """Requests from a worker's loop to another local worker, answered by callbacks.

    A DEALER of its own, registered on the caller's loop like any other reader, so the loop
    never waits on the other process. Every request has a deadline, and exactly one of its
    two callbacks runs, on the loop: the reply (of the type asked for), or an error
    (code, text) — the worker's own error reply, a reply of the wrong kind, a full queue,
    or no answer in time (`tick()` expires them). Messages the worker pushes unasked go to
    `on_push`, which returns True when it took one, whatever its rid.
    """

    MAX_PER_DRAIN = 1000  # bounded, so a burst of replies cannot starve the loop

    def __init__(self, ctx: zmq.Context, run_dir: Path, name: str, *,
                 on_push: PushHandler | None = None, hwm: int = 1000) -> None:
        self.name = name
        self.sock = make_socket(ctx, zmq.DEALER, hwm=hwm)
        self.sock.connect(endpoint(run_dir, name))
        self.on_push = on_push
        self._rids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self.timeouts = 0

    def ask(self, msg: protocol.Message, expect: type[protocol.Message],
            on_reply: ReplyCallback, on_error: ErrorCallback, timeout_s: float = 10.0) -> None:
        """Send `msg`; `on_reply(reply)` with a reply of type `expect`, else `on_error`."""
        rid = next(self._rids)
        try:
            self.sock.send(protocol.encode(msg, rid=rid), zmq.NOBLOCK)
        except zmq.Again:
            on_error(f"{self.name}_unavailable", f"the {self.name} worker's queue is full")
            return
        self._pending[rid] = _Pending(expect, on_reply, on_error, time.monotonic() + timeout_s)

    def pending(self) -> int:
        return len(self._pending)

    def on_readable(self) -> None:
        for _ in range(self.MAX_PER_DRAIN):
            try:
                data = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                rid, reply = protocol.decode_frame(data)
            except ProtocolError as exc:
                log.warning("undecodable message from the %s worker: %s", self.name, exc)
                continue
            if self.on_push is not None and self.on_push(reply):
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
        """Fail the requests whose deadline passed (a worker that died or restarted)."""
        expired = [rid for rid, pending in self._pending.items() if now >= pending.deadline]
        for rid in expired:
            self.timeouts += 1
            self._pending.pop(rid).on_error("timeout",
                                            f"the {self.name} worker did not answer in time")

    def close(self) -> None:
        self._pending.clear()
        self.sock.close(linger=0)
