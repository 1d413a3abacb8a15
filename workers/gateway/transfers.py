"""Quotas on what a peer's transfers cost this node, enforced inside Reticulum's own paths.

- A request larger than one packet arrives as a Resource, announced first by an
  advertisement that carries its size. Reticulum refuses an advertisement above the
  destination's `max_request_size` before taking any of the data; `limit_requests` sets it
  and counts each refusal (Reticulum itself only logs it at debug level). The path of a
  request is inside its data, so per-path limits (`Links.serve(..., max_bytes=)`) apply
  once a request within the destination's limit has arrived.
- A Resource of several segments is written to ``<reticulum>/storage/resources`` segment
  by segment; a transfer that fails or whose link closes leaves that file behind, and
  Reticulum deletes it only after a day. `sweep_partial` removes every such file that no
  transfer in progress owns, when an incoming link closes and every `SWEEP_EVERY_S`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import RNS

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 5.0
RefusedCallback = Callable[[int, str | None], None]   # (advertised size, peer id or None)

_on_refused: list[RefusedCallback] = []


def limit_requests(destination: Any, max_bytes: int, on_refused: RefusedCallback) -> None:
    """Refuse requests above `max_bytes` at their advertisement; call `on_refused` for each."""
    destination.max_request_size = max_bytes
    _on_refused.append(on_refused)
    reject = RNS.Resource.reject
    if getattr(reject, "_akita_counting", False):
        return

    # Reticulum refuses an oversized request with Resource.reject(advertisement) on its own
    # thread and tells nobody: wrapping it is the one place to count it. One process has one
    # Reticulum, so this is installed once per gateway.
    def counting_reject(advertisement_packet: Any) -> None:
        reject(advertisement_packet)
        try:
            if RNS.ResourceAdvertisement.is_request(advertisement_packet):
                size = RNS.ResourceAdvertisement.read_size(advertisement_packet)
                identity = advertisement_packet.link.get_remote_identity()
                peer = identity.hash.hex() if identity is not None else None
                for callback in _on_refused:
                    callback(size, peer)
        except Exception:  # on Reticulum's thread: counting must never break it
            log.exception("could not count a refused request")

    counting_reject._akita_counting = True  # type: ignore[attr-defined]
    RNS.Resource.reject = staticmethod(counting_reject)  # type: ignore[method-assign]


def owned_files() -> set[str]:
    """Names of the storage files of the Resources being received right now."""
    owned = set()
    for link in list(RNS.Transport.active_links):
        for resource in list(getattr(link, "incoming_resources", ())):
            original = getattr(resource, "original_hash", None)
            if isinstance(original, bytes):
                owned.add(original.hex())
    return owned


def sweep_partial(resource_dir: Path | None = None) -> int:
    """Delete the files of Resources no transfer owns any more; returns how many."""
    directory = Path(resource_dir or getattr(RNS.Reticulum, "resourcepath", "") or "")
    if not directory.is_dir():
        return 0
    owned = owned_files()
    removed = 0
    for entry in os.scandir(directory):
        stem = entry.name.removesuffix(".meta")
        if entry.is_file() and stem not in owned:
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    if removed:
        log.info("removed %d partial transfer file(s) from %s", removed, directory)
    return removed
