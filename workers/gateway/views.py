"""The operator's view of the network: the JSON shapes of `akitactl peers|clusters|state|
services` and `akita.Client`, built from the peer table, the formation and the state store.

NODE_ID is a node's identity hash in hex everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from akita.mesh import state as st
from akita.mesh.formation import Formation
from workers.gateway.peers import Peer, PeerTable


def peers(node_id: str, table: PeerTable, formation: Formation, now: float,
          takes_work: Callable[[str], bool]) -> list[dict[str, Any]]:
    """`peers --json` → {"self": NODE_ID, "peers": [this list]}; `takes_work` says whether
    this node would hand a peer tasks now (`[security] delegate_to`)."""
    return [_peer(peer, formation, now, takes_work(peer.node_id))
            for peer in sorted(table.peers.values(), key=lambda p: (p.name, p.node_id))]


def _peer(peer: Peer, formation: Formation, now: float, takes_work: bool) -> dict[str, Any]:
    cluster = formation.cluster_of(peer.node_id) or peer.claimed_cluster
    role = formation.role_of(peer.node_id)
    if role == "none" and peer.claimed_cluster:
        role = "coordinator" if peer.info.report.coordinator else "member"
    return {
        "id": peer.node_id,
        "name": peer.name,
        "cluster": cluster or None,
        "role": role,
        "last_seen_s": round(max(0.0, now - peer.last_heard), 2),
        "load": {"cpu_percent": peer.load.cpu_percent,
                 "memory_percent": peer.load.memory_percent,
                 "queue_depth": peer.load.queue_depth},
        "state": peer.state.value,
        "generation": peer.info.generation,
        "takes_work": takes_work,
    }


def services(store: st.StateStore, live: set[str]) -> list[dict[str, Any]]:
    """`services --json` → {"services": [this list]}: who offers which task types/services."""
    offered: dict[tuple[str, str], set[str]] = {}
    for origin, record in store.records.items():
        if origin not in live and origin != store.local:
            continue
        for kind, key in (("task", st.KEY_TASK_TYPES), ("service", st.KEY_SERVICES)):
            names = record.get(key) or []
            for name in names if isinstance(names, list) else []:
                if isinstance(name, str):
                    offered.setdefault((name, kind), set()).add(origin)
    return [{"name": name, "kind": kind, "nodes": sorted(nodes)}
            for (name, kind), nodes in sorted(offered.items())]


def state(record: st.Record) -> dict[str, Any]:
    """`state NODE --json`."""
    return {"node": record.origin, "generation": record.generation, "version": record.version,
            "data": record.as_dict()}


def resolve_node(query: str, own_id: str, table: PeerTable) -> str | None:
    """A node id from an id, a unique id prefix, or a unique name ("" or "self": this node)."""
    if query in ("", "self", own_id):
        return own_id
    lowered = query.lower()
    if lowered in table.peers:
        return lowered
    candidates = {node for node in [own_id, *table.peers] if node.startswith(lowered)}
    if len(candidates) == 1:
        return candidates.pop()
    named = {peer.node_id for peer in table.peers.values() if peer.name == query}
    return named.pop() if len(named) == 1 else None
