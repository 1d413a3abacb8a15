"""What the gateway says about the mesh, for `akitactl status` and `akitactl top`: traffic
by interface and kind, and the timers derived from the airtime budget.

Asked from the gateway (`peer.stats`) through the control socket; a node without a running
gateway simply has none of it.
"""

from __future__ import annotations

import argparse
from typing import Any

from akita.cli import common
from akita.errors import AkitaError
from akita.wire import protocol

STATS_TIMEOUT_S = 3.0
KINDS = ("announce", "probe", "state", "replication", "delegation", "message", "other")


def gateway_stats(args: argparse.Namespace) -> dict[str, Any] | None:
    """The gateway's stats, or None when it does not answer (not configured, not up)."""
    try:
        reply = common.request(args, protocol.PeerStats(), timeout_s=STATS_TIMEOUT_S)
    except AkitaError:
        return None
    return reply.stats if isinstance(reply, protocol.PeerStatsReply) else None


def status_fields(stats: dict[str, Any] | None) -> dict[str, Any]:
    """The keys `status --json` adds: "traffic", "budget" and "pacing" (when the gateway
    answered)."""
    if stats is None:
        return {}
    return {key: stats[key] for key in ("traffic", "budget", "pacing") if key in stats}


def lines(stats: dict[str, Any] | None) -> list[str]:
    """Human-readable lines: the budget's figures, each interface, and bytes by kind."""
    if stats is None:
        return []
    out: list[str] = []
    budget = stats.get("budget")
    if isinstance(budget, dict):
        out.append(budget_line(budget))
    traffic = stats.get("traffic") or {}
    for iface in traffic.get("interfaces", []):
        out.append(f"  {iface['name']}: {_bitrate(iface['bitrate'])}  "
                   f"sent {common.format_bytes(iface['tx_bytes'])}  "
                   f"received {common.format_bytes(iface['rx_bytes'])}  "
                   f"airtime {iface['airtime_hour_percent']:.2f} % last hour, "
                   f"{iface['airtime_percent']:.2f} % since start")
    by_kind = traffic.get("by_kind") or {}
    if by_kind:
        out.append("  by kind (sent/received/packets): " + ", ".join(
            f"{kind} {common.format_bytes(c['tx_bytes'])}/{common.format_bytes(c['rx_bytes'])}"
            f"/{c['packets']}" for kind in KINDS if (c := by_kind.get(kind))
            and c["packets"]))
    return out


def budget_line(budget: dict[str, Any]) -> str:
    return (f"mesh: airtime budget {budget['airtime_budget_percent']:g} % of "
            f"{_bitrate(budget['slowest_bitrate'])}  announce every "
            f"{budget['announce_interval_s']:.0f} s, probe every "
            f"{budget['probe_interval_s']:.0f} s, peer timeout {budget['peer_timeout_s']:.0f} s, "
            f"state refresh {budget['state_refresh_s']:.0f} s ({budget['source']})")


def _bitrate(bits: float) -> str:
    if bits >= 1e6:
        return f"{bits / 1e6:.1f} Mbit/s"
    if bits >= 1e3:
        return f"{bits / 1e3:.1f} kbit/s"
    return f"{bits:.0f} bit/s"
