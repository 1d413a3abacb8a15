"""The exceptions Akita raises on purpose.

Everything a user can cause (bad config, bad input, no node running) is an `AkitaError`
subclass with a message fit to print on one line; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class AkitaError(Exception):
    """Base of every error Akita raises deliberately."""


class ConfigError(AkitaError):
    """The configuration file is missing, unreadable or holds a bad value."""

    def __init__(self, message: str, *, path: str = "", section: str = "", key: str = "") -> None:
        where = ":".join(part for part in (path, f"[{section}]" if section else "", key) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.section = section
        self.key = key


class ProtocolError(AkitaError):
    """A frame that cannot be decoded into a known message."""

    def __init__(self, message: str, *, kind: str = "", field: str = "") -> None:
        where = ".".join(part for part in (kind, field) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.kind = kind
        self.field = field


class NodeNotRunning(AkitaError):
    """No supervisor is listening on the configured run directory."""


class NodeNotResponding(AkitaError):
    """A node's socket exists but did not answer in time."""


class RequestFailed(AkitaError):
    """The node answered a request with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class LedgerCorrupt(AkitaError):
    """A ledger feed failed verification."""

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq
