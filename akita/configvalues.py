"""How each config value is read and checked: one converter per kind of value, and `setting`,
which attaches a converter and a description to a section's field (`akita.config`).

Each converter takes the raw string and the config file's directory, and returns the value
or raises ValueError whose text says what is allowed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any

from akita import keyring
from akita.mesh import airtime

# What an RNode can tune to (Reticulum's own bounds for RNodeInterface).
FREQUENCY_MIN_HZ = 137_000_000
FREQUENCY_MAX_HZ = 3_000_000_000

Converter = Callable[[str, Path], Any]


def int_range(low: int, high: int) -> Converter:
    def convert(raw: str, _base: Path) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return convert


def seconds(low: float, high: float) -> Converter:
    def convert(raw: str, _base: Path) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number of seconds from {low:g} to {high:g}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a number of seconds from {low:g} to {high:g}")
        return value

    return convert


AUTO = 0.0   # a timer given as `auto`: derived by the gateway from the airtime budget


def seconds_or_auto(low: float, high: float) -> Converter:
    """`auto` (→ AUTO, derived at run time) or a number of seconds in [low, high]."""
    def convert(raw: str, _base: Path) -> float:
        if raw.strip().lower() == "auto":
            return AUTO
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:
            raise ValueError(f"expected auto or a number of seconds from {low:g} to {high:g}")
        return value

    return convert


def budget_percent(raw: str, _base: Path) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.01 <= value <= 100:
        raise ValueError("expected a percentage from 0.01 to 100")
    return value


def percent(raw: str, base: Path) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a percentage from 0 to 100") from None
    if not 0 <= value <= 100:
        raise ValueError("expected a percentage from 0 to 100")
    return value


TRUE = {"1", "yes", "true", "on"}
FALSE = {"0", "no", "false", "off"}


def boolean(raw: str, _base: Path) -> bool:
    lowered = raw.lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ValueError("expected yes or no")


def choice(*allowed: str) -> Converter:
    def convert(raw: str, _base: Path) -> str:
        if raw not in allowed:
            raise ValueError("expected one of: " + ", ".join(allowed))
        return raw

    return convert


def text(raw: str, _base: Path) -> str:
    return raw


def channel(raw: str, _base: Path) -> str:
    parts = raw.split(".")
    if not raw or any(not part or not part.replace("_", "").replace("-", "").isalnum()
                      for part in parts):
        raise ValueError("expected dotted names of letters, digits, '-' and '_' (e.g. akita.tasks)")
    return raw


def directory(raw: str, base: Path) -> Path:
    if not raw:
        raise ValueError("expected a directory path")
    path = Path(os.path.expanduser(raw))
    return path if path.is_absolute() else (base / path).resolve()


def optional_directory(raw: str, base: Path) -> Path | None:
    return directory(raw, base) if raw else None


def instance_name(raw: str, _base: Path) -> str:
    # Reticulum puts the name into an abstract socket address, "rns/NAME".
    if len(raw) > 64 or not all(ch.isalnum() or ch in "-_." for ch in raw):
        raise ValueError("expected up to 64 letters, digits, '-', '_' or '.' (e.g. default)")
    return raw


def optional_port(raw: str, _base: Path) -> int | None:
    return int_range(1, 65535)(raw, _base) if raw else None


def name_list(raw: str, _base: Path) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.replace("\n", ",").split(",") if item.strip())


def directory_list(raw: str, base: Path) -> tuple[Path, ...]:
    return tuple(directory(item, base) for item in name_list(raw, base))


def host_port(item: str) -> tuple[str, int]:
    host, sep, port = item.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{item!r} is not host:port")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{item!r} has a port that is not a number") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"{item!r} has a port outside 1-65535")
    return host.strip("[]"), number


def optional_host_port(raw: str, _base: Path) -> tuple[str, int] | None:
    return host_port(raw) if raw else None


def host_port_list(raw: str, base: Path) -> tuple[tuple[str, int], ...]:
    return tuple(host_port(item) for item in name_list(raw, base))


def identity_list(raw: str, base: Path) -> tuple[str, ...]:
    items = name_list(raw, base)
    for item in items:
        if len(item) != 32 or any(c not in "0123456789abcdef" for c in item.lower()):
            raise ValueError(f"{item!r} is not an identity hash (32 hex digits)")
    return tuple(item.lower() for item in items)


def optional_percent(raw: str, base: Path) -> float | None:
    return percent(raw, base) if raw else None


def optional_int_range(low: int, high: int) -> Converter:
    convert = int_range(low, high)

    def optional(raw: str, base: Path) -> int | None:
        return convert(raw, base) if raw else None

    return optional


def optional_command(raw: str, _base: Path) -> tuple[str, ...] | None:
    return tuple(split_argv(raw)) if raw else None


def frequency_hz(raw: str, _base: Path) -> int | None:
    if not raw:
        return None
    try:
        value = int(float(raw))
    except ValueError:
        value = -1
    if not FREQUENCY_MIN_HZ <= value <= FREQUENCY_MAX_HZ:
        raise ValueError(f"expected a frequency in Hz from {FREQUENCY_MIN_HZ} to "
                         f"{FREQUENCY_MAX_HZ} (e.g. 867200000 for 867.2 MHz)")
    return value


def lora_bandwidth(raw: str, _base: Path) -> int:
    allowed = airtime.BANDWIDTHS_HZ
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value not in allowed:
        raise ValueError("expected a LoRa bandwidth in Hz: " + ", ".join(map(str, allowed)))
    return value


def key_list(raw: str, base: Path) -> tuple[str, ...]:
    items = name_list(raw, base)
    for item in items:
        keyring.decode(item)
    return tuple(items)


def node_name(raw: str, _base: Path) -> str:
    name = raw or socket.gethostname()
    if len(name.encode()) > 32:
        raise ValueError("expected a name of at most 32 bytes")
    return name


def setting(convert: Converter, doc: str, default: Any = dataclasses.MISSING) -> Any:
    """A config key: its converter, a one-line description and, unless required, a default."""
    return field(default=default, metadata={"convert": convert, "doc": doc})



def listen_address(raw: str, base: Path) -> tuple[str, int] | None:
    """host:port to listen on, or empty for off; the host must be an IP address."""
    if not raw:
        return None
    host, port = host_port(raw)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (e.g. 127.0.0.1:9464; "
                         "empty turns it off)") from None
    return host, port


OPERATOR_ROLES = ("read", "submit")


def operator_list(raw: str, base: Path) -> tuple[tuple[str, str], ...]:
    """HASH:ROLE entries; HASH is an identity hash or an LXMF address (32 hex digits)."""
    found = []
    for item in name_list(raw, base):
        digest, colon, role = item.partition(":")
        digest, role = digest.strip().lower(), role.strip() if colon else "read"
        if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{item!r}: expected HASH:ROLE, HASH being an identity hash or "
                             "LXMF address (32 hex digits)")
        if role not in OPERATOR_ROLES:
            raise ValueError(f"{item!r}: role {role!r} is not one of "
                             + ", ".join(OPERATOR_ROLES))
        found.append((digest, role))
    return tuple(found)


def split_argv(raw: str) -> list[str]:
    import shlex

    try:
        argv = shlex.split(raw)
    except ValueError as exc:
        raise ValueError(f"expected a command line ({exc})") from None
    if not argv:
        raise ValueError("expected a command line")
    return argv
