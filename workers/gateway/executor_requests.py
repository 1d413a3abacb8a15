"""Requests from the gateway's loop to the node's own executor (``run_dir/executor.sock``)
for delegation: take, renew, results, requeue on the origin; run_for, held, drop on a peer.

An `AsyncRequester`, so the loop never waits on the executor. Outcomes the executor pushes to
this connection (`task.results`, for tasks handed in with `task.run_for` or listed by
`task.held`) are never taken for a reply, whatever their rid: they go to `on_push`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from akita import transport
from akita.catalogue import EXECUTOR
from akita.wire import protocol

PushCallback = Callable[[list[dict[str, Any]]], None]


class ExecutorRequests(transport.AsyncRequester):
    """Async requests to the executor; pushed task outcomes go to `on_push`."""

    def __init__(self, ctx: zmq.Context, run_dir: Path, on_push: PushCallback,
                 hwm: int = 1000) -> None:
        def take_results(msg: protocol.Message) -> bool:
            if isinstance(msg, protocol.TaskResults):
                on_push(msg.results)
                return True
            return False

        super().__init__(ctx, run_dir, EXECUTOR, on_push=take_results, hwm=hwm)
