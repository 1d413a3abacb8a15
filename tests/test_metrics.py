"""/metrics and /api/state on a real node: figures from every worker, a worker's death that
does not blank the page, refusals of bad requests, history across a restart."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

import akita
from akita import config as config_mod
from akita.errors import ConfigError
from akita.tasks.queue import TaskQueue, TaskRecord, TaskState
from akita.wire import protocol
from supervisor import observer as observer_module
from supervisor.observed import Histogram, flatten_counters
from supervisor.observer import Observer
from tests.helpers import Node, free_port, start_network, wait_for

TASKS = {"pool_size": 2, "modules": "tests.sample_tasks", "task_timeout": 20}


def metrics_node(make_node: Callable[..., Node], workers: str = "ledger, sampler, executor",
                 **sections: dict[str, Any]) -> tuple[Node, int]:
    port = free_port()
    node = make_node({"supervisor": {"workers": workers}, "tasks": TASKS,
                      "metrics": {"listen": f"127.0.0.1:{port}"}, **sections})
    return node, port


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        reply = conn.getresponse()
        return reply.status, reply.read().decode(), dict(reply.getheaders())
    finally:
        conn.close()


def scrape(port: int) -> dict[str, float]:
    """Every sample as 'name{label="v",...}' → value (labels sorted)."""
    status, text, headers = get(port, "/metrics")
    assert status == 200, text
    assert headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def sample_when(port: int, condition: Callable[[dict[str, float]], bool], what: str,
                timeout_s: float = 20) -> dict[str, float]:
    last: dict[str, Any] = {}

    def check() -> Any:
        nonlocal last
        try:
            last = scrape(port)
        except OSError as exc:
            last = {"error": str(exc)}
            return None
        return last if condition(last) else None

    try:
        return wait_for(check, timeout_s, what, interval_s=0.2)  # type: ignore[no-any-return]
    except AssertionError:
        raise AssertionError(f"timed out waiting for {what}; last scrape had: "
                             f"{sorted(k for k in last if k.startswith('akita_'))[:80]}") from None


def test_metrics_cover_workers_tasks_and_ledger(make_node: Callable[..., Node]) -> None:
    node, port = metrics_node(make_node)
    node.start()
    with akita.Client(node.config_path, timeout_s=10) as client:
        ids = [client.submit("sample.add", [i, 1]) for i in range(5)]
        ids.append(client.submit("sample.fail", ["no"]))
        for task_id in ids:
            try:
                client.wait(task_id, timeout=20)
            except akita.TaskFailed:
                pass
    wanted = ['akita_tasks_finished_total{state="succeeded",type="sample.add"}',
              'akita_tasks_finished_total{state="failed",type="sample.fail"}',
              'akita_process_resident_memory_bytes{worker="ledger"}',
              'akita_process_cpu_seconds_total{worker="executor"}',
              'akita_process_open_fds{worker="supervisor"}',
              'akita_worker_up{worker="sampler"}']
    # Worker figures are refreshed once per observer step, events as they commit: wait for
    # a step that saw every worker running.
    got = sample_when(port, lambda s: all(k in s for k in wanted) and s[wanted[0]] == 5
                      and s.get('akita_worker_state{state="running",worker="executor"}') == 1,
                      "task and process metrics")
    assert got['akita_tasks_submitted_total{type="sample.add"}'] == 5
    assert got['akita_task_run_seconds_count'] == 6
    assert got['akita_ledger_commit_latency_seconds_count'] >= 12
    assert got['akita_ledger_events_total{kind="task.succeeded"}'] == 5
    assert got['akita_ledger_database_bytes'] > 0
    assert 'akita_tasks{state="succeeded"}' in got
    assert got['akita_process_threads{worker="ledger"}'] >= 1
    # USS comes from the sampler (every [sampler] uss_every samples).
    sample_when(port, lambda s: 'akita_process_unique_memory_bytes{worker="ledger"}' in s,
                "USS from the sampler")
    sample_when(port, lambda s: "akita_ledger_checkpoint_age_seconds" in s,
                "the checkpoint age")


def test_queue_depth_by_priority(make_node: Callable[..., Node]) -> None:
    node, port = metrics_node(make_node, tasks={**TASKS, "pool_size": 1})
    node.start()
    with akita.Client(node.config_path, timeout_s=10) as client:
        hang = client.submit("sample.hang", [10])  # occupies the only task process
        wait_for(lambda: client.status(hang)["state"] == "running", 10,
                 "the hanging task running (else the queue runs in priority order)")
        for _ in range(3):
            client.submit("sample.add", [1, 2], priority=7)
        client.submit("sample.add", [1, 2], priority=2)
    sample_when(port, lambda s: s.get('akita_tasks_queued{priority="7"}') == 3
                and s.get('akita_tasks_queued{priority="2"}') == 1, "queued by priority")


def test_a_dead_worker_does_not_blank_the_page(make_node: Callable[..., Node]) -> None:
    node, port = metrics_node(make_node, **{"worker:executor": {"backoff_initial": 2}})
    node.start()
    sample_when(port, lambda s: 'akita_tasks_queued{priority="0"}' not in s
                and 'akita_worker_up{worker="executor"}' in s, "a first scrape")
    executor_pid = node.worker("executor")["pid"]
    os.kill(executor_pid, signal.SIGKILL)
    got = sample_when(port, lambda s: s.get('akita_worker_restarts_total{worker="executor"}',
                                            0) >= 1, "the executor's restart counted")
    # Everything else is still there while the executor is gone or coming back.
    assert got['akita_worker_up{worker="ledger"}'] == 1
    assert 'akita_process_resident_memory_bytes{worker="sampler"}' in got
    sample_when(port, lambda s: s.get('akita_worker_up{worker="executor"}') == 1,
                "the executor back up")


def test_bad_requests_are_refused_and_counted(make_node: Callable[..., Node]) -> None:
    node, port = metrics_node(make_node, workers="ledger")
    node.start()
    status, text, headers = get(port, "/metrics", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD" and "read-only" in text
    status, text, _ = get(port, "/etc/passwd")
    assert status == 404 and "pages: /, /metrics, /api/state" in text
    status, text, _ = get(port, "/metrics", method="DELETE")
    assert status == 405
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"\x00\x01garbage\r\n\r\n")
        answer = raw.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/") and " 400 " in answer.splitlines()[0]
    assert "Traceback" not in answer
    got = sample_when(port, lambda s: 'akita_http_bad_requests_total{reason="method"}' in s,
                      "bad request counters")
    assert got['akita_http_bad_requests_total{reason="method"}'] == 2
    assert got['akita_http_bad_requests_total{reason="unknown_path"}'] == 1
    assert got['akita_http_bad_requests_total{reason="malformed"}'] == 1
    assert get(port, "/metrics", method="HEAD")[0] == 200
    assert node.status()["workers"]["ledger"]["state"] == "running"


def test_history_survives_a_restart(make_node: Callable[..., Node]) -> None:
    node, port = metrics_node(make_node)
    node.start()
    with akita.Client(node.config_path, timeout_s=10) as client:
        for task_id in [client.submit("sample.add", [1, i]) for i in range(4)]:
            client.wait(task_id, timeout=20)

    def history() -> list[dict[str, Any]]:
        status, text, _ = get(port, "/api/state")
        assert status == 200
        return json.loads(text)["history"]  # type: ignore[no-any-return]

    wait_for(lambda: sum(p["finished"] for p in history()) == 4, 20, "4 finished in history")
    assert node.stop() == 0
    before = time.time()
    node.start()
    points = wait_for(lambda: [p for p in history() if p["ts"] < before], 20,
                      "points from before the restart")
    assert sum(p["finished"] for p in points) == 4
    assert any(p["rss"] for p in points)

    # Without the saved history, throughput is refilled from the ledger.
    assert node.stop() == 0
    (Path(node.data_dir) / "operator-history.msgpack").unlink()
    node.start()
    refilled = wait_for(lambda: [p for p in history() if p["ts"] < before], 20,
                        "points refilled from the ledger")
    assert sum(p["finished"] for p in refilled) == 4


def test_listen_must_be_loopback_unless_allowed(tmp_path: Path) -> None:
    base = "[node]\ndata_dir = d\nrun_dir = r\nlog_dir = l\n[metrics]\n"
    with pytest.raises(ConfigError) as exc:
        config_mod.parse(base + "listen = 0.0.0.0:9464\n", tmp_path / "a.ini")
    assert "[metrics]:listen" in str(exc.value) and "allow_remote" in str(exc.value)
    config = config_mod.parse(base + "listen = 0.0.0.0:9464\nallow_remote = yes\n",
                              tmp_path / "a.ini")
    assert config.metrics.listen == ("0.0.0.0", 9464)
    with pytest.raises(ConfigError, match="not an IP address"):
        config_mod.parse(base + "listen = localhost:9464\n", tmp_path / "a.ini")
    with pytest.raises(ConfigError, match="port outside"):
        config_mod.parse(base + "listen = 127.0.0.1:99999\n", tmp_path / "a.ini")
    assert config_mod.parse(base + "listen =\n", tmp_path / "a.ini").metrics.listen is None
    assert config_mod.parse(base, tmp_path / "a.ini").metrics.listen == ("127.0.0.1", 9464)


def test_remote_listen_is_logged_loudly(make_node: Callable[..., Node]) -> None:
    port = free_port()
    node = make_node({"metrics": {"listen": f"0.0.0.0:{port}", "allow_remote": "yes"},
                      "supervisor": {"workers": "ledger"}})
    node.start()
    wait_for(lambda: "OPEN TO THE NETWORK" in node.output(), 10, "the warning in the log")


def test_port_taken_leaves_the_node_running(make_node: Callable[..., Node]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = make_node({"metrics": {"listen": f"127.0.0.1:{port}"},
                          "supervisor": {"workers": "ledger"}})
        node.start()
        wait_for(lambda: "cannot serve /metrics" in node.output(), 10, "the error in the log")


def test_queue_counts_by_priority() -> None:
    queue = TaskQueue()
    records = [TaskRecord(str(i), "t", [], priority, i, 0.0, TaskState.QUEUED)
               for i, priority in enumerate([1, 5, 5, 0])]
    for record in records:
        queue.push(record)
    assert queue.by_priority == {1: 1, 5: 2, 0: 1}
    queue.discard(records[0])
    assert queue.pop() is records[1]
    assert queue.by_priority == {5: 1, 0: 1}


def test_flatten_counters_and_histogram() -> None:
    stats = {"announces": {"bad": 2, "ok": 5}, "security": {"refused": {"big": 1}},
             "node": "ab", "on": True}
    assert dict(flatten_counters(stats)) == {"announces.bad": 2, "announces.ok": 5,
                                             "security.refused.big": 1, "on": 1}
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.5, 7):
        hist.observe(value)
    assert hist.buckets() == [("0.1", 1.0), ("1.0", 2.0), ("+Inf", 3.0)]


@pytest.mark.slow
def test_mesh_metrics_from_two_nodes(make_node: Callable[..., Node]) -> None:
    port = free_port()
    # Both nodes get the port; the second finds it taken, logs so and runs on without it.
    nodes = start_network(make_node, 2, metrics={"listen": f"127.0.0.1:{port}"})
    assert nodes[0].config.metrics.listen == ("127.0.0.1", port)
    got = sample_when(port, lambda s: s.get('akita_mesh_peers{state="alive"}', 0)
                      + s.get('akita_mesh_peers{state="up"}', 0) >= 1
                      and s.get("akita_mesh_cluster_size") == 2, "a peer in the mesh metrics",
                      timeout_s=30)
    assert got["akita_gateway_answering"] == 1
    assert got["akita_mesh_clusters"] == 1
    assert "akita_mesh_coordinator_term" in got
    rx = [v for k, v in got.items() if k.startswith("akita_rns_interface_receive_bytes_total")]
    assert rx and max(rx) > 0
    assert any(k.startswith('akita_gateway_stat{key="announces.') for k in got)
    airtime = {k: v for k, v in got.items() if k.startswith("akita_mesh_airtime_percent")}
    windows = {k.split('window="')[1].split('"')[0] for k in airtime}
    assert windows == {"hour", "start"} and min(airtime.values()) >= 0, airtime


def test_the_observer_reads_a_batch_of_bus_frames(tmp_path: Path) -> None:
    config = types.SimpleNamespace(node=types.SimpleNamespace(run_dir=tmp_path,
                                                              data_dir=tmp_path),
                                   sampler=types.SimpleNamespace(interval=5))
    observer = Observer(config, lambda: None)
    pack = msgpack.Packer(use_bin_type=True).pack
    k_ts, k_kind, k_data = protocol.LEDGER_COMMITTED_KEYS

    def committed(seq: int, kind: str, data: Any) -> list[bytes]:
        return [kind.encode(), b"".join((protocol.ledger_committed_prefix("f"), pack(seq),
                                         k_ts, pack(time.time()), k_kind, pack(kind),
                                         k_data, pack(data)))]

    batch = []
    for i in range(60):
        batch += [committed(3 * i, "task.submitted", {"id": f"t{i}", "name": "sum"}),
                  committed(3 * i + 1, "task.started", {"id": f"t{i}"}),
                  committed(3 * i + 2, "task.succeeded", {"id": f"t{i}", "duration_s": 0.5})]
    batch += [[b"task.started", b"\xc1"], [b"only one frame"],
              [b"resource.sample", protocol.encode(protocol.ResourceSample(
                  ts=1.0, host={}, processes=[{"pid": 7, "uss_bytes": 1000}]))]]
    observer.on_bus(batch)
    obs = observer.observations
    assert obs.events_by_kind == {"task.submitted": 60, "task.started": 60,
                                  "task.succeeded": 60}
    assert obs.submitted == {"sum": 60} and obs.finished == {("sum", "succeeded"): 60}
    assert obs.run_time.count == 60 and obs.commit_latency.count == 180
    assert [e["seq"] for e in obs.last_events] == list(range(130, 180))
    assert obs.last_events[-1]["summary"] == "id=t59"
    assert obs.uss == {7: 1000}


def test_the_observer_hears_events_and_samples_not_heartbeats(tmp_path: Path) -> None:
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    try:
        endpoint = f"ipc://{tmp_path}/bus.sock"
        pub.bind(endpoint)
        observer_module.subscribe(sub)
        sub.connect(endpoint)
        sent = [[protocol.topic_of(protocol.Heartbeat.KIND), b"beat"],
                [b"task.succeeded", b"event"],
                [protocol.topic_of(protocol.ResourceSample.KIND), b"sample"],
                [b"worker.exited", b"event"]]
        heard: list[list[bytes]] = []

        def all_heard() -> bool:
            for frames in sent:   # again until the subscription has reached the publisher
                pub.send_multipart(frames)
            while sub.poll(50):
                heard.append(sub.recv_multipart())
            return {bytes(f[1]) for f in heard} >= {b"event", b"sample"}

        wait_for(all_heard, 10, "the events and the sample at the observer's subscriber")
        assert not [f for f in heard if f[1] == b"beat"], "a heartbeat reached the observer"
        assert {bytes(f[0]) for f in heard} == {b"task.succeeded", b"worker.exited",
                                                b"resource.sample"}
    finally:
        pub.close(linger=0)
        sub.close(linger=0)
        ctx.term()
