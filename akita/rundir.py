"""The names of a node's files: its sockets and pid lock in run_dir, its logs in log_dir.

The supervisor creates these, workers and clients find them, `akitactl` reads them: every
one of them takes the name from here. Nothing here opens a file or imports ZeroMQ, so the
CLI and the pid lock can use it cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from akita import catalogue

# Sockets of the supervisor; each worker's socket is named after the worker.
CONTROL = "control"
BUS_IN = "bus-in"    # XSUB in the supervisor: publishers connect here
BUS_OUT = "bus-out"  # XPUB in the supervisor: subscribers connect here
SUPERVISOR_SOCKETS = (CONTROL, BUS_IN, BUS_OUT)
SOCKET_SUFFIX = ".sock"

# The supervisor's lock on its run directory; the pid inside is for messages only.
PID_FILE = "supervisor.pid"

# The supervisor's own log; each worker's log is named after the worker.
SUPERVISOR_LOG = "supervisor"
LOG_SUFFIX = ".log"


def socket_path(run_dir: Path, name: str) -> Path:
    """Path of socket `name` (control, bus-in, bus-out, or a worker's name)."""
    return run_dir / (name + SOCKET_SUFFIX)


def endpoint(run_dir: Path, name: str) -> str:
    """`ipc://` address of socket `name` (control, bus-in, bus-out, or a worker's name)."""
    return f"ipc://{socket_path(run_dir, name)}"


def socket_names(workers: Iterable[str] = catalogue.WORKER_ORDER) -> tuple[str, ...]:
    """Every socket a node binds in its run directory: the supervisor's and the workers'."""
    return (*SUPERVISOR_SOCKETS, *workers)


def longest_socket_name() -> str:
    """The longest socket file name, which bounds how long run_dir may be."""
    return max((name + SOCKET_SUFFIX for name in socket_names()), key=len)


def pid_path(run_dir: Path) -> Path:
    return run_dir / PID_FILE


def log_path(log_dir: Path, name: str) -> Path:
    """Log file of process `name`: the supervisor or a worker."""
    return log_dir / (name + LOG_SUFFIX)
