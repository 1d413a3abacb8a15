"""What every akitactl verb shares: options, config loading, requests, output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from akita import config as config_mod
from akita import protocol, transport

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


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
