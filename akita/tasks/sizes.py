"""The size rules of task args, results and errors, and the texts that report them.

`[tasks] max_payload_bytes` bounds what may travel between nodes (args at submit, at a
peer's run request, results coming back); `[tasks] max_result_bytes` bounds what is stored
(a result, or an error with its traceback). Sizes are of the msgpack encoding, as the
bytes would travel or be stored. The client, the executor, its task processes and its
delegation all apply these, so each rule and its wording live here once.

Pure functions with no I/O: a task process imports this too.
"""

from __future__ import annotations

from typing import Any

import msgpack

from akita.tasks.registry import Refusal

PAYLOAD_LIMIT = "max_payload_bytes"
RESULT_LIMIT = "max_result_bytes"


def payload_bytes(value: Any) -> int:
    """Encoded size of task args or a result, as they would travel."""
    return len(msgpack.packb(value, use_bin_type=True))


def args_too_large_text(size: int, max_bytes: int) -> str:
    """Why args of `size` encoded bytes are refused."""
    return f"the args are {size} bytes; [tasks] {PAYLOAD_LIMIT} is {max_bytes}"


def too_large(args: Any, max_bytes: int) -> Refusal | None:
    """The refusal for args over `max_bytes` encoded; None when they fit."""
    size = payload_bytes(args)
    if size <= max_bytes:
        return None
    return Refusal("too_large", args_too_large_text(size, max_bytes))


def result_too_large(size: int, max_bytes: int, limit: str = PAYLOAD_LIMIT) -> dict[str, str]:
    """The error recorded for a result of `size` bytes over `max_bytes`, the value of the
    `[tasks]` key `limit`."""
    return {"type": "ResultTooLarge", "message": f"the result is {size} bytes; [tasks] "
            f"{limit} is {max_bytes}", "traceback": ""}


def result_limit(max_payload_bytes: int, max_result_bytes: int) -> tuple[int, str]:
    """The limit on a result that came back from a peer, and the key that sets it: it has
    travelled, and it is stored, so the smaller of the two applies."""
    if max_payload_bytes <= max_result_bytes:
        return max_payload_bytes, PAYLOAD_LIMIT
    return max_result_bytes, RESULT_LIMIT


def cap_error(error: dict[str, str], max_bytes: int) -> dict[str, str]:
    """Shorten an error so its encoding stays under `max_bytes`: the traceback keeps its end
    (where the exception was raised), the message its beginning."""
    budget = max(16, max_bytes - 64)
    kind = error["type"][:200]
    message = error["message"][: max(8, budget // 4)]
    room = budget - len(kind.encode()) - len(message.encode())
    text = error["traceback"]
    if len(text.encode()) > room:
        text = "…" + text.encode()[-max(0, room - 4):].decode(errors="ignore")
    return {"type": kind, "message": message, "traceback": text}
