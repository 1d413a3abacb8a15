"""The life of a worker process: sockets, poll loop, heartbeat and shutdown.

A worker subclass fills in `setup()`, `handle(request)`, `tick()` and `teardown()`. The base
owns the ZeroMQ context, the worker's request socket (a ROUTER bound at
``run_dir/NAME.sock``), its bus publisher, the heartbeat and the signal handling. Signal
handlers only set a flag; the poll timeout bounds how late the flag is noticed.

Each worker is started by the supervisor's zygote through `main(args)`, which parses the
config text the supervisor passed (so a worker always runs with the config its supervisor
holds), configures logging to stderr (a pipe the supervisor writes into the worker's log
file), and runs the worker. Any exception ends the process non-zero with its traceback in
the log, and the supervisor's restart policy applies.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from akita import catalogue, exits, identity, transport
from akita import config as config_mod
from akita.errors import ConfigError, ProtocolError
from akita.text import CleanFormatter
from akita.wire import protocol

log = logging.getLogger(__name__)

# Once the supervisor is gone, a worker's teardown gets this long before SIGALRM ends it:
# an orphan must be gone within a second, whatever it was doing (a Reticulum start, a flush
# to a ledger that died with the supervisor).
ORPHAN_GRACE_S = 0.5


@dataclass
class Request:
    """One request received on the worker's socket; `reply()` answers it, now or later."""

    sock: zmq.Socket
    peer: bytes
    rid: int | None
    message: protocol.Message

    def reply(self, msg: protocol.Message) -> None:
        try:
            self.sock.send_multipart([self.peer, protocol.encode(msg, rid=self.rid)],
                                     flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("reply to %s dropped: peer's queue is full", self.message.KIND)

    def fail(self, code: str, text: str) -> None:
        self.reply(protocol.Error(code=code, message=text))


class Worker:
    """Base of every worker process."""

    name = "worker"
    # A subclass may change it (even from tick()) or pull the next tick in (`tick_within`).
    # A stop signal wakes the loop at once through the signal wakeup descriptor.
    tick_interval_s = 0.1

    def __init__(self, config: config_mod.Config) -> None:
        self.config = config
        self.run_dir = config.node.run_dir
        self.heartbeat_interval_s = config.supervisor.heartbeat_interval
        self.ctx: zmq.Context | None = None
        self.router: zmq.Socket | None = None
        self.publisher: zmq.Socket | None = None
        self.poller = zmq.Poller()
        self._readers: dict[Any, Callable[[], None]] = {}
        self._stopping = False
        self._parent_pid = os.getppid()  # the zygote that forked us, alive as long as the node
        self.bad_frames = 0
        self._next_heartbeat = 0.0
        self._heartbeat_step = 0.05
        self._next_tick = 0.0
        self.note = ""  # sent with each heartbeat: what `status` shows for this worker

    # --- for subclasses --------------------------------------------------------------------

    def prefork(self) -> None:
        """Runs before the ZeroMQ context exists: the place to fork helper processes."""

    def setup(self) -> None:
        """Open what the worker needs (sockets, files); runs after the base sockets exist."""

    def handle(self, request: Request) -> protocol.Message | None:
        """Answer a request: return a reply, or None and call `request.reply()` later."""
        return protocol.Error(code="unknown_request",
                              message=f"{self.name} does not serve {request.message.KIND}")

    def tick(self) -> None:
        """Periodic work, about every `tick_interval_s`."""

    def teardown(self) -> None:
        """Close what `setup()` opened; runs on every exit path after setup."""

    # --- services for subclasses ------------------------------------------------------------

    def add_reader(self, source: Any, callback: Callable[[], None]) -> None:
        """Call `callback` whenever `source` (a zmq socket or a file descriptor) is readable."""
        self._readers[source] = callback
        self.poller.register(source, zmq.POLLIN)

    def remove_reader(self, source: Any) -> None:
        if self._readers.pop(source, None) is not None:
            self.poller.unregister(source)

    def publish(self, topic: str, msg: protocol.Message) -> None:
        """Publish on the bus; dropped (never blocking) when the bus cannot take it."""
        assert self.publisher is not None
        try:
            self.publisher.send_multipart([topic.encode(), protocol.encode(msg)], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def stop(self) -> None:
        self._stopping = True

    def tick_within(self, delay_s: float) -> None:
        """Run `tick()` at the latest `delay_s` from now (sooner than planned, if need be)."""
        self._next_tick = min(self._next_tick, time.monotonic() + delay_s)

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        wakeup = self._wake_on_signals()
        self.prefork()
        self.ctx = zmq.Context()
        try:
            self.router = transport.make_socket(self.ctx, zmq.ROUTER)
            self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)
            transport.bind(self.router, self.run_dir, self.name)
            self.publisher = transport.make_socket(self.ctx, zmq.PUB)
            self.publisher.connect(transport.endpoint(self.run_dir, transport.BUS_IN))
            self.add_reader(self.router, self._on_request)
            self.setup()
            # What exists now lives as long as the worker: frozen out of the cyclic collector's
            # sight, it is not scanned again by every full collection a busy loop triggers.
            gc.freeze()
            try:
                log.info("%s worker running (pid %d)", self.name, os.getpid())
                self._loop()
            finally:
                self.teardown()
        finally:
            self.ctx.destroy(linger=transport.LINGER_MS)
            signal.set_wakeup_fd(-1)
            for sock in wakeup:
                sock.close()
        log.info("%s worker stopped", self.name)
        return 0

    def _wake_on_signals(self) -> tuple[socket.socket, socket.socket]:
        """A descriptor the loop polls, written to whenever a signal arrives: the handler only
        sets a flag, and without this the loop would see it at its next timeout only."""
        read, write = socket.socketpair()
        read.setblocking(False)
        write.setblocking(False)
        signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)

        def drain() -> None:
            try:
                while read.recv(512):
                    pass
            except BlockingIOError:
                pass

        self.add_reader(read.fileno(), drain)
        return read, write

    def _loop(self) -> None:
        self._next_tick = time.monotonic()
        while not self._stopping:
            now = time.monotonic()
            if now >= self._next_heartbeat:
                self._heartbeat(now)
            if now >= self._next_tick:
                self._next_tick = float("inf")  # tick() may pull the next one in, or
                self.tick()                     # change tick_interval_s
                self._next_tick = min(self._next_tick, now + self.tick_interval_s)
            wait_s = max(0.0, min(self._next_tick, self._next_heartbeat) - time.monotonic())
            for source, _event in self.poller.poll(int(wait_s * 1000) + 1):
                callback = self._readers.get(source)
                if callback is not None:
                    callback()

    def _heartbeat(self, now: float) -> None:
        # The first beats come fast: a PUB drops what it sends before the bus has subscribed.
        self.publish("worker.heartbeat",
                     protocol.Heartbeat(name=self.name, pid=os.getpid(), ts=time.time(),
                                        note=self.note))
        self._next_heartbeat = now + self._heartbeat_step
        self._heartbeat_step = min(self._heartbeat_step * 2, self.heartbeat_interval_s)

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        self._stopping = True
        if os.getppid() != self._parent_pid:
            # Our parent-death signal: the node is gone. Stop by the grace's end even if the
            # loop is not running yet (start-up) or teardown waits on what died with it.
            signal.setitimer(signal.ITIMER_REAL, ORPHAN_GRACE_S)

    def _on_request(self) -> None:
        assert self.router is not None
        for _ in range(1000):  # bounded, so one busy client cannot starve the loop
            try:
                frames = self.router.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self._dispatch(frames)

    def _dispatch(self, frames: list[bytes]) -> None:
        assert self.router is not None
        if len(frames) != 2:
            self.bad_frames += 1
            if frames:
                Request(self.router, frames[0], None, protocol.Ok()).fail(
                    "bad_frame", f"expected one frame, got {len(frames) - 1}")
            return
        peer, data = frames
        try:
            rid, msg = protocol.decode_frame(data)
        except ProtocolError as exc:
            self.bad_frames += 1
            Request(self.router, peer, None, protocol.Ok()).fail("bad_frame", str(exc))
            return
        request = Request(self.router, peer, rid, msg)
        if isinstance(msg, protocol.Ping):
            request.reply(protocol.Pong(name=self.name, pid=os.getpid(), payload=msg.payload))
            return
        reply = self.handle(request)
        if reply is not None:
            request.reply(reply)


def configure_logging(name: str) -> None:
    """Log lines to stderr, which the supervisor writes into this process's log file."""
    handler = logging.StreamHandler(sys.stderr)
    # Escaping formatter: a log line may carry text a peer chose (names, reasons).
    handler.setFormatter(CleanFormatter(
        f"%(asctime)s %(levelname)s {name}[%(process)d] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def load_class(name: str) -> type[Worker]:
    """The class of worker `name`, from its catalogue entry point; imported only here, so the
    gateway's module (and RNS with it) is loaded only in the gateway's own process."""
    entry = catalogue.BY_NAME[name]
    cls: type[Worker] = getattr(importlib.import_module(entry.module), entry.class_name)
    return cls


# Configs parsed in the zygote before it forks (`prepare_in_zygote`), by (text, path); a
# reload adds one, so only the latest few are kept.
_PARSED: dict[tuple[str, str], config_mod.Config] = {}
_PARSED_KEPT = 2


def prepare_in_zygote(args: dict[str, Any]) -> None:
    """Parse the config text a worker is about to be started with, in the zygote: the next
    worker forked with the same text (every restart, until a reload) finds it parsed.
    The config is plain frozen data, safe to hold in a fork server. So are OpenSSL's set-up
    and the node's keys (`identity.warm_up`)."""
    key = (args["config_text"], args["config_path"])
    if key not in _PARSED:
        parsed = config_mod.parse(key[0], Path(key[1]))
        while len(_PARSED) >= _PARSED_KEPT:
            del _PARSED[next(iter(_PARSED))]
        _PARSED[key] = parsed
    identity.warm_up(_PARSED[key].node.data_dir)


def main(args: dict[str, Any]) -> int:
    """Entry point in a freshly forked worker: {"name", "config_path", "config_text"}."""
    name = args["name"]
    configure_logging(name)
    try:
        config = (_PARSED.get((args["config_text"], args["config_path"]))
                  or config_mod.parse(args["config_text"], Path(args["config_path"])))
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        run_dir = args.get("run_dir")
        if isinstance(run_dir, str):
            exits.write_reason(Path(run_dir), name, f"configuration error: {exc}")
        return exits.EXIT_CONFIG
    try:
        worker = load_class(name)(config)
        return worker.run()
    except Exception:
        log.exception("%s worker failed", name)
        return 1
