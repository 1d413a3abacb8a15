"""Inter-cluster messages from a local program: send one, or follow those arriving here.

Both talk to the node's gateway (``run_dir/gateway.sock``) and, for following, its bus
(``run_dir/bus-out.sock``); `akita.Client.send` / `Client.subscribe` and `akitactl send` /
`akitactl subscribe` are thin layers over this module.

A `Subscription` advertises its topic prefix through the gateway under a lease and renews
it while it is being read (every third of the lease), so the node stops advertising a topic
once its reader is gone, even one killed without a word; `close()` withdraws it at once.
A subscription sees messages published after the bus took its socket: it connects to the
bus before it asks the gateway to advertise the prefix.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import zmq

from akita import transport
from akita.catalogue import GATEWAY
from akita.errors import NodeNotResponding, NodeNotRunning, ProtocolError, RequestFailed
from akita.wire import protocol

DEFAULT_LEASE_S = 30.0
REPLY_MARGIN_S = 10.0     # a send waits this much past its deadline for the gateway's answer
REQUEST_TIMEOUT_S = 10.0


class MessageUndeliverable(RequestFailed):
    """The target cluster's coordinator did not confirm delivery before the deadline;
    `message` says why (the last reason a try failed)."""


def send(run_dir: Path, cluster_id: str, topic: str, payload: Any, *,
         deadline_s: float = 0.0, message_id: str = "",
         ctx: zmq.Context | None = None) -> dict[str, Any]:
    """Send `payload` to the subscribers of `topic` in cluster `cluster_id` and wait for the
    end-to-end acknowledgement: {"id", "cluster", "coordinator", "delivered": [NODE_ID…],
    "attempts"}. `deadline_s` 0: the node's ``[cluster] message_deadline``. Raises
    `MessageUndeliverable` after the deadline, `RequestFailed` for bad input (codes
    bad_request, too_large)."""
    msg = protocol.MessageSend(cluster=cluster_id, topic=topic, payload=payload,
                               deadline_s=float(deadline_s), id=message_id)
    # With the default deadline (unknown here) wait as long as the longest a node allows.
    wait_s = (deadline_s or 3600.0) + REPLY_MARGIN_S
    with transport.Requester(run_dir, GATEWAY, ctx=ctx) as requester:
        try:
            reply = requester.request(msg, wait_s)
        except RequestFailed as exc:
            if exc.code == "undeliverable":
                raise MessageUndeliverable(exc.code, exc.message) from None
            raise
    assert isinstance(reply, protocol.MessageDelivered)
    return {"id": reply.id, "cluster": reply.cluster, "coordinator": reply.coordinator,
            "delivered": reply.delivered, "attempts": reply.attempts}


class Subscription:
    """Messages for topics starting with `prefix` as they arrive at this node.

        with Subscription(run_dir, "alerts.") as sub:
            for message in sub:            # blocks; or sub.get(timeout_s=5)
                print(message["from"], message["payload"])

    Each message is {"id", "from", "cluster", "topic", "payload"}: `from` the sending node,
    `cluster` the sender's cluster. Not thread-safe: use it on the thread that made it.
    """

    def __init__(self, run_dir: Path, prefix: str, *, lease_s: float = DEFAULT_LEASE_S,
                 ctx: zmq.Context | None = None) -> None:
        self.run_dir = run_dir
        self.prefix = prefix
        self.lease_s = lease_s
        self.subscriber = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        bus = transport.socket_path(run_dir, transport.BUS_OUT)
        if not bus.exists():
            self._close_ctx()
            raise NodeNotRunning(f"no node is running (no socket at {bus})")
        self.sock = transport.make_socket(self.ctx, zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, f"message.{prefix}".encode())
        self.sock.connect(transport.endpoint(run_dir, transport.BUS_OUT))
        self._renew_at = 0.0
        try:
            self._renew()
        except BaseException:
            self.sock.close(linger=0)
            self._close_ctx()
            raise

    def _renew(self) -> None:
        self._gateway(protocol.MessageSubscribe(prefix=self.prefix, subscriber=self.subscriber,
                                                lease_s=self.lease_s))
        self._renew_at = time.monotonic() + self.lease_s / 3

    def _gateway(self, msg: protocol.Message) -> None:
        with transport.Requester(self.run_dir, GATEWAY, ctx=self.ctx) as requester:
            requester.request(msg, REQUEST_TIMEOUT_S)

    def get(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The next message, or None when `timeout_s` passes first (None: wait for ever)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            if now >= self._renew_at:
                self._renew()
            wake = self._renew_at if deadline is None else min(deadline, self._renew_at)
            if self.sock.poll(int(max(0.0, wake - now) * 1000) + 1):
                found = self._read()
                if found is not None:
                    return found
            elif deadline is not None and time.monotonic() >= deadline:
                return None

    def _read(self) -> dict[str, Any] | None:
        frames = self.sock.recv_multipart()
        if len(frames) != 2:
            return None
        try:
            msg = protocol.decode(frames[1])
        except ProtocolError:
            return None
        if not isinstance(msg, protocol.MessageReceived) or not msg.topic.startswith(self.prefix):
            return None
        return {"id": msg.id, "from": msg.sender, "cluster": msg.cluster, "topic": msg.topic,
                "payload": msg.payload}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            found = self.get()
            if found is not None:
                yield found

    def close(self) -> None:
        """Stop advertising the prefix (best effort: the lease ends it anyway) and close."""
        try:
            self._gateway(protocol.MessageUnsubscribe(prefix=self.prefix,
                                                      subscriber=self.subscriber))
        except (RequestFailed, NodeNotRunning, NodeNotResponding):
            pass
        self.sock.close(linger=0)
        self._close_ctx()

    def _close_ctx(self) -> None:
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
