"""A hostile mesh against real nodes on loopback Reticulum: each test performs an attack and
asserts the defence (no member displaced, no term out of range, refusals counted)."""

from __future__ import annotations

from collections.abc import Callable

from akita import identity as ident
from akita.ledger import chain
from akita.mesh.cluster import MAX_TERM
from tests.helpers import Node, start_network, wait_for
from tests.test_cluster_nodes import agreed, clusters, node_id
from workers.ledger.store import Append, LedgerStore, parse_events

POISONED_TERM = 2**63 + 5   # what an older version adopted from one hostile announce


def write_event(node: Node, kind: str, data: object) -> None:
    """Append an event to a stopped node's own feed with its own key (as its ledger would)."""
    conn = chain.open_writer(chain.db_path(node.config))
    try:
        store = LedgerStore(conn, ident.load(node.data_dir))
        store.commit([Append("test", 1, 1, parse_events([{"kind": kind, "ts": 1.0,
                                                           "data": data}]), True)],
                     checkpoint_events=1)
        store.checkpoint()
    finally:
        conn.close()


def test_a_poisoned_saved_term_heals_at_start_and_the_cluster_reforms(
        make_node: Callable[..., Node]) -> None:
    nodes = start_network(make_node, 3)
    ids = [node_id(node) for node in nodes]
    ((cluster_id, _members, _coordinator),) = wait_for(
        agreed(nodes, set(ids), [3]), 20, "three nodes agreeing on one cluster")
    victim = nodes[1]
    victim.stop()
    write_event(victim, "cluster.seat", {"seat": [bytes.fromhex(cluster_id), 0, 2],
                                         "term": POISONED_TERM, "mates": []})
    victim.start()
    wait_for(agreed(nodes, set(ids), [3]), 20, "the cluster re-formed with the restarted node")

    def sane_terms() -> object:
        terms = [c["term"] for node in nodes for c in clusters(node)]
        return terms if terms and all(0 < t < 1000 for t in terms) else None

    terms = wait_for(sane_terms, 10, "every node holding a small term")
    assert max(terms) <= MAX_TERM
    log = (victim.log_dir / "gateway.log").read_text(errors="replace")
    assert "healing the saved term" in log
