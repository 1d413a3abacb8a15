"""The shared network key (`[security] network_key`, `admission = key`), as Serf's and
Consul's gossip keyring: nodes that hold a key of the ring recognise each other.

Every announce carries a tag, HMAC-SHA256 under the first (primary) key over the sender's
identity hash, boot generation and announce sequence, cut to `TAG_BYTES`: it binds the tag
to that identity (another identity cannot reuse it) and to that announce (Reticulum already
signs the content). A receiver accepts a tag made with any key of its ring. Requests are
served only to identities whose announce carried a valid tag.

Rotation without a flag day: add the new key second on every node (``old, new``: still
signing with old, accepting both), then first (``new, old``), then drop the old one.
`akitactl keygen` prints a fresh key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

KEY_BYTES = 32
TAG_BYTES = 8


def generate() -> str:
    """A fresh random key, base64 as the config takes it."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def decode(text: str) -> bytes:
    """The key bytes from its base64 text; ValueError saying what is wrong."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise ValueError(f"{text[:6]}… is not base64 (make one with akitactl keygen)") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"a network key is {KEY_BYTES} bytes of base64, got {len(raw)} bytes "
                         "(make one with akitactl keygen)")
    return raw


def tag(key: bytes, node_id: str, generation: int, seq: int) -> bytes:
    message = (b"akita.announce\x1f" + bytes.fromhex(node_id)
               + generation.to_bytes(8, "big") + seq.to_bytes(8, "big"))
    return hmac.new(key, message, hashlib.sha256).digest()[:TAG_BYTES]


class Keyring:
    """The keys of `[security] network_key`: the first signs, any verifies."""

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self.keys = keys

    def sign(self, node_id: str, generation: int, seq: int) -> bytes:
        return tag(self.keys[0], node_id, generation, seq) if self.keys else b""

    def verify(self, mac: bytes, node_id: str, generation: int, seq: int) -> int | None:
        """The index of the key that made `mac` (0: the primary), None if none did."""
        for index, key in enumerate(self.keys):
            if hmac.compare_digest(mac, tag(key, node_id, generation, seq)):
                return index
        return None
