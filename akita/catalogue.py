"""The worker catalogue: every worker process a node can run, in one table.

Config (which `[worker:NAME]` sections exist, which sections a reload compares), the
supervisor (start and stop order, the zygote's preloads, which worker a control request is
forwarded to), the worker base (which class a forked worker runs) and the sampler (which
worker's children are task processes) all read this table, so adding a worker is one entry
here and its module under `workers/`.

`akita` must not import `workers` or `supervisor` (it is shared with user code and
`akitactl`, and the gateway's module imports Reticulum), so entry points and preloads are
dotted strings, imported only where they run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Worker names: also the name of each worker's socket (run_dir/NAME.sock), log file and
# `[worker:NAME]` config section.
LEDGER = "ledger"
SAMPLER = "sampler"
EXECUTOR = "executor"
GATEWAY = "gateway"

# What the zygote runs in every forked worker; it loads the worker's class by name.
WORKER_MAIN = "workers.base:main"

# Modules every worker needs, imported once in the zygote so a fork starts warm.
RUNTIME_PRELOAD = ("zmq", "msgpack", "psutil", "workers.base")


@dataclass(frozen=True)
class WorkerEntry:
    """One worker process: what runs, what it reads, what it answers.

    `entry_point` is "module:Class" of its `workers.base.Worker` subclass. `sections` are
    the config sections it is started with (`Config` attributes): a change in any of them
    restarts it on reload. `preload` are modules the zygote imports for it besides
    `RUNTIME_PRELOAD` (never a module that imports RNS: only the gateway process may).
    `nouns` are the request nouns (the part of a kind before the dot) whose requests the
    control socket forwards to it. `runs_tasks` marks the worker whose descendants are
    task processes, as the sampler labels them.
    """

    name: str
    entry_point: str
    sections: tuple[str, ...]
    preload: tuple[str, ...] = ()
    nouns: tuple[str, ...] = ()
    runs_tasks: bool = False

    @property
    def module(self) -> str:
        return self.entry_point.partition(":")[0]

    @property
    def class_name(self) -> str:
        return self.entry_point.partition(":")[2]


# In start order: a worker starts once the one before it is running, and they stop in
# reverse, so the ledger is up before anything writes to it and flushes after the rest.
WORKERS: tuple[WorkerEntry, ...] = (
    WorkerEntry(LEDGER, "workers.ledger.worker:LedgerWorker",
                sections=("node", "ledger"),
                preload=("apsw", "workers.ledger.worker"),
                nouns=("ledger",)),
    WorkerEntry(SAMPLER, "workers.sampler:SamplerWorker",
                sections=("node", "sampler"),
                preload=("workers.sampler",),
                nouns=("resource",)),
    WorkerEntry(EXECUTOR, "workers.executor.worker:ExecutorWorker",
                sections=("node", "tasks", "commands"),
                preload=("workers.executor.worker",),
                nouns=("task",), runs_tasks=True),
    # Not in the common zygote on purpose: its module imports RNS, which only the gateway
    # process may import. It is forked from a zygote of its own (supervisor/forks.py).
    WorkerEntry(GATEWAY, "workers.gateway.worker:GatewayWorker",
                sections=("node", "cluster", "channels", "tasks", "commands", "reticulum",
                          "security", "operators"),
                nouns=("peer", "cluster", "state", "service", "message")),
)

WORKER_ORDER: tuple[str, ...] = tuple(entry.name for entry in WORKERS)
BY_NAME: Mapping[str, WorkerEntry] = {entry.name: entry for entry in WORKERS}


def _owners() -> dict[str, str]:
    owners: dict[str, str] = {}
    for entry in WORKERS:
        for noun in entry.nouns:
            if noun in owners:
                raise ValueError(f"request noun {noun!r} is owned by both {owners[noun]} "
                                 f"and {entry.name}")
            owners[noun] = entry.name
    return owners


# Which worker answers requests whose kind starts with this noun.
NOUN_OWNERS: Mapping[str, str] = _owners()

# The worker whose descendants are task processes (the sampler's roles).
TASK_RUNNER: str = next(entry.name for entry in WORKERS if entry.runs_tasks)


def owner_of(kind: str) -> str | None:
    """The worker that answers a request of `kind` ("noun.verb"), or None."""
    return NOUN_OWNERS.get(kind.partition(".")[0])


def preload() -> tuple[str, ...]:
    """Every module the zygote imports: the runtime's, then each worker's, without repeats."""
    modules = [*RUNTIME_PRELOAD, *(m for entry in WORKERS for m in entry.preload)]
    return tuple(dict.fromkeys(modules))
