"""The control socket's own thread: the ROUTER at run_dir/control.sock and its receive loop.

Why a thread: the main loop waits on many sources at once (the zygote, the bus, the ledger
client, forwarding sockets, worker output pipes, signals), and every wakeup of libzmq's poll
costs a readiness check — a poll() and a getpid() — per ZeroMQ socket, before and after it
sleeps. Served by that loop, a status request cost the supervisor some 11 poll() and 14
getpid() calls, against 4 and 8 for a plain REP server. This thread waits in a blocking recv
on its one socket, which costs what the plain REP server costs; what remains of the
difference is the Python that decodes the request and encodes the reply.

What it answers itself: only read-only verbs (ping, node.status), with handlers that read
nothing but what the main loop publishes for them (`supervisor.status.StatusBoard`).
Everything else — verbs that change the process table, requests forwarded to workers, and
every frame that does not decode (so errors are counted and worded in one place) — is
handed to the main loop unchanged, envelope and all, and the main loop's reply comes back
the same way.

How the hand-over works without a second socket to wait on: the main loop's end is a DEALER
connected to this same ROUTER over inproc under a fixed routing id, LOOP_ID.

    a request not for the thread   ROUTER gets  [client, …, body]
                                   ROUTER sends [LOOP_ID, client, …, body]
    the main loop                  DEALER gets  [client, …, body]
                                   DEALER sends [client, …, reply]
    its reply                      ROUTER gets  [LOOP_ID, client, …, reply]
                                   ROUTER sends [client, …, reply]
    stop                           ROUTER gets  [LOOP_ID, b"stop"]  (a reply has 2+ frames)

Each socket is used by one thread only: the ROUTER by this one (it is created and bound by
the main thread before the thread starts, which is the hand-over libzmq allows), the DEALER
by the main loop. A client cannot pose as the main loop: the DEALER connects before the
ROUTER binds its ipc path, and a ROUTER ignores a later peer whose routing id is taken.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import zmq

from akita import transport
from akita.errors import ProtocolError
from akita.wire import protocol

log = logging.getLogger(__name__)

LOOP_ID = b"supervisor-loop"  # not 5 bytes starting with a zero byte, as generated ids are
_INPROC = "inproc://akita-control"
_STOP = b"stop"
_JOIN_TIMEOUT_S = 2.0

# A handler the thread runs itself: given the request and its rid, the encoded reply. It
# must only read data that is safe to read while the main loop runs (immutable snapshots,
# values replaced by one assignment).
ReadOnlyVerb = Callable[[protocol.Message, int | None], bytes]

# Plain ints: pyzmq's flag enums cost a few microseconds per operation on the hot path.
_RCVMORE = int(zmq.RCVMORE)
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)


class ControlThread:
    """The control ROUTER, served by its own thread, and the main loop's DEALER onto it."""

    def __init__(self, ctx: zmq.Context, run_dir: Path, verbs: dict[str, ReadOnlyVerb]) -> None:
        self.verbs = verbs
        self.router = transport.make_socket(ctx, zmq.ROUTER)
        self.router.bind(_INPROC)
        self.loop_sock = transport.make_socket(ctx, zmq.DEALER)
        self.loop_sock.setsockopt(zmq.ROUTING_ID, LOOP_ID)
        self.loop_sock.connect(_INPROC)
        transport.bind(self.router, run_dir, transport.CONTROL)
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def serving(self) -> bool:
        """False once the thread has ended (it only ends when stopped, or on a bug)."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Main loop: stop the thread (waiting a bounded time) and close both sockets."""
        if self._thread.ident is None:  # never started: the ROUTER is still ours to close
            self.router.close(linger=0)
        elif self._thread.is_alive():
            try:
                self.loop_sock.send(_STOP, _NOBLOCK)
            except zmq.Again:
                log.warning("cannot reach the control thread to stop it: its queue is full")
            self._thread.join(_JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("the control thread did not stop within %g s", _JOIN_TIMEOUT_S)
        self.loop_sock.close(linger=0)

    # --- the thread ---------------------------------------------------------------------

    def _serve(self) -> None:
        """The thread's body. Its recv has no timeout on purpose: one would only add idle
        wakeups; a stop arrives as a message, and a daemon thread cannot keep the process
        alive if that message is never read."""
        try:
            while self._serve_one():
                pass
        except zmq.ContextTerminated:
            pass  # the context was destroyed under us: nothing is left to serve
        except Exception:  # the thread's top level: say why the node became unreachable
            log.exception("the control thread failed")
        finally:
            self.router.close(linger=0)

    def _serve_one(self) -> bool:
        """Receive one message and deal with it; False when asked to stop."""
        frames = _recv_routed(self.router)
        if frames[0] == LOOP_ID:
            if len(frames) == 2:
                return False
            send_frames(self.router, frames[1:])  # the main loop's reply, on to its client
            return True
        reply = self._answer(frames)
        if reply is None:
            # Dropped, like anything a ROUTER cannot queue, only if the main loop is some
            # 20,000 requests behind (both ends' high-water marks): the client times out.
            send_frames(self.router, [LOOP_ID, *frames])
        else:
            send_frames(self.router, [*frames[:-1], reply])
        return True

    def _answer(self, frames: list[bytes]) -> bytes | None:
        """The encoded reply to a read-only verb, or None for the main loop to deal with."""
        # A DEALER sends [id, body], a REQ [id, b"", body]; the main loop words the error
        # for any other shape.
        if len(frames) != 2 and (len(frames) != 3 or frames[1]):
            return None
        try:
            rid, msg = protocol.decode_frame(frames[-1])
        except ProtocolError:
            return None
        verb = self.verbs.get(msg.KIND)
        if verb is None:
            return None
        return verb(msg, rid)


def _recv_routed(sock: zmq.Socket) -> list[bytes]:
    """Wait for one message on a ROUTER: the sender's routing id, then what it sent.

    Each frame after the id is read as a zmq.Frame for its `more` flag: asking the socket
    for RCVMORE costs about half a microsecond in pyzmq (it builds an option enum per call),
    which is a noticeable share of a status round trip. The id needs no check: a ROUTER
    always delivers at least one frame after it.
    """
    frames = [sock.recv()]
    frame = sock.recv(copy=False)
    while frame.more:
        frames.append(frame.bytes)
        frame = sock.recv(copy=False)
    frames.append(frame.bytes)
    return frames


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """recv_multipart without its per-frame flag-enum arithmetic.

    With `flags=NOBLOCK` raises zmq.Again when nothing is waiting; the frames after the
    first are part of the same message and are there already.
    """
    frames = [sock.recv(flags)]
    while sock.get(_RCVMORE):
        frames.append(sock.recv())
    return frames


def send_frames(sock: zmq.Socket, frames: list[bytes]) -> None:
    """send_multipart on a ROUTER, which never blocks: it drops what it cannot queue."""
    for frame in frames[:-1]:
        sock.send(frame, _SNDMORE)
    sock.send(frames[-1])
