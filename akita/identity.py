"""The node identity: a Reticulum identity file, read and written without importing RNS.

The file holds 64 bytes, the X25519 private key followed by the Ed25519 signing key, exactly
as `RNS.Identity.to_file()` writes it, so the gateway loads the same file with
`RNS.Identity.from_file()` and gets the same identity hash. The hash (the NODE_ID shown
everywhere, in hex) is the first 16 bytes of SHA-256 over the two public keys.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from akita.errors import AkitaError

IDENTITY_FILE = "identity"
_RAW = (Encoding.Raw, PublicFormat.Raw)
# Identities derived in this process, by private key: derived once (0.5 ms in a fresh
# worker), and a fork server's children find those it derived (`warm_up`).
_DERIVED: dict[bytes, NodeIdentity] = {}
_DERIVED_KEPT = 4


@dataclass(frozen=True)
class NodeIdentity:
    private_bytes: bytes
    public_key: bytes  # X25519 public (32) + Ed25519 public (32), as Reticulum announces it
    node_id: str       # identity hash, 32 hex digits

    @classmethod
    def from_private_bytes(cls, private_bytes: bytes) -> NodeIdentity:
        known = _DERIVED.get(private_bytes)
        if known is not None:
            return known
        if len(private_bytes) != 64:
            raise AkitaError(f"an identity key is 64 bytes, got {len(private_bytes)}")
        x_pub = X25519PrivateKey.from_private_bytes(private_bytes[:32]).public_key()
        ed_pub = Ed25519PrivateKey.from_private_bytes(private_bytes[32:]).public_key()
        public = x_pub.public_bytes(*_RAW) + ed_pub.public_bytes(*_RAW)
        derived = cls(private_bytes, public, hashlib.sha256(public).digest()[:16].hex())
        if len(_DERIVED) >= _DERIVED_KEPT:
            _DERIVED.clear()
        _DERIVED[private_bytes] = derived
        return derived

    @classmethod
    def generate(cls) -> NodeIdentity:
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        raw = (Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return cls.from_private_bytes(X25519PrivateKey.generate().private_bytes(*raw)
                                      + Ed25519PrivateKey.generate().private_bytes(*raw))

    def signer(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.private_bytes[32:])

    def sign(self, data: bytes) -> bytes:
        return self.signer().sign(data)


def warm_up(data_dir: Path | None = None) -> None:
    """Do once what the first key derivation, signature and check of a process cost
    (OpenSSL loads and sets up its algorithms: 3-5 ms), and derive the node's identity in
    `data_dir` if it has one: a fork server calls it, so that every worker it forks finds
    both ready."""
    if not _DERIVED:
        key = NodeIdentity.from_private_bytes(bytes(range(64)))
        verify(key.public_key, key.sign(b"warm"), b"warm")
    if data_dir is not None:
        try:
            load(data_dir)
        except (AkitaError, OSError):
            pass   # not created yet, or unreadable: the worker that needs it says so


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Check an Ed25519 signature made by the identity with this 64-byte public key."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key[32:]).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def node_id_of(public_key: bytes) -> str:
    return hashlib.sha256(public_key).digest()[:16].hex()


def load_or_create(data_dir: Path) -> NodeIdentity:
    """The node's identity from `data_dir`, created (mode 0600) on first start."""
    path = data_dir / IDENTITY_FILE
    try:
        return NodeIdentity.from_private_bytes(path.read_bytes())
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    identity = NodeIdentity.generate()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, identity.private_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return identity


def load(data_dir: Path) -> NodeIdentity:
    """The existing identity; raises AkitaError if the node has never started."""
    path = data_dir / IDENTITY_FILE
    try:
        return NodeIdentity.from_private_bytes(path.read_bytes())
    except FileNotFoundError:
        raise AkitaError(f"no node identity at {path}: start the node once first") from None


def destination_hash(node_id: str, full_name: str) -> str:
    """The hex hash of this identity's Reticulum destination `full_name` (e.g.
    "lxmf.delivery"), as `RNS.Destination.hash_from_name_and_identity` works it out:
    SHA-256 over the name's 10-byte hash and the identity hash, cut to 16 bytes."""
    name_hash = hashlib.sha256(full_name.encode()).digest()[:10]
    return hashlib.sha256(name_hash + bytes.fromhex(node_id)).digest()[:16].hex()
