"""Request/response between nodes over Reticulum Links: the plumbing every node-to-node
conversation uses (state pulls here; delegation, ledger replication and inter-cluster
messages build on it).

- `Links.serve(path, handler)` answers requests for `path` on this node's destination. The
  handler runs on the gateway's loop with an `IncomingRequest`; it returns the response
  bytes, or `DEFER` and calls `request.respond()` / `request.fail()` later (a task that runs
  for a while answers when it is done, within the requester's timeout).
- `Links.request(peer_id, path, data, on_response, on_failure, timeout_s)` sends a request
  to a peer over one Link per peer, opened on first use, identified with the node identity
  (so the peer knows who asks, for admission) and reused. Callbacks run on the loop.

Payloads are opaque bytes (each path defines its own msgpack body). Anything larger than a
link packet travels as a Resource, in either direction, automatically. A response is
wrapped as ``[0, bytes]`` or ``[1, "error text"]`` so a refusal arrives as a failure with a
reason instead of a timeout.

Reticulum answers a request synchronously from its own thread; to keep every piece of state
on the loop, the response generator posts the request to the loop and returns nothing, and
the loop sends the response itself, exactly as Reticulum would (a RESPONSE packet when it
fits the link MDU, a response Resource otherwise).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import RNS
from RNS.vendor import umsgpack

from workers.gateway import transfers
from workers.gateway.bridge import LoopBridge
from workers.gateway.defence import Defence

log = logging.getLogger(__name__)

DEFER = object()   # a handler's return value: it will respond later
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_RESPONSE_BYTES = 16 << 20
ESTABLISH_TIMEOUT_S = 10.0

ResponseCallback = Callable[[bytes], None]
FailureCallback = Callable[[str], None]


class RequestRefused(Exception):
    """Raised by a handler to answer with an error instead of a response."""


class LinkState(Enum):
    CONNECTING = "connecting"
    READY = "ready"
    CLOSED = "closed"


@dataclass
class IncomingRequest:
    """A request from a peer, handled on the loop."""

    path: str
    data: bytes
    peer_id: str | None          # identity hash (hex) the requester identified as
    _links: Links
    _link: Any
    _request_id: bytes
    answered: bool = False

    def respond(self, payload: bytes) -> None:
        self._answer([0, payload])

    def fail(self, reason: str) -> None:
        self._answer([1, reason])

    @property
    def link_mdu(self) -> int:
        """Bytes one packet of the link this request came on carries: a response up to this
        size (with its envelope) goes as a packet, a larger one as a Resource."""
        return int(getattr(self._link, "mdu", 0) or 0)

    def _answer(self, envelope: list[Any]) -> None:
        if self.answered:
            return
        self.answered = True
        self._links.send_response(self._link, self._request_id, envelope)


Handler = Callable[[IncomingRequest], Any]


@dataclass
class _Pending:
    path: str
    data: bytes
    on_response: ResponseCallback
    on_failure: FailureCallback
    timeout_s: float
    max_response_bytes: int
    deadline: float


@dataclass
class _OutLink:
    peer_id: str
    link: Any
    state: LinkState = LinkState.CONNECTING
    queued: list[_Pending] = field(default_factory=list)
    opened_at: float = field(default_factory=time.monotonic)


@dataclass
class LinkStats:
    requests_sent: int = 0
    responses: int = 0
    failures: int = 0
    served: int = 0
    refused: int = 0
    unknown_path: int = 0
    too_large: int = 0
    links_opened: int = 0


class Links:
    """One node's request/response endpoints over Reticulum Links."""

    def __init__(self, bridge: LoopBridge, identity: Any, destination: Any,
                 resolve: Callable[[str], Any | None], admit: Callable[[str | None], bool],
                 max_request_bytes: int = 2 << 20, defence: Defence | None = None) -> None:
        """`destination`: this node's IN destination; `resolve(peer_id)`: the peer's OUT
        destination (None if unknown); `admit(peer_id)`: may this identity be served?
        `max_request_bytes`: the largest request any path takes (see `transfers`)."""
        self.bridge = bridge
        self.identity = identity
        self.destination = destination
        self.resolve = resolve
        self.admit = admit
        self.defence = defence or Defence()
        self.max_request_bytes = max_request_bytes
        self.stats = LinkStats()
        self._handlers: dict[str, Handler] = {}
        self._limits: dict[str, int] = {}
        self._out: dict[str, _OutLink] = {}
        self._incoming: dict[bytes, Any] = {}
        self._next_sweep = 0.0
        # Told (link id, path) of each request sent or served, for traffic accounting.
        self.on_path: Callable[[bytes, str], None] = _no_tag
        # Least keepalive interval of our links (see `_slow_keepalive`).
        self.keepalive_s = 0.0
        # How long a link of ours may take to come up. Reticulum allows a few seconds; on a
        # busy radio channel the link request waits its turn longer than that, and a link
        # given up gets its path expired and asked for again (a path request, answered by
        # an announce): more traffic on a channel that was already too busy. The gateway
        # widens it from the budget (`Pacer.establish_timeout_s`).
        self.establish_timeout_s = ESTABLISH_TIMEOUT_S
        destination.set_link_established_callback(self._incoming_established)
        transfers.limit_requests(destination, max_request_bytes,
                                 lambda size, peer: bridge.post(self._too_large, size, peer))

    # --- serving ----------------------------------------------------------------------------

    def serve(self, path: str, handler: Handler, max_bytes: int | None = None) -> None:
        """Answer requests for `path` with `handler` (on the loop); a request above
        `max_bytes` (default: the node's `max_request_bytes`) is refused."""
        self._handlers[path] = handler
        self._limits[path] = min(max_bytes or self.max_request_bytes, self.max_request_bytes)

        def generator(path: str, data: Any, request_id: bytes, link_id: bytes,
                      remote_identity: Any, requested_at: float) -> None:
            self.bridge.post(self._on_request, path, data, request_id, link_id,
                             remote_identity)
            # the loop sends the response (see the module docstring)

        self.destination.register_request_handler(path, response_generator=generator,
                                                  allow=RNS.Destination.ALLOW_ALL)

    def _incoming_established(self, link: Any) -> None:
        # Called on Reticulum's reader thread before any request on this link is processed.
        self.bridge.post(self._track_incoming, link)

    def _track_incoming(self, link: Any) -> None:
        self._slow_keepalive(link)
        self._incoming[link.link_id] = link
        link.set_link_closed_callback(
            lambda closed: self.bridge.post(self._incoming_closed, closed.link_id))

    def _incoming_closed(self, link_id: bytes) -> None:
        self._incoming.pop(link_id, None)
        transfers.sweep_partial()  # a transfer it carried may have stopped half way

    def _too_large(self, size: int, peer: str | None) -> None:
        self.stats.too_large += 1
        self.defence.refused("over_quota", peer, f"request of {size} bytes advertised, "
                             f"limit {self.max_request_bytes}")

    def _on_request(self, path: str, data: Any, request_id: bytes, link_id: bytes,
                    remote_identity: Any) -> None:
        link = self._incoming.get(link_id) or _find_active_link(link_id)
        peer_id = remote_identity.hash.hex() if remote_identity is not None else None
        if link is None:
            return
        if not self.admit(peer_id):
            self.stats.refused += 1
            self.defence.refused("not_admitted", peer_id, f"request for {path}")
            return
        self.on_path(link_id, path)
        request = IncomingRequest(path, data if isinstance(data, bytes) else b"", peer_id,
                                  self, link, request_id)
        handler = self._handlers.get(path)
        if handler is not None and len(request.data) > self._limits[path]:
            self.stats.too_large += 1
            self.defence.refused("over_quota", peer_id, f"{path}: {len(request.data)} bytes")
            request.fail(f"request of {len(request.data)} bytes exceeds the limit of "
                         f"{self._limits[path]} for {path}")
            return
        if handler is None:
            self.stats.unknown_path += 1
            request.fail(f"no handler for {path}")
            return
        self.stats.served += 1
        try:
            result = handler(request)
        except RequestRefused as exc:
            request.fail(str(exc))
            return
        if result is not DEFER and not request.answered:
            request.respond(result if isinstance(result, bytes) else b"")

    def send_response(self, link: Any, request_id: bytes, envelope: list[Any]) -> None:
        """Send a response the way Link.handle_request would have (packet or Resource)."""
        if link.status != RNS.Link.ACTIVE:
            return
        packed = umsgpack.packb([request_id, envelope])
        if len(packed) <= link.mdu:
            RNS.Packet(link, packed, RNS.Packet.DATA, context=RNS.Packet.RESPONSE).send()
        else:
            RNS.Resource(packed, link, request_id=request_id, is_response=True,
                         auto_compress=False)

    def _slow_keepalive(self, link: Any) -> None:
        """Reticulum keeps a fast link alive every 5 s (its interval follows the round-trip
        time), which on an idle LAN link costs more than the announces; ours follow the
        upkeep timers instead (both ends, so neither sees the other go stale)."""
        keepalive = min(float(RNS.Link.KEEPALIVE_MAX), self.keepalive_s)
        if keepalive > float(getattr(link, "keepalive", 0) or 0):
            link.keepalive = keepalive
            link.stale_time = keepalive * RNS.Link.STALE_FACTOR

    # --- requesting -------------------------------------------------------------------------

    def request(self, peer_id: str, path: str, data: bytes, on_response: ResponseCallback,
                on_failure: FailureCallback, timeout_s: float = DEFAULT_TIMEOUT_S,
                max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        """Send `data` to `path` on `peer_id`; exactly one callback runs, on the loop."""
        pending = _Pending(path, data, on_response, on_failure, timeout_s, max_response_bytes,
                           time.monotonic() + timeout_s)
        out = self._out.get(peer_id)
        if out is None or out.state is LinkState.CLOSED:
            out = self._open(peer_id)
            if out is None:
                self.stats.failures += 1
                on_failure(f"no route to {peer_id}")
                return
        if out.state is LinkState.READY:
            self._send(out, pending)
        else:
            out.queued.append(pending)

    def _open(self, peer_id: str) -> _OutLink | None:
        destination = self.resolve(peer_id)
        if destination is None:
            return None
        link = RNS.Link(destination,
                        established_callback=lambda l: self.bridge.post(self._established,
                                                                        peer_id, l),
                        closed_callback=lambda l: self.bridge.post(self._closed, peer_id, l))
        if self.establish_timeout_s > ESTABLISH_TIMEOUT_S:
            link.establishment_timeout = max(float(link.establishment_timeout),
                                             self.establish_timeout_s)
        out = _OutLink(peer_id, link)
        self._out[peer_id] = out
        self.stats.links_opened += 1
        return out

    def _established(self, peer_id: str, link: Any) -> None:
        out = self._out.get(peer_id)
        if out is None or out.link is not link:
            return
        link.identify(self.identity)
        self._slow_keepalive(link)
        out.state = LinkState.READY
        queued, out.queued = out.queued, []
        for pending in queued:
            self._send(out, pending)

    def _closed(self, peer_id: str, link: Any) -> None:
        out = self._out.get(peer_id)
        if out is None or out.link is not link:
            return
        del self._out[peer_id]
        for pending in out.queued:
            self._fail(pending, "link closed before it was established")

    def _send(self, out: _OutLink, pending: _Pending) -> None:
        remaining = pending.deadline - time.monotonic()
        if remaining <= 0:
            self._fail(pending, f"timed out waiting for a link to {out.peer_id}")
            return
        self.on_path(out.link.link_id, pending.path)
        receipt = out.link.request(
            pending.path, pending.data,
            response_callback=lambda r: self.bridge.post(self._response, pending, r.response),
            failed_callback=lambda r: self.bridge.post(self._fail, pending,
                                                       f"{pending.path}: no response from "
                                                       f"{out.peer_id}"),
            timeout=remaining, max_response_size=pending.max_response_bytes)
        if receipt is False:
            self._fail(pending, f"could not send {pending.path} to {out.peer_id}")
            return
        self.stats.requests_sent += 1

    def _response(self, pending: _Pending, response: Any) -> None:
        if (isinstance(response, list) and len(response) == 2 and response[0] == 0
                and isinstance(response[1], bytes)):
            self.stats.responses += 1
            pending.on_response(response[1])
        elif isinstance(response, list) and len(response) == 2 and response[0] == 1:
            self._fail(pending, f"{pending.path} refused: {response[1]}")
        else:
            self._fail(pending, f"{pending.path}: malformed response")

    def _fail(self, pending: _Pending, reason: str) -> None:
        self.stats.failures += 1
        pending.on_failure(reason)

    # --- housekeeping -------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Fail requests still waiting for a link past their deadline; sweep partial files."""
        if now >= self._next_sweep:
            self._next_sweep = now + transfers.SWEEP_EVERY_S
            transfers.sweep_partial()
        for peer_id, out in list(self._out.items()):
            if out.state is not LinkState.CONNECTING:
                continue
            expired = [p for p in out.queued if now >= p.deadline]
            out.queued = [p for p in out.queued if now < p.deadline]
            for pending in expired:
                self._fail(pending, f"timed out waiting for a link to {peer_id}")
            if now - out.opened_at > self.establish_timeout_s and not out.queued:
                out.link.teardown()
                del self._out[peer_id]

    def close_peer(self, peer_id: str) -> None:
        """The peer is gone: close our link to it (queued requests fail)."""
        out = self._out.pop(peer_id, None)
        if out is None:
            return
        for pending in out.queued:
            self._fail(pending, f"{peer_id} left")
        out.link.teardown()

    def traffic(self) -> dict[str, int]:
        """Bytes and packets sent and received on the open links, both directions (Reticulum's
        link counters: encrypted payloads, Resource parts included, packet headers not)."""
        links = [out.link for out in self._out.values()] + list(self._incoming.values())
        return {name: sum(int(getattr(link, attr, 0)) for link in links)
                for name, attr in (("tx_bytes", "txbytes"), ("rx_bytes", "rxbytes"),
                                   ("tx_packets", "tx"), ("rx_packets", "rx"))}

    def is_open(self, peer_id: str) -> bool:
        """Is our link to `peer_id` up (a request on it costs no link setup)?"""
        out = self._out.get(peer_id)
        return out is not None and out.state is LinkState.READY

    def ready_links(self) -> int:
        return sum(1 for out in self._out.values() if out.state is LinkState.READY)

    def close(self) -> None:
        for peer_id in list(self._out):
            self.close_peer(peer_id)
        for link in list(self._incoming.values()):
            link.teardown()
        self._incoming.clear()


def _no_tag(_link_id: bytes, _path: str) -> None:
    pass


def _find_active_link(link_id: bytes) -> Any | None:
    for link in list(RNS.Transport.active_links):
        if link.link_id == link_id:
            return link
    return None
