"""Peer-supplied text made safe for a terminal or a log line.

Anything a peer announces (a node name, a reason, a topic) may hold escape sequences that
would clear an operator's screen, recolour it or rewrite a log line. `clean()` replaces
every character that is not printable (C0/C1 controls, DEL, line and paragraph separators,
bidirectional overrides) by a visible escape such as ``\\x1b`` or ``\\u202e``, and bounds the
length. JSON output does not use it: JSON escapes control characters itself and stays exact.
"""

from __future__ import annotations

import logging
from typing import Any

MAX_CHARS = 256
MAX_LOG_CHARS = 8192
# Printable by str.isprintable() but able to reorder what a terminal shows.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def clean(value: Any, max_chars: int = MAX_CHARS) -> str:
    """`value` as text with every unprintable character escaped, at most `max_chars` long."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > max_chars:
        text = text[:max_chars] + "…"
    if text.isprintable() and not _BIDI.intersection(text):
        return text
    return "".join(_escape(c) if not c.isprintable() or c in _BIDI else c for c in text)


class CleanFormatter(logging.Formatter):
    """A log formatter that escapes unprintable characters in the message (a peer's name or
    error text can end up in it) while keeping the newlines of a traceback."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = clean(record.message, MAX_LOG_CHARS)
        return super().formatMessage(record)
