"""Traffic accounting: frames classified by kind from their Reticulum header, counted per
interface, and airtime estimated from the interface's bitrate (pure: no Reticulum)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from akita.config import ChannelsConfig
from akita.mesh.airtime import profile
from workers.gateway.traffic import TrafficMeter, lora_for_bitrate, path_kinds

DISCOVERY = bytes(range(16))
LINK = bytes(range(100, 116))


class Iface:
    def __init__(self, name: str, bitrate: float) -> None:
        self.name, self.bitrate = name, bitrate

    def __str__(self) -> str:
        return self.name


def frame(flags: int, destination: bytes, context: int = 0, body: bytes = b"x" * 40) -> bytes:
    return bytes([flags, 0]) + destination + bytes([context]) + body


def meter(**kw: Any) -> TrafficMeter:
    return TrafficMeter(path_kinds(ChannelsConfig()), lambda h: h == DISCOVERY, **kw)


def test_announces_probes_and_their_proofs_are_told_apart() -> None:
    m = meter()
    radio = Iface("radio", 1000)
    probe = frame(0x00, DISCOVERY)
    m.count(radio, frame(0x01, bytes(16)), outgoing=True)           # announce
    m.count(radio, probe, outgoing=True)                            # probe
    proof_to = hashlib.sha256(bytes([probe[0] & 0x0F]) + probe[2:]).digest()[:16]
    m.count(radio, frame(0x03, proof_to, body=b"s" * 64), outgoing=False)
    m.count(radio, frame(0x03, bytes(16)), outgoing=False)          # someone else's proof
    kinds = m.snapshot()["by_kind"]
    assert kinds["announce"] == {"tx_bytes": 59, "rx_bytes": 0, "packets": 1}
    assert kinds["probe"]["packets"] == 2 and kinds["probe"]["rx_bytes"] == 83
    assert kinds["other"]["packets"] == 1


def test_link_packets_take_the_kind_of_the_latest_request_on_the_link() -> None:
    m = meter()
    lan = Iface("lan", 10_000_000)
    m.tag_link(LINK, "akita.ledger/heads")
    m.count(lan, frame(0x0C, LINK, context=0x09), outgoing=True)    # request
    m.count(lan, frame(0x0C, LINK, context=0xFA), outgoing=True)    # keepalive: upkeep
    m.tag_link(LINK, "akita.tasks/run")
    m.count(lan, frame(0x0C, LINK, context=0x0A), outgoing=False)   # response
    m.tag_link(LINK, "akita.state/pull")
    m.count(lan, frame(0x0C, LINK, context=0x01), outgoing=False)   # resource part
    m.tag_link(LINK, "elsewhere/x")
    m.count(lan, frame(0x0C, LINK), outgoing=False)
    kinds = m.snapshot()["by_kind"]
    assert [kinds[k]["packets"] for k in ("replication", "delegation", "state", "other")] == \
        [1, 1, 1, 2]


def test_header_2_frames_and_ifac_frames() -> None:
    m = meter()
    iface = Iface("i", 1000)
    transported = bytes([0x40, 1]) + bytes(16) + DISCOVERY + b"\x00" + b"p" * 30
    m.count(iface, transported, outgoing=True)
    m.count(iface, bytes([0x80 | 0x01, 0]) + bytes(40), outgoing=False)  # masked by IFAC
    m.count(iface, b"\x00", outgoing=False)                               # runt
    kinds = m.snapshot()["by_kind"]
    assert kinds["probe"]["packets"] == 1 and kinds["other"]["packets"] == 2


def test_interfaces_report_bytes_bitrate_and_airtime() -> None:
    sf9 = profile("SF9")
    m = meter(lora_of=lambda iface: lora_for_bitrate(iface.bitrate), started=0.0)
    radio, lan = Iface("radio", sf9.bitrate), Iface("lan", 8000)
    m.count(radio, frame(0x01, bytes(16), body=b"a" * 200), outgoing=True)
    m.count(lan, frame(0x01, bytes(16), body=b"a" * 981), outgoing=True)  # 1000 bytes
    m.count(lan, frame(0x01, bytes(16)), outgoing=False)
    snap = m.snapshot(now=100.0)["interfaces"]
    by_name = {i["name"]: i for i in snap}
    assert by_name["radio"]["bitrate"] == round(sf9.bitrate)
    assert by_name["radio"]["airtime_percent"] == pytest.approx(
        100 * sf9.time_on_air_s(219) / 100, abs=1e-3)
    # not LoRa: bytes·8/bitrate = 8000 bits / 8000 bit/s = 1 s of 100 s
    assert by_name["lan"]["airtime_percent"] == pytest.approx(1.0)
    assert by_name["lan"]["rx_bytes"] == 59 and set(by_name["lan"]) == {
        "name", "bitrate", "tx_bytes", "rx_bytes", "airtime_percent", "airtime_hour_percent"}


def test_recent_airtime_counts_the_last_hour_only() -> None:
    m = meter(started=0.0)
    lan = Iface("lan", 8000)
    second = frame(0x01, bytes(16), body=b"a" * 981)      # 1000 bytes: 1 s at 8 kbit/s
    for _ in range(36):
        m.count(lan, second, outgoing=True, now=100.0)

    def figures(now: float) -> tuple[float, float]:
        iface = m.snapshot(now=now)["interfaces"][0]
        return iface["airtime_percent"], iface["airtime_hour_percent"]

    assert figures(200.0) == (pytest.approx(18.0), pytest.approx(18.0))   # younger than 1 h
    lifetime, hour = figures(3800.0)          # the burst is more than an hour old
    assert lifetime == pytest.approx(100 * 36 / 3800, abs=1e-3) and hour == 0.0
    m.count(lan, second, outgoing=True, now=3790.0)
    assert figures(3800.0)[1] == pytest.approx(100 / 3600, abs=1e-3)
    assert len(m.interfaces["lan"].recent) == 1          # old buckets are dropped


def test_lora_modulation_is_recognised_from_its_bitrate_only() -> None:
    assert lora_for_bitrate(profile("SF12").bitrate) == profile("SF12")
    assert lora_for_bitrate(profile("SF7-500").bitrate) == profile("SF7-500")
    assert lora_for_bitrate(10_000_000) is None and lora_for_bitrate(0) is None


def test_tracked_links_are_bounded() -> None:
    m = meter()
    for n in range(5000):
        m.tag_link(n.to_bytes(16, "big"), "akita.state/pull")
    assert len(m._links) <= 1024
