"""The text of operator replies (LXMF) and of the NomadNet page: short lines, no payloads.

Pure functions over the gateway's views (`net.peers()`, `net.clusters()`, `net.stats()`) and
the executor's replies, so they are tested without Reticulum. LXMF replies go through
`operator_rules.fit` to stay within one packet.
"""

from __future__ import annotations

import json
import time
from typing import Any


def _short(node_id: str | None) -> str:
    return (node_id or "-")[:8]


def _names(peers: list[dict[str, Any]], own_id: str, own_name: str) -> dict[str, str]:
    names = {p["id"]: p.get("name") or _short(p["id"]) for p in peers}
    names[own_id] = own_name
    return names


def status(name: str, node_id: str, stats: dict[str, Any], peers: list[dict[str, Any]],
           clusters: list[dict[str, Any]], task_counts: dict[str, int] | None) -> str:
    names = _names(peers, node_id, name)
    own = next((c for c in clusters if c.get("id") == stats.get("cluster")), None)
    lines = [f"{name} {_short(node_id)}"]
    if own is not None:
        coordinator = str(own.get("coordinator"))
        lines.append(f"cluster {_short(own['id'])} term {own.get('term')} "
                     f"coord {names.get(coordinator, _short(coordinator))} "
                     f"{len(own.get('members') or [])} members")
    else:
        lines.append("no cluster yet")
    alive = sum(1 for p in peers if p.get("state") == "alive")
    lines.append(f"peers {len(peers)} ({alive} alive), clusters {len(clusters)}")
    if task_counts is not None:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(task_counts.items()) if v)
        lines.append(f"tasks: {shown or 'none'}")
    return "\n".join(lines)


def peers(peer_list: list[dict[str, Any]]) -> str:
    if not peer_list:
        return "no peers"
    return "\n".join(f"{p.get('name') or _short(p['id'])} {_short(p['id'])} {p.get('state')} "
                     f"{p.get('role')} {_short(p.get('cluster'))}" for p in peer_list)


def clusters(cluster_list: list[dict[str, Any]], peer_list: list[dict[str, Any]],
             own_id: str, own_name: str) -> str:
    if not cluster_list:
        return "no clusters yet"
    names = _names(peer_list, own_id, own_name)
    lines = []
    for c in cluster_list:
        members = ",".join(names.get(m, _short(m)) for m in c.get("members") or [])
        coordinator = names.get(str(c.get("coordinator")), _short(c.get("coordinator")))
        lines.append(f"{_short(c.get('id'))} t{c.get('term')} coord {coordinator}: {members}")
    return "\n".join(lines)


def tasks(task_list: list[dict[str, Any]]) -> str:
    if not task_list:
        return "no tasks"
    return "\n".join(f"{t.get('id', '')[:12]} {t.get('name')} {t.get('state')}"
                     for t in reversed(task_list))


def task(view: dict[str, Any] | None, task_id: str) -> str:
    if view is None:
        return f"no task {task_id}"
    line = f"{view.get('id')} {view.get('name')} {view.get('state')} attempts " \
           f"{view.get('attempts')}"
    if view.get("ran_on"):
        line += f" on {_short(view['ran_on'])}"
    if "result" in view and view.get("state") == "succeeded":
        line += "\nresult " + _compact(view["result"])
    elif view.get("error"):
        line += "\nerror " + _compact(view["error"])
    return line


def _compact(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), default=str)[:200]
    except (TypeError, ValueError):
        return str(value)[:200]


# --- the NomadNet page (micron markup) -----------------------------------------------------------

PAGE_EVENTS = 8


def _plain(text: Any, limit: int = 48) -> str:
    """Text from peers or the ledger made inert for micron: no backticks or backslashes,
    no control characters, bounded."""
    cleaned = "".join(c for c in str(text) if c.isprintable() and c not in "`\\")
    return cleaned[:limit]


def page(name: str, node_id: str, stats: dict[str, Any], peers: list[dict[str, Any]],
         clusters: list[dict[str, Any]], workers: list[dict[str, Any]] | None,
         events: list[tuple[float, str, str]]) -> str:
    """The read-only status page: node, workers, cluster and coordinator, last events."""
    names = _names(peers, node_id, name)
    lines = ["#!c=0", f">Akita node {_plain(name)}", "", f"  id {node_id}", ""]
    lines.append(">>Workers")
    if workers is None:
        lines.append("  (the supervisor did not answer)")
    for w in workers or []:
        lines.append(f"  {_plain(w.get('name'), 16):<10} {_plain(w.get('state'), 12):<9} "
                     f"pid {w.get('pid') or '-'}  restarts {w.get('restarts', 0)}")
    lines += ["", ">>Cluster"]
    own = next((c for c in clusters if c.get("id") == stats.get("cluster")), None)
    if own is None:
        lines.append("  no cluster yet")
    else:
        coordinator = str(own.get("coordinator"))
        lines.append(f"  cluster {_short(own.get('id'))}  term {own.get('term')}  "
                     f"coordinator {_plain(names.get(coordinator, _short(coordinator)))}")
        lines.append("  members " + ", ".join(_plain(names.get(m, _short(m)))
                                              for m in own.get("members") or []))
    lines.append(f"  {len(peers)} peers, {len(clusters)} clusters seen")
    lines += ["", ">>Last events"]
    for ts, kind, summary in events[-PAGE_EVENTS:]:
        clock = time.strftime("%H:%M:%S", time.gmtime(ts))
        lines.append(f"  {clock}Z {_plain(kind, 32)} {_plain(summary, 60)}".rstrip())
    if not events:
        lines.append("  none")
    return "\n".join(lines) + "\n"


def denied_page() -> str:
    return ("#!c=0\n>Akita node\n\n  This page is for the node's operators: identify "
            "yourself on the link with an identity listed in [operators] identities.\n")
