"""The gateway's part of `akitactl status`: its Reticulum mode and the interfaces it uses."""

from __future__ import annotations

import argparse
from typing import Any

from akita.cli import common
from akita.errors import AkitaError
from akita.wire import protocol

RETICULUM_TIMEOUT_S = 2.0  # how long `status` waits for the gateway's answer


def fetch(args: argparse.Namespace, workers: list[dict[str, Any]]) -> Any:
    """The gateway's Reticulum mode and interfaces; None without a running gateway."""
    if not any(w["name"] == "gateway" and w["state"] == "running" for w in workers):
        return None
    try:
        reply = common.request(args, protocol.PeerStats(), timeout_s=RETICULUM_TIMEOUT_S)
    except AkitaError:
        return None
    if not isinstance(reply, protocol.PeerStatsReply):
        return None
    return reply.stats.get("reticulum")


def print_info(info: dict[str, Any]) -> None:
    print(f"reticulum {info.get('mode', '?')}: {info.get('why', '')}")
    for iface in info.get("interfaces") or []:
        rate = iface.get("bitrate")
        print(f"  {iface.get('name')}  {'up' if iface.get('online') else 'down'}  "
              f"{'-' if rate is None else _bitrate(rate)}")
    if info.get("interfaces_error"):
        print(f"  interfaces unknown: {info['interfaces_error']}")


def _bitrate(bits_per_s: float) -> str:
    for unit, size in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits_per_s >= size:
            return f"{bits_per_s / size:.3g} {unit}"
    return f"{bits_per_s:g} bit/s"
