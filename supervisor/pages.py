"""The dashboard's data: one JSON document built from the observations (`/api/state`).

The page itself (`supervisor/dashboard.html`) is static, with its plots drawn as SVG by a
few lines of its own script: no build step, nothing fetched from elsewhere.
"""

from __future__ import annotations

from typing import Any

from supervisor.observed import MAX_COUNTER_KEYS, Observations, flatten_counters

_SECURITY_GROUPS = ("security", "admission")


def state_document(obs: Observations) -> dict[str, Any]:
    """Everything the dashboard draws, as plain JSON-ready values."""
    with obs.lock:
        node, workers = dict(obs.node), [dict(w) for w in obs.workers]
        processes = {k: dict(v) for k, v in obs.processes.items()}
        history = list(obs.history)
        events = list(obs.last_events)
        executor, gateway = obs.executor, dict(obs.gateway)
        finished = sum(obs.finished.values())
        steps = obs.steps
    for worker in workers:
        figures = processes.get(worker["name"], {})
        worker.update({key: figures.get(key) for key in (
            "cpu_percent", "rss_bytes", "uss_bytes", "open_fds", "threads")})
    supervisor = processes.get("supervisor")
    return {
        "node": node, "steps": steps, "workers": workers, "supervisor": supervisor,
        "history": history, "events": events[::-1],
        "tasks": _tasks(executor, finished),
        **_mesh(gateway),
    }


def _tasks(executor: Any, finished: int) -> dict[str, Any]:
    if executor is None:
        return {"answering": False, "finished": finished}
    return {"answering": True, "counts": executor.counts, "by_priority": executor.by_priority,
            "finished": finished}


def _mesh(gateway: dict[str, Any]) -> dict[str, Any]:
    stats_reply, peers_reply, clusters_reply = (gateway.get("stats"), gateway.get("peers"),
                                                gateway.get("clusters"))
    stats = stats_reply.stats if stats_reply is not None else {}
    peers = peers_reply.peers if peers_reply is not None else []
    counters = dict(list(flatten_counters(
        {k: v for k, v in stats.items() if k not in ("reports", "interfaces")}))[
        :MAX_COUNTER_KEYS])
    security = {k: v for k, v in counters.items() if k.split(".")[0] in _SECURITY_GROUPS}
    return {
        "mesh": {
            "answering": stats_reply is not None,
            "self_id": stats.get("node") or (peers_reply.self_id if peers_reply else None),
            "cluster": stats.get("cluster"), "term": stats.get("term"),
            "peers": [{k: p.get(k) for k in ("id", "name", "cluster", "role", "state",
                                               "last_seen_s")} for p in peers[:256]],
            "clusters": clusters_reply.clusters[:64] if clusters_reply is not None else [],
            "interfaces": stats.get("interfaces") or [],
        },
        "security": security,
        "counters": counters,
    }
