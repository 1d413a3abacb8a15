"""The gateway's pure parts, without Reticulum: wire format, peer table, probes, Reticulum
config, state sync, formation adapter, discovery and the operator views."""

from __future__ import annotations

import json
import random
import shlex
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from akita import identity as ident
from akita.config import ReticulumConfig
from akita.mesh import state as st
from akita.mesh.cluster import MAX_SEAT, MAX_TERM, PeerView, Seat
from akita.mesh.formation import Formation
from akita.wire import mesh
from workers.gateway import recovery, rnsconfig, views
from workers.gateway.discovery import Admission, Discovery, DiscoveryTiming
from workers.gateway.load import LoadTracker
from workers.gateway.peers import AnnounceOutcome, PeerState, PeerTable
from workers.gateway.probes import (
    LAG_NOISE_S,
    LAG_SAMPLES,
    MAX_HEALTH,
    DirectProbe,
    IndirectProbe,
    Prober,
    ProbeTiming,
    Suspect,
)
from workers.gateway.sync import SNAPSHOT_BURST, StateSync, ViewSnapshots

A = "aa" * 16
B = "bb" * 16
C = "cc" * 16


def announce(node: str = A, seq: int = 1, generation: int = 1, name: str = "n",
             interval_s: float = 1.0, seat: Seat | None = None,
             term: int = 0) -> mesh.Announce:
    return mesh.Announce(name=name, generation=generation, seq=seq,
                         report=PeerView(node, generation, seat=seat, term=term),
                         load=mesh.Load(1, 2, 3),
                         state_version=4, digest=b"12345678", interval_s=interval_s,
                         id_tag=bytes.fromhex(node)[:mesh.ID_TAG_BYTES])


# --- wire -----------------------------------------------------------------------------------


def test_announce_round_trip_and_size_limit() -> None:
    info = announce(name="n" * 32, seat=Seat("0a0b0c0d", MAX_SEAT, MAX_SEAT), term=MAX_TERM)
    data = mesh.encode_announce(info)
    assert len(data) <= mesh.MAX_APP_DATA_BYTES
    assert mesh.decode_announce(A, data) == info


def test_name_is_truncated_to_32_bytes_on_a_character_boundary() -> None:
    data = mesh.encode_announce(announce(name="é" * 40))
    assert mesh.decode_announce(A, data).name == "é" * 16


@pytest.mark.parametrize("data", [
    None, b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"p": 1}),
    msgpack.packb({"p": 99}), b"x" * 201,
])
def test_garbage_app_data_is_a_wire_error(data: bytes | None) -> None:
    with pytest.raises(mesh.WireError):
        mesh.decode_announce(A, data)


def test_each_field_is_checked() -> None:
    body = msgpack.unpackb(mesh.encode_announce(announce()))
    for key, bad in [("g", "1"), ("s", -1), ("l", [1, 2]), ("l", [1, True, 3]), ("i", 0),
                     ("r", [1]), ("d", "text"), ("n", 5), ("g", 2)]:
        broken = dict(body, **{key: bad})
        with pytest.raises(mesh.WireError):
            mesh.decode_announce(A, msgpack.packb(broken, use_bin_type=True))


def test_app_data_of_another_identity_is_impersonation() -> None:
    data = mesh.encode_announce(announce(node=B))
    with pytest.raises(mesh.Impersonation):
        mesh.decode_announce(A, data)


@settings(max_examples=300, deadline=None)
@given(hs.binary(max_size=260))
def test_arbitrary_bytes_never_crash_the_decoders(data: bytes) -> None:
    for decode in (lambda d: mesh.decode_announce(A, d), mesh.decode_probe):
        try:
            decode(data)
        except mesh.WireError:
            pass


def test_probe_packets_round_trip() -> None:
    for packet in [mesh.ProbePacket(mesh.ProbeKind.PING, bytes(16), 7),
                   mesh.ProbePacket(mesh.ProbeKind.PING_REQ, bytes(16), 8, b"\1" * 16),
                   mesh.ProbePacket(mesh.ProbeKind.ACK, bytes(16), 9, b"\2" * 16),
                   mesh.ProbePacket(mesh.ProbeKind.LEAVE, bytes(16), 1, generation=3, seq=4,
                                    signature=b"s" * 64)]:
        assert mesh.decode_probe(mesh.encode_probe(packet)) == packet
    with pytest.raises(mesh.WireError):
        mesh.decode_probe(msgpack.packb({"k": "ping-req", "f": bytes(16), "n": 1}))


# --- peer table -------------------------------------------------------------------------------


def test_announces_are_ordered_by_generation_then_seq() -> None:
    table = PeerTable(peer_timeout_s=5)
    assert table.on_announce(A, announce(seq=5, name="five"), 0) is AnnounceOutcome.NEW
    assert table.on_announce(A, announce(seq=3, name="old"), 1) is AnnounceOutcome.STALE
    assert table.on_announce(A, announce(seq=5, name="same"), 1) is AnnounceOutcome.STALE
    assert table.peers[A].name == "five"
    assert table.on_announce(A, announce(seq=6), 2) is AnnounceOutcome.UPDATED
    assert table.on_announce(A, announce(seq=1, generation=2), 3) is AnnounceOutcome.RESTARTED
    assert table.counters.stale == 2


def test_a_replayed_announce_cannot_revive_a_dropped_peer() -> None:
    table = PeerTable(peer_timeout_s=5)
    table.on_announce(A, announce(seq=9), 0)
    assert [p.node_id for p in table.expire(10, members=set())] == [A]
    assert table.on_announce(A, announce(seq=9), 11) is AnnounceOutcome.STALE
    assert A not in table and table.counters.revived_blocked == 1
    assert table.on_announce(A, announce(seq=10), 12) is AnnounceOutcome.NEW


def test_members_expire_after_peer_timeout_others_after_their_announce_interval() -> None:
    table = PeerTable(peer_timeout_s=5)
    table.on_announce(A, announce(A, interval_s=60), 0)
    table.on_announce(B, announce(B, interval_s=60), 0)
    assert [p.node_id for p in table.expire(5.0, members={A})] == [A]
    assert table.expire(149, members=set()) == []
    assert [p.node_id for p in table.expire(150, members=set())] == [B]


def test_a_suspect_that_answers_is_alive_again() -> None:
    table = PeerTable(peer_timeout_s=5)
    table.on_announce(A, announce(), 0)
    assert table.suspect(A, 1) and not table.suspect(A, 1.5)
    assert table.peers[A].state is PeerState.SUSPECT
    table.heard(A, 2)
    assert table.peers[A].state is PeerState.ALIVE and table.counters.refuted == 1
    assert table.expire(6.9, members={A}) == []


def test_a_slow_node_widens_its_own_timeouts() -> None:
    table = PeerTable(peer_timeout_s=5)
    table.on_announce(A, announce(), 0)
    assert table.expire(6, members={A}, health=2.0) == []
    assert len(table.expire(10, members={A}, health=2.0)) == 1


# --- probes -----------------------------------------------------------------------------------


def test_probe_timing_fits_a_direct_and_an_indirect_probe_in_peer_timeout() -> None:
    timing = ProbeTiming.derive(10.0)
    assert timing.interval_s + 3 * timing.timeout_s <= 10.0 / 2
    assert ProbeTiming.derive(10.0, interval_s=1.5, timeout_s=0.3) == ProbeTiming(1.5, 0.3)


def test_unanswered_probe_goes_indirect_then_suspect() -> None:
    prober = Prober(ProbeTiming(interval_s=1.0, timeout_s=0.5), rng=random.Random(1))
    members = {A, B, C}
    first = prober.step(0.0, members)
    assert first == []  # first probes are spread over one interval
    sent = prober.step(1.0, members)
    assert {a.target for a in sent if isinstance(a, DirectProbe)} == members
    # B answers; A and C do not.
    nonce_b = next(a.nonce for a in sent if isinstance(a, DirectProbe) and a.target == B)
    assert prober.answered(B, nonce_b, 1.1)
    assert not prober.answered(B, nonce_b, 1.1)
    escalated = prober.step(1.6, members)
    indirect = [a for a in escalated if isinstance(a, IndirectProbe)]
    assert {a.target for a in indirect} == {A, C}
    assert all(a.helper != a.target for a in indirect)
    assert {a.target for a in escalated if isinstance(a, DirectProbe)} == {A, C}
    # An indirect ack for A arrives; C stays silent and becomes suspect.
    nonce_a = next(a.nonce for a in indirect if a.target == A)
    assert prober.answered(A, nonce_a, 2.0)
    final = prober.step(2.7, members)
    assert Suspect(C) in final and Suspect(A) not in final


def test_only_a_member_silent_for_a_probe_interval_is_probed() -> None:
    """An announce heard is a sign of life: no probe (and no proof) spent on that member."""
    prober = Prober(ProbeTiming(interval_s=10.0, timeout_s=1.0), rng=random.Random(3))
    members = {A, B}
    prober.step(0.0, members, {A: 0.0, B: 0.0})
    for now in (5.0, 9.9, 12.0, 12.5):      # A announces every 5 s, B fell silent at 0
        sent = prober.step(now, members, {A: now, B: 0.0})
        assert all(a.target == B for a in sent), sent
    assert prober.sent_direct == 1 and B in prober.outstanding and A not in prober.outstanding


def test_a_lone_pair_suspects_without_helpers_and_forgets_non_members() -> None:
    prober = Prober(ProbeTiming(interval_s=1.0, timeout_s=0.5), rng=random.Random(2))
    prober.step(0.0, {A})
    prober.step(1.0, {A})
    escalated = prober.step(1.5, {A})
    assert all(isinstance(a, DirectProbe) for a in escalated)
    assert prober.step(2.5, {A}) == [Suspect(A)]
    prober.step(3.0, set())
    assert not prober.outstanding and not prober.next_probe


def test_health_grows_with_a_loop_that_stays_late() -> None:
    prober = Prober(ProbeTiming(interval_s=1.0, timeout_s=0.5))
    for _ in range(5):
        prober.note_lag(0.0)
    assert prober.health == 1.0
    prober.note_lag(5.0)  # one late tick is not a slow node
    assert prober.health == 1.0
    for _ in range(30):
        prober.note_lag(0.55)
    assert prober.health == pytest.approx(2.0)
    for _ in range(30):
        prober.note_lag(100)
    assert prober.health == 4.0


@settings(max_examples=200, deadline=None)
@given(hs.lists(hs.sampled_from([0.0, 0.001, LAG_NOISE_S, LAG_NOISE_S + 0.01, 0.3, 2.0, 50.0]),
                max_size=3 * LAG_SAMPLES))
def test_health_follows_the_median_lag_of_the_window(lags: list[float]) -> None:
    timing = ProbeTiming(interval_s=1.0, timeout_s=0.5)
    prober = Prober(timing)
    for i, lag in enumerate(lags):
        prober.note_lag(lag)
        window = lags[max(0, i + 1 - LAG_SAMPLES):i + 1]
        late = max(0.0, statistics.median(window) - LAG_NOISE_S)
        assert prober.health == pytest.approx(min(MAX_HEALTH, 1.0 + late / timing.timeout_s))


# --- Reticulum config -------------------------------------------------------------------------


def test_reticulum_config_for_a_hub_with_ifac(tmp_path: Any) -> None:
    ret = ReticulumConfig(auto_interface=False, tcp_listen=("127.0.0.1", 4242),
                          tcp_connect=(("10.0.0.1", 1),), network_name="net, #1",
                          passphrase='it\'s "secret"')
    text = rnsconfig.render(ret)
    assert "enable_transport = Yes" in text and "share_instance = No" in text
    assert text.count("enabled = yes") == 2 and text.count("ingress_control = No") == 2
    assert "announce_rate_target = 1" in text and "AutoInterface" not in text
    assert 'network_name = "net, #1"' in text
    path = rnsconfig.write(ret, tmp_path) / "config"
    # Parsed by the ConfigObj that Reticulum vendors, in a child: no RNS in the test process.
    script = ("import json, sys; from RNS.vendor.configobj import ConfigObj; "
              "print(json.dumps(ConfigObj(sys.argv[1]).dict()))")
    parsed = json.loads(subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True, text=True, check=True, timeout=30).stdout)
    hub = parsed["interfaces"]["Akita TCP listen 127.0.0.1:4242"]
    assert hub["listen_port"] == "4242" and hub["passphrase"] == 'it\'s "secret"'
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_reticulum_config_for_a_client_with_auto_interface() -> None:
    text = rnsconfig.render(ReticulumConfig(tcp_connect=(("h", 1), ("k", 2))))
    assert "enable_transport = No" in text and "type = AutoInterface" in text
    assert text.count("TCPClientInterface") == 2


def parse_with_reticulums_configobj(path: Path) -> dict[str, Any]:
    """Parsed by the ConfigObj that Reticulum vendors, in a child: no RNS in the test process."""
    script = ("import json, sys; from RNS.vendor.configobj import ConfigObj; "
              "print(json.dumps(ConfigObj(sys.argv[1]).dict()))")
    return dict(json.loads(subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True, text=True, check=True, timeout=30).stdout))


def test_reticulum_config_for_a_radio_node(tmp_path: Path) -> None:
    ret = ReticulumConfig(auto_devices=("eth0", "wlan0"), auto_group_id="field team",
                          rnode_port="/dev/ttyUSB0", rnode_frequency=867_200_000,
                          rnode_spreading_factor=10, rnode_airtime_limit_long=1.0,
                          pipe=("python3", "-m", "supervisor.radio", "attach", "--socket",
                                "/tmp/a b.sock", "--node", "n1"), pipe_bitrate=1758,
                          transport="yes")
    parsed = parse_with_reticulums_configobj(rnsconfig.write(ret, tmp_path) / "config")
    assert parsed["reticulum"]["enable_transport"] == "Yes"
    interfaces = parsed["interfaces"]
    auto = interfaces["Akita Auto"]
    assert auto["devices"] == ["eth0", "wlan0"] and auto["group_id"] == "field team"
    rnode = interfaces["Akita RNode"]
    assert (rnode["type"], rnode["port"], rnode["frequency"]) == (
        "RNodeInterface", "/dev/ttyUSB0", "867200000")
    assert (rnode["spreadingfactor"], rnode["codingrate"], rnode["bandwidth"]) == (
        "10", "5", "125000")
    assert rnode["airtime_limit_long"] == "1.0" and "airtime_limit_short" not in rnode
    pipe = interfaces["Akita Pipe"]
    assert pipe["type"] == "PipeInterface" and pipe["bitrate"] == "1758"
    assert shlex.split(pipe["command"])[-3:] == ["/tmp/a b.sock", "--node", "n1"]
    assert all(body["enabled"] == "yes" for body in interfaces.values())


def test_only_a_listening_node_forwards_unless_told() -> None:
    assert not rnsconfig.forwards(ReticulumConfig())
    assert rnsconfig.forwards(ReticulumConfig(tcp_listen=("127.0.0.1", 1)))
    assert not rnsconfig.forwards(ReticulumConfig(tcp_listen=("127.0.0.1", 1), transport="no"))
    assert rnsconfig.forwards(ReticulumConfig(transport="yes"))


def test_a_taken_listen_port_is_reported() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(rnsconfig.PortTaken, match="already in use"):
            rnsconfig.check_listen_port(ReticulumConfig(tcp_listen=("127.0.0.1", port)))
    rnsconfig.check_listen_port(ReticulumConfig(tcp_listen=("127.0.0.1", port)))


# --- state sync -------------------------------------------------------------------------------


def held(sync: StateSync, origin: str) -> st.Record:
    record = sync.store.get(origin)
    assert record is not None, f"no record of {origin}"
    return record


def test_signed_records_flow_and_forgeries_are_refused() -> None:
    a, b, c = (ident.NodeIdentity.generate() for _ in range(3))
    sync_a = StateSync.create(a, 1)
    sync_b = StateSync.create(b, 1)
    sync_c = StateSync.create(c, 1)
    sync_a.set_custom("color", "blue")
    # b pulls from a; c pulls from b and gets a's record relayed, still verifiable.
    assert sync_b.take(sync_a.encode_delta(sync_b.store.summary(), set()), lambda o: True) \
        == [a.node_id]
    relayed = sync_b.encode_delta(sync_c.store.summary(), {a.node_id})
    assert set(sync_c.take(relayed, lambda o: True)) == {a.node_id, b.node_id}
    assert held(sync_c, a.node_id).get("color") == "blue"
    # b forges a newer record of a's: refused and counted.
    forged = st.Record.new(a.node_id, 1, 99, {"color": "red"})
    fake = msgpack.packb([[forged.pack(), b.sign(b"x" * 10), a.public_key]])
    assert sync_c.take(fake, lambda o: True) == []
    assert sync_c.counters.bad_signature == 1
    assert held(sync_c, a.node_id).get("color") == "blue"
    assert sync_c.take(b"\xc1garbage", lambda o: True) == []
    assert sync_c.counters.malformed == 1


def test_a_delta_larger_than_a_link_packet_comes_in_pages() -> None:
    """Sized to the link's MDU (431 bytes on a slow link): each pull brings what fits, at
    least one record, and the next pull (with the new summary) brings the rest."""
    ids = [ident.NodeIdentity.generate() for _ in range(5)]
    syncs = [StateSync.create(i, 1) for i in ids]
    hub, puller = syncs[0], StateSync.create(ident.NodeIdentity.generate(), 1)
    for sync in syncs[1:]:
        sync.set_custom("note", "x" * 100)
        hub.take(sync.encode_delta({}, set()), lambda o: True)
    everyone = {i.node_id for i in ids}
    pages = 0
    while True:
        page = hub.encode_delta(puller.store.summary(), everyone, max_bytes=431)
        assert len(page) <= 431 or len(msgpack.unpackb(page)) == 1
        if not puller.take(page, lambda o: True):
            break
        pages += 1
    assert pages >= 3 and set(puller.store.records) >= everyone


def test_own_record_survives_a_restart_with_a_higher_generation() -> None:
    a = ident.NodeIdentity.generate()
    first = StateSync.create(a, 1)
    first.set_custom("k", 1)
    again = StateSync.create(a, 2, previous_own=first.own)
    assert again.own.generation == 2 and again.own.get("k") == 1
    with pytest.raises(ValueError):
        again.set_custom(st.KEY_RESOURCES, 1)
    with pytest.raises(ValueError):
        again.set_custom("big", "x" * 5000)


def test_snapshot_restores_into_a_fresh_store() -> None:
    a, b = ident.NodeIdentity.generate(), ident.NodeIdentity.generate()
    sync_a, sync_b = StateSync.create(a, 1), StateSync.create(b, 1)
    sync_a.set_custom("x", 1)
    sync_b.take(sync_a.encode_own(), lambda o: True)
    restored = StateSync.create(b, 2)
    assert restored.restore(sync_b.snapshot()) == 1
    assert held(restored, a.node_id).get("x") == 1



def test_the_view_snapshot_follows_lasting_changes_only_and_is_paced() -> None:
    a, b = ident.NodeIdentity.generate(), ident.NodeIdentity.generate()
    sync_a, sync_b = StateSync.create(a, 1), StateSync.create(b, 1)
    snaps = ViewSnapshots(interval_s=100.0)

    def a_writes(**changes: Any) -> None:
        sync_a.update_own(changes)
        assert sync_b.take(sync_a.encode_own(), lambda o: True) == [a.node_id]

    a_writes(note=0)
    assert snaps.take(sync_b, 0.0) is not None                   # a's record appeared
    # Load figures move by themselves: an idle cluster writes nothing for them.
    a_writes(**{st.KEY_RESOURCES: {"cpu_percent": 50.0}, st.KEY_QUEUE_DEPTH: 3,
                st.KEY_TASK_LOAD: [1, 0, 1]})
    assert snaps.take(sync_b, 1.0) is None and not snaps.pending
    for value in range(1, SNAPSHOT_BURST):                       # the rest of the burst
        a_writes(note=value)
        assert snaps.take(sync_b, 2.0) is not None
    a_writes(note=99)
    assert snaps.take(sync_b, 3.0) is None and snaps.pending      # then one per interval
    assert snaps.take(sync_b, 50.0) is None and snaps.pending
    view = snaps.take(sync_b, 103.0)
    assert view is not None and not snaps.pending
    restored = StateSync.create(b, 2)
    assert restored.restore(view) == 1 and held(restored, a.node_id).get("note") == 99
    sync_b.forget_except(set())                                   # a went: that is lasting
    assert snaps.take(sync_b, 1000.0) == {"records": []}

# --- formation, discovery and views -------------------------------------------------------------


class FakeRns:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.known: set[str] = set()

    def announce(self, app_data: bytes) -> None:
        self.sent.append(app_data)

    def remember_peer(self, node_id: str, identity: Any) -> None:
        self.known.add(node_id)

    def forget_peer(self, node_id: str) -> None:
        self.known.discard(node_id)


class Events:
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    def peer_joined(self, peer: Any) -> None:
        self.log.append(("joined", peer.node_id))

    def peer_restarted(self, peer: Any) -> None:
        self.log.append(("restarted", peer.node_id))

    def peer_updated(self, peer: Any) -> None:
        self.log.append(("updated", peer.node_id))

    def peer_left(self, peer: Any, reason: str) -> None:
        self.log.append(("left", peer.node_id))

    def round_done(self, result: Any) -> None:
        self.log.append(("round", ""))


def make_discovery(node: str = C, admission: Admission | None = None
                   ) -> tuple[Discovery, FakeRns, Events]:
    rns, events = FakeRns(), Events()
    formation = Formation(node, 1, cluster_size=3, grace_s=5)
    discovery = Discovery(node_id=node, timing=DiscoveryTiming(1.0, 0.5),
                          table=PeerTable(4.0), formation=formation,
                          admission=admission or Admission("open", ()), rns=rns,
                          events=events, build_app_data=lambda seq: b"seq%d" % seq,
                          rng=random.Random(3))
    discovery.start(0.0)
    return discovery, rns, events


def test_nothing_is_announced_before_an_interface_is_up() -> None:
    discovery, rns, _events = make_discovery()
    discovery.tick(5.0)
    assert rns.sent == []
    discovery.interface_up(5.0)
    discovery.tick(5.0)
    assert rns.sent == [b"seq1"]


def test_discovery_counts_what_it_ignores_and_reannounces_for_newcomers() -> None:
    discovery, rns, events = make_discovery()
    discovery.interface_up(0.0)
    discovery.tick(0.0)
    assert rns.sent == [b"seq1"]
    discovery.on_announce(A, None, b"\x00garbage", 0.1)
    discovery.on_announce(A, None, b"x" * 300, 0.1)
    discovery.on_announce(A, None, mesh.encode_announce(announce(node=B)), 0.1)
    discovery.on_announce(C, None, mesh.encode_announce(announce(node=C)), 0.1)
    counters = discovery.counters
    assert (counters.garbage, counters.oversized, counters.impersonating,
            counters.own_echo) == (1, 1, 1, 1)
    assert events.log == [] and len(discovery.table) == 0
    discovery.on_announce(A, None, mesh.encode_announce(announce(node=A)), 0.2)
    assert events.log == [("joined", A)] and rns.known == {A}
    discovery.tick(0.3)
    assert len(rns.sent) == 1  # spaced: not within a second of the last one
    discovery.tick(1.1)
    assert len(rns.sent) == 2


def test_allowlist_keeps_unknown_identities_out() -> None:
    discovery, _rns, events = make_discovery(admission=Admission("allowlist", (B,)))
    discovery.on_announce(A, None, mesh.encode_announce(announce(node=A)), 0.1)
    discovery.on_announce(B, None, mesh.encode_announce(announce(node=B)), 0.1)
    assert discovery.counters.not_admitted == 1
    assert events.log == [("joined", B)]


def test_first_round_waits_for_the_settle_time_then_forms_one_cluster() -> None:
    discovery, _rns, events = make_discovery()
    discovery.interface_up(0.0)
    for node in (A, B):
        discovery.on_announce(node, None, mesh.encode_announce(announce(node=node)), 0.5)
    discovery.tick(1.0)
    assert ("round", "") not in events.log and discovery.formation.assignment is None
    discovery.tick(2.0)
    cluster = discovery.formation.own_cluster()
    assert cluster is not None and set(cluster.members) == {A, B, C}
    assert discovery.formation.cluster_mates() == {A, B}
    clusters = discovery.formation.clusters(discovery.terms())
    assert clusters[0]["coordinator"] == cluster.coordinator
    table = discovery.table
    listed = views.peers(C, table, discovery.formation, 2.0, lambda node: node == A)
    assert {p["id"] for p in listed} == {A, B}
    assert all(p["cluster"] == cluster.id for p in listed)
    assert {p["id"]: p["takes_work"] for p in listed} == {A: True, B: False}
    discovery.tick(6.6)  # both silent past peer_timeout
    assert ("left", A) in events.log and ("left", B) in events.log


def test_resolve_node_by_id_prefix_and_name() -> None:
    table = PeerTable(4.0)
    table.on_announce(A, announce(node=A, name="alpha"), 0)
    table.on_announce(B, announce(node=B, name="beta"), 0)
    assert views.resolve_node("", C, table) == C
    assert views.resolve_node("aaaa", C, table) == A
    assert views.resolve_node("beta", C, table) == B
    assert views.resolve_node("zeta", C, table) is None


def test_generation_rises_on_every_start(tmp_path: Any) -> None:
    assert [recovery.next_generation(tmp_path) for _ in range(3)] == [1, 2, 3]
    (tmp_path / recovery.GENERATION_FILE).write_text("garbage")
    fresh = recovery.next_generation(tmp_path)
    # A fresh start above the 3 it replaces (from 3 random bytes: the chance of landing at
    # or below 3 is 3 in 16 million), stored, and rising from there.
    assert 3 < fresh <= 1 << 24, fresh
    assert (tmp_path / recovery.GENERATION_FILE).read_text() == f"{fresh}\n"
    assert recovery.next_generation(tmp_path) == fresh + 1
    assert recovery.load(tmp_path / "missing.db") == recovery.Restored()


def test_load_goes_into_the_record_now_and_then_not_on_every_sample() -> None:
    tracker = LoadTracker()
    assert tracker.due(0.0) is None  # nothing sampled yet
    tracker.sample({"cpu_percent": 10.0, "memory": {"percent": 20.0}, "disk": {"percent": 5}})
    tracker.queue(3)
    assert tracker.summary == mesh.Load(10, 20, 3)
    first = tracker.due(0.0)
    assert first is not None and first[st.KEY_QUEUE_DEPTH] == 3
    tracker.sample({"cpu_percent": 12.0, "memory": {"percent": 20.0}})
    assert tracker.due(6.0) is None          # a small change waits for the refresh
    tracker.sample({"cpu_percent": 90.0, "memory": {"percent": 20.0}})
    assert tracker.due(2.0) is None          # a big one, but too soon
    assert tracker.due(6.0) is not None      # a big one, after the spacing
    tracker.queue(4)
    assert tracker.due(20.0) is None and tracker.due(36.1) is not None


def test_a_node_that_heard_nobody_waits_longer_before_founding() -> None:
    discovery, _rns, _events = make_discovery()
    discovery.interface_up(0.0)
    discovery.tick(2.5)
    assert discovery.formation.assignment is None
    discovery.tick(3.0)
    cluster = discovery.formation.own_cluster()
    assert cluster is not None and cluster.members == (C,)
