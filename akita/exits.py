"""How a worker tells its supervisor that restarting it cannot help.

Some failures do not change by themselves: a configuration the worker cannot run with (a
task module that does not import, a value only the worker can check), a port another
Reticulum program holds. Restarting such a worker only loops until the restart intensity
limit makes it FATAL, burying the reason under "N restarts within T s". Instead the worker
writes one line saying what is wrong to ``run_dir/NAME.exit`` and exits with `EXIT_CONFIG`
(sysexits' EX_CONFIG); the supervisor reads that line with the exit report, shows it as the
worker's error (status NOTE, `last_error`, its own log) and marks it FATAL at once, until an
operator starts it again (after fixing the cause) or a reload changes its settings.

A file rather than a bus message: the worker exits right after, and a message published
before the bus has subscribed its socket is silently dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

EXIT_CONFIG = 78
MAX_REASON_BYTES = 2048


def reason_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.exit"


def write_reason(run_dir: Path, name: str, reason: str) -> None:
    """Leave `reason` for the supervisor (best effort: the exit code alone still counts)."""
    path = reason_path(run_dir, name)
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_bytes(reason.encode()[:MAX_REASON_BYTES])
        os.replace(tmp, path)
    except OSError:
        pass


def take_reason(run_dir: Path, name: str) -> str:
    """The reason a worker left (empty if none), removed so a later exit never shows a
    stale one."""
    path = reason_path(run_dir, name)
    try:
        with open(path, "rb") as f:
            reason = f.read(MAX_REASON_BYTES).decode("utf-8", errors="replace")
        path.unlink()
    except OSError:
        return ""
    return reason.strip()
