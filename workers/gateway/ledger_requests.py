"""Requests from the gateway's loop to the node's own ledger worker (``run_dir/ledger.sock``)
that need an answer: feed heads, ranges to serve, bundles to ingest.

The gateway's `LedgerClient` only appends; these go over an `AsyncRequester` of their own,
so the loop never waits on the ledger.
"""

from __future__ import annotations

from pathlib import Path

import zmq

from akita import transport
from akita.catalogue import LEDGER


class LedgerRequests(transport.AsyncRequester):
    """Async requests to the ledger worker; replies are matched to requests by rid."""

    def __init__(self, ctx: zmq.Context, run_dir: Path, hwm: int = 1000) -> None:
        super().__init__(ctx, run_dir, LEDGER, hwm=hwm)
