"""The formats that cross Reticulum against golden bytes written by hand (tests/golden).

Each format: the project encodes the sample values to exactly the golden bytes, decodes the
golden bytes back to the same values, and the hand-made peers' builders produce the same
bytes. A change of format fails here until tests/golden changes with it.
"""

from __future__ import annotations

import struct

import pytest

from akita.ledger import bundles, chain
from akita.mesh import delegation, replication, state
from akita.mesh.cluster import PeerView, Seat
from akita.wire import mesh
from tests import golden
from tests.golden import NODE, OTHER, mp


def test_the_hand_made_encoder_follows_the_msgpack_spec() -> None:
    assert mp(None) == b"\xc0" and mp(True) == b"\xc3" and mp(False) == b"\xc2"
    assert mp(0) == b"\x00" and mp(127) == b"\x7f"
    assert mp(128) == b"\xcc\x80" and mp(256) == b"\xcd\x01\x00"
    assert mp(65536) == b"\xce\x00\x01\x00\x00"
    assert mp(1 << 32) == b"\xcf\x00\x00\x00\x01\x00\x00\x00\x00"
    assert mp(1.5) == b"\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00"
    assert mp("") == b"\xa0" and mp("a" * 31) == b"\xbf" + b"a" * 31
    assert mp("a" * 32) == b"\xd9\x20" + b"a" * 32
    assert mp(b"") == b"\xc4\x00" and mp(b"x" * 256) == b"\xc5\x01\x00" + b"x" * 256
    assert mp([]) == b"\x90" and mp([0] * 16) == b"\xdc\x00\x10" + b"\x00" * 16
    assert mp({"a": 1}) == b"\x81\xa1a\x01"


# --- announce app_data ----------------------------------------------------------------------

MEMBER = mesh.Announce(
    name="alpha", generation=7, seq=42,
    report=PeerView(NODE, 7, 3, Seat("c0ffee01", 2, 5), 4, True),
    load=mesh.Load(12, 34, 5), state_version=9, digest=bytes(range(1, 9)), interval_s=600.0,
    id_tag=bytes.fromhex(NODE)[:4])
NEWCOMER = mesh.Announce(
    name="n0", generation=1, seq=1, report=PeerView(NODE, 1), load=mesh.Load(),
    state_version=0, digest=bytes(8), interval_s=10.0, id_tag=bytes.fromhex(NODE)[:4])


@pytest.mark.parametrize("info, golden_bytes", [(MEMBER, golden.ANNOUNCE_MEMBER),
                                                (NEWCOMER, golden.ANNOUNCE_NEWCOMER)],
                         ids=["member", "newcomer"])
def test_announce_app_data(info: mesh.Announce, golden_bytes: bytes) -> None:
    assert mesh.encode_announce(info).hex() == golden_bytes.hex()
    assert mesh.decode_announce(NODE, golden_bytes) == info


def test_the_hand_made_announces_and_readmes_size() -> None:
    assert golden.announce_app_data(
        NODE, "alpha", 7, 42, version=3, seat=("c0ffee01", 2, 5), term=4, coordinator=True,
        load=(12, 34, 5), state_version=9, digest=bytes(range(1, 9)),
        interval_s=600.0) == golden.ANNOUNCE_MEMBER
    assert golden.announce_app_data(NODE, "n0", 1, 1, interval_s=10.0) == \
        golden.ANNOUNCE_NEWCOMER
    # README: "a 74-byte summary" (a member with a five-letter name); never above 200.
    assert len(golden.ANNOUNCE_MEMBER) == 74
    assert mesh.MAX_APP_DATA_BYTES == golden.MAX_APP_DATA_BYTES


# --- probes ---------------------------------------------------------------------------------

SENDER, TARGET = bytes.fromhex(NODE), bytes.fromhex(OTHER)
PROBES = {
    "ping": (mesh.ProbePacket(mesh.ProbeKind.PING, SENDER, 1_000_000), golden.PROBE_PING),
    "ping-req": (mesh.ProbePacket(mesh.ProbeKind.PING_REQ, SENDER, 1_000_000, TARGET),
                 golden.PROBE_PING_REQ),
    "ack": (mesh.ProbePacket(mesh.ProbeKind.ACK, SENDER, 1_000_000, TARGET), golden.PROBE_ACK),
    "leave": (mesh.ProbePacket(mesh.ProbeKind.LEAVE, SENDER, 1_000_000, generation=7, seq=300,
                               signature=golden.SIGNATURE), golden.PROBE_LEAVE),
}


@pytest.mark.parametrize("kind", sorted(PROBES))
def test_probe_packets(kind: str) -> None:
    packet, golden_bytes = PROBES[kind]
    assert mesh.encode_probe(packet).hex() == golden_bytes.hex()
    assert mesh.decode_probe(golden_bytes) == packet
    built = golden.probe_packet(kind, NODE, 1_000_000, target=OTHER if packet.target else "",
                                generation=packet.generation, seq=packet.seq,
                                signature=packet.signature)
    assert built == golden_bytes


def test_what_a_leave_signs() -> None:
    assert mesh.leave_message(SENDER, 7, 300) == golden.LEAVE_MESSAGE
    assert golden.leave_message(NODE, 7, 300) == golden.LEAVE_MESSAGE


# --- replication ----------------------------------------------------------------------------

EVENTS = [(1700000001.0, "peer.joined", b"\x80"), (1700000002.0, "task.submitted", b"\x81\xa1a\x01"),
          (1700000003.0, "peer.joined", b"\x80")]
CHECKPOINT = (8, 1700000004.0, golden.HASH_B, golden.SIGNATURE)
BUNDLE = bundles.Bundle(NODE, golden.PUBLIC_KEY, 5, golden.HASH_A, EVENTS,
                        [bundles.Checkpoint(*CHECKPOINT)])


def test_heads() -> None:
    heads = {OTHER: bundles.Head(1024, golden.HASH_B), NODE: bundles.Head(5, golden.HASH_A)}
    assert bundles.encode_heads(heads).hex() == golden.HEADS.hex()
    assert bundles.decode_heads(golden.HEADS) == {
        NODE: bundles.Head(5, golden.HASH_A[:8]), OTHER: bundles.Head(1024, golden.HASH_B[:8])}
    assert golden.heads([(OTHER, 1024, golden.HASH_B), (NODE, 5, golden.HASH_A)]) == \
        golden.HEADS


def test_range_request_and_response() -> None:
    request = replication.RangeRequest(NODE, 5, True)
    assert replication.encode_range_request(request) == golden.RANGE_REQUEST
    assert replication.decode_range_request(golden.RANGE_REQUEST) == request
    assert golden.range_request(NODE, 5, True) == golden.RANGE_REQUEST
    assert replication.encode_range_response(golden.BUNDLE, 8) == golden.RANGE_RESPONSE
    assert replication.decode_range_response(golden.RANGE_RESPONSE) == (golden.BUNDLE, 8)
    assert golden.range_response(golden.BUNDLE, 8) == golden.RANGE_RESPONSE


def test_bundle() -> None:
    assert bundles.encode_bundle(BUNDLE).hex() == golden.BUNDLE.hex()
    assert bundles.decode_bundle(golden.BUNDLE) == BUNDLE
    assert golden.bundle(NODE, golden.PUBLIC_KEY, 5, golden.HASH_A, EVENTS, [CHECKPOINT]) == \
        golden.BUNDLE
    assert replication.bundle_feed(golden.BUNDLE) == NODE


def test_bundle_from_the_start_of_a_feed() -> None:
    first = bundles.Bundle(NODE, None, 0, chain.GENESIS_HASH, EVENTS[:1],
                           [bundles.Checkpoint(1, EVENTS[0][0], golden.HASH_A, golden.SIGNATURE)])
    assert bundles.encode_bundle(first).hex() == golden.BUNDLE_GENESIS.hex()
    assert bundles.decode_bundle(golden.BUNDLE_GENESIS) == first


# --- state sync and delegation --------------------------------------------------------------


def test_state_summary() -> None:
    summary = {OTHER: (1, 128), NODE: (7, 9)}
    assert state.encode_summary(summary).hex() == golden.STATE_SUMMARY.hex()
    assert state.decode_summary(golden.STATE_SUMMARY) == summary
    assert golden.state_summary(summary) == golden.STATE_SUMMARY


def test_delegation_bodies() -> None:
    tasks = [{"id": "t01", "name": "akita.echo"}]
    assert delegation.encode_run(3, 30, tasks).hex() == golden.RUN_REQUEST.hex()
    assert delegation.decode_run(golden.RUN_REQUEST, 1 << 20) == \
        delegation.RunRequest(3, 30.0, tasks, False)
    assert golden.run_request(3, 30, tasks) == golden.RUN_REQUEST
    pairs = [("t01", 1), ("t02", 2)]
    assert delegation.encode_pairs(pairs) == golden.RENEW_REQUEST
    assert delegation.decode_pairs(golden.RENEW_REQUEST) == pairs
    assert golden.renew_request(pairs) == golden.RENEW_REQUEST
    assert delegation.encode_outcome(["t01"], [], "accepted") == golden.ACCEPTED
    assert delegation.decode_accepted(golden.ACCEPTED) == (["t01"], [])
    assert golden.outcome("accepted", ["t01"], []) == golden.ACCEPTED
    results = [{"id": "t01", "attempt": 1, "state": "succeeded"}]
    assert delegation.encode_results(results, None) == golden.RESULTS_REQUEST
    assert delegation.decode_results(golden.RESULTS_REQUEST, 1 << 20) == \
        delegation.ResultRequest(results, None)
    assert golden.results_request(results) == golden.RESULTS_REQUEST


def test_the_float_literals_are_what_they_say() -> None:
    """The golden floats were written as hex; this says which numbers they are."""
    for value, hex_ in [(600.0, "4082c00000000000"), (10.0, "4024000000000000"),
                        (30.0, "403e000000000000"), (1700000001.0, "41d954fc40400000")]:
        assert struct.unpack(">d", bytes.fromhex(hex_))[0] == value
