"""The node's event bus: an XSUB/XPUB proxy, run by libzmq in a thread of the supervisor.

Publishers (workers) connect PUB sockets to bus-in, where the XSUB is bound; subscribers
connect SUB sockets to bus-out, where the XPUB is bound. Subscriptions flow upstream from
XPUB to XSUB, so publishers only send what someone wants.

Why a thread: `zmq.proxy_steerable` moves messages in C without the GIL, so a busy bus (every
committed ledger event, for a subscriber that wants them) never competes with the
supervisor's Python loop, and the control socket's latency does not depend on bus traffic.
The thread holds nothing but the two proxy sockets and a control pair, and the supervisor
never forks (its zygote is started by fork+exec before the bus exists).

The supervisor is a subscriber and a publisher like any other, over inproc: its SUB
subscribes to the topics it acts on (heartbeats, resource samples) — the XPUB passes that
subscription up to the XSUB and so to every worker, alongside what downstream subscribers
ask for, and XSUB counts subscriptions per topic, so a subscriber that unsubscribes from
`worker.heartbeat` cannot cancel the supervisor's own. Its PUB feeds `worker.state` into
the XSUB.
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

_BATCH = 1000  # messages handled per wakeup, so the bus cannot starve the control socket
_INPROC_IN = "inproc://akita-bus-in"
_INPROC_OUT = "inproc://akita-bus-out"
_INPROC_CONTROL = "inproc://akita-bus-control"
_JOIN_TIMEOUT_S = 2.0


class Bus:
    """The proxy thread plus the supervisor's own subscriber and publisher."""

    def __init__(self, ctx: zmq.Context, run_dir: Path,
                 handlers: dict[str, Callable[[protocol.Message], None]]) -> None:
        """`handlers` maps a topic the supervisor acts on to what it calls with the message."""
        self.handlers = handlers
        self.bad_frames = 0
        xsub = transport.make_socket(ctx, zmq.XSUB)
        transport.bind(xsub, run_dir, transport.BUS_IN)
        xsub.bind(_INPROC_IN)
        xpub = transport.make_socket(ctx, zmq.XPUB)
        transport.bind(xpub, run_dir, transport.BUS_OUT)
        xpub.bind(_INPROC_OUT)
        steer = ctx.socket(zmq.PAIR)
        steer.bind(_INPROC_CONTROL)
        self._steer = ctx.socket(zmq.PAIR)
        self._steer.connect(_INPROC_CONTROL)
        self._thread = threading.Thread(target=_run_proxy, args=(xsub, xpub, steer),
                                        name="bus-proxy", daemon=True)
        self._thread.start()
        self.sub = transport.make_socket(ctx, zmq.SUB)
        for topic in handlers:
            self.sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.sub.connect(_INPROC_OUT)
        self.pub = transport.make_socket(ctx, zmq.PUB)
        self.pub.connect(_INPROC_IN)

    def on_message(self) -> None:
        """Messages on the topics the supervisor acts on."""
        for _ in range(_BATCH):
            try:  # not poll(0) first: Socket.poll builds a Poller per call, for every message
                frames = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                self.bad_frames += 1
                continue
            self._act_on(frames[0], frames[1])

    def publish(self, topic: str, msg: protocol.Message) -> None:
        """Publish from the supervisor itself (dropped, never blocking, if the bus lags)."""
        try:
            self.pub.send_multipart([topic.encode(), protocol.encode(msg)], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _act_on(self, topic: bytes, data: bytes) -> None:
        handler = self.handlers.get(topic.decode(errors="replace"))
        if handler is None:
            return
        try:
            msg = protocol.decode(data)
        except ProtocolError as exc:
            self.bad_frames += 1
            log.debug("dropped a bad bus frame on %r: %s", topic, exc)
            return
        handler(msg)

    def close(self) -> None:
        """Stop the proxy thread and close the supervisor's bus sockets."""
        try:
            self._steer.send(b"TERMINATE")
        except zmq.ZMQError as exc:
            log.warning("cannot stop the bus proxy: %s", exc)
        self._thread.join(_JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            log.warning("the bus proxy did not stop within %g s", _JOIN_TIMEOUT_S)
        for sock in (self._steer, self.sub, self.pub):
            sock.close(linger=0)


def _run_proxy(xsub: zmq.Socket, xpub: zmq.Socket, steer: zmq.Socket) -> None:
    """The proxy thread: forward until TERMINATE arrives (or the context ends)."""
    try:
        zmq.proxy_steerable(xsub, xpub, None, steer)
    except zmq.ContextTerminated:
        pass
    except zmq.ZMQError as exc:
        log.error("bus proxy failed: %s", exc)
    finally:
        for sock in (xsub, xpub, steer):
            sock.close(linger=0)
