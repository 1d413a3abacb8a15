"""`/metrics`: the observed figures as Prometheus metric families (prometheus_client).

One custom collector turns an `Observations` view into families at scrape time, with a
`worker` label per process, rather than one registry per process or the multiprocess mode
(which cannot carry per-process CPU or memory). Names follow Prometheus conventions: the
`akita_` prefix, base units (`_seconds`, `_bytes`), `_total` on counters.

The gateway's counters are exported generically (`akita_gateway_stat{key="group.name"}`):
a counter it adds, such as the security counters, appears without a change here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from supervisor.observed import MAX_COUNTER_KEYS, Histogram, Observations, flatten_counters
from supervisor.process import WorkerState

WORKER_STATES = tuple(state.value for state in WorkerState)
# Parts of the gateway's stats that are not counters or gauges worth a series.
_SKIPPED_STATS = ("reports", "interfaces", "traffic")


class NodeCollector(Collector):
    """Builds every family from one consistent copy of the observations."""

    def __init__(self, observations: Observations) -> None:
        self.observations = observations

    def collect(self) -> Iterator[Metric]:
        obs = self.observations
        with obs.lock:
            node, workers = dict(obs.node), list(obs.workers)
            processes = {k: dict(v) for k, v in obs.processes.items()}
            executor, gateway, ledger = obs.executor, dict(obs.gateway), dict(obs.ledger)
            submitted, finished = dict(obs.submitted), dict(obs.finished)
            delegated, received = obs.delegated, obs.received
            events = dict(obs.events_by_kind)
            run_time, latency = _copy(obs.run_time), _copy(obs.commit_latency)
            bad = dict(obs.bad_requests)
        yield from _node(node)
        yield from _workers(workers, processes)
        yield from _tasks(submitted, finished, delegated, received, executor, run_time)
        yield from _ledger(events, latency, ledger)
        yield from _mesh(gateway)
        bad_family = CounterMetricFamily("akita_http_bad_requests", "Refused HTTP requests to "
                                         "the metrics and dashboard listener, by reason",
                                         labels=["reason"])
        for reason, count in sorted(bad.items()):
            bad_family.add_metric([reason], count)
        yield bad_family


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def registry_for(observations: Observations) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(observations))
    return registry


def _copy(histogram: Histogram) -> Histogram:
    copy = Histogram(histogram.bounds)
    copy.counts, copy.sum, copy.count = list(histogram.counts), histogram.sum, histogram.count
    return copy


def _node(node: dict[str, Any]) -> Iterator[Metric]:
    info = GaugeMetricFamily("akita_node_info", "This node's id and name (always 1)",
                             labels=["node_id", "name"])
    if node:
        info.add_metric([str(node.get("id", "")), str(node.get("name", ""))], 1)
    yield info
    if "uptime_s" in node:
        yield GaugeMetricFamily("akita_node_uptime_seconds", "Seconds since the supervisor "
                                "started", value=node["uptime_s"])


def _workers(workers: list[dict[str, Any]], processes: dict[str, dict[str, Any]]
             ) -> Iterator[Metric]:
    up = GaugeMetricFamily("akita_worker_up", "1 while the worker runs", labels=["worker"])
    state = GaugeMetricFamily("akita_worker_state", "The worker's state (1 for the current "
                              "one)", labels=["worker", "state"])
    restarts = CounterMetricFamily("akita_worker_restarts", "Restarts of the worker since the "
                                   "supervisor started", labels=["worker"])
    for w in workers:
        up.add_metric([w["name"]], 1 if w["state"] == "running" else 0)
        for name in WORKER_STATES:
            state.add_metric([w["name"], name], 1 if w["state"] == name else 0)
        restarts.add_metric([w["name"]], w["restarts"])
    yield from (up, state, restarts)
    families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
        "cpu_seconds": CounterMetricFamily("akita_process_cpu_seconds", "CPU time (user + "
                                           "system) of the process", labels=["worker"]),
        "rss_bytes": GaugeMetricFamily("akita_process_resident_memory_bytes", "Resident set "
                                       "size", labels=["worker"]),
        "uss_bytes": GaugeMetricFamily("akita_process_unique_memory_bytes", "Unique set size "
                                       "(from the sampler, every [sampler] uss_every samples)",
                                       labels=["worker"]),
        "open_fds": GaugeMetricFamily("akita_process_open_fds", "Open file descriptors",
                                      labels=["worker"]),
        "threads": GaugeMetricFamily("akita_process_threads", "Threads", labels=["worker"]),
    }
    for name, figures in sorted(processes.items()):
        for key, family in families.items():
            if figures.get(key) is not None:
                family.add_metric([name], figures[key])
    yield from families.values()


def _tasks(submitted: dict[str, int], finished: dict[tuple[str, str], int], delegated: int,
           received: int, executor: Any, run_time: Histogram) -> Iterator[Metric]:
    sub = CounterMetricFamily("akita_tasks_submitted", "Tasks submitted, by type",
                              labels=["type"])
    for name, count in sorted(submitted.items()):
        sub.add_metric([name], count)
    done = CounterMetricFamily("akita_tasks_finished", "Tasks that reached a final state, by "
                               "type and state", labels=["type", "state"])
    for (name, state), count in sorted(finished.items()):
        done.add_metric([name, state], count)
    yield from (sub, done)
    yield CounterMetricFamily("akita_tasks_delegated", "Tasks handed to a peer to run",
                              value=delegated)
    yield CounterMetricFamily("akita_tasks_received", "Tasks a peer handed to this node",
                              value=received)
    yield HistogramMetricFamily("akita_task_run_seconds", "Run time of finished task runs",
                                buckets=run_time.buckets(), sum_value=run_time.sum)
    if executor is None:
        return
    queued = GaugeMetricFamily("akita_tasks_queued", "Queued tasks, by priority",
                               labels=["priority"])
    for priority, count in sorted(executor.by_priority.items(), key=lambda i: int(i[0])):
        queued.add_metric([priority], count)
    states = GaugeMetricFamily("akita_tasks", "Tasks the executor holds, by state",
                               labels=["state"])
    for state, count in sorted(executor.counts.items()):
        states.add_metric([state], count)
    yield from (queued, states)


def _ledger(events: dict[str, int], latency: Histogram, ledger: dict[str, Any]
            ) -> Iterator[Metric]:
    family = CounterMetricFamily("akita_ledger_events", "Events committed to this node's "
                                 "feed since the supervisor started, by kind", labels=["kind"])
    for kind, count in sorted(events.items()):
        family.add_metric([kind], count)
    yield family
    yield HistogramMetricFamily("akita_ledger_commit_latency_seconds", "From an event's "
                                "creation to its commit reaching the bus",
                                buckets=latency.buckets(), sum_value=latency.sum)
    if "database_bytes" in ledger:
        yield GaugeMetricFamily("akita_ledger_database_bytes", "Size of the ledger database "
                                "(with its WAL)", value=ledger["database_bytes"])
    if ledger.get("checkpoint_ts") is not None:
        yield GaugeMetricFamily("akita_ledger_checkpoint_age_seconds", "Seconds since the "
                                "last signed checkpoint of this node's feed",
                                value=max(0.0, time.time() - ledger["checkpoint_ts"]))


def _mesh(gateway: dict[str, Any]) -> Iterator[Metric]:
    stats_reply, peers_reply, clusters_reply = (gateway.get("stats"), gateway.get("peers"),
                                                gateway.get("clusters"))
    yield GaugeMetricFamily("akita_gateway_answering", "1 if the gateway answered the last "
                            "poll", value=1 if stats_reply is not None else 0)
    if peers_reply is not None:
        by_state: dict[str, int] = {}
        for peer in peers_reply.peers:
            state = str(peer.get("state", "unknown"))[:32]
            by_state[state] = by_state.get(state, 0) + 1
        family = GaugeMetricFamily("akita_mesh_peers", "Known peers, by state",
                                   labels=["state"])
        for state, count in sorted(by_state.items()):
            family.add_metric([state], count)
        yield family
    if stats_reply is None:
        return
    stats = stats_reply.stats
    yield from _cluster(stats, clusters_reply)
    yield from _interfaces(stats.get("interfaces") or [])
    yield from _airtime((stats.get("traffic") or {}).get("interfaces") or [])
    family = GaugeMetricFamily("akita_gateway_stat", "Every numeric counter and figure the "
                               "gateway reports (peer.stats), by dotted key; includes the "
                               "security counters", labels=["key"])
    counters = [(k, v) for k, v in flatten_counters(
        {k: v for k, v in stats.items() if k not in _SKIPPED_STATS})]
    for key, value in sorted(counters)[:MAX_COUNTER_KEYS]:
        family.add_metric([key], value)
    yield family


def _cluster(stats: dict[str, Any], clusters_reply: Any) -> Iterator[Metric]:
    own = stats.get("cluster")
    size = 0
    clusters = clusters_reply.clusters if clusters_reply is not None else []
    for cluster in clusters:
        if cluster.get("id") == own:
            size = len(cluster.get("members") or [])
    yield GaugeMetricFamily("akita_mesh_cluster_size", "Members of this node's cluster",
                            value=size)
    yield GaugeMetricFamily("akita_mesh_clusters", "Clusters this node sees",
                            value=len(clusters))
    term = stats.get("term")
    if isinstance(term, int):
        yield GaugeMetricFamily("akita_mesh_coordinator_term", "This node's cluster's "
                                "coordinator term", value=term)


def _interfaces(interfaces: list[dict[str, Any]]) -> Iterator[Metric]:
    rx = CounterMetricFamily("akita_rns_interface_receive_bytes", "Bytes received, as "
                             "Reticulum counts them", labels=["interface"])
    tx = CounterMetricFamily("akita_rns_interface_transmit_bytes", "Bytes sent, as "
                             "Reticulum counts them", labels=["interface"])
    online = GaugeMetricFamily("akita_rns_interface_up", "1 while the interface is online",
                               labels=["interface"])
    for iface in interfaces[:64]:
        name = str(iface.get("name", "?"))[:80]
        rx.add_metric([name], iface.get("rx_bytes", 0))
        tx.add_metric([name], iface.get("tx_bytes", 0))
        online.add_metric([name], 1 if iface.get("online") else 0)
    yield from (rx, tx, online)


def _airtime(interfaces: list[dict[str, Any]]) -> Iterator[Metric]:
    """Estimated time on air of what this node sent, per interface (the traffic meter)."""
    family = GaugeMetricFamily("akita_mesh_airtime_percent", "Percent of the time this node "
                               "transmitted on the interface (estimated), over the last hour "
                               "or since start", labels=["interface", "window"])
    for iface in interfaces[:64]:
        name = str(iface.get("name", "?"))[:80]
        family.add_metric([name, "hour"], iface.get("airtime_hour_percent", 0))
        family.add_metric([name, "start"], iface.get("airtime_percent", 0))
    yield family
