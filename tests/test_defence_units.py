"""Quotas and refusals without a network: the peer table's bounds, the state record bounds,
the pull backoff, the refusal counters and the escaping of peer-supplied text."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from akita import config, keyring
from akita.errors import ConfigError
from akita.identity import NodeIdentity
from akita.mesh.delegation import work_admitted
from akita.text import clean
from tests.test_gateway_units import A, announce
from workers.gateway.defence import Defence
from workers.gateway.peers import PeerTable, PullBackoff
from workers.gateway.sync import StateSync

B = "b" * 32


def test_the_peer_table_refuses_newcomers_over_its_quotas_and_evicts_nobody() -> None:
    table = PeerTable(5.0, max_peers=3, max_new_per_minute=2)
    ids = [f"{i:032x}" for i in range(5)]
    for node in ids[:2]:
        assert table.room_for(node, 0.0) == ""
        table.on_announce(node, announce(node), 0.0)
    assert "new identities" in table.room_for(ids[2], 1.0)
    assert table.room_for(ids[0], 1.0) == "", "a known peer is always taken"
    assert table.room_for(ids[2], 61.0) == "", "the rate window moves on"
    table.on_announce(ids[2], announce(ids[2]), 61.0)
    assert "full" in table.room_for(ids[3], 62.0)
    assert set(table.peers) == set(ids[:3]) and table.counters.over_quota == 2


def test_a_claimed_announce_interval_counts_only_up_to_the_bound() -> None:
    table = PeerTable(5.0, max_interval_s=100.0)
    table.on_announce(A, announce(A, interval_s=9_999_999.0), 0.0)
    peer = table.get(A)
    assert peer is not None and table.timeout_for(peer, is_member=False) == 250.0


def test_a_state_record_over_the_bounds_is_refused_and_counted() -> None:
    origin = NodeIdentity.generate()
    sender = StateSync.create(origin, 1)
    for index in range(20):
        sender.set_custom(f"k{index}", "x" * 1000)
    delta = sender.encode_own()
    seen: list[tuple[str, str]] = []
    receiver = StateSync.create(NodeIdentity.generate(), 1)
    receiver.max_record_bytes = 4096
    receiver.on_refused = lambda reason, who, _detail: seen.append((reason, who))
    assert receiver.take(delta, lambda _o: True) == []
    assert seen == [("over_quota", origin.node_id)] and receiver.counters.over_quota == 1
    receiver.max_record_bytes, receiver.max_record_keys = 1 << 20, 8
    assert receiver.take(delta, lambda _o: True) == []
    receiver.max_record_keys = 256
    assert receiver.take(delta, lambda _o: True) == [origin.node_id]


def test_pulls_from_a_peer_that_does_not_serve_back_off_up_to_the_bound() -> None:
    backoff = PullBackoff(1.0, 8.0)
    waits = []
    now = 0.0
    for _ in range(6):
        assert backoff.due(A, now)
        backoff.result(A, False, now)
        following = next(t for t in (now + x / 10 for x in range(1, 200))
                         if backoff.due(A, t))
        waits.append(round(following - now, 1))
        now = following
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.result(A, True, now)
    assert backoff.due(A, now)


def test_refusals_are_counted_and_logged_once_per_peer_and_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    defence = Defence()
    with caplog.at_level(logging.WARNING, logger="workers.gateway.defence"):
        for _ in range(5):
            defence.refused("garbage", A, "bad\x1b[2J")
        defence.refused("garbage", B)
        defence.refused("over_quota", A)
    firsts = [r.getMessage() for r in caplog.records if "refused from" in r.getMessage()]
    assert len(firsts) == 3
    assert all("\x1b" not in message for message in firsts)
    shown = defence.snapshot()
    assert shown["refused"]["garbage"] == 6 and shown["total"] == 7
    assert shown["top_offenders"][0] == {"id": A, "refused": 6}


@pytest.mark.parametrize("raw, shown", [
    ("\x1b[2J\x1b[31mEVIL\x07\r", "\\x1b[2J\\x1b[31mEVIL\\x07\\x0d"),
    ("plain name", "plain name"),
    ("né ✓", "né ✓"),
    ("a\u202eb", "a\\u202eb"),
    ("line\nbreak", "line\\x0abreak"),
])
def test_clean_escapes_what_a_terminal_would_obey(raw: str, shown: str) -> None:
    assert clean(raw) == shown
    assert len(clean("x" * 10_000)) <= 257


@pytest.mark.parametrize("policy, node, alive, since, now, expected", [
    ("members", A, True, 0.0, 10.0, True),        # seated for the settling period
    ("members", A, True, 5.0, 10.0, False),       # seated too recently
    ("members", A, True, None, 10.0, False),      # never seated here (an intruder)
    ("members", A, False, 0.0, 10.0, False),      # suspected or gone
    ("allowlist", A, True, 0.0, 10.0, True),
    ("allowlist", B, True, 0.0, 10.0, False),     # not listed, however long it sat
])
def test_work_goes_only_to_peers_the_policy_admits(policy: str, node: str, alive: bool,
                                                   since: float | None, now: float,
                                                   expected: bool) -> None:
    assert work_admitted(policy, [A], node, alive, since, now, settle_s=9.0) is expected



def test_network_keys_are_checked_in_the_config(tmp_path: Path) -> None:
    path = tmp_path / "akita.ini"
    node = "[node]\ndata_dir = data\nrun_dir = run\nlog_dir = log\n"
    with pytest.raises(ConfigError, match=r"network_key.*not base64"):
        config.parse(node + "[security]\nadmission = key\nnetwork_key = not-a-key!\n", path)
    with pytest.raises(ConfigError, match=r"network_key.*32 bytes"):
        config.parse(node + "[security]\nnetwork_key = c2hvcnQ=\n", path)
    with pytest.raises(ConfigError, match="admission = key needs a key"):
        config.parse(node + "[security]\nadmission = key\n", path)
    key = keyring.generate()
    parsed = config.parse(node + f"[security]\nadmission = key\nnetwork_key = {key}\n",
                          path)
    assert parsed.security.network_key == (key,)


def test_a_keyring_signs_with_the_first_key_and_accepts_any() -> None:
    old, new = (keyring.decode(keyring.generate()) for _ in range(2))
    rotating = keyring.Keyring((new, old))
    assert keyring.Keyring((old, new)).verify(rotating.sign(A, 1, 2), A, 1, 2) == 1
    assert rotating.verify(keyring.Keyring((old,)).sign(A, 1, 2), A, 1, 2) == 1
    assert rotating.verify(rotating.sign(A, 1, 2), A, 1, 3) is None, "bound to the announce"
    assert rotating.verify(rotating.sign(A, 1, 2), B, 1, 2) is None, "bound to the identity"
