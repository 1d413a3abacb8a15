"""Golden bytes of every format that crosses Reticulum, written by hand from its definition.

Each format below is laid out field by field from its definition (akita/wire/mesh.py,
akita/mesh/replication.py, akita/mesh/delegation.py, akita/mesh/state.py,
akita/ledger/bundles.py, README's "74-byte summary"), with its own tiny msgpack encoder
(`mp`) written from the msgpack specification: neither the project's encoders nor the
msgpack package build anything here. The tests in tests/test_golden_wire.py check that
the project encodes the same values to exactly these bytes and decodes these bytes to
the same values, so a change of format is a visible decision: it fails there until the
bytes here are changed too.

The hand-made Reticulum peers (tests/rns_*.py) build what they send with the builders
here, so they speak the format as defined, not as the project happens to encode it.

Not pinned here yet: state records (akita/mesh/state.py Record.pack), the inter-cluster
message bodies (akita/mesh/messaging.py) and the service list answer; no hand-made peer
sends those.
"""

from __future__ import annotations

import struct
from typing import Any

# --- a msgpack encoder, from the specification (the subset the formats use) -------------------


def mp(value: Any) -> bytes:
    """msgpack bytes of `value`: None, bool, int ≥ 0, float (float 64), str, bytes, list,
    dict (keys in insertion order), each in its shortest form, as the spec defines them."""
    if value is None:
        return b"\xc0"
    if value is True:
        return b"\xc3"
    if value is False:
        return b"\xc2"
    if isinstance(value, int):
        return _uint(value)
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode()
        return _sized(len(raw), 0xA0, 31, b"\xd9", b"\xda", b"\xdb") + raw
    if isinstance(value, bytes):
        return _sized(len(value), None, 0, b"\xc4", b"\xc5", b"\xc6") + value
    if isinstance(value, list):
        return _sized(len(value), 0x90, 15, None, b"\xdc", b"\xdd") + b"".join(map(mp, value))
    if isinstance(value, dict):
        return (_sized(len(value), 0x80, 15, None, b"\xde", b"\xdf")
                + b"".join(mp(k) + mp(v) for k, v in value.items()))
    raise TypeError(f"no msgpack form here for {type(value).__name__}")


def _uint(n: int) -> bytes:
    if n < 0:
        raise ValueError("the formats carry no negative integers")
    if n <= 0x7F:
        return bytes([n])                       # positive fixint
    for marker, fmt, top in ((b"\xcc", ">B", 0xFF), (b"\xcd", ">H", 0xFFFF),
                             (b"\xce", ">I", 0xFFFFFFFF)):
        if n <= top:
            return marker + struct.pack(fmt, n)
    return b"\xcf" + struct.pack(">Q", n)        # uint 64


def _sized(length: int, fix: int | None, fix_max: int, m8: bytes | None, m16: bytes,
           m32: bytes) -> bytes:
    if fix is not None and length <= fix_max:
        return bytes([fix | length])
    if m8 is not None and length <= 0xFF:
        return m8 + bytes([length])
    if length <= 0xFFFF:
        return m16 + struct.pack(">H", length)
    return m32 + struct.pack(">I", length)


# --- announce app_data (akita/wire/mesh.py) ---------------------------------------------------
# A map of 10 one-letter keys, in this order:
#   p wire version (1)        n name (≤ 32 bytes of UTF-8)   g boot generation
#   s announce seq            r report [generation, version, seat|nil, term, coordinator]
#                               seat = [cluster id (4 bytes), number, high]
#   l load [cpu %, memory %, queue depth]   v state version   d state digest (8 bytes)
#   i announce interval (float, seconds)    k identity tag: first 4 bytes of the identity hash
# At most 200 bytes; README: a 74-byte summary for a typical member (a 5-letter name).

MAX_APP_DATA_BYTES = 200


def announce_app_data(node_id: str, name: str, generation: int, seq: int, *, version: int = 0,
                      seat: tuple[str, int, int] | None = None, term: int = 0,
                      coordinator: bool = False, load: tuple[int, int, int] = (0, 0, 0),
                      state_version: int = 0, digest: bytes = bytes(8),
                      interval_s: float = 60.0) -> bytes:
    packed_seat = None if seat is None else [bytes.fromhex(seat[0]), seat[1], seat[2]]
    return mp({"p": 1, "n": name, "g": generation, "s": seq,
               "r": [generation, version, packed_seat, term, coordinator],
               "l": list(load), "v": state_version, "d": digest, "i": float(interval_s),
               "k": bytes.fromhex(node_id)[:4]})


NODE = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"

# node NODE, "alpha", generation 7, seq 42, report version 3, seat 2 of 5 in c0ffee01,
# term 4, coordinator; load 12 % / 34 % / 5 queued; state version 9; digest 01..08; 600 s.
ANNOUNCE_MEMBER = bytes.fromhex(
    "8a"                          # map of 10
    "a170" "01"                   # "p": 1
    "a16e" "a5616c706861"         # "n": "alpha"
    "a167" "07"                   # "g": 7
    "a173" "2a"                   # "s": 42
    "a172" "95" "07" "03"         # "r": [7, 3,
    "93" "c404c0ffee01" "02" "05"  #       [bin 4 c0ffee01, 2, 5],
    "04" "c3"                     #       4, true]
    "a16c" "93" "0c" "22" "05"    # "l": [12, 34, 5]
    "a176" "09"                   # "v": 9
    "a164" "c408" "0102030405060708"  # "d": bin 8
    "a169" "cb" "4082c00000000000"    # "i": 600.0 (float 64)
    "a16b" "c404" "01234567"      # "k": the first 4 bytes of NODE
)

# node NODE, "n0", generation 1, seq 1, no seat yet, no load, interval 10 s.
ANNOUNCE_NEWCOMER = bytes.fromhex(
    "8a" "a170" "01" "a16e" "a26e30" "a167" "01" "a173" "01"
    "a172" "95" "01" "00" "c0" "00" "c2"          # "r": [1, 0, nil, 0, false]
    "a16c" "93" "00" "00" "00" "a176" "00" "a164" "c408" "0000000000000000"
    "a169" "cb" "4024000000000000"                # 10.0
    "a16b" "c404" "01234567"
)

# --- probe packets (akita/wire/mesh.py) ------------------------------------------------------
# A map: k kind ("ping" | "ping-req" | "ack" | "leave"), f sender identity hash (16 bytes),
# n nonce; then t target (16 bytes) for ping-req and ack; g generation, s seq and
# x signature for leave. The signature covers
#   b"akita.leave" 0x1f, sender (16 bytes), generation (8 bytes big-endian), seq (8 bytes).


def probe_packet(kind: str, sender: str, nonce: int, *, target: str = "", generation: int = 0,
                 seq: int = 0, signature: bytes = b"") -> bytes:
    body: dict[str, Any] = {"k": kind, "f": bytes.fromhex(sender), "n": nonce}
    if kind in ("ping-req", "ack"):
        body["t"] = bytes.fromhex(target)
    if kind == "leave":
        body.update(g=generation, s=seq, x=signature)
    return mp(body)


def leave_message(sender: str, generation: int, seq: int) -> bytes:
    return (b"akita.leave\x1f" + bytes.fromhex(sender) + struct.pack(">Q", generation)
            + struct.pack(">Q", seq))


_F_NODE = "a166" "c410" + NODE            # "f": bin 16 NODE
_T_OTHER = "a174" "c410" + OTHER          # "t": bin 16 OTHER
_NONCE = "a16e" "ce000f4240"              # "n": 1000000 (uint 32)
PROBE_PING = bytes.fromhex("83" "a16b" "a470696e67" + _F_NODE + _NONCE)
PROBE_PING_REQ = bytes.fromhex("84" "a16b" "a870696e672d726571" + _F_NODE + _NONCE + _T_OTHER)
PROBE_ACK = bytes.fromhex("84" "a16b" "a361636b" + _F_NODE + _NONCE + _T_OTHER)
SIGNATURE = bytes(range(64))
PROBE_LEAVE = bytes.fromhex(
    "86" "a16b" "a56c65617665" + _F_NODE + _NONCE
    + "a167" "07"                          # "g": 7
    + "a173" "cd012c"                      # "s": 300 (uint 16)
    + "a178" "c440" + SIGNATURE.hex())     # "x": bin 64
LEAVE_MESSAGE = (b"akita.leave\x1f" + bytes.fromhex(NODE)
                 + bytes.fromhex("0000000000000007") + bytes.fromhex("000000000000012c"))

# --- ledger replication over a Link (akita/ledger/bundles.py, akita/mesh/replication.py) -----
# heads: [[feed (16 bytes), seq, first 8 bytes of the head hash], …], sorted by feed.
# range request: [feed (16 bytes), after_seq, with_key]; range response: [bundle, head_seq].
# bundle: [1, feed (16 bytes), public key (64 bytes), after_seq, prev hash (32 bytes) or nil
#          when after_seq is 0, [kind, …], [[ts, kind index, data], …],
#          [[seq, ts, hash (32 bytes), signature (64 bytes)], …]]


def heads(entries: list[tuple[str, int, bytes]]) -> bytes:
    return mp([[bytes.fromhex(feed), seq, hash_[:8]] for feed, seq, hash_ in sorted(entries)])


def range_request(feed: str, after_seq: int, with_key: bool) -> bytes:
    return mp([bytes.fromhex(feed), after_seq, with_key])


def range_response(bundle: bytes, head_seq: int) -> bytes:
    return mp([bundle, head_seq])


def bundle(feed: str, public_key: bytes, after_seq: int, prev: bytes,
           events: list[tuple[float, str, bytes]],
           checkpoints: list[tuple[int, float, bytes, bytes]]) -> bytes:
    kinds: dict[str, int] = {}
    rows = [[ts, kinds.setdefault(kind, len(kinds)), data] for ts, kind, data in events]
    return mp([1, bytes.fromhex(feed), public_key, after_seq, prev if after_seq else None,
               list(kinds), rows, [[seq, ts, h, sig] for seq, ts, h, sig in checkpoints]])


HASH_A = bytes([0xAA]) * 32
HASH_B = bytes([0xBB]) * 32
PUBLIC_KEY = bytes([0x11]) * 64
HEADS = bytes.fromhex(
    "92"                                            # two feeds, sorted
    "93" "c410" + NODE + "05" "c408" + "aa" * 8     # [NODE, 5, aa × 8]
    + "93" "c410" + OTHER + "cd0400" "c408" + "bb" * 8)  # [OTHER, 1024, bb × 8]
RANGE_REQUEST = bytes.fromhex("93" "c410" + NODE + "05" "c3")   # [NODE, 5, true]
# Events 6, 7 and 8 of NODE's feed (after seq 5, whose hash is HASH_A) at 1700000001,
# ...02 and ...03 s, kinds "peer.joined", "task.submitted", "peer.joined", data {} / {"a": 1}
# / {} (event data is itself msgpack, carried as bin); one checkpoint at seq 8, time
# 1700000004, hash HASH_B, signed with SIGNATURE.
BUNDLE = bytes.fromhex(
    "98" "01"                                       # [1,
    "c410" + NODE                                   #  feed,
    + "c440" + "11" * 64                            #  public key,
    + "05" "c420" + "aa" * 32                       #  after_seq 5, prev,
    + "92" "ab706565722e6a6f696e6564"               #  ["peer.joined",
    + "ae7461736b2e7375626d6974746564"              #   "task.submitted"],
    + "93"                                          #  [
    + "93" "cb41d954fc40400000" "00" "c40180"       #   [1700000001.0, 0, bin {}],
    + "93" "cb41d954fc40800000" "01" "c40481a16101"  #  [1700000002.0, 1, bin {"a": 1}],
    + "93" "cb41d954fc40c00000" "00" "c40180"       #   [1700000003.0, 0, bin {}]],
    + "91" "94" "08" "cb41d954fc41000000"           #  [[8, 1700000004.0,
    + "c420" + "bb" * 32 + "c440" + SIGNATURE.hex())  #  HASH_B, SIGNATURE]]]
# The start of a feed, without the key: after_seq 0 carries no prev hash (nil).
BUNDLE_GENESIS = bytes.fromhex(
    "98" "01" "c410" + NODE + "c0" "00" "c0"         # [1, feed, nil key, 0, nil prev,
    + "91" "ab706565722e6a6f696e6564"               #  ["peer.joined"],
    + "91" "93" "cb41d954fc40400000" "00" "c40180"  #  [[1700000001.0, 0, bin {}]],
    + "91" "94" "01" "cb41d954fc40400000"           #  [[1, 1700000001.0,
    + "c420" + "aa" * 32 + "c440" + SIGNATURE.hex())  #  HASH_A, SIGNATURE]]]
RANGE_RESPONSE = b"\x92" + b"\xc5" + struct.pack(">H", len(BUNDLE)) + BUNDLE + b"\x08"

# --- state sync over a Link (akita/mesh/state.py) ---------------------------------------------
# summary: [[origin (16 bytes), generation, version], …], sorted by origin.


def state_summary(entries: dict[str, tuple[int, int]]) -> bytes:
    return mp([[bytes.fromhex(origin), g, v] for origin, (g, v) in sorted(entries.items())])


STATE_SUMMARY = bytes.fromhex("92" "93" "c410" + NODE + "07" "09"
                              + "93" "c410" + OTHER + "01" "cc80")   # versions 9 and 128

# --- task delegation over a Link (akita/mesh/delegation.py) -----------------------------------
# /run: {"term", "lease_s" (float), "tasks": [spec, …]} and "spill": true when spilled over;
# /renew: {"tasks": [[id, attempt], …]}; answers {"accepted" | "renewed", "stale"}.


def run_request(term: int, lease_s: float, tasks: list[dict[str, Any]],
                spill: bool = False) -> bytes:
    body: dict[str, Any] = {"term": term, "lease_s": float(lease_s), "tasks": tasks}
    if spill:
        body["spill"] = True
    return mp(body)


def renew_request(pairs: list[tuple[str, int]]) -> bytes:
    return mp({"tasks": [[task_id, attempt] for task_id, attempt in pairs]})


def results_request(results: list[dict[str, Any]], load: None = None) -> bytes:
    """/result: {"results": [{id, attempt, state, …}, …], "load": the sender's load or nil}."""
    return mp({"results": results, "load": load})


def outcome(first_key: str, first: Any, stale: Any) -> bytes:
    return mp({first_key: first, "stale": stale})


RUN_REQUEST = bytes.fromhex(
    "83" "a47465726d" "03"                          # {"term": 3,
    "a76c656173655f73" "cb403e000000000000"         #  "lease_s": 30.0,
    "a57461736b73" "91" "82"                        #  "tasks": [{
    "a26964" "a3743031"                             #    "id": "t01",
    "a46e616d65" "aa616b6974612e6563686f")          #    "name": "akita.echo"}]}
RENEW_REQUEST = bytes.fromhex(
    "81" "a57461736b73" "92"                        # {"tasks": [
    "92" "a3743031" "01" "92" "a3743032" "02")      #    ["t01", 1], ["t02", 2]]}
ACCEPTED = bytes.fromhex(
    "82" "a86163636570746564" "91" "a3743031"       # {"accepted": ["t01"],
    "a57374616c65" "90")                            #  "stale": []}
RESULTS_REQUEST = bytes.fromhex(
    "82" "a7726573756c7473" "91" "83"               # {"results": [{
    "a26964" "a3743031"                             #    "id": "t01",
    "a7617474656d7074" "01"                         #    "attempt": 1,
    "a57374617465" "a9737563636565646564"           #    "state": "succeeded"}],
    "a46c6f6164" "c0")                              #  "load": nil}
