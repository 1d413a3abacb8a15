"""The text of operator replies (LXMF and the NomadNet page): short lines, no payloads.

Pure functions over the gateway's views (`net.peers()`, `net.clusters()`, `net.stats()`) and
the executor's replies, so they are tested without Reticulum. LXMF replies go through
`operator_rules.fit` to stay within one packet.
"""

from __future__ import annotations

import json
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
