"""The control socket: the supervisor's own verbs, and forwarding of everything else.

Clients (akitactl, the Python client, other workers) send requests to the ROUTER bound at
run_dir/control.sock, which a thread of its own serves (`supervisor.control_thread`): it
answers the read-only verbs (ping, node.status) itself and hands every other request to the
main loop, here. The main loop answers the verbs that change the node (worker.*,
node.shutdown, node.reload), replies to malformed frames with an error, and forwards every
other request, by the noun of its kind, to the worker that owns it, over one DEALER per
worker. The forwarded copy carries a request id of ours; the reply is matched to
the client and re-stamped with the client's own id. Forwarded requests expire, so a worker
that never answers costs the client a timeout error, never an unbounded table.

Both DEALER clients (one frame) and REQ clients (an empty delimiter, then the frame) are
served; the reply goes back with the same envelope. The thread passes requests and replies
through with their envelopes untouched, so this module sees a request exactly as a ROUTER
would have delivered it.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgpack
import zmq

from akita import catalogue, transport
from akita.errors import ProtocolError
from akita.wire import protocol
from supervisor.control_thread import ControlThread, ReadOnlyVerb, recv_frames

log = logging.getLogger(__name__)

FORWARD_TIMEOUT_S = 60.0  # longer than any client waits: an expired entry is only garbage
MAX_PENDING = 10_000
_BATCH = 1000  # worker replies relayed per wakeup, so one worker cannot starve the loop
_RECONNECT_IVL_MS = 10   # a restarted worker is reached again within a few milliseconds
_RECONNECT_IVL_MAX_MS = 500

Verb = Callable[[protocol.Message], protocol.Message]

# Plain ints: pyzmq's flag enums cost a few microseconds per operation on the hot path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)


@dataclass(frozen=True)
class _Pending:
    envelope: list[bytes]
    client_rid: int | None
    worker: str
    deadline: float


class ControlServer:
    """The control thread, the supervisor's verbs, and the forwarding DEALERs."""

    def __init__(self, ctx: zmq.Context, run_dir: Path, verbs: dict[str, Verb],
                 read_only_verbs: dict[str, ReadOnlyVerb], is_up: Callable[[str], bool],
                 watch: Callable[[zmq.Socket, Callable[[], None]], None]) -> None:
        """`verbs` maps a kind to its handler in the main loop; `read_only_verbs` to one the
        control thread runs (see `ReadOnlyVerb`); `is_up(worker)` says whether to forward to
        it; `watch(sock, callback)` registers a new forwarding socket in the poll loop."""
        self.ctx = ctx
        self.run_dir = run_dir
        self.verbs = verbs
        self.is_up = is_up
        self.watch = watch
        self.thread = ControlThread(ctx, run_dir, read_only_verbs)
        # The main loop's end of the control thread: requests arrive and replies leave here.
        self.sock = self.thread.loop_sock
        self.dealers: dict[str, zmq.Socket] = {}
        self.pending: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
        self._next_id = 0
        self.counters = {"bad_frames": 0, "unknown_requests": 0, "forwarded": 0,
                         "expired": 0}

    # --- requests from clients ----------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def serving(self) -> bool:
        return self.thread.serving()

    def on_request(self) -> None:
        """One request per wakeup: the poll is level-triggered, so the next one fires at once
        for any request still queued, and a lone request is answered without the extra
        readiness check (a syscall or two) that draining in a loop would cost."""
        try:
            frames = recv_frames(self.sock, _NOBLOCK)
        except zmq.Again:
            return
        self._dispatch(frames)

    def _dispatch(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.counters["bad_frames"] += 1
            return
        envelope, data = frames[:-1], frames[-1]
        if any(frames[1:-1]):  # only REQ's empty delimiter may sit between peer and body
            self._fail(envelope, None, "bad_frame",
                       f"expected one frame, got {len(frames) - 1}")
            return
        try:
            rid, msg = protocol.decode_frame(data)
        except ProtocolError as exc:
            unknown = bool(exc.kind) and exc.kind not in protocol.kinds()
            code = "unknown_request" if unknown else "bad_frame"
            self._fail(envelope, None, code, str(exc))
            return
        verb = self.verbs.get(msg.KIND)
        if verb is not None:
            self._send(envelope, protocol.encode(verb(msg), rid=rid))
            return
        owner = catalogue.owner_of(msg.KIND)
        if owner is None:
            self._fail(envelope, rid, "unknown_request",
                       f"the node does not serve {msg.KIND!r} requests")
            return
        self._forward(envelope, rid, owner, msg)

    def _fail(self, envelope: list[bytes], rid: int | None, code: str, text: str) -> None:
        self.counters["unknown_requests" if code == "unknown_request" else "bad_frames"] += 1
        self._send(envelope, protocol.encode(protocol.Error(code=code, message=text), rid=rid))

    def _send(self, envelope: list[bytes], data: bytes) -> None:
        """Reply through the control thread, which relays it to the client."""
        try:
            for frame in envelope:
                self.sock.send(frame, _SNDMORE | _NOBLOCK)
            self.sock.send(data, _NOBLOCK)
        except zmq.Again:
            log.warning("control reply dropped: the control thread's queue is full")

    # --- forwarding ---------------------------------------------------------------------

    def _forward(self, envelope: list[bytes], rid: int | None, worker: str,
                 msg: protocol.Message) -> None:
        if not self.is_up(worker):
            self._send(envelope, protocol.encode(protocol.Error(
                code="worker_down", message=f"the {worker} worker is not running"), rid=rid))
            return
        if len(self.pending) >= MAX_PENDING:
            self._send(envelope, protocol.encode(protocol.Error(
                code="busy", message=f"{MAX_PENDING} requests already in flight"), rid=rid))
            return
        self._next_id += 1
        try:
            self._dealer(worker).send(protocol.encode(msg, rid=self._next_id), _NOBLOCK)
        except zmq.Again:
            self._send(envelope, protocol.encode(protocol.Error(
                code="busy", message=f"the {worker} worker's queue is full"), rid=rid))
            return
        self.pending[self._next_id] = _Pending(envelope, rid, worker,
                                               time.monotonic() + FORWARD_TIMEOUT_S)
        self.counters["forwarded"] += 1

    def _dealer(self, worker: str) -> zmq.Socket:
        sock = self.dealers.get(worker)
        if sock is None:
            sock = transport.make_socket(self.ctx, zmq.DEALER)
            sock.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_IVL_MAX_MS)
            sock.connect(transport.endpoint(self.run_dir, worker))
            self.dealers[worker] = sock
            self.watch(sock, lambda: self._on_reply(sock))
        return sock

    def _on_reply(self, sock: zmq.Socket) -> None:
        for _ in range(_BATCH):
            if not _readable(sock):
                return
            body = _unpack(recv_frames(sock, _NOBLOCK)[-1])
            if body is None:
                continue
            entry = self.pending.pop(body.get("rid"), None)  # type: ignore[arg-type]
            if entry is None:
                continue  # late: the client was already told it expired
            if entry.client_rid is None:
                body.pop("rid", None)
            else:
                body["rid"] = entry.client_rid
            self._send(entry.envelope, msgpack.packb(body, use_bin_type=True))

    def expire(self, now: float) -> None:
        """Answer forwarded requests that outlived FORWARD_TIMEOUT_S with an error."""
        while self.pending:
            fid, entry = next(iter(self.pending.items()))
            if entry.deadline > now:
                return
            del self.pending[fid]
            self.counters["expired"] += 1
            self._send(entry.envelope, protocol.encode(protocol.Error(
                code="timeout", message=f"the {entry.worker} worker did not answer"),
                rid=entry.client_rid))

    def worker_down(self, worker: str) -> None:
        """Fail the requests in flight to a worker that just exited."""
        for fid, entry in list(self.pending.items()):
            if entry.worker == worker:
                del self.pending[fid]
                self._send(entry.envelope, protocol.encode(protocol.Error(
                    code="worker_down",
                    message=f"the {worker} worker exited; the request may not have been "
                            "carried out"), rid=entry.client_rid))

    def close(self) -> None:
        """Stop the control thread (bounded wait) and close every socket."""
        self.thread.stop()
        for sock in self.dealers.values():
            sock.close(linger=0)


def _readable(sock: zmq.Socket) -> bool:
    return bool(cast(int, sock.get(_EVENTS)) & _POLLIN)


def _unpack(data: bytes) -> dict[str, Any] | None:
    try:
        body = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        log.warning("dropped an undecodable reply from a worker")
        return None
    return body if isinstance(body, dict) else None
