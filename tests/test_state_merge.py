"""Node state: last-writer-wins records, merge algebra, deltas, digests and encoding."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from akita.errors import ProtocolError
from akita.mesh.state import (
    KEY_RESOURCES,
    Record,
    StateStore,
    batches,
    check_custom_key,
    decode_records,
    decode_summary,
    encode_records,
    encode_summary,
    encoded_size,
    fits,
    merge_records,
    summary_digest,
)

ORIGINS = ["aa" * 16, "bb" * 16, "cc" * 16, "0123456789abcdef" * 2]
ME = ORIGINS[0]

FAST = settings(max_examples=80, deadline=None)

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8)
    | st.binary(max_size=8) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6,
)
entries = st.dictionaries(st.sampled_from(["a", "b", "load", "x.y"]), values, max_size=3)


@st.composite
def records(draw: Any, honest: bool = False) -> Record:
    """A record; `honest` ones have content fixed by (origin, stamp), as real nodes produce."""
    origin = draw(st.sampled_from(ORIGINS))
    generation = draw(st.integers(0, 2))
    version = draw(st.integers(0, 3))
    content = {"stamp": [generation, version]} if honest else draw(entries)
    return Record.new(origin, generation, version, content)


def store_of(recs: list[Record]) -> StateStore:
    return StateStore.create(ME, 0).merge(recs)


stores = st.lists(records(), max_size=6).map(store_of)
honest_stores = st.lists(records(honest=True), max_size=6).map(store_of)


# --- merge algebra ----------------------------------------------------------------------


@FAST
@given(stores, stores)
def test_merge_is_commutative(a: StateStore, b: StateStore) -> None:
    assert a.merge(b).records == b.merge(a).records


@FAST
@given(stores, stores, stores)
def test_merge_is_associative(a: StateStore, b: StateStore, c: StateStore) -> None:
    assert a.merge(b).merge(c).records == a.merge(b.merge(c)).records


@FAST
@given(stores, stores)
def test_merge_is_idempotent(a: StateStore, b: StateStore) -> None:
    assert a.merge(a).records == a.records
    once = a.merge(b)
    assert once.merge(b).records == once.records


@FAST
@given(st.lists(records(), max_size=6))
def test_merge_does_not_depend_on_arrival_order(recs: list[Record]) -> None:
    first = merge_records({}, recs)
    for order in itertools.islice(itertools.permutations(recs), 24):
        assert merge_records({}, order) == first


@FAST
@given(st.lists(records(), min_size=1, max_size=6))
def test_merge_keeps_the_highest_stamp_per_origin(recs: list[Record]) -> None:
    merged = merge_records({}, recs)
    for origin, kept in merged.items():
        assert kept.stamp == max(r.stamp for r in recs if r.origin == origin)


def test_equal_stamps_resolve_the_same_way_on_both_sides() -> None:
    one = Record.new(ME, 1, 4, {"a": 1})
    two = Record.new(ME, 1, 4, {"a": 2})
    assert merge_records({ME: one}, [two]) == merge_records({ME: two}, [one])


# --- local updates ------------------------------------------------------------------


def test_set_bumps_version_and_keeps_generation() -> None:
    store = StateStore.create(ME, 3)
    after = store.set("colour", "blue").set(KEY_RESOURCES, {"cpu": 12.5})
    assert after.own.stamp == (3, 2)
    assert after.own.get("colour") == "blue"
    assert after.own.get(KEY_RESOURCES) == {"cpu": 12.5}
    assert store.own.stamp == (3, 0), "a store is immutable"


def test_delete_and_update_are_one_version_each() -> None:
    store = StateStore.create(ME, 1).update({"a": 1, "b": 2})
    assert store.own.stamp == (1, 1)
    store = store.delete("a")
    assert store.own.stamp == (1, 2)
    assert store.own.as_dict() == {"b": 2}


def test_a_deleted_key_disappears_on_peers_without_tombstones() -> None:
    mine = StateStore.create(ME, 1).set("a", 1)
    peer = StateStore.create(ORIGINS[1], 1).merge(mine)
    mine = mine.delete("a")
    peer = peer.merge(mine.delta_since(peer.summary()))
    record = peer.get(ME)
    assert record is not None and record.as_dict() == {}


def test_restart_bumps_generation_keeps_entries_and_outranks_the_past() -> None:
    old = StateStore.create(ME, 1).set("a", 1).set("a", 2)
    new = old.restarted(2)
    assert new.own.stamp == (2, 0)
    assert new.own.as_dict() == {"a": 2}
    assert new.merge(old).own == new.own


def test_restart_goes_past_a_generation_peers_still_hold() -> None:
    # Our database was lost: we boot as generation 1, a peer holds our generation 5.
    remembered = Record.new(ME, 5, 9, {"a": "old"})
    fresh = StateStore.create(ME, 1).merge([remembered])
    rebooted = fresh.restarted(1)
    assert rebooted.own.generation == 6
    assert merge_records({ME: remembered}, [rebooted.own])[ME] == rebooted.own


@pytest.mark.parametrize("bad", [{1, 2}, object(), 2**64, {1: "non-string key"}])
def test_unstorable_values_are_refused_at_set(bad: Any) -> None:
    with pytest.raises(ValueError):
        StateStore.create(ME, 1).set("k", bad)


@pytest.mark.parametrize("key", ["", "x" * 65, "tab\there", 5])
def test_bad_keys_are_refused(key: Any) -> None:
    with pytest.raises(ValueError):
        StateStore.create(ME, 1).set(key, 1)


def test_custom_keys_may_not_take_the_nodes_own_names() -> None:
    assert check_custom_key("colour") == "colour"
    with pytest.raises(ValueError, match="reserved"):
        check_custom_key(KEY_RESOURCES)


@pytest.mark.parametrize("origin", ["", "xyz", "ABAB", "abc"])
def test_origin_must_be_lowercase_hex(origin: str) -> None:
    with pytest.raises(ValueError):
        Record.new(origin, 0, 0)


# --- summary, digest, delta ------------------------------------------------------------


@FAST
@given(honest_stores, honest_stores)
def test_delta_brings_the_other_side_up_to_date(a: StateStore, b: StateStore) -> None:
    delta = a.delta_since(b.summary())
    assert b.merge(delta).records == b.merge(a).records
    assert b.merge(delta).delta_since(b.merge(a).summary()) == ()
    assert all(r.origin not in b.records or r.stamp > b.records[r.origin].stamp for r in delta)


@FAST
@given(honest_stores, honest_stores)
def test_digests_are_equal_exactly_when_summaries_are(a: StateStore, b: StateStore) -> None:
    assert (a.digest() == b.digest()) == (a.summary() == b.summary())
    assert len(a.digest()) == 8


def test_digest_ignores_the_order_of_a_summary() -> None:
    forward = {o: (1, i) for i, o in enumerate(ORIGINS)}
    backward = dict(reversed(list(forward.items())))
    assert summary_digest(forward) == summary_digest(backward)


def test_changed_by_names_only_origins_that_would_change() -> None:
    store = StateStore.create(ME, 1).merge([Record.new(ORIGINS[1], 1, 5)])
    incoming = [Record.new(ORIGINS[1], 1, 4), Record.new(ORIGINS[2], 0, 0),
                Record.new(ME, 1, 1)]
    assert store.changed_by(incoming) == tuple(sorted([ORIGINS[2], ME]))


def test_retain_forgets_other_origins_but_never_our_own() -> None:
    store = StateStore.create(ME, 1).merge([Record.new(o, 1, 1) for o in ORIGINS[1:]])
    assert set(store.retain([ORIGINS[2]]).records) == {ME, ORIGINS[2]}


# --- encoding and sizes ----------------------------------------------------------------


@FAST
@given(st.lists(records(), max_size=5))
def test_records_survive_encoding(recs: list[Record]) -> None:
    data = encode_records(recs)
    assert decode_records(data) == tuple(recs)
    assert encoded_size(recs) == len(data)


@FAST
@given(honest_stores)
def test_summaries_survive_encoding(store: StateStore) -> None:
    assert decode_summary(encode_summary(store.summary())) == store.summary()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.builds(msgpack.packb, values))
def test_garbage_decodes_to_protocol_error_only(data: bytes) -> None:
    for decode in (decode_records, decode_summary):
        try:
            result = decode(data)
        except ProtocolError:
            continue
        assert isinstance(result, (tuple, dict))


@pytest.mark.parametrize("obj", [
    [["not-bytes", 1, 1, {}]],
    [[b"\xaa", -1, 0, {}]],
    [[b"\xaa", 1, True, {}]],
    [[b"\xaa", 1, 1, []]],
    [[b"\xaa", 1, 1, {"": 1}]],
    {"not": "a list"},
])
def test_malformed_records_are_refused(obj: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_records(msgpack.packb(obj, use_bin_type=True))


def test_oversized_input_is_refused_before_decoding() -> None:
    data = encode_records([Record.new(ME, 1, 1, {"blob": b"x" * 1000})])
    with pytest.raises(ProtocolError, match="limit"):
        decode_records(data, max_bytes=100)


@FAST
@given(st.lists(records(), max_size=12), st.integers(20, 400))
def test_batches_fit_keep_order_and_lose_nothing(recs: list[Record], limit: int) -> None:
    groups = batches(recs, limit)
    assert [r for group in groups for r in group] == recs
    for group in groups:
        assert fits(group, limit) or len(group) == 1
        assert encoded_size(group) == len(encode_records(group))


def test_a_typical_record_fits_one_reticulum_packet() -> None:
    # One encrypted single packet carries 383 bytes (RETICULUM.md).
    record = Record.new(ME, 3, 1200, {
        KEY_RESOURCES: {"cpu": 37.5, "mem": 61.2, "disk": 80.1, "net_rx": 123456,
                        "net_tx": 654321},
        "queue_depth": 17, "services": ["resize", "thumbnail", "ocr"],
        "task_types": ["resize", "thumbnail"], "colour": "blue"})
    assert fits([record], 383), encoded_size([record])
