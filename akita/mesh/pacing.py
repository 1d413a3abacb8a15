"""Pacing of the work a node does on its own initiative, within its airtime budget.

The upkeep timers (`akita.mesh.budget`) keep an idle node within its budget, but a node
also acts on events: it announces when an interface comes up, when it hears a peer for the
first time or its own cluster report changes; it opens a link and pulls a peer's state when
the peer announces a newer one; it exchanges ledger heads and pulls ranges when a mate
joins; it pushes its record to its mates when it changes. On a LAN each is a few
milliseconds of wire time. On LoRa at SF9 an announce is 1.3 s on air and a link with a
pull 5–6 s, and when six nodes start together, each reacting to each of the others, the
channel stayed saturated for more than a quarter of an hour: frames queued for minutes,
links timed out before they were up and were opened again.

So that work draws on one token bucket of airtime per node (`AirtimeBucket`): it earns the
budget's share of time (b seconds on air per second) and holds at most one announce
interval's upkeep U, `MIN_BURST_FRAMES` announces or b · `BURST_WINDOW_S` (10 minutes of
the budget), whichever is most, so a burst of reactions costs what the budget allows and
is spread over the next intervals instead. In the worst hour a node so spends its budget
plus that burst (about 1.17 b at SF9); Europe's duty cycle is reckoned over an hour.
Work that waits is coalesced, never lost: one announce answers every newcomer heard
meanwhile, one push carries the record's latest version, a pull or an exchange still due
goes when the bucket allows.

The bucket applies only where the budget binds: when U / b exceeds the announce floor
(`budget.FLOOR_ANNOUNCE_S`), i.e. on links slow enough that the budget, not the LAN
defaults, sets the announce interval. On a LAN a `Pacer` lets everything through at once,
as before. On such a link a node also opens links only to its cluster mates (`mates_only`):
what it needs from other clusters travels in their announces.

Pure arithmetic and bookkeeping: the gateway asks, with the time, before it sends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from akita.mesh import budget

# Frame sizes on the air (Reticulum's figures: link request, proof, RTT; see MESH-OPS §2.4).
LINK_SETUP_BYTES = (83, 115, 99)
MIN_BURST_FRAMES = 4          # the bucket holds at least this many announces' airtime ...
BURST_WINDOW_S = 600.0        # ... and at least the budget's share of this many seconds
FRAME_PAYLOAD_BYTES = 400     # what one link packet carries of a larger body ...
FRAME_HEADER_BYTES = 50       # ... and what it adds (header, link encryption)
LINK_ESTABLISH_FLOOR_S = 10.0  # what a link may take to come up on a LAN
LINK_ESTABLISH_SETUPS = 20     # ... and on a slow link: this many setups' airtime


@dataclass
class AirtimeBucket:
    """Seconds on air: earns `rate` per second up to `capacity_s`; starts full."""

    rate: float
    capacity_s: float
    tokens_s: float = -1.0
    updated_at: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.capacity_s <= 0:
            raise ValueError(f"airtime bucket rate {self.rate} and capacity "
                             f"{self.capacity_s} s must be above 0")
        if self.tokens_s < 0:
            self.tokens_s = self.capacity_s

    def _refill(self, now: float) -> None:
        if self.updated_at is not None and now > self.updated_at:
            self.tokens_s = min(self.capacity_s,
                                self.tokens_s + (now - self.updated_at) * self.rate)
        if self.updated_at is None or now > self.updated_at:
            self.updated_at = now

    def _needed(self, cost_s: float) -> float:
        # A cost above the capacity needs a full bucket (and leaves it in debt).
        return min(cost_s, self.capacity_s)

    def ready_at(self, cost_s: float, now: float) -> float:
        """The earliest time `cost_s` may be spent (now, if it may)."""
        self._refill(now)
        missing = self._needed(cost_s) - self.tokens_s
        return now if missing <= 0 else now + missing / self.rate

    def try_spend(self, cost_s: float, now: float) -> bool:
        """Spend `cost_s` if the bucket allows it now."""
        if self.ready_at(cost_s, now) > now:
            return False
        self.tokens_s -= cost_s
        return True

    def spend(self, cost_s: float, now: float) -> None:
        """Spend whatever the bucket holds (timed upkeep, which the timers already paced):
        reactions wait until it is paid back."""
        self._refill(now)
        self.tokens_s -= cost_s


@dataclass
class Pacer:
    """A node's pacing of its own reactions: the bucket, and the cost of each kind of work
    on its slowest interface."""

    medium: budget.Medium
    bucket: AirtimeBucket
    binding: bool
    # Pushes of the own record to the mates: at most one per this many seconds (an
    # announce interval where the budget binds; 0: no limit). A change that must wait
    # rides in the next push with whatever else changed.
    push_spacing_s: float = 0.0
    # State pulls wait for the bucket: the ledger's catch-up waits behind them (a mate's
    # task types and capacity decide where work goes; its ledger copy can lag).
    state_waiting: bool = False

    @classmethod
    def lan(cls) -> Pacer:
        """A pacer that never holds anything back (before the budget is known, and tests)."""
        return cls(budget.Medium(), AirtimeBucket(1.0, 1.0), binding=False)

    @classmethod
    def for_budget(cls, timers: budget.Timers, medium: budget.Medium) -> Pacer:
        share = timers.airtime_budget_percent / 100.0
        unbound_interval = timers.upkeep_s / share
        capacity = max(timers.upkeep_s, MIN_BURST_FRAMES * medium.cost_s(budget.ANNOUNCE_BYTES),
                       share * BURST_WINDOW_S)
        binding = unbound_interval > budget.FLOOR_ANNOUNCE_S
        return cls(medium, AirtimeBucket(share, capacity), binding=binding,
                   push_spacing_s=timers.announce_interval_s if binding else 0.0)

    @property
    def mates_only(self) -> bool:
        """Open links (state pulls) only to cluster mates."""
        return self.binding

    def cost_s(self, sizes: Iterable[int]) -> float:
        return sum(self.medium.cost_s(size) for size in sizes)

    def body_cost_s(self, size: int) -> float:
        """A body of `size` bytes on a link, in as many packets as it takes (a Resource's
        parts; its advertisement and proofs are left out)."""
        full, rest = divmod(max(0, size), FRAME_PAYLOAD_BYTES)
        cost = full * self.medium.cost_s(FRAME_PAYLOAD_BYTES + FRAME_HEADER_BYTES)
        return cost + (self.medium.cost_s(rest + FRAME_HEADER_BYTES) if rest else 0.0)

    def settle(self, estimated_bytes: int, actual_bytes: int, now: float) -> None:
        """A response came: charge what it cost beyond the estimate paid up front (a state
        delta or heads larger than their usual size), so the next request waits that much
        more. (A ledger range is paid by the node that sends it.)"""
        extra = self.body_cost_s(actual_bytes) - self.body_cost_s(estimated_bytes)
        if extra > 0:
            self.spend(extra, now)

    def announce_cost_s(self) -> float:
        return self.medium.cost_s(budget.ANNOUNCE_BYTES)

    def request_cost_s(self, request_bytes: int, response_bytes: int,
                       link_open: bool) -> float:
        """A request and its response (both on the channel), with the link's setup if it
        is not open yet."""
        setup = () if link_open else LINK_SETUP_BYTES
        return self.cost_s((*setup, request_bytes, response_bytes))

    @property
    def establish_timeout_s(self) -> float:
        """How long a link may take to come up: on a slow channel its three frames wait
        their turn behind others' (and a link given up costs a path request and its
        answer, an announce)."""
        return max(LINK_ESTABLISH_FLOOR_S, LINK_ESTABLISH_SETUPS * self.cost_s(LINK_SETUP_BYTES))

    def ready_at(self, cost_s: float, now: float) -> float:
        return self.bucket.ready_at(cost_s, now) if self.binding else now

    def try_spend(self, cost_s: float, now: float) -> bool:
        return self.bucket.try_spend(cost_s, now) if self.binding else True

    def spend(self, cost_s: float, now: float) -> None:
        if self.binding:
            self.bucket.spend(cost_s, now)

    def as_dict(self, now: float) -> dict[str, float | bool]:
        self.bucket.ready_at(0.0, now)
        return {"binding": self.binding, "tokens_s": round(self.bucket.tokens_s, 3),
                "capacity_s": round(self.bucket.capacity_s, 3),
                "rate": self.bucket.rate}
