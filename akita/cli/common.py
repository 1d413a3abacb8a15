"""What every akitactl verb shares: options, config loading, requests, output."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Self

import zmq

from akita import config as config_mod
from akita import transport
from akita.errors import NodeNotRunning, ProtocolError
from akita.text import clean
from akita.wire import protocol

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3

DEFAULT_CONFIG = os.environ.get("AKITA_CONFIG", "etc/akita.ini")


def parent_parser() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="FILE",
                        help=f"node config file (default: $AKITA_CONFIG or {DEFAULT_CONFIG})")
    return parent


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def load_config(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(getattr(args, "config", DEFAULT_CONFIG))


def request(args: argparse.Namespace, msg: protocol.Message, timeout_s: float = 10.0,
            endpoint: str = transport.CONTROL) -> protocol.Message:
    """Send `msg` to the node's control socket (or another endpoint) and return the reply."""
    config = load_config(args)
    with transport.Requester(config.node.run_dir, endpoint) as req:
        return req.request(msg, timeout_s)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False, default=_jsonable)
    sys.stdout.write("\n")
    sys.stdout.flush()


def json_line(value: Any) -> str:
    """`value` as one line of JSON, for verbs that print one object per line."""
    return json.dumps(value, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Rows under headers; every cell escaped (`akita.text.clean`): names and other text in
    a table may come from peers."""
    cells = [headers] + [["" if c is None else clean(c, TABLE_CELL_CHARS) for c in row]
                         for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


TABLE_CELL_CHARS = 4096


def usage_error(text: str) -> int:
    """Report a usage mistake on one line; returns the exit code for it."""
    print(f"akitactl: {text}", file=sys.stderr)
    return EXIT_USAGE


def format_bytes(value: float | None) -> str:
    """1536 → '1.5K': binary units, the way top and ps show memory."""
    if value is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    """95 → '1m35s', 7300 → '2h01m', 90000 → '1d01h'."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


class BusFollower:
    """A subscription to the node's bus for verbs that follow it (events, top).

    Raises `NodeNotRunning` when the bus socket is missing at the start, or disappears
    while following (the node stopped).
    """

    def __init__(self, run_dir: Path, topics: list[str]) -> None:
        self.path = transport.socket_path(run_dir, transport.BUS_OUT)
        if not self.path.exists():
            raise NodeNotRunning(f"no node is running (no socket at {self.path})")
        self.ctx = zmq.Context()
        self.sock = transport.make_socket(self.ctx, zmq.SUB)
        for topic in topics or [""]:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.sock.connect(transport.endpoint(run_dir, transport.BUS_OUT))
        self.skipped = 0  # frames that were not one decodable message

    def next(self, timeout_s: float) -> tuple[str, protocol.Message] | None:
        """The next message as (topic, message), or None once `timeout_s` passes without one."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            # Wake at least every second to notice a node that went away.
            if not self.sock.poll(int(max(0.0, min(remaining, 1.0)) * 1000) + 1):
                if not self.path.exists():
                    raise NodeNotRunning(f"the node stopped (no socket at {self.path})")
                if remaining <= 0:
                    return None
                continue
            frames = self.sock.recv_multipart()
            if len(frames) != 2:
                self.skipped += 1
                continue
            try:
                return frames[0].decode(errors="replace"), protocol.decode(frames[1])
            except ProtocolError:
                self.skipped += 1

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- argument converters: argparse turns their ArgumentTypeError into a usage error (exit 2)


def non_negative_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("expected a whole number, 0 or more")
    return value


def positive_int(raw: str) -> int:
    value = non_negative_int(raw)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a whole number above 0")
    return value


def positive_seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("expected a number of seconds above 0")
    return value
