"""What a gateway starts from: its boot generation and what it left in the ledger.

- The boot generation lives in ``data_dir/gateway.generation`` and rises by one on every
  gateway start, written and fsynced before the first announce: announces of a node are
  ordered by (generation, seq), so a generation must never be used twice, even when the
  gateway is killed a moment after it started (a ledger event could still be in flight).
- The ledger holds the node's last seat and term (``cluster.seat``), its own state record
  with the custom keys (``state.own``) and the last merged view (``state.view``); a restarted
  gateway returns to its cluster and serves the state it had.
"""

from __future__ import annotations

import logging
import os
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

SEAT_EVENT = events.ClusterSeat.KIND
OWN_STATE_EVENT = events.StateOwn.KIND
VIEW_EVENT = events.StateView.KIND


@dataclass(frozen=True)
class Restored:
    seat: rules.Seat | None = None
    term: int = 0
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
    seat, term = _seat(_last(seat_events, events.ClusterSeat))
    own = _last(own_events, events.StateOwn)
    view = _last(view_events, events.StateView)
    return Restored(seat=seat, term=term, own_record=_record(own),
                    view=None if view is None else view.to_data())


def seat_event(seat: rules.Seat | None, term: int) -> events.ClusterSeat:
    return events.ClusterSeat(seat=None if seat is None else seat.pack(), term=term)


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
        log.warning("ignoring an unreadable seat in the ledger: %s", exc)
        return None, 0
    return seat, max(event.term, 0)


def _record(event: events.StateOwn | None) -> st.Record | None:
    if event is None:
        return None
    try:
        return st.Record.unpack(event.record)
    except BAD_INPUT as exc:
        log.warning("ignoring an unreadable own state record in the ledger: %s", exc)
        return None
