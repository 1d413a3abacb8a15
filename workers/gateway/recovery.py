"""What a gateway starts from: its boot generation and what it left in the ledger.

- The boot generation lives in ``data_dir/gateway.generation`` and rises by one on every
  gateway start, written and fsynced before the first announce: announces of a node are
  ordered by (generation, seq), so a generation must never be used twice, even when the
  gateway is killed a moment after it started (a ledger event could still be in flight).
- The ledger holds the node's last seat, term and cluster mates (``cluster.seat``), its own
  state record
  with the custom keys (``state.own``) and the last merged view (``state.view``); a restarted
  gateway returns to its cluster and serves the state it had.
- What the ledger holds is checked like a claim from the mesh: a seat or a term out of range
  (written by an older version that adopted a poisoned claim) is dropped with a warning, so
  the node starts without it and takes its cluster's term from its mates; records in the
  saved view go through the same checks as records pulled from a peer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from akita.errors import ProtocolError
from akita.ledger import chain
from akita.mesh import cluster as rules
from akita.mesh import state as st
from akita.wire import events
from akita.wire.mesh import BAD_INPUT

log = logging.getLogger(__name__)

E = TypeVar("E", bound=events.Event)

GENERATION_FILE = "gateway.generation"
MAX_SAVED_MATES = 256

SEAT_EVENT = events.ClusterSeat.KIND
OWN_STATE_EVENT = events.StateOwn.KIND
VIEW_EVENT = events.StateView.KIND


@dataclass(frozen=True)
class Restored:
    seat: rules.Seat | None = None
    term: int = 0
    mates: tuple[tuple[str, rules.Seat], ...] = ()
    own_record: st.Record | None = None
    view: dict[str, Any] | None = None


def next_generation(data_dir: Path) -> int:
    """Read, raise and durably store the boot generation; the first start is 1."""
    path = data_dir / GENERATION_FILE
    try:
        previous = int(path.read_text().strip() or 0)
    except FileNotFoundError:
        previous = 0
    except ValueError:
        # A torn or edited file: start above anything a plausible past could have used.
        log.warning("%s is unreadable; starting from a fresh generation", path)
        previous = int.from_bytes(os.urandom(3), "big")
    generation = previous + 1
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{generation}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return generation


def load(db_path: Path) -> Restored:
    """The last seat, own record and merged view in this node's ledger (none if absent)."""
    try:
        seat_events = chain.tail(db_path, 1, kind_prefix=SEAT_EVENT)
        own_events = chain.tail(db_path, 1, kind_prefix=OWN_STATE_EVENT)
        view_events = chain.tail(db_path, 1, kind_prefix=VIEW_EVENT)
    except chain.LedgerNotFound:
        return Restored()
    seat_found = _last(seat_events, events.ClusterSeat)
    seat, term = _seat(seat_found)
    own = _last(own_events, events.StateOwn)
    view = _last(view_events, events.StateView)
    return Restored(seat=seat, term=term, mates=_mates(seat_found, seat),
                    own_record=_record(own), view=None if view is None else view.to_data())


def seat_event(seat: rules.Seat | None, term: int,
               mates: Iterable[tuple[str, rules.Seat]] = ()) -> events.ClusterSeat:
    """The ``cluster.seat`` event: own seat and term, and the mates' seat numbers."""
    return events.ClusterSeat(seat=None if seat is None else seat.pack(), term=term,
                              mates=[[node, mate.number] for node, mate in mates])


def _last(found: list[chain.Event], cls: type[E]) -> E | None:
    """The last of `found` decoded as `cls`; None (logged) if absent or unreadable."""
    if not found:
        return None
    try:
        return cls.from_data(found[-1].data)
    except ProtocolError as exc:
        log.warning("ignoring an unreadable %s event in the ledger: %s", cls.KIND, exc)
        return None


def _seat(event: events.ClusterSeat | None) -> tuple[rules.Seat | None, int]:
    if event is None or event.seat is None:
        return None, 0
    try:
        seat = rules.Seat.unpack(event.seat)
    except BAD_INPUT as exc:
        log.warning("healing the saved seat: dropped an unreadable or out-of-range seat (%s)",
                    exc)
        return None, 0
    term = event.term
    if not 0 <= term <= rules.MAX_TERM:
        log.warning("healing the saved term: %r is out of range (0..%d); starting from 0 and "
                    "taking the cluster's term from its members", term, rules.MAX_TERM)
        return seat, 0
    return seat, term


def _mates(event: events.ClusterSeat | None, seat: rules.Seat | None
           ) -> tuple[tuple[str, rules.Seat], ...]:
    """The saved mates (node, seat): only well-formed entries of the saved seat's cluster."""
    raw = event.mates if event is not None else None
    if seat is None or not isinstance(raw, list):
        return ()
    mates = []
    for entry in raw[:MAX_SAVED_MATES]:
        if (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and len(entry[0]) == 32 and isinstance(entry[1], int)
                and not isinstance(entry[1], bool) and 0 <= entry[1] <= rules.MAX_SEAT):
            mates.append((entry[0], rules.Seat(seat.cluster, entry[1], seat.high)))
    return tuple(mates)


def _record(event: events.StateOwn | None) -> st.Record | None:
    if event is None:
        return None
    try:
        return st.Record.unpack(event.record)
    except BAD_INPUT as exc:
        log.warning("ignoring an unreadable own state record in the ledger: %s", exc)
        return None
