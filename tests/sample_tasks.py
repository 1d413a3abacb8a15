"""Task types the tests run, listed as ``[tasks] modules = tests.sample_tasks``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import akita


@akita.task("sample.add")
def add(a: int, b: int) -> int:
    return a + b


@akita.task("sample.greet")
def greet(name: str, *, punctuation: str = "!") -> str:
    return f"hello {name}{punctuation}"


@akita.task("sample.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@akita.task("sample.whoami")
def whoami() -> dict[str, object]:
    """The task's own id and attempt, as a handler sees them."""
    context = akita.current_task()
    return {"id": context.id, "attempt": context.attempt, "pid": os.getpid()}


@akita.task("sample.hang", timeout=0.5)
def hang(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@akita.task("sample.big")
def big(size: int) -> str:
    return "x" * size


@akita.task("sample.unstorable")
def unstorable() -> object:
    return object()


@akita.task("sample.crash_once")
def crash_once(marker_dir: str) -> str:
    """Dies by SIGKILL on its first run (per task id), succeeds on the next."""
    marker = Path(marker_dir) / akita.current_task().id
    if not marker.exists():
        marker.write_text("ran")
        os.kill(os.getpid(), 9)
    return "survived"


@akita.task
def spin(milliseconds: float) -> int:
    """Burn CPU for about `milliseconds` ms (named tests.sample_tasks.spin)."""
    end = time.perf_counter() + milliseconds / 1000
    loops = 0
    while time.perf_counter() < end:
        loops += 1
    return loops
