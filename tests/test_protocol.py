"""The wire module: every message round-trips, and every kind of malformed frame raises one
ProtocolError that names the kind and field."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from akita.errors import ProtocolError
from akita.wire import protocol

# A sample value for each field annotation the messages use.
_SAMPLES: dict[Any, Any] = {str: "x", int: 7, float: 1.5, bool: True, bytes: b"\x00\xff",
                            type(None): None}


def sample_value(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if annotation in _SAMPLES:
        return _SAMPLES[annotation]
    if origin in (typing.Union, types.UnionType):
        return sample_value(typing.get_args(annotation)[0])
    if origin is dict or annotation is dict:
        return {"k": [1, "v"]}
    if origin is list or annotation is list or origin is tuple:
        return [{"k": 1}]
    return {"any": 1}


def sample(kind: str) -> protocol.Message:
    cls = protocol._REGISTRY[kind].cls
    hints = typing.get_type_hints(cls)
    values = {f.name: sample_value(hints[f.name]) for f in dataclasses.fields(cls)}
    return cls(**values)


@pytest.mark.parametrize("kind", protocol.kinds())
def test_every_message_round_trips(kind: str) -> None:
    msg = sample(kind)
    rid, back = protocol.decode_frame(protocol.encode(msg, rid=42))
    assert rid == 42
    assert back == msg
    assert protocol.decode(protocol.encode(msg)) == msg


def test_optional_fields_take_their_defaults() -> None:
    data = msgpack.packb({"v": protocol.PROTOCOL_VERSION, "kind": "ping"})
    assert protocol.decode_frame(data) == (None, protocol.Ping(payload=b""))


@given(payload=st.binary(max_size=2048), rid=st.none() | st.integers(0, 2**63 - 1))
def test_ping_round_trips_any_payload(payload: bytes, rid: int | None) -> None:
    assert protocol.decode_frame(protocol.encode(protocol.Ping(payload=payload), rid=rid)) == (
        rid, protocol.Ping(payload=payload))


@given(st.binary(max_size=256))
def test_arbitrary_bytes_never_raise_anything_but_protocol_error(data: bytes) -> None:
    try:
        protocol.decode_frame(data)
    except ProtocolError:
        pass


def frame(**body: Any) -> bytes:
    return msgpack.packb({"v": protocol.PROTOCOL_VERSION, **body}, use_bin_type=True)


MALFORMED = {
    "not msgpack": (b"\xc1", "not a msgpack frame", "", ""),
    "truncated": (protocol.encode(protocol.Ping(payload=b"abc"))[:-2], "not a msgpack frame",
                  "", ""),
    "not a map": (msgpack.packb([1, 2]), "not a msgpack map", "", ""),
    "no kind": (msgpack.packb({"v": 1}), "no kind", "", ""),
    "unknown kind": (frame(kind="nosuch.verb"), "unknown message kind", "nosuch.verb", ""),
    "other version": (msgpack.packb({"v": 2, "kind": "ping"}), "protocol version", "ping", "v"),
    "missing field": (frame(kind="worker.stop"), "missing field", "worker.stop", "name"),
    "extra field": (frame(kind="worker.stop", name="a", force=True), "unexpected field",
                    "worker.stop", "force"),
    "wrong type": (frame(kind="worker.stop", name=3), "expected str", "worker.stop", "name"),
    "rid not int": (frame(kind="ping", rid="1"), "rid must be an integer", "ping", "rid"),
    "oversized": (b"\x00" * (protocol.MAX_FRAME_BYTES + 1), "exceeds the limit", "", ""),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_frames_name_what_is_wrong(case: str) -> None:
    data, text, kind, field = MALFORMED[case]
    with pytest.raises(ProtocolError) as failed:
        protocol.decode_frame(data)
    assert text in str(failed.value)
    assert failed.value.kind == kind
    assert failed.value.field == field


def test_kinds_are_noun_dot_verb_and_registered_once() -> None:
    for kind in protocol.kinds():
        assert kind in ("error", "ok", "ping", "pong") or "." in kind, kind
    with pytest.raises(ValueError):
        protocol.message("ping")(protocol.Ping)


def test_no_pickle_on_the_wire() -> None:
    # A frame is a plain msgpack map: the envelope and the fields, nothing else.
    body = msgpack.unpackb(protocol.encode(protocol.WorkerStop(name="ledger"), rid=3), raw=False)
    assert body == {"v": protocol.PROTOCOL_VERSION, "kind": "worker.stop", "rid": 3,
                    "name": "ledger"}
