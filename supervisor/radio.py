"""An emulated LoRa channel, so nodes on one machine can be run over "radio".

    python -m supervisor.radio channel --socket PATH --profile SF9 [--loss P] [--links a-b,b-c]
    python -m supervisor.radio attach --socket PATH --node NAME     (a PipeInterface command)
    python -m supervisor.radio stats --socket PATH

One `channel` process is the medium. Each node joins it through a real Reticulum
PipeInterface whose command is `attach`: Reticulum writes HDLC-framed packets to the
command's stdin and reads frames from its stdout; `attach` relays them to the channel over
a unix SOCK_SEQPACKET socket. The channel behaves like LoRa:

- every frame occupies the channel for its time on air (`akita.mesh.airtime`);
- one transmitter at a time within range: a node with a frame to send defers while it
  hears the channel busy (as an RNode's carrier sense does), with a random backoff;
- a receiver loses a frame that overlaps another frame it hears, or one sent while it was
  itself transmitting (half duplex); optional random loss on top;
- optional range (`--links`): only listed pairs hear each other, so a node may reach
  another only through a third that transports;
- frames over the MTU (500 bytes) are dropped and counted, never delivered.

`stats` prints, as JSON, airtime and frames per node and the channel's utilisation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import selectors
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from akita.mesh.airtime import LoraProfile, profile

MTU = 500
MAX_QUEUED_FRAMES = 64
BACKOFF_SYMBOLS = 16        # carrier-sense backoff: up to this many symbol times
CONNECT_TIMEOUT_S = 10.0
HELLO, FRAME, STATS = b"H", b"F", b"S"
FLAG, ESC, ESC_MASK = 0x7E, 0x7D, 0x20


# --- the medium ---------------------------------------------------------------------------


@dataclass
class Transmission:
    sender: str
    start: float
    end: float
    frame: bytes


@dataclass
class Station:
    """One node on the channel: its queue, what it is sending, and its figures."""

    name: str
    sock: socket.socket | None
    joined: float
    queue: deque[bytes] = field(default_factory=deque)
    sending: Transmission | None = None
    retry_at: float | None = None
    tx_frames: int = 0
    tx_bytes: int = 0
    airtime_s: float = 0.0
    rx_frames: int = 0
    rx_bytes: int = 0
    lost_frames: int = 0       # frames it should have heard but lost (overlap, half duplex)
    dropped_frames: int = 0    # frames it asked to send and the channel refused (MTU, queue)

    def figures(self, now: float) -> dict[str, Any]:
        elapsed = max(now - self.joined, 1e-9)
        return {"tx_frames": self.tx_frames, "tx_bytes": self.tx_bytes,
                "airtime_s": round(self.airtime_s, 4),
                "airtime_percent": round(100 * self.airtime_s / elapsed, 3),
                "rx_frames": self.rx_frames, "rx_bytes": self.rx_bytes,
                "lost_frames": self.lost_frames, "dropped_frames": self.dropped_frames,
                "queued": len(self.queue),
                "pending_bytes": sum(map(len, self.queue))
                + (len(self.sending.frame) if self.sending is not None else 0),
                "joined_s_ago": round(elapsed, 3)}


class Medium:
    """The channel's rules, driven by the event loop with explicit times (testable)."""

    def __init__(self, lora: LoraProfile, *, loss: float = 0.0,
                 links: set[frozenset[str]] | None = None, mtu: int = MTU,
                 rng: random.Random | None = None) -> None:
        self.lora, self.loss, self.links, self.mtu = lora, loss, links, mtu
        self.rng = rng or random.Random()
        self.stations: dict[str, Station] = {}
        self.active: list[Transmission] = []
        self.history: deque[Transmission] = deque()
        self.started = time.monotonic()
        self.busy_s = 0.0
        self._busy_since: float | None = None
        self.max_frame = 0

    def hears(self, a: str, b: str) -> bool:
        return a != b and (self.links is None or frozenset((a, b)) in self.links)

    def join(self, name: str, sock: socket.socket | None, now: float) -> Station:
        station = Station(name, sock, now)
        self.stations[name] = station
        return station

    def offer(self, name: str, frame: bytes, now: float) -> None:
        """`name` wants to send `frame`."""
        station = self.stations[name]
        self.max_frame = max(self.max_frame, len(frame))
        if len(frame) > self.mtu or len(station.queue) >= MAX_QUEUED_FRAMES:
            station.dropped_frames += 1
            return
        station.queue.append(frame)
        self.try_send(station, now)

    def busy_for(self, name: str) -> float | None:
        """Until when `name` hears the channel busy, or None when it is quiet."""
        ends = [tx.end for tx in self.active if self.hears(name, tx.sender)]
        return max(ends) if ends else None

    def try_send(self, station: Station, now: float) -> None:
        if station.sending is not None or not station.queue:
            return
        if station.retry_at is not None and now < station.retry_at:
            return
        busy_until = self.busy_for(station.name)
        if busy_until is not None:
            backoff = self.rng.uniform(0, BACKOFF_SYMBOLS) * self.lora.symbol_s
            station.retry_at = busy_until + backoff
            return
        station.retry_at = None
        frame = station.queue.popleft()
        airtime = self.lora.time_on_air_s(len(frame))
        tx = Transmission(station.name, now, now + airtime, frame)
        station.sending = tx
        station.tx_frames += 1
        station.tx_bytes += len(frame)
        station.airtime_s += airtime
        if not self.active:
            self._busy_since = now
        self.active.append(tx)

    def finish(self, tx: Transmission, now: float) -> list[tuple[Station, bytes]]:
        """End `tx`; returns (receiver, frame) for each station that heard it intact."""
        self.active.remove(tx)
        if not self.active and self._busy_since is not None:
            self.busy_s += tx.end - self._busy_since
            self._busy_since = None
        self.history.append(tx)
        self._prune(now)
        sender = self.stations.get(tx.sender)
        if sender is not None:
            sender.sending = None
            # The sender backs off like everyone else who heard the channel busy, or a
            # station with a full queue would hold the channel frame after frame.
            if sender.queue:
                sender.retry_at = now + self.rng.uniform(0, BACKOFF_SYMBOLS) * self.lora.symbol_s
        delivered = []
        for station in self.stations.values():
            if not self.hears(station.name, tx.sender):
                continue
            if self._garbled_at(station.name, tx) or self.rng.random() < self.loss:
                station.lost_frames += 1
                continue
            station.rx_frames += 1
            station.rx_bytes += len(tx.frame)
            delivered.append((station, tx.frame))
        return delivered

    def _garbled_at(self, receiver: str, tx: Transmission) -> bool:
        for other in itertools.chain(self.active, self.history):
            if other is tx or other.end <= tx.start or other.start >= tx.end:
                continue
            if other.sender == receiver or self.hears(receiver, other.sender):
                return True
        return False

    def _prune(self, now: float) -> None:
        horizon = now - 2 * self.lora.time_on_air_s(self.mtu)
        while self.history and self.history[0].end < horizon:
            self.history.popleft()

    def next_deadline(self) -> float | None:
        times = [tx.end for tx in self.active]
        times += [s.retry_at for s in self.stations.values() if s.retry_at is not None]
        return min(times) if times else None

    def stats(self, now: float) -> dict[str, Any]:
        elapsed = max(now - self.started, 1e-9)
        busy = self.busy_s + (now - self._busy_since if self._busy_since is not None else 0.0)
        return {"profile": {"spreading_factor": self.lora.spreading_factor,
                            "bandwidth_hz": self.lora.bandwidth_hz,
                            "coding_rate": f"4/{self.lora.coding_rate}",
                            "bitrate": round(self.lora.bitrate, 1)},
                "mtu": self.mtu, "largest_frame": self.max_frame,
                "elapsed_s": round(elapsed, 3), "busy_s": round(busy, 4),
                "utilisation_percent": round(100 * busy / elapsed, 3),
                "nodes": {name: s.figures(now) for name, s in sorted(self.stations.items())}}


# --- the channel process ------------------------------------------------------------------


class Channel:
    """The medium on a real clock, serving `attach` and `stats` clients on a unix socket."""

    def __init__(self, path: str, medium: Medium) -> None:
        self.medium = medium
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path)
        self.listener.listen(64)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)

    def run(self) -> None:
        while True:
            now = time.monotonic()
            deadline = self.medium.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - now)
            for key, _ in self.selector.select(timeout):
                if key.data is None:
                    self._accept()
                else:
                    self._receive(key.fileobj, key.data)  # type: ignore[arg-type]
            self._advance(time.monotonic())

    def _advance(self, now: float) -> None:
        for tx in [tx for tx in self.medium.active if tx.end <= now]:
            for station, frame in self.medium.finish(tx, now):
                self._send(station, FRAME + frame)
        for station in list(self.medium.stations.values()):
            self.medium.try_send(station, now)

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        self.selector.register(conn, selectors.EVENT_READ, [None])

    def _receive(self, conn: socket.socket, slot: list[str | None]) -> None:
        try:
            message = conn.recv(65_536)
        except OSError:
            message = b""
        now = time.monotonic()
        if not message:
            self.selector.unregister(conn)
            conn.close()
            station = self.medium.stations.get(slot[0] or "")
            if station is not None and station.sock is conn:
                station.sock = None
            return
        tag, body = message[:1], message[1:]
        if tag == HELLO:
            name = body.decode(errors="replace")[:64]
            known = self.medium.stations.get(name)
            if known is not None:   # a re-spawned attach keeps the node's figures
                known.sock = conn
            else:
                self.medium.join(name, conn, now)
            slot[0] = name
        elif tag == FRAME and slot[0] is not None:
            self.medium.offer(slot[0], body, now)
        elif tag == STATS:
            conn.send(json.dumps(self.medium.stats(now)).encode())

    def _send(self, station: Station, message: bytes) -> None:
        if station.sock is None:
            return
        try:
            station.sock.send(message)
        except OSError:
            station.sock = None


# --- attach: a PipeInterface command ------------------------------------------------------


def hdlc_frame(data: bytes) -> bytes:
    escaped = data.replace(bytes([ESC]), bytes([ESC, ESC ^ ESC_MASK]))
    escaped = escaped.replace(bytes([FLAG]), bytes([ESC, FLAG ^ ESC_MASK]))
    return bytes([FLAG]) + escaped + bytes([FLAG])


class HdlcReader:
    """Splits a byte stream into HDLC frames (Reticulum's PipeInterface framing)."""

    def __init__(self, max_frame: int = 2 * MTU) -> None:
        self.max_frame = max_frame
        self.buffer = bytearray()
        self.in_frame = self.escape = False

    def feed(self, data: bytes) -> list[bytes]:
        frames = []
        for byte in data:
            if byte == FLAG:
                if self.in_frame and self.buffer:
                    frames.append(bytes(self.buffer))
                self.in_frame, self.escape = True, False
                self.buffer.clear()
            elif not self.in_frame:
                continue
            elif byte == ESC:
                self.escape = True
            else:
                if self.escape:
                    byte ^= ESC_MASK
                    self.escape = False
                if len(self.buffer) <= self.max_frame:
                    self.buffer.append(byte)
        return frames


def connect(path: str, timeout_s: float = CONNECT_TIMEOUT_S) -> socket.socket:
    deadline = time.monotonic() + timeout_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(path)
            return sock
        except OSError as exc:
            sock.close()
            if time.monotonic() >= deadline:
                raise SystemExit(f"radio: no channel at {path} ({exc.strerror})") from None
            time.sleep(0.05)


def attach(path: str, node: str) -> int:
    sock = connect(path)
    sock.send(HELLO + node.encode())
    reader = HdlcReader()
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    selector = selectors.DefaultSelector()
    selector.register(stdin, selectors.EVENT_READ)
    selector.register(sock, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj == stdin:
                data = os.read(stdin, 65_536)
                if not data:
                    return 0
                for frame in reader.feed(data):
                    sock.send(FRAME + frame)
            else:
                message = sock.recv(65_536)
                if not message:
                    return 0
                if message[:1] == FRAME:
                    os.write(stdout, hdlc_frame(message[1:]))


def query_stats(path: str) -> dict[str, Any]:
    sock = connect(path, timeout_s=2.0)
    with sock:
        sock.send(STATS)
        sock.settimeout(5.0)
        return dict(json.loads(sock.recv(1 << 20)))


# --- command line -------------------------------------------------------------------------


def parse_links(text: str) -> set[frozenset[str]] | None:
    if not text:
        return None
    pairs = set()
    for item in text.split(","):
        a, sep, b = item.strip().partition("-")
        if not sep or not a or not b:
            raise argparse.ArgumentTypeError(f"link {item!r}: expected NODE-NODE")
        pairs.add(frozenset((a, b)))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m supervisor.radio",
                                     description="An emulated LoRa channel for local nodes.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    ch = verbs.add_parser("channel", help="run the channel (the medium)")
    ch.add_argument("--socket", required=True, help="unix socket path the channel listens on")
    ch.add_argument("--profile", default="SF9", type=profile,
                    help="SF7, SF7-500, SF8 … SF12 (125 kHz unless named; CR 4/5)")
    ch.add_argument("--loss", type=float, default=0.0, help="random frame loss, 0 to 1")
    ch.add_argument("--links", type=parse_links, default=None,
                    help="who hears whom, e.g. a-b,b-c (default: everyone hears everyone)")
    ch.add_argument("--seed", type=int, default=None, help="seed for backoff and loss")
    at = verbs.add_parser("attach", help="join a node to the channel (PipeInterface command)")
    at.add_argument("--socket", required=True)
    at.add_argument("--node", required=True, help="the node's name on the channel")
    st = verbs.add_parser("stats", help="print the channel's figures as JSON")
    st.add_argument("--socket", required=True)
    args = parser.parse_args(argv)
    if args.verb == "attach":
        return attach(args.socket, args.node)
    if args.verb == "stats":
        print(json.dumps(query_stats(args.socket), indent=2))
        return 0
    if not 0.0 <= args.loss < 1.0:
        parser.error(f"--loss {args.loss}: expected a fraction from 0 to below 1")
    medium = Medium(args.profile, loss=args.loss, links=args.links,
                    rng=random.Random(args.seed))
    try:
        Channel(args.socket, medium).run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
