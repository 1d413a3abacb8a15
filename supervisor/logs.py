"""Worker output capture: each worker's stdout and stderr go to log_dir/NAME.log.

A worker writes into a pipe whose read end the supervisor polls; what arrives is appended to
the worker's log file, which is rotated by size (NAME.log → NAME.log.1 → … NAME.log.N).
Rotation happens in the supervisor, never in the worker, so a worker that is SIGKILLed in the
middle of a line cannot leave a half-rotated set behind.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from akita import rundir

log = logging.getLogger(__name__)

_READ_BYTES = 65536
_READS_PER_WAKEUP = 16  # bounded, so one chatty worker cannot starve the poll loop


class RotatingLog:
    """An append-only file rotated when it would grow past `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._size_bytes = 0

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._size_bytes = os.fstat(self._fd).st_size
        return self._fd

    def write(self, data: bytes) -> None:
        fd = self._open()
        if self._size_bytes and self._size_bytes + len(data) > self.max_bytes:
            self.rotate()
            fd = self._open()
        while data:
            written = os.write(fd, data)
            self._size_bytes += written
            data = data[written:]

    def rotate(self) -> None:
        """NAME.log.(N-1) → NAME.log.N, …, NAME.log → NAME.log.1; with no backups, truncate."""
        self.close()
        if self.backups == 0:
            os.truncate(self.path, 0)
            return
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.path.exists():
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class OutputPipe:
    """The read end of one worker incarnation's stdout/stderr pipe."""

    def __init__(self, fd: int, sink: RotatingLog) -> None:
        self.fd = fd
        self.sink = sink
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> bool:
        """Copy what is waiting into the log; False once every writer has closed the pipe."""
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = os.read(self.fd, _READ_BYTES)
            except BlockingIOError:
                return True
            if not data:
                return False
            try:
                self.sink.write(data)
            except OSError as exc:  # a full disk must not stop the supervisor
                log.warning("cannot write %s: %s", self.sink.path, exc)
        return True

    def close(self) -> None:
        os.close(self.fd)


class LogFiles:
    """One RotatingLog per worker name, kept across the worker's incarnations."""

    def __init__(self, log_dir: Path, max_bytes: int, backups: int) -> None:
        self.log_dir = log_dir
        self.max_bytes = max_bytes
        self.backups = backups
        self._logs: dict[str, RotatingLog] = {}

    def configure(self, max_bytes: int, backups: int) -> None:
        """New rotation limits (after a reload); they apply from the next write."""
        self.max_bytes = max_bytes
        self.backups = backups
        for sink in self._logs.values():
            sink.max_bytes = max_bytes
            sink.backups = backups

    def pipe_for(self, name: str) -> tuple[OutputPipe, int]:
        """A fresh pipe for a new incarnation of `name`: (our read end, the child's write end)."""
        sink = self._logs.get(name)
        if sink is None:
            sink = RotatingLog(rundir.log_path(self.log_dir, name), self.max_bytes, self.backups)
            self._logs[name] = sink
        read_fd, write_fd = os.pipe()
        return OutputPipe(read_fd, sink), write_fd

    def close(self) -> None:
        for sink in self._logs.values():
            sink.close()
