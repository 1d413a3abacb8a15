"""The airtime budget: a node's periodic upkeep timers, derived from a share of the slowest
interface's time instead of fixed seconds.

On a shared radio channel a transmitter may be on air only a small share of the time (1 %
in Europe's 868 MHz band), and everything a node sends when nothing happens is upkeep.
With m = cluster_size − 1 mates, cost(n) the time on air of an n-byte frame on the slowest
interface (the LoRa formula when its bitrate is a LoRa modulation's, else n·8/bitrate) and
b = airtime_budget / 100, a node's idle upkeep per announce interval I is

    U = cost(ANNOUNCE)                                        one announce
      + m · 2 · cost(HEADS) / REPLICATION_REFRESH_INTERVALS   ledger heads, each way
      + m · (cost(PULL) + cost(RECORD)) / STATE_REFRESH_INTERVALS   mates pull the
                                                              refreshed state record
      + m · cost(LEDGER_RANGE) / STATE_REFRESH_INTERVALS      a state.view snapshot,
                                                              replicated to mates

The heads and snapshot terms are bounds rather than what an idle cluster spends. An
answered heads exchange counts for both of the pair, so each pair exchanges about once per
refresh (the term allows each side its own). The gateway writes a snapshot of the merged
view only when a lasting key of a record changes, on average at most once per state
refresh (load figures refreshed alone write none). An idle cluster spends the announce,
the heads refresh and, with a sampler, the state pulls; the rest is room for an
operator's changes.

and the timers are

    announce_interval = max(10 s, U / b)
    probe_interval    = max(6 s, 1.5 · U / b)   (only a mate silent this long is probed:
                                                 announces are signs of life, so an idle
                                                 cluster whose announces get through
                                                 sends no probes)
    peer_timeout      = max(30 s, 3 · announce_interval)
    state_refresh     = max(30 s, STATE_REFRESH_INTERVALS · announce_interval)
    replication_refresh = REPLICATION_REFRESH_INTERVALS · announce_interval
    lease             = peer_timeout (renewed every third of it, only while tasks are held)

The floors are today's LAN defaults, so a fast LAN (TCP, AutoInterface: megabits) behaves
as before. A timer given explicitly in [cluster] wins; an explicit peer_timeout with an
auto probe_interval keeps the older rule (peer_timeout / 5). Frame sizes are estimates of
what crosses the air (Reticulum header, encryption and signatures included).

Pure arithmetic: the gateway passes the slowest interface it found.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from akita.config import AUTO, ClusterConfig, Config
from akita.mesh.airtime import LoraProfile

# Bytes on the wire of each upkeep frame (estimates; see the module docstring).
ANNOUNCE_BYTES = 270          # 167 of Reticulum's announce + ~100 of app_data
PROBE_BYTES = 131             # an encrypted packet of ~30 bytes to a single destination
PROOF_BYTES = 83              # an implicit proof: header and signature
HEADS_BYTES = 220             # a heads request or response on a link
PULL_BYTES = 200              # a state pull's summary
RECORD_BYTES = 450            # one signed state record with its key
LEDGER_RANGE_BYTES = 2000     # a replicated view snapshot, as a Resource with its upkeep

STATE_REFRESH_INTERVALS = 10
REPLICATION_REFRESH_INTERVALS = 10
PROBE_PER_ANNOUNCE = 1.5
TIMEOUT_PER_ANNOUNCE = 3.0

FLOOR_ANNOUNCE_S = 10.0
FLOOR_PROBE_S = 6.0
FLOOR_PEER_TIMEOUT_S = 30.0
FLOOR_STATE_REFRESH_S = 30.0
LAN_BITRATE = 10_000_000      # Reticulum's figure for TCP, UDP and AutoInterface


@dataclass(frozen=True)
class Medium:
    """The slowest interface: its bitrate and, when it is LoRa, its modulation."""

    bitrate: float = LAN_BITRATE
    lora: LoraProfile | None = None
    name: str = ""

    def cost_s(self, size: int) -> float:
        """Seconds on air of one frame of `size` bytes."""
        if self.lora is not None:
            return self.lora.time_on_air_s(size)
        return size * 8 / self.bitrate


@dataclass(frozen=True)
class Timers:
    """The upkeep timers a node runs with, and where they came from."""

    airtime_budget_percent: float
    slowest_bitrate: float
    announce_interval_s: float
    probe_interval_s: float
    peer_timeout_s: float
    state_refresh_s: float
    replication_refresh_s: float
    upkeep_s: float               # U: estimated seconds on air per announce interval
    source: str                   # "auto", "configured" or "mixed"

    @property
    def estimated_percent(self) -> float:
        """Idle airtime the timers should lead to, in percent of the slowest interface."""
        return 100.0 * self.upkeep_s / self.announce_interval_s

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "estimated_percent": round(self.estimated_percent, 3)}


def upkeep_s(medium: Medium, cluster_size: int) -> float:
    """U of the module docstring: seconds on air per announce interval."""
    mates = max(0, cluster_size - 1)
    cost = medium.cost_s
    return (cost(ANNOUNCE_BYTES)
            + mates * 2 * cost(HEADS_BYTES) / REPLICATION_REFRESH_INTERVALS
            + mates * (cost(PULL_BYTES) + cost(RECORD_BYTES)) / STATE_REFRESH_INTERVALS
            + mates * cost(LEDGER_RANGE_BYTES) / STATE_REFRESH_INTERVALS)


def derive(cluster: ClusterConfig, medium: Medium) -> Timers:
    """The timers for `cluster` (explicit values kept) on `medium`."""
    upkeep = upkeep_s(medium, cluster.cluster_size)
    per_interval = upkeep / (cluster.airtime_budget / 100.0)
    announce = cluster.announce_interval or max(FLOOR_ANNOUNCE_S, per_interval)
    peer_timeout = cluster.peer_timeout or max(FLOOR_PEER_TIMEOUT_S,
                                               TIMEOUT_PER_ANNOUNCE * announce)
    if cluster.probe_interval:
        probe = cluster.probe_interval
    elif cluster.peer_timeout:
        probe = max(0.1, cluster.peer_timeout / 5)      # the rule before budgets
    else:
        probe = max(FLOOR_PROBE_S, PROBE_PER_ANNOUNCE * per_interval)
    explicit = [cluster.announce_interval, cluster.peer_timeout, cluster.probe_interval]
    source = "auto" if not any(explicit) else "configured" if all(explicit) else "mixed"
    return Timers(airtime_budget_percent=cluster.airtime_budget,
                  slowest_bitrate=medium.bitrate, announce_interval_s=announce,
                  probe_interval_s=probe, peer_timeout_s=peer_timeout,
                  state_refresh_s=max(FLOOR_STATE_REFRESH_S, STATE_REFRESH_INTERVALS * announce),
                  replication_refresh_s=REPLICATION_REFRESH_INTERVALS * announce,
                  upkeep_s=upkeep, source=source)


def resolve(config: Config, timers: Timers) -> Config:
    """`config` with the derived timers in place of `auto`, for the parts that read them."""
    cluster = dataclasses.replace(config.cluster, announce_interval=timers.announce_interval_s,
                                  peer_timeout=timers.peer_timeout_s,
                                  probe_interval=timers.probe_interval_s)
    return dataclasses.replace(config, cluster=cluster)


def slowest(media: list[Medium]) -> Medium:
    """The slowest of the node's interfaces (a LAN's figure when it has none)."""
    known = [m for m in media if m.bitrate > 0]
    return min(known, key=lambda m: m.bitrate) if known else Medium()


__all__ = ["AUTO", "Medium", "Timers", "derive", "resolve", "slowest", "upkeep_s"]
