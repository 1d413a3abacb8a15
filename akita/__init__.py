"""Akita Genesis: a node daemon and framework for distributed systems over Reticulum.

The public API for applications:

    import akita

    @akita.task("resize", timeout=30)          # in a module listed in [tasks] modules
    def resize(path: str, width: int) -> str:
        job = akita.current_task()             # job.id: for idempotent side effects
        ...

    client = akita.Client("etc/akita.ini")
    result = client.wait(client.submit("resize", ["a.png", 640]), timeout=60)

`Client` is imported on first use, so a task module that only declares tasks does not pull
in ZeroMQ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from akita.tasks.registry import TaskContext, current_task, task

if TYPE_CHECKING:
    from akita.client import Client as Client
    from akita.client import TaskFailed as TaskFailed
    from akita.client import TaskNotFound as TaskNotFound
    from akita.client import TaskRejected as TaskRejected


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("akita-genesis")
    except PackageNotFoundError:
        return "0.0.0+unknown"

_FROM_CLIENT = ("Client", "TaskFailed", "TaskNotFound", "TaskRejected")


def __getattr__(name: str) -> Any:
    # Resolved on first use: reading package metadata costs milliseconds at every import.
    if name == "__version__":
        return _version()
    if name in _FROM_CLIENT:
        from akita import client

        return getattr(client, name)
    raise AttributeError(f"module 'akita' has no attribute {name!r}")


__all__ = [
    "Client",
    "TaskContext",
    "TaskFailed",
    "TaskNotFound",
    "TaskRejected",
    "__version__",
    "current_task",
    "task",
]
