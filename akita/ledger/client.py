"""The sending side of the ledger: how any process appends events to this node's feed.

A `LedgerClient` owns one DEALER socket connected to the ledger worker
(``run_dir/ledger.sock``). Appends never block: each event is stamped and queued, and up to
`window` frames are in flight at once; events appended while the window is full ride
together in the next frame, so a busy sender sends few large frames and an idle one sends
each event at once (lowest latency).

Reliability is go-back-N over per-instance refs. Every frame carries `source` (unique per
client instance), `ref` (rising by 1 per frame) and `base` (the lowest ref this client has
not seen acknowledged). The writer commits only the next ref of a source, re-acknowledges a
ref it already holds without writing it again, and answers a frame beyond a gap with its
last committed ref; the client then resends everything unacknowledged, in order. A frame
whose ack does not come within `resend_after_s` is resent the same way, so a ledger worker
that was killed and restarted loses nothing that it acknowledged and writes nothing twice.

An owner that cares more about CPU than latency for a while (the executor, while its pool is
saturated) sets `linger_s`: events then wait up to that long for others to ride with them,
so the writer commits (and fsyncs) fewer, larger groups. `due_in()` says when what waits
must go, and `tick()` sends it; a full frame, `flush()` and `linger_s = 0` send at once.
Only the sending is later: nothing is acknowledged before it is durable.

Events appended with ``ack=False`` are fire-and-forget: sent at once with ref 0, outside the
window, never resent; a writer that dies at that moment may lose them. While the window is
full they ride in the next acknowledged frame instead, so they never overtake events
appended before them. `flush()` covers them too: it waits for an acknowledged frame sent
after them over the same ordered pipe.

The owner drives the client from its own poll loop: register `sock` for POLLIN and call
`on_readable()` when it fires, and call `tick()` now and then (every 100 ms is plenty).
Not thread-safe.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq

from akita import transport
from akita.catalogue import LEDGER
from akita.errors import ProtocolError
from akita.ratelog import LogLimiter
from akita.wire import events, protocol

log = logging.getLogger(__name__)

MAX_EVENTS_PER_FRAME = 2_000
# A sender that keeps appending while the window is full may queue this many frames'
# worth of events (in memory) before append() starts dropping, so a stuck writer cannot
# grow a sender without bound. At 2,000 events a frame this is a million events.
MAX_QUEUED_FRAMES = 500

# Room left for the envelope under the writer's frame limit.
MAX_FRAME_BYTES = protocol.MAX_FRAME_BYTES - 4096

DurableCallback = Callable[[int], None]
RefusedCallback = Callable[[protocol.Error], None]


@dataclass
class _Frame:
    """Events sent (or to be sent) together under one ref."""

    events: list[dict[str, Any]] = field(default_factory=list)
    callbacks: list[tuple[int, DurableCallback]] = field(default_factory=list)  # (index, cb)
    ref: int = 0
    sent_at: float = 0.0


def _split(frame: _Frame) -> _Frame:
    """Move the second half of `frame`'s events into a new frame, returned."""
    half = len(frame.events) // 2
    rest = _Frame(frame.events[half:], [(i - half, cb) for i, cb in frame.callbacks if i >= half])
    del frame.events[half:]
    frame.callbacks = [(i, cb) for i, cb in frame.callbacks if i < half]
    return rest


class LedgerClient:
    """Appends events to this node's feed through the ledger worker (DEALER → run_dir/ledger.sock)."""

    def __init__(self, ctx: zmq.Context, run_dir: Path, role: str, *, window: int = 8,
                 resend_after_s: float = 2.0,
                 on_refused: RefusedCallback | None = None) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.source = f"{role}-{os.getpid()}-{secrets.token_hex(4)}"
        self.window = window
        self.resend_after_s = resend_after_s
        self.sock: zmq.Socket = transport.make_socket(ctx, zmq.DEALER)
        self.sock.connect(transport.endpoint(run_dir, LEDGER))
        self._next_ref = 1
        self._in_flight: deque[_Frame] = deque()   # sent, not acknowledged; refs rising by 1
        self._queued: deque[_Frame] = deque()      # waiting for room in the window
        self._pending_events = 0
        self._resend_barrier = 0  # gap replies to frames up to this ref predate our last resend
        self._unflushed_fire_and_forget = False
        self.dropped = 0
        self.errors = 0
        self.resends = 0
        # The writer's last refusal (a full disk, say), until it acknowledges again; the
        # refused frames stay in flight and are resent, so nothing is lost meanwhile.
        self.refused: protocol.Error | None = None
        self.last_seq = 0  # the feed seq of the last of our events known durable
        self.on_refused = on_refused
        self._refusals = LogLimiter(log)
        self._pack = msgpack.Packer(use_bin_type=True).pack  # reused: a Packer per call is slow
        self.linger_s = 0.0
        self._held_since = 0.0  # monotonic time the oldest unsent event was appended

    # --- the interface ----------------------------------------------------------------------

    def append(self, kind: str, data: dict[str, Any], *,
               on_durable: DurableCallback | None = None, ack: bool = True) -> None:
        """Queue one event {kind, ts, data}; never blocks (see the module docstring).
        Processes write declared events with `record`; this is the raw form beneath it."""
        if type(kind) is not str or not kind:
            raise TypeError(f"an event kind is a non-empty str, not {kind!r}")
        event = protocol.ledger_event(kind, time.time(), data)
        if not ack and not self._queued:
            self._send_fire_and_forget(event)
            return
        if len(self._queued) >= MAX_QUEUED_FRAMES:
            self.dropped += 1
            if self.dropped % 10_000 == 1:  # the first, then every 10,000th: not a log flood
                log.warning("ledger appends dropped (%d so far): %d events wait for the "
                            "ledger worker", self.dropped, self._pending_events)
            return
        if not self._queued:
            self._held_since = time.monotonic()
        if not self._queued or len(self._queued[-1].events) >= MAX_EVENTS_PER_FRAME:
            self._queued.append(_Frame())
        frame = self._queued[-1]
        if on_durable is not None:
            frame.callbacks.append((len(frame.events), on_durable))
        frame.events.append(event)
        self._pending_events += 1
        self._send_due()

    def record(self, event: events.Event, *, on_durable: DurableCallback | None = None,
               ack: bool = True) -> None:
        """Append one declared event (`akita.wire.events`): how every process writes."""
        self.append(event.KIND, event.to_data(), on_durable=on_durable, ack=ack)

    def on_readable(self) -> None:
        """Process every reply waiting on the socket; call on_durable for what became durable."""
        while True:
            try:
                data = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._on_reply(data)
        self._send_due()

    def due_in(self) -> float | None:
        """Seconds until events held back by `linger_s` must be sent (0.0: now); None when
        nothing waits to be sent."""
        if not self._queued:
            return None
        if len(self._queued) > 1:
            return 0.0  # a full frame waits: lingering gains nothing more
        return max(0.0, self._held_since + self.linger_s - time.monotonic())

    def tick(self) -> None:
        """Resend unacknowledged frames whose ack is overdue, and send queued events."""
        if (self._in_flight
                and time.monotonic() - self._in_flight[0].sent_at >= self.resend_after_s):
            log.info("ledger ack overdue for %s ref %d: resending %d frames",
                     self.source, self._in_flight[0].ref, len(self._in_flight))
            self._resend_all()
        self._send_due()

    def pending(self) -> int:
        """Events appended but not yet acknowledged (fire-and-forget events that went out
        at once are not counted: nobody acknowledges them)."""
        return self._pending_events

    def flush(self, timeout_s: float) -> bool:
        """Block until everything appended so far is durable; False if `timeout_s` passed."""
        if self._unflushed_fire_and_forget and not self._queued:
            self._queued.append(_Frame())  # an empty acknowledged frame: a barrier
        deadline = time.monotonic() + timeout_s
        while self._in_flight or self._queued:
            self._send_queued()  # lingering ends here: the caller waits for everything
            self.tick()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self.sock.poll(int(min(remaining, 0.1) * 1000) + 1, zmq.POLLIN):
                self.on_readable()
        self._unflushed_fire_and_forget = False
        return True

    def close(self) -> None:
        """Close the socket; anything unacknowledged is abandoned (flush first to avoid that)."""
        self.sock.close(linger=0)

    # --- sending ----------------------------------------------------------------------------

    def _send_due(self) -> None:
        if not self.linger_s or self.due_in() == 0.0:
            self._send_queued()

    def _send_queued(self) -> None:
        while self._queued and len(self._in_flight) < self.window:
            frame = self._queued[0]
            frame.ref = self._next_ref
            data = self._encode(frame)
            if data is None:
                continue  # the frame was split or cleaned up: look at the queue again
            if not self._transmit(frame, data):
                return
            self._queued.popleft()
            self._next_ref += 1
            self._in_flight.append(frame)
            self._unflushed_fire_and_forget = False

    def _encode(self, frame: _Frame) -> bytes | None:
        """The frame's bytes; None after splitting an oversized frame or dropping events
        that cannot be encoded (both rare: they never block the frames behind them)."""
        base = self._in_flight[0].ref if self._in_flight else frame.ref
        body = protocol.ledger_append_body(self.source, frame.ref, frame.events, base=base)
        try:
            data: bytes = self._pack(body)
        except (TypeError, ValueError, OverflowError):
            self._drop_unencodable(frame)
            return None
        if len(data) <= MAX_FRAME_BYTES:
            return data
        if len(frame.events) > 1:
            self._queued.insert(1, _split(frame))
        else:
            log.error("ledger event %s dropped: %d bytes exceed the frame limit",
                      frame.events[0]["kind"], len(data))
            self._forget(frame, 0)
        return None

    def _drop_unencodable(self, frame: _Frame) -> None:
        for index in range(len(frame.events) - 1, -1, -1):
            try:
                self._pack(frame.events[index])
            except (TypeError, ValueError, OverflowError) as exc:
                log.error("ledger event %s dropped: its data cannot be encoded (%s)",
                          frame.events[index]["kind"], exc)
                self._forget(frame, index)

    def _forget(self, frame: _Frame, index: int) -> None:
        """Remove event `index` of a frame not yet sent; its on_durable is never called."""
        del frame.events[index]
        frame.callbacks = [(i - (i > index), cb) for i, cb in frame.callbacks if i != index]
        self._pending_events -= 1
        self.dropped += 1

    def _transmit(self, frame: _Frame, data: bytes) -> bool:
        try:
            self.sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            return False  # the pipe is full (writer gone or slow): tick() tries again
        frame.sent_at = time.monotonic()
        return True

    def _resend_all(self) -> None:
        self.resends += 1
        for frame in self._in_flight:
            data = self._encode(frame)
            if data is None or not self._transmit(frame, data):
                break  # (an in-flight frame was encoded before, so None cannot happen)
        if self._in_flight:
            self._resend_barrier = self._in_flight[-1].ref

    def _send_fire_and_forget(self, event: dict[str, Any]) -> None:
        body = protocol.ledger_append_body(self.source, 0, [event], ack=False)
        try:
            self.sock.send(self._pack(body), zmq.NOBLOCK)
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("ledger event %s dropped: its data cannot be encoded (%s)", event["kind"], exc)
            self.dropped += 1
            return
        except zmq.Again:
            self.dropped += 1
            return
        self._unflushed_fire_and_forget = True

    # --- replies ----------------------------------------------------------------------------

    def _on_reply(self, data: bytes) -> None:
        try:
            rid, reply = protocol.decode_frame(data)
        except ProtocolError as exc:
            self.errors += 1
            log.warning("undecodable reply from the ledger worker: %s", exc)
            return
        if isinstance(reply, protocol.LedgerAcked):
            self._on_acked(rid, reply)
        elif isinstance(reply, protocol.Error):
            self.errors += 1
            self.refused = reply
            self._refusals.log(logging.WARNING, "ledger worker refused frame %s: %s: %s", rid,
                               reply.code, reply.message)
            if self.on_refused is not None:
                self.on_refused(reply)
        else:
            self.errors += 1
            log.warning("unexpected reply %s from the ledger worker", reply.KIND)

    def _on_acked(self, rid: int | None, acked: protocol.LedgerAcked) -> None:
        self.refused = None
        # Acks are cumulative: every ref up to acked.ref is durable.
        # The writer pairs a ref with the seq of its last event (0 when it does not know it).
        self.last_seq = max(self.last_seq, acked.last_seq)
        while self._in_flight and self._in_flight[0].ref <= acked.ref:
            frame = self._in_flight.popleft()
            self._pending_events -= len(frame.events)
            last_seq = acked.last_seq if frame.ref == acked.ref else 0
            self._call_durable(frame, last_seq)
        # An answer to frame `rid` naming a lower ref: the writer misses something before it.
        if (rid is not None and acked.ref < rid and rid > self._resend_barrier
                and self._in_flight):
            log.info("ledger worker holds %s up to ref %d: resending from %d",
                     self.source, acked.ref, self._in_flight[0].ref)
            self._resend_all()

    @staticmethod
    def _call_durable(frame: _Frame, last_seq: int) -> None:
        first_seq = last_seq - len(frame.events) + 1 if last_seq else 0
        for index, callback in frame.callbacks:
            callback(first_seq + index if last_seq else 0)
