"""The control socket and the bus of a real supervisor: bad frames, forwarding to workers, and
the worker.state events it publishes."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import msgpack
import pytest
import zmq

from akita import transport
from akita.errors import RequestFailed
from akita.wire import protocol
from tests.helpers import Node, pid_alive, wait_for

MakeNode = Callable[..., Node]


def raw_exchange(node: Node, frames: list[bytes], sock_type: int = zmq.DEALER,
                 timeout_s: float = 5.0) -> protocol.Message:
    """Send raw frames to the control socket and decode the one reply."""
    ctx = zmq.Context()
    sock = transport.make_socket(ctx, sock_type)
    try:
        sock.connect(transport.endpoint(node.run_dir, transport.CONTROL))
        sock.send_multipart(frames)
        assert sock.poll(int(timeout_s * 1000)), f"no reply to {[f[:40] for f in frames]}"
        return protocol.decode(sock.recv_multipart()[-1])
    finally:
        sock.close(linger=0)
        ctx.term()


def test_bad_frames_get_error_replies_and_the_node_keeps_answering(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    cases = {
        "not msgpack": ([b"\xc1\xc1garbage"], "bad_frame"),
        "not a map": ([msgpack.packb([1, 2, 3])], "bad_frame"),
        "no kind": ([msgpack.packb({"v": 1})], "bad_frame"),
        "unknown kind": ([msgpack.packb({"v": 1, "kind": "nosuch.verb"})], "unknown_request"),
        "wrong version": ([msgpack.packb({"v": 99, "kind": "ping"})], "bad_frame"),
        "missing field": ([msgpack.packb({"v": 1, "kind": "worker.stop"})], "bad_frame"),
        "wrong type": ([msgpack.packb({"v": 1, "kind": "worker.stop", "name": 5})],
                       "bad_frame"),
        "two frames": ([b"x", protocol.encode(protocol.Ping())], "bad_frame"),
        "oversized": ([b"\x00" * (protocol.MAX_FRAME_BYTES + 1)], "bad_frame"),
        "not a request": ([protocol.encode(protocol.Pong(name="x", pid=1))], "unknown_request"),
    }
    for what, (frames, code) in cases.items():
        reply = raw_exchange(node, frames)
        assert isinstance(reply, protocol.Error), what
        assert reply.code == code, f"{what}: {reply}"
    assert isinstance(node.request(protocol.Ping(payload=b"still here")), protocol.Pong)
    status = node.status()
    assert status["node"]["bad_frames"] >= 8
    assert all(w["state"] == "running" for w in status["workers"].values())


def test_req_clients_are_served_too(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    reply = raw_exchange(node, [protocol.encode(protocol.NodeStatus(), rid=7)], zmq.REQ)
    assert isinstance(reply, protocol.NodeStatusReply)
    assert [w["name"] for w in reply.workers] == ["ledger", "sampler"]


def test_requests_are_forwarded_to_the_owning_worker(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    head = node.request(protocol.LedgerHead())
    assert isinstance(head, protocol.LedgerHeadReply)
    assert head.feed == node.status()["node"]["id"]
    # The sampler answers for resource.*; it does not serve this kind, and says so itself.
    with pytest.raises(RequestFailed) as failed:
        node.request(protocol.ResourceAlert(metric="cpu", value=1, threshold=2, raised=True))
    assert failed.value.code == "unknown_request" and "sampler" in failed.value.message
    # Many in flight at once on one client, each reply matched to its own request id.
    with transport.Requester(node.run_dir, transport.CONTROL) as req:
        rids = [req.send(protocol.LedgerHead()) for _ in range(50)]
        replies = [req.receive(rid, 5.0) for rid in reversed(rids)]
    assert all(isinstance(r, protocol.LedgerHeadReply) for r in replies)


def test_request_for_a_stopped_worker_fails_with_worker_down(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    node.request(protocol.WorkerStop(name="ledger"))
    wait_for(lambda: node.worker("ledger")["state"] == "stopped", 5, "ledger stopped")
    with pytest.raises(RequestFailed) as failed:
        node.request(protocol.LedgerHead())
    assert failed.value.code == "worker_down"
    node.request(protocol.WorkerStart(name="ledger"))
    node.wait_running(names=["ledger"])
    assert isinstance(node.request(protocol.LedgerHead()), protocol.LedgerHeadReply)


def test_worker_state_changes_are_published_on_the_bus(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    ctx = zmq.Context()
    sub = transport.make_socket(ctx, zmq.SUB)
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"worker.")
        sub.connect(transport.endpoint(node.run_dir, transport.BUS_OUT))
        # A heartbeat coming through proves the proxy has our subscription.
        wait_for(lambda: sub.poll(100) and sub.recv_multipart()[0] == b"worker.heartbeat", 5,
                 "a heartbeat through the bus proxy")
        node.request(protocol.WorkerRestart(name="sampler"))
        seen: list[str] = []

        def restarted() -> list[str] | None:
            while sub.poll(50):
                topic, data = sub.recv_multipart()
                msg = protocol.decode(data)
                if topic == b"worker.state":
                    assert isinstance(msg, protocol.WorkerState) and msg.name == "sampler"
                    seen.append(msg.state)
            return seen if "running" in seen else None

        wait_for(restarted, 10, "worker.state events for a sampler restart")
        assert seen == ["stopping", "backoff", "starting", "running"]
    finally:
        sub.close(linger=0)
        ctx.term()


def test_requests_in_flight_to_a_dying_worker_are_answered(make_node: MakeNode) -> None:
    node = make_node()
    node.start()
    pid = node.worker("ledger")["pid"]
    os.kill(pid, signal.SIGSTOP)  # it receives the request but cannot answer
    try:
        with transport.Requester(node.run_dir, transport.CONTROL) as req:
            rid = req.send(protocol.LedgerHead())
            wait_for(lambda: node.status()["node"]["id"], 5, "the supervisor still answering")
            os.kill(pid, signal.SIGKILL)
            reply = req.receive(rid, 5.0)
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert isinstance(reply, protocol.Error) and reply.code == "worker_down", reply
    node.wait_running(names=["ledger"])
    assert isinstance(node.request(protocol.LedgerHead()), protocol.LedgerHeadReply)
