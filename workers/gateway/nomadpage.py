"""The node's NomadNet page: a read-only status page in micron markup that NomadNet,
MeshChat and other Reticulum browsers open at the node's `nomadnetwork.node` destination.

`[operators] page = open` serves anyone; `operators` serves only the identities in
`[operators] identities` (the reader identifies on the link, as NomadNet does for a page
with an `.allowed` list); others get a short refusal page and are counted.

Reticulum answers requests on its own threads, while the figures belong to the gateway's
loop. So the handler returns the page last built on the loop and posts a refresh: the loop
rebuilds it (at most every `REFRESH_S`) from the gateway's views, the supervisor's
`node.status` (asked asynchronously) and the ledger's last events (read-only). A page
nobody asks for costs nothing. The page's name is announced with the LXMF address's
timer (`[operators] announce_interval`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import RNS
import zmq

from akita import transport
from akita.errors import AkitaError
from akita.ledger import chain
from akita.wire import protocol
from workers.gateway import operator_replies as replies
from workers.gateway.bridge import LoopBridge

log = logging.getLogger(__name__)

INDEX = "/page/index.mu"
REFRESH_S = 2.0
REQUEST_TIMEOUT_S = 5.0


class NomadPage:
    def __init__(self, config: Any, net: Any, bridge: LoopBridge) -> None:
        self.config = config
        self.net = net
        self.bridge = bridge
        self.mode = config.operators.page
        self.allowed = {digest for digest, _role in config.operators.identities}
        self.destination: Any = None
        self.control: transport.AsyncRequester | None = None
        self.counters = {"served": 0, "refused": 0, "announces": 0}
        self._lock = threading.Lock()  # counters bumped on Reticulum's threads
        self._page = replies.denied_page()
        self._built_at = 0.0
        self._workers: list[dict[str, Any]] | None = None
        self._next_announce = 0.0
        self.announce_interval_s = float(self.config.operators.announce_interval)

    def start(self, identity: Any, ctx: zmq.Context, run_dir: Path) -> None:
        self.destination = RNS.Destination(identity, RNS.Destination.IN,
                                           RNS.Destination.SINGLE, "nomadnetwork", "node")
        self.destination.register_request_handler(INDEX, self._respond,
                                                  allow=RNS.Destination.ALLOW_ALL)
        self.control = transport.AsyncRequester(ctx, run_dir, transport.CONTROL)
        # The clusters change rarely and matter most: show a change at once, not up to
        # REFRESH_S later (a reader fetching right after it would see the old view).
        self.net.cluster_hooks.append(lambda: self.refresh(force=True))
        self.refresh(force=True)
        log.info("NomadNet page (%s) at %s", self.mode, self.destination.hash.hex())

    def readers(self) -> list[tuple[Any, Callable[[], None]]]:
        return [] if self.control is None else [(self.control.sock, self.control.on_readable)]

    def tick(self, now: float) -> None:
        if self.control is not None:
            self.control.tick(now)
        if now >= self._next_announce and any(
                getattr(i, "online", False) for i in list(RNS.Transport.interfaces)):
            self.destination.announce(app_data=self.config.node.name.encode())
            self.counters["announces"] += 1
            self._next_announce = now + self.announce_interval_s

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.counters)

    def close(self) -> None:
        if self.destination is not None:
            self.destination.deregister_request_handler(INDEX)
        if self.control is not None:
            self.control.close()

    # --- Reticulum's thread -------------------------------------------------------------

    def _respond(self, path: str, _data: Any, _request_id: Any, _link_id: Any,
                 remote_identity: Any, _requested_at: float) -> bytes:
        if self.mode == "operators" and not self._admits(remote_identity):
            self._bump("refused")
            return replies.denied_page().encode()
        self._bump("served")
        self.bridge.post(self.refresh)
        return self._page.encode()

    def _admits(self, remote_identity: Any) -> bool:
        if remote_identity is None:
            return False
        lxmf = RNS.Destination.hash_from_name_and_identity("lxmf.delivery", remote_identity)
        return remote_identity.hash.hex() in self.allowed or lxmf.hex() in self.allowed

    def _bump(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    # --- the gateway's loop -------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._built_at < REFRESH_S:
            return
        self._built_at = now
        net = self.net
        self._page = replies.page(net.name, net.node_id, net.stats(), net.peers(),
                                  net.clusters(), self._workers, self._events())
        if self.control is not None:
            self.control.ask(protocol.NodeStatus(), protocol.NodeStatusReply,
                             self._took_status, lambda _c, _t: None, REQUEST_TIMEOUT_S)

    def _took_status(self, reply: protocol.NodeStatusReply) -> None:
        first = self._workers is None
        self._workers = reply.workers
        if first:
            self.refresh(force=True)

    def _events(self) -> list[tuple[float, str, str]]:
        try:
            events = chain.tail(chain.db_path(self.config), replies.PAGE_EVENTS)
        except (AkitaError, OSError, apsw.Error) as exc:  # e.g. the writer has not begun
            log.debug("no events for the page: %s", exc)
            return []
        return [(e.ts, e.kind, _summary(e.data)) for e in events]


def _summary(data: Any) -> str:
    if not isinstance(data, dict):
        return ""
    return " ".join(f"{k}={str(data[k])[:24]}" for k in ("name", "id", "peer", "cause")
                    if isinstance(data.get(k), (str, int)))
