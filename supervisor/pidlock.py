"""The run directory's lock: one supervisor per run directory.

An exclusive `flock` on run_dir/supervisor.pid, held for the supervisor's whole life. The
kernel drops it when the process dies however it dies, so a stale file left by a SIGKILLed
supervisor never blocks the next start; the pid written inside is only for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from akita import rundir
from akita.errors import AkitaError


class AlreadyRunning(AkitaError):
    """Another supervisor holds the lock on this run directory."""


class PidLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = rundir.pid_path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid, or raise AlreadyRunning naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(f"another supervisor (pid {holder}) is running on "
                                 f"{self.path.parent}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Remove the file and drop the lock (in that order, so no one sees our pid unlocked)."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
