"""How a worker tells its supervisor why it could not start.

A worker that exits because of its configuration (a task module that does not import, a
value only the worker can check) exits with `EXIT_CONFIG` (sysexits' EX_CONFIG) after
writing one line saying what is wrong to ``run_dir/NAME.exit``. The supervisor reads that
line with the exit report and shows it as the worker's error; it does not restart the
worker in a loop, since the same config would fail the same way.
"""

from __future__ import annotations

from pathlib import Path

EXIT_CONFIG = 78
MAX_REASON_BYTES = 2048


def reason_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.exit"


def write_reason(run_dir: Path, name: str, reason: str) -> None:
    """Leave `reason` for the supervisor; a failure to write only loses the detail."""
    try:
        reason_path(run_dir, name).write_text(reason[:MAX_REASON_BYTES], encoding="utf-8")
    except OSError:
        pass


def take_reason(run_dir: Path, name: str) -> str:
    """The reason a worker left (empty if none), removed so it is read once."""
    path = reason_path(run_dir, name)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_REASON_BYTES)
        path.unlink()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace").strip()
