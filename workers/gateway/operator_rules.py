"""Operator access over LXMF, the pure part: who may ask what, how often, and replies that
fit one LoRa packet. No RNS import; `operators` applies these rules to real messages.

A command is text (`status`, `task ID`, `submit NAME JSON [priority]`) or Sideband's
FIELD_COMMANDS entry ({"status": ...} or a plain string). Everything is bounded: the text
read, the commands in one message, the reply (`REPLY_BYTES`: the largest LXMF content that
still travels as a single opportunistic packet), and the memory of operators and submits.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

REPLY_BYTES = 295           # LXMF content in one encrypted opportunistic packet
MAX_COMMAND_CHARS = 1024    # longer text is refused, not parsed
MAX_COMMANDS = 4            # FIELD_COMMANDS entries served from one message
FIELD_COMMANDS = 0x09
MAX_TRACKED = 1024          # operators and rate buckets remembered
PRIORITY_RANGE = (-1000, 1000)

READ_VERBS = ("help", "status", "peers", "clusters", "tasks", "task")
SUBMIT_VERBS = ("submit",)
HELP = ("akita: help | status | peers | clusters | tasks | task ID | "
        "submit NAME JSON [priority]")


class CommandError(ValueError):
    """A command that cannot be run; the text is the reply the operator gets."""


@dataclass(frozen=True)
class Command:
    verb: str
    args: tuple[Any, ...] = ()

    def describe(self) -> str:
        """For the ledger: the verb and its arguments, short."""
        return " ".join([self.verb, *(str(a) for a in self.args)])[:120]


def parse(text: str) -> Command:
    """One text command → `Command`; `CommandError` says what is wrong and what is allowed."""
    if len(text) > MAX_COMMAND_CHARS:
        raise CommandError(f"command too long ({len(text)} chars, at most "
                           f"{MAX_COMMAND_CHARS}); {HELP}")
    verb, _, rest = text.strip().partition(" ")
    verb, rest = verb.lower(), rest.strip()
    if verb in ("help", "status", "peers", "clusters", "tasks"):
        return Command(verb)
    if verb == "task":
        if not rest or len(rest) > 64 or not all(c in "0123456789abcdef" for c in rest.lower()):
            raise CommandError("usage: task ID (the hex task id)")
        return Command("task", (rest.lower(),))
    if verb == "submit":
        return _parse_submit(rest)
    raise CommandError(f"unknown command {verb[:20]!r}; {HELP}")


def _parse_submit(rest: str) -> Command:
    name, _, rest = rest.partition(" ")
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-" for c in name):
        raise CommandError("usage: submit NAME JSON [priority], e.g. submit resize [640] 5")
    rest = rest.strip() or "[]"
    try:
        args, end = json.JSONDecoder().raw_decode(rest)
    except json.JSONDecodeError as exc:
        raise CommandError(f"the arguments are not JSON ({exc.msg}); give a list or an "
                           "object, e.g. [1, 2] or {\"x\": 1}") from None
    if not isinstance(args, (list, dict)):
        raise CommandError("the arguments must be a JSON list or object")
    tail = rest[end:].strip()
    priority = 0
    if tail:
        try:
            priority = int(tail)
        except ValueError:
            raise CommandError(f"priority {tail[:20]!r} is not a whole number") from None
        if not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
            raise CommandError(f"priority must be from {PRIORITY_RANGE[0]} to "
                               f"{PRIORITY_RANGE[1]}")
    return Command("submit", (name, args, priority))


def commands_of(content: str, fields: Any) -> list[str]:
    """The command texts in a message: FIELD_COMMANDS entries first, else the content."""
    texts: list[str] = []
    entries = fields.get(FIELD_COMMANDS) if isinstance(fields, dict) else None
    if isinstance(entries, list):
        for entry in entries[:MAX_COMMANDS]:
            if isinstance(entry, str):
                texts.append(entry)
            elif isinstance(entry, dict):
                for key, value in list(entry.items())[:1]:
                    if isinstance(key, str):
                        args = value if isinstance(value, str) else (
                            " ".join(str(v) for v in value) if isinstance(value, list) else "")
                        texts.append(f"{key} {args}".strip())
    if not texts and content.strip():
        texts.append(content.strip())
    return texts


def allowed(verb: str, role: str) -> bool:
    return verb in READ_VERBS or (verb in SUBMIT_VERBS and role == "submit")


def fit(text: str, limit: int = REPLY_BYTES) -> str:
    """`text` cut to `limit` UTF-8 bytes, whole lines where it can, with a mark when cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    mark = "\n…"
    budget = limit - len(mark.encode())
    kept: list[str] = []
    used = 0
    for line in text.split("\n"):
        size = len(line.encode()) + (1 if kept else 0)
        if used + size > budget:
            break
        kept.append(line)
        used += size
    if not kept:
        return data[:budget].decode(errors="ignore") + mark
    return "\n".join(kept) + mark


class RateLimiter:
    """A token bucket per operator: `per_minute` commands, refilled evenly."""

    def __init__(self, per_minute: int, clock: Any = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate_per_s = per_minute / 60.0
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, who: str) -> bool:
        now = self.clock()
        tokens, then = self._buckets.pop(who, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.rate_per_s)
        ok = tokens >= 1.0
        self._buckets[who] = (tokens - 1.0 if ok else tokens, now)
        if len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)
        return ok


def task_id_for(message_hash: bytes) -> str:
    """The task id of a `submit`: the LXMF message hash, so a message delivered twice (or
    sent again unchanged) names the same task, which the executor accepts only once."""
    return message_hash.hex()[:32]
