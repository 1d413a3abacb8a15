"""The emulated LoRa channel: airtime arithmetic against published figures, the medium's
rules with explicit times, and the real channel and attach processes over a unix socket."""

from __future__ import annotations

import os
import random
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from akita.mesh.airtime import LoraProfile, profile
from akita.wire import protocol
from supervisor.radio import HdlcReader, Medium, hdlc_frame, query_stats
from tests.helpers import REPO, Node, NotYet, wait_for

# --- time on air ---------------------------------------------------------------------------

# Published time-on-air figures (Semtech LoRa calculator; 8-symbol preamble, explicit
# header, CRC on, CR 4/5, 125 kHz), in milliseconds.
PUBLISHED_MS = [
    (7, 10, 41.216),     # the classic SF7 figure
    (9, 10, 144.384),
    (12, 10, 991.232),   # SF12 turns on low data rate optimisation
    (7, 51, 102.656),
    (10, 51, 616.448),
]


@pytest.mark.parametrize(("sf", "payload", "expected_ms"), PUBLISHED_MS)
def test_time_on_air_matches_published_figures(sf: int, payload: int,
                                                expected_ms: float) -> None:
    assert LoraProfile(sf, 125_000).time_on_air_s(payload) * 1000 == pytest.approx(
        expected_ms, abs=0.001)


def test_nominal_bitrates_are_the_ones_rnodes_state() -> None:
    assert profile("SF7").bitrate == pytest.approx(5469, abs=1)
    assert profile("SF9").bitrate == pytest.approx(1758, abs=1)
    assert profile("SF12").bitrate == pytest.approx(293, abs=1)
    assert profile("SF7-500").bitrate == pytest.approx(21875, abs=1)


def test_low_data_rate_optimisation_only_for_long_symbols() -> None:
    assert profile("SF12").low_data_rate and profile("SF11").low_data_rate
    assert not profile("SF10").low_data_rate and not profile("SF7-500").low_data_rate


def test_bad_modulation_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="spreading factor 13"):
        LoraProfile(13, 125_000)
    with pytest.raises(ValueError, match="bandwidth 100000"):
        LoraProfile(9, 100_000)
    with pytest.raises(ValueError, match="coding rate 4/9"):
        LoraProfile(9, 125_000, coding_rate=9)
    with pytest.raises(ValueError, match="expected one of"):
        profile("SF99")


# --- the medium, with explicit times --------------------------------------------------------

SF7 = LoraProfile(7, 125_000)


def medium(*names: str, links: str = "", loss: float = 0.0) -> Medium:
    pairs = {frozenset(p.split("-")) for p in links.split(",")} if links else None
    m = Medium(SF7, links=pairs, loss=loss, rng=random.Random(1))
    for name in names:
        m.join(name, None, 0.0)
    return m


def run(m: Medium, until: float) -> list[tuple[str, str, bytes]]:
    """Drive the medium's own timers until `until`; (receiver, sender, frame) delivered."""
    got = []
    now = 0.0
    while True:
        deadline = m.next_deadline()
        if deadline is None or deadline > until:
            return got
        now = max(now, deadline)
        for tx in [tx for tx in m.active if tx.end <= now]:
            got += [(station.name, tx.sender, frame) for station, frame in m.finish(tx, now)]
        for station in list(m.stations.values()):
            m.try_send(station, now)


def test_a_frame_reaches_everyone_in_range_after_its_time_on_air() -> None:
    m = medium("a", "b", "c")
    m.offer("a", b"x" * 100, 0.0)
    (tx,) = m.active
    assert tx.end == pytest.approx(SF7.time_on_air_s(100))
    assert sorted(run(m, 10.0)) == [("b", "a", b"x" * 100), ("c", "a", b"x" * 100)]
    assert m.stations["a"].airtime_s == pytest.approx(SF7.time_on_air_s(100))


def test_one_transmitter_at_a_time_a_second_sender_defers() -> None:
    m = medium("a", "b", "c")
    m.offer("a", b"1" * 200, 0.0)
    m.offer("b", b"2" * 200, 0.001)
    assert [tx.sender for tx in m.active] == ["a"]       # b heard a and waits
    got = run(m, 10.0)
    assert ("c", "a", b"1" * 200) in got and ("c", "b", b"2" * 200) in got
    assert m.stations["c"].lost_frames == 0
    busy = SF7.time_on_air_s(200) * 2
    assert m.stats(busy)["busy_s"] == pytest.approx(busy, abs=1e-3)  # the gap is not busy


def test_a_busy_sender_does_not_hold_the_channel_frame_after_frame() -> None:
    """After its frame, a sender backs off like the others who heard it, so two stations
    with full queues share the channel instead of one sending all of its queue first."""
    m = medium("a", "b")
    for n in range(20):
        m.offer("a", b"1" * 200, 0.0)
    m.offer("b", b"2" * 200, 0.001)
    got = run(m, 30.0)
    order = [sender for receiver, sender, _frame in got if receiver == "b"]
    b_at = next(i for i, (receiver, sender, _f) in enumerate(got) if sender == "b")
    assert b_at < 10, f"b waited behind {b_at} of a's frames"
    assert len(order) == 20


def test_hidden_terminals_collide_at_the_node_between_them() -> None:
    m = medium("a", "b", "c", links="a-b,b-c")          # a and c cannot hear each other
    m.offer("a", b"1" * 100, 0.0)
    m.offer("c", b"2" * 100, 0.01)                       # c hears nothing: sends at once
    assert {tx.sender for tx in m.active} == {"a", "c"}
    assert run(m, 10.0) == []                            # b lost both
    assert m.stations["b"].lost_frames == 2


def test_out_of_range_nodes_never_hear_each_other() -> None:
    m = medium("a", "b", "c", links="a-b,b-c")
    m.offer("a", b"hello", 0.0)
    assert run(m, 10.0) == [("b", "a", b"hello")]


def test_half_duplex_a_sender_does_not_hear_while_it_sends() -> None:
    m = medium("a", "b", links="a-b")
    m.offer("a", b"1" * 200, 0.0)
    m.active.append(type(m.active[0])("b", 0.001, 0.05, b"2"))  # b started before hearing a
    m.stations["b"].sending = m.active[-1]
    assert run(m, 10.0) == []
    assert m.stations["a"].lost_frames == 1 and m.stations["b"].lost_frames == 1


def test_frames_over_the_mtu_are_dropped_and_counted() -> None:
    m = medium("a", "b")
    m.offer("a", b"x" * 501, 0.0)
    assert m.active == [] and m.stations["a"].dropped_frames == 1
    assert m.stats(1.0)["largest_frame"] == 501


def test_random_loss_drops_about_the_configured_share() -> None:
    m = medium("a", "b", loss=0.3)
    for i in range(200):
        m.offer("a", b"%d" % i, float(i))
        run(m, float(i) + 0.5)
    assert 40 <= m.stations["b"].lost_frames <= 80
    assert m.stations["b"].rx_frames == 200 - m.stations["b"].lost_frames


def test_hdlc_framing_round_trips_the_bytes_that_need_escaping() -> None:
    payload = bytes([0x7E, 0x7D, 0x00, 0x7E, 0x20, 0xFF])
    reader = HdlcReader()
    assert reader.feed(hdlc_frame(payload) + hdlc_frame(b"two")) == [payload, b"two"]
    assert reader.feed(hdlc_frame(b"split")[:3]) == []


# --- the real processes ----------------------------------------------------------------------


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "radio.sock")
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.radio", "channel", "--socket",
                             path, "--profile", "SF7-500", "--links", "a-b,b-c", "--seed", "1"],
                            cwd=REPO)
    try:
        wait_for(lambda: os.path.exists(path), 10.0, "the channel's socket")
        yield path
    finally:
        proc.terminate()
        proc.wait(10)


def attach(path: str, node: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "supervisor.radio", "attach", "--socket",
                             path, "--node", node], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)


def read_frames(proc: subprocess.Popen[bytes], count: int, timeout_s: float) -> list[bytes]:
    assert proc.stdout is not None
    reader, frames = HdlcReader(), []
    deadline = time.monotonic() + timeout_s
    while len(frames) < count:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
        if not ready:
            raise AssertionError(f"waited {timeout_s} s for {count} frames, got {frames}")
        frames += reader.feed(os.read(proc.stdout.fileno(), 4096))
    return frames


def test_attached_processes_talk_through_the_channel_within_range(channel: str) -> None:
    nodes = {name: attach(channel, name) for name in "abc"}
    try:
        wait_for(lambda: set(query_stats(channel)["nodes"]) == {"a", "b", "c"}, 10.0,
                 "all three nodes attached")
        assert nodes["a"].stdin is not None
        nodes["a"].stdin.write(hdlc_frame(b"from a ~\x7e") + hdlc_frame(b"x" * 600))
        nodes["a"].stdin.flush()
        assert read_frames(nodes["b"], 1, 10.0) == [b"from a ~\x7e"]
        stats = wait_for(lambda: query_stats(channel)["nodes"]["a"]["dropped_frames"] == 1
                         and query_stats(channel), 10.0, "the oversized frame counted")
        a, c = stats["nodes"]["a"], stats["nodes"]["c"]
        assert a["tx_frames"] == 1 and a["airtime_s"] > 0 and c["rx_frames"] == 0
        assert stats["utilisation_percent"] > 0 and stats["largest_frame"] == 600
    finally:
        for proc in nodes.values():
            proc.kill()
            proc.wait(10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


# --- real nodes over the channel ---------------------------------------------------------------


def start_channel(sock: str, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.radio", "channel", "--socket",
                             sock, "--profile", "SF7-500", "--seed", "2", *extra], cwd=REPO)
    wait_for(lambda: os.path.exists(sock), 10.0, "the channel's socket")
    return proc


def radio_node(make_node: Callable[..., Node], sock: str, name: str, **reticulum: str) -> Node:
    """A node whose only interface is the emulated channel, through the `pipe` key."""
    return make_node({
        "node": {"name": name}, "supervisor": {"workers": "ledger, gateway"},
        "cluster": {"cluster_size": 3, "announce_interval": 3, "peer_timeout": 12,
                    "discovery_interval": 0.5},
        "reticulum": {"auto_interface": "no",
                      "pipe": f"{sys.executable} -m supervisor.radio attach --socket {sock} "
                              f"--node {name}",
                      "pipe_bitrate": str(int(profile("SF7-500").bitrate)), **reticulum}},
        name=name)


def cluster_list(node: Node) -> list[dict[str, Any]]:
    reply = node.request(protocol.ClusterList())
    assert isinstance(reply, protocol.ClusterListReply)
    return reply.clusters


def one_cluster_of(nodes: list[Node]) -> Callable[[], Any]:
    ids = {str(node.status()["node"]["id"]) for node in nodes}

    def check() -> Any:
        views = {frozenset(frozenset(c["members"]) for c in cluster_list(node))
                 for node in nodes}
        return views == {frozenset({frozenset(ids)})} or NotYet({"views": views})

    return check


def check_traffic_matches_the_channel(node: Node, name: str, sock: str) -> None:
    """`status --json` "traffic": the node's own count of what it sent over the pipe agrees
    with what the channel carried for it, and announces and probes are told apart."""
    # The node counts a frame when it hands it to its radio, the channel once it has been
    # on air: between the two it waits in the channel's queue (or is on air), so read the
    # node, the channel, the node again: what went on air had been counted by the node,
    # and what the node counted went on air or still waits (a frame still in the pipe
    # between them makes a reading inconclusive: read again).
    readings: list[Any] = []

    def counts_agree() -> Any:
        before = node.ctl_json("status", "--json")["traffic"]
        channel = query_stats(sock)["nodes"][name]
        after = node.ctl_json("status", "--json")["traffic"]
        readings[:] = [before, channel, after]
        (sent_before,), (sent_after,) = before["interfaces"], after["interfaces"]
        return (channel["tx_bytes"] <= sent_after["tx_bytes"]
                and sent_before["tx_bytes"] <= channel["tx_bytes"] + channel["pending_bytes"]
                ) or NotYet({"node before": sent_before["tx_bytes"],
                             "channel": (channel["tx_bytes"], channel["pending_bytes"]),
                             "node after": sent_after["tx_bytes"]})

    wait_for(counts_agree, 30, f"{name}'s count of bytes sent to agree with the channel's")
    traffic = readings[2]
    (iface,) = traffic["interfaces"]
    assert iface["bitrate"] == round(profile("SF7-500").bitrate)
    kinds = traffic["by_kind"]
    assert kinds["announce"]["tx_bytes"] > 0 and kinds["announce"]["rx_bytes"] > 0
    assert sum(k["tx_bytes"] for k in kinds.values()) == iface["tx_bytes"]
    assert iface["airtime_percent"] > 0


@pytest.mark.slow
def test_three_nodes_form_a_cluster_over_the_emulated_channel(
        make_node: Callable[..., Node], short_tmp: Path) -> None:
    sock = str(short_tmp / "radio.sock")
    channel = start_channel(sock)
    try:
        nodes = [radio_node(make_node, sock, name) for name in ("a", "b", "c")]
        for node in nodes:
            node.start()
        wait_for(one_cluster_of(nodes), 60.0, "three nodes agreeing on one cluster over radio")
        stats = query_stats(sock)
        assert set(stats["nodes"]) == {"a", "b", "c"}
        assert all(n["tx_frames"] > 0 and n["airtime_s"] > 0 for n in stats["nodes"].values())
        assert stats["largest_frame"] <= 500, "a frame over the LoRa MTU reached the channel"
        assert all(n["dropped_frames"] == 0 for n in stats["nodes"].values())
        check_traffic_matches_the_channel(nodes[0], "a", sock)
    finally:
        channel.terminate()
        channel.wait(10)


@pytest.mark.slow
def test_nodes_out_of_range_reach_each_other_through_a_third(
        make_node: Callable[..., Node], short_tmp: Path) -> None:
    sock = str(short_tmp / "radio.sock")
    channel = start_channel(sock, "--links", "a-b,b-c")
    try:
        nodes = [radio_node(make_node, sock, "a"),
                 radio_node(make_node, sock, "b", transport="yes"),
                 radio_node(make_node, sock, "c")]
        for node in nodes:
            node.start()
        wait_for(one_cluster_of(nodes), 90.0, "a and c clustering through b")
        stats = query_stats(sock)
        assert stats["nodes"]["a"]["rx_frames"] > 0 and stats["nodes"]["c"]["rx_frames"] > 0
    finally:
        channel.terminate()
        channel.wait(10)
