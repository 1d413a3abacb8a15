"""The start of every hand-made Reticulum peer script (tests/rns_*.py, lxmf_operator.py,
nomadnet_fetch.py): a Reticulum instance of its own in `--dir`, connected by TCP to the test
network's hub at `--connect` (127.0.0.1:PORT) and nothing else.

Never imported by the test process (RNS stays out of pytest).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

from akita.config import ReticulumConfig
from workers.gateway import rnsconfig

ONLINE_WAIT_S = 10.0
_OUT = threading.Lock()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--dir (the instance's files) and --connect (the hub), both required."""
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--connect", required=True, metavar="127.0.0.1:PORT")


def start(args: argparse.Namespace) -> Any:
    """Start Reticulum for `args` (see `add_arguments`); returns the RNS module."""
    host, _, port = args.connect.rpartition(":")
    config_dir = rnsconfig.write(ReticulumConfig(auto_interface=False,
                                                 tcp_connect=((host, int(port)),)), args.dir)

    import RNS

    RNS.Reticulum(configdir=str(config_dir), loglevel=RNS.LOG_WARNING)
    return RNS


def online(rns: Any, timeout_s: float = ONLINE_WAIT_S) -> bool:
    """Wait until every interface is up; False if one is not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not all(getattr(i, "online", False) for i in rns.Transport.interfaces):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def say(text: str) -> None:
    """One line to stdout, whole: Reticulum's threads report too, and print() writes the
    text and its newline separately (a "DONE" met a "RESULT …" on one line)."""
    with _OUT:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def say_json(**fields: Any) -> None:
    """One JSON line (see `say`)."""
    say(json.dumps(fields))


def heard_identity(rns: Any, channel: str, node_id: str, timeout_s: float) -> Any | None:
    """Wait for an announce of `node_id` on `channel`; its identity, or None (after saying
    NO-ANNOUNCE) if none came within `timeout_s`."""
    heard: queue.Queue[Any] = queue.Queue()

    class Handler:
        aspect_filter = channel

        def received_announce(self, destination_hash: bytes, announced_identity: Any,
                              app_data: bytes | None) -> None:
            if announced_identity.hash.hex() == node_id:
                heard.put(announced_identity)

    rns.Transport.register_announce_handler(Handler())
    try:
        return heard.get(timeout=timeout_s)
    except queue.Empty:
        say("NO-ANNOUNCE")
        return None
