"""The Python client: submit tasks to a node and collect their results.

    client = akita.Client("etc/akita.ini")
    task_id = client.submit("resize", ["a.png", 640], priority=7, requires=["gpu"])
    print(client.wait(task_id, timeout=60))

    ids = client.submit_many([("resize", [p, 640]) for p in paths])   # pipelined
    results = client.wait_many(ids, timeout=600)

The client connects straight to the executor's socket (``run_dir/executor.sock``). A submit
returns once the node has made the task durable (its ``task.submitted`` event is committed
to the ledger), so an acknowledged task survives any crash. `submit_many` keeps several
frames of up to `chunk` tasks (and about `FRAME_BYTES`) in flight at once. A task may
require capabilities (`requires`): it then runs only on a node that declares them all, this
one or a peer its gateway hands it to; `status` and `akitactl task ID` show where it ran.
Args larger than the config's ``[tasks] max_payload_bytes`` are refused before anything is
sent.

Results are pushed: a task submitted by this client is watched from the start, and its
outcome arrives (many per message) as soon as it is durable, whether or not anyone is
waiting yet; `wait` only reads what has arrived. If nothing arrives for `RESYNC_S` while
waiting (the executor may have restarted and forgotten the watch), the client asks again.

Task ids are chosen here (16 random hex digits), so a submit resent after a lost reply is
recognised by the executor and never queued twice. Not thread-safe: one Client per thread.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import zmq

from akita import config as config_mod
from akita import subscription, transport
from akita.catalogue import EXECUTOR, GATEWAY
from akita.errors import AkitaError, NodeNotResponding, NodeNotRunning, RequestFailed
from akita.tasks.registry import DEFAULT_PRIORITY
from akita.tasks.sizes import args_too_large_text, payload_bytes
from akita.wire import protocol

RESYNC_S = 1.0          # silence while waiting after which the client re-asks for outcomes
RESEND_AFTER_S = 5.0    # a submit frame not acknowledged by then is sent again (same ids)
CHUNK = 1000            # tasks per submit frame
FRAME_BYTES = 4 << 20   # about the most args per submit frame (a frame may hold 16 MiB)
WINDOW = 8              # submit frames in flight

TaskSpec = tuple[str, Any] | tuple[str, Any, int] | dict[str, Any]


class TaskFailed(AkitaError):
    """The task ended without a result: failed, timed_out or cancelled. Carries the remote
    error: `type`, `message` and `traceback` (as text, from the task process)."""

    def __init__(self, task_id: str, state: str, error: dict[str, Any] | None) -> None:
        error = error or {}
        self.task_id = task_id
        self.state = state
        self.type = str(error.get("type", ""))
        self.message = str(error.get("message", ""))
        self.traceback = str(error.get("traceback", ""))
        super().__init__(f"task {task_id} {state}: {self.type}: {self.message}")


class TaskRejected(RequestFailed):
    """The node refused a submit (unknown task type, bad args, full queue). From
    `submit_many`, `errors` lists every refusal as (index, code, message) and `ids` holds the
    ids of the tasks that were accepted (None where refused)."""

    def __init__(self, code: str, message: str, *, ids: list[str | None] | None = None,
                 errors: list[tuple[int, str, str]] | None = None) -> None:
        super().__init__(code, message)
        self.args = (message,)  # printed as the message alone: the code is for programs
        self.ids = ids or []
        self.errors = errors or []


class TaskNotFound(AkitaError):
    """The node does not know this task id (never submitted, or long forgotten)."""


class Client:
    """A connection to one node's executor."""

    def __init__(self, config_path: str | os.PathLike[str] | None = None, *,
                 config: config_mod.Config | None = None, timeout_s: float = 30.0) -> None:
        if config is None:
            config = config_mod.load(config_path or os.environ.get("AKITA_CONFIG",
                                                                   "etc/akita.ini"))
        self.config = config
        self.run_dir: Path = config.node.run_dir
        self.timeout_s = timeout_s
        self._ctx = zmq.Context()
        self._sock = transport.make_socket(self._ctx, zmq.DEALER, hwm=100_000)
        self._sock.connect(transport.endpoint(self.run_dir, EXECUTOR))
        self._rids = itertools.count(1)
        self._replies: dict[int, protocol.Message] = {}
        self._results: dict[str, dict[str, Any]] = {}
        self._arrived: list[str] = []   # ids whose outcome came since `_collect` last looked
        self._unknown: set[str] = set()
        self._watched: set[str] = set()

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- submitting -------------------------------------------------------------------------

    def submit(self, name: str, args: Sequence[Any] | dict[str, Any] = (), *,
               priority: int = DEFAULT_PRIORITY, requires: Iterable[str] = ()) -> str:
        """Submit one task; returns its id once the node has it durably. `args` is a list
        (positional) or a dict (keywords); `requires` names the capabilities the node that
        runs it must declare. Raises `TaskRejected` saying what is wrong."""
        try:
            return self.submit_many([(name, args, priority)],  # type: ignore[return-value]
                                    requires=requires)[0]
        except TaskRejected as exc:
            _index, code, message = exc.errors[0]
            raise TaskRejected(code, message, ids=exc.ids, errors=exc.errors) from None

    def submit_many(self, tasks: Iterable[TaskSpec], *, priority: int = DEFAULT_PRIORITY,
                    requires: Iterable[str] = (), chunk: int = CHUNK, window: int = WINDOW
                    ) -> list[str]:
        """Submit many tasks, pipelined: (name, args), (name, args, priority) or
        {"name", "args", "priority", "requires"} each (`priority` and `requires` are the
        defaults). Returns their ids, in order, once every one is durable; if any is refused,
        raises `TaskRejected` (the others were accepted). Args over max_payload_bytes are
        refused before anything is sent (nothing is accepted then)."""
        required = sorted(set(requires))
        specs = [_spec(task, priority, required) for task in tasks]
        sizes = self._sizes(specs)
        ids = _new_ids(len(specs))
        for spec, task_id in zip(specs, ids):
            spec["id"] = task_id
        frames = _frames(specs, sizes, chunk)
        accepted: list[str | None] = []
        errors: list[tuple[int, str, str]] = []
        for offset, reply in self._pipeline(frames, window):
            accepted.extend(reply.ids)
            errors.extend((offset + i, code, text) for i, code, text in reply.errors)
        self._watched.update(task_id for task_id in accepted if task_id)
        if errors:
            index, code, text = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            where = f"task #{index}: " if len(specs) > 1 else ""
            raise TaskRejected(code, f"{where}{text}{more}", ids=accepted, errors=errors)
        return accepted  # type: ignore[return-value]

    def _sizes(self, specs: list[dict[str, Any]]) -> list[int]:
        """Encoded size of each spec's args; `TaskRejected` for those over the limit."""
        limit = self.config.tasks.max_payload_bytes
        sizes = [payload_bytes(spec["args"]) for spec in specs]
        errors = [(i, "too_large", args_too_large_text(size, limit))
                  for i, size in enumerate(sizes) if size > limit]
        if errors:
            index, code, text = errors[0]
            where = f"task #{index}: " if len(specs) > 1 else ""
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise TaskRejected(code, f"{where}{text}{more}", ids=[None] * len(specs),
                               errors=errors)
        return sizes

    def _pipeline(self, frames: list[list[dict[str, Any]]], window: int
                  ) -> list[tuple[int, protocol.TaskAccepted]]:
        """Send `frames` with up to `window` in flight; their replies in frame order."""
        self._check_socket()
        replies: dict[int, protocol.TaskAccepted] = {}
        in_flight: dict[int, tuple[int, float]] = {}   # rid → (frame index, sent at)
        next_frame = 0
        deadline = time.monotonic() + self.timeout_s
        while len(replies) < len(frames):
            while next_frame < len(frames) and len(in_flight) < window:
                in_flight[self._send_submit(frames[next_frame])] = (next_frame, time.monotonic())
                next_frame += 1
            self._pump(min(0.1, max(0.0, deadline - time.monotonic())))
            for rid in [rid for rid in in_flight if rid in self._replies]:
                index, _sent = in_flight.pop(rid)
                reply = self._replies.pop(rid)
                if isinstance(reply, protocol.Error):
                    raise RequestFailed(reply.code, reply.message)
                assert isinstance(reply, protocol.TaskAccepted)
                replies[index] = reply
                deadline = time.monotonic() + self.timeout_s
            self._resend_overdue(frames, in_flight)
            if time.monotonic() > deadline:
                raise NodeNotResponding(f"the executor did not acknowledge a submit within "
                                        f"{self.timeout_s:g} s")
        offsets = list(itertools.accumulate([0] + [len(f) for f in frames[:-1]]))
        return [(offsets[i], replies[i]) for i in range(len(frames))]

    def _send_submit(self, frame: list[dict[str, Any]]) -> int:
        rid = next(self._rids)
        self._sock.send(protocol.encode(protocol.TaskSubmit(tasks=frame, watch=True), rid=rid))
        return rid

    def _resend_overdue(self, frames: list[list[dict[str, Any]]],
                        in_flight: dict[int, tuple[int, float]]) -> None:
        now = time.monotonic()
        for rid, (index, sent) in list(in_flight.items()):
            if now - sent >= RESEND_AFTER_S:  # same ids: the executor will not queue twice
                del in_flight[rid]
                in_flight[self._send_submit(frames[index])] = (index, now)

    # --- results ----------------------------------------------------------------------------

    def wait(self, task_id: str, timeout: float | None = None) -> Any:
        """The task's return value, once it has finished. Raises `TaskFailed` if it failed,
        timed out or was cancelled; `TimeoutError` if it is not done within `timeout` s."""
        return self.wait_many([task_id], timeout)[0]

    def wait_many(self, task_ids: Sequence[str], timeout: float | None = None, *,
                  return_exceptions: bool = False) -> list[Any]:
        """Return values of `task_ids`, in order. A failed task raises its `TaskFailed` (the
        first in order), or with `return_exceptions` stands in the list as that exception."""
        self._collect(task_ids, timeout)
        values: list[Any] = []
        for task_id in task_ids:
            outcome = self._results[task_id]
            if outcome["state"] == "succeeded":
                values.append(outcome.get("result"))
            else:
                failure = TaskFailed(task_id, outcome["state"], outcome.get("error"))
                if not return_exceptions:
                    raise failure
                values.append(failure)
        for task_id in task_ids:
            self._results.pop(task_id, None)
            self._watched.discard(task_id)
        return values

    def finished(self, task_ids: Iterable[str], timeout: float = 0.0) -> list[str]:
        """Which of `task_ids` (submitted by this client, or waited for before) have an
        outcome here, after reading what arrives within `timeout` s (returning as soon as
        anything does). Never blocks longer; `wait_many` then returns their values at once.
        For a loop that submits and gathers results at the same time."""
        self._pump(timeout)
        return [task_id for task_id in task_ids if task_id in self._results]

    def _collect(self, task_ids: Sequence[str], timeout: float | None) -> None:
        """Read pushed outcomes until every one of `task_ids` is in."""
        self._arrived.clear()
        missing = {task_id for task_id in task_ids if task_id not in self._results}
        self._watched -= missing & self._unknown  # unknown last time: ask again
        self._unknown -= missing
        unwatched = [task_id for task_id in missing if task_id not in self._watched]
        if unwatched:
            self._watch(unwatched)
        deadline = None if timeout is None else time.monotonic() + timeout
        quiet_since = time.monotonic()
        while missing:
            # Only what arrived since the last look: thousands may be awaited at once.
            missing.difference_update(self._arrived)
            self._arrived.clear()
            lost = missing & self._unknown if self._unknown else None
            if lost:
                self._unknown -= lost
                self._from_ledger(lost)
                missing -= set(self._results)
            if not missing:
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"{len(missing)} task(s) not finished within {timeout:g} s "
                                   f"(e.g. {next(iter(missing))})")
            wait_s = RESYNC_S if deadline is None else min(RESYNC_S, deadline - now)
            if self._pump(wait_s):
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= RESYNC_S:
                self._check_socket()
                self._watch(sorted(missing))
                quiet_since = time.monotonic()

    def _from_ledger(self, task_ids: set[str]) -> dict[str, dict[str, Any]]:
        """Views of `task_ids` rebuilt from the node's ledger, for tasks the executor no
        longer keeps in memory; finished ones join the collected outcomes. Raises
        `TaskNotFound` for an id the ledger does not hold either. Reads the whole feed."""
        from akita import identity
        from akita.ledger import chain
        from akita.tasks.queue import TERMINAL, TaskBook

        try:
            node_id: str | None = identity.load(self.config.node.data_dir).node_id
        except AkitaError:
            node_id = None
        book = TaskBook(node_id, retain_finished=len(task_ids) + 1, retain_bytes=1 << 62)
        try:
            for event in chain.read_events(chain.db_path(self.config), kind_prefix="task."):
                if isinstance(event.data, dict) and event.data.get("id") in task_ids:
                    book.apply(event.kind, event.data, event.ts)
        except chain.LedgerNotFound:
            pass
        views = {}
        for task_id in sorted(task_ids):
            record = book.get(task_id)
            if record is None:
                raise TaskNotFound(f"no task {task_id} on this node")
            views[task_id] = record.view()
            if record.state in TERMINAL:
                self._results[task_id] = record.outcome()
        return views

    def _watch(self, task_ids: list[str]) -> None:
        for start in range(0, len(task_ids), 10 * CHUNK):
            batch = task_ids[start:start + 10 * CHUNK]
            self._sock.send(protocol.encode(protocol.TaskWatch(ids=batch),
                                            rid=next(self._rids)))
            self._watched.update(batch)

    # --- queries ----------------------------------------------------------------------------

    def status(self, task_id: str) -> dict[str, Any]:
        """The task's record: id, name, state, priority, attempts, ran_on, args, timestamps,
        and its result or error once finished."""
        reply = self._request(protocol.TaskStatus(ids=[task_id]))
        assert isinstance(reply, protocol.TaskStatusReply)
        if reply.tasks and reply.tasks[0] is not None:
            return reply.tasks[0]
        found = self._from_ledger({task_id})
        if task_id not in found:
            raise TaskNotFound(f"no task {task_id} on this node")
        return found[task_id]

    def cancel(self, task_id: str) -> bool:
        """Cancel a queued or running task (a running one's process is killed). True if it
        was cancelled, False if it had already finished."""
        reply = self._request(protocol.TaskCancel(ids=[task_id]))
        assert isinstance(reply, protocol.TaskCancelReply)
        outcome = reply.outcomes.get(task_id, "unknown")
        if outcome == "unknown":
            raise TaskNotFound(f"no task {task_id} on this node")
        return outcome == "cancelled"

    def tasks(self, state: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The latest `limit` tasks the node knows (all, or those in `state`), oldest
        first: {id, name, state, priority, attempts, ran_on, submitted_ts} each."""
        reply = self._request(protocol.TaskList(state=state or "", limit=limit))
        assert isinstance(reply, protocol.TaskListReply)
        return reply.tasks

    def types(self) -> list[dict[str, Any]]:
        """The task types this node runs."""
        reply = self._request(protocol.TaskTypes())
        assert isinstance(reply, protocol.TaskTypesReply)
        return reply.types

    def stats(self) -> dict[str, Any]:
        """Counts by state, the task processes, and totals."""
        reply = self._request(protocol.TaskStats())
        assert isinstance(reply, protocol.TaskStatsReply)
        return {"counts": reply.counts, "pool": reply.pool, "totals": reply.totals}

    # --- the network (answered by the node's gateway) ---------------------------------------

    def peers(self) -> dict[str, Any]:
        """{"self": NODE_ID, "peers": [{"id", "name", "cluster", "role", "last_seen_s",
        "load", "state", "generation", "takes_work"}]}, as `akitactl peers --json` prints
        it; `takes_work`: this node would hand the peer tasks now (`[security] delegate_to`)."""
        reply = self._gateway(protocol.PeerList())
        assert isinstance(reply, protocol.PeerListReply)
        return {"self": reply.self_id, "peers": reply.peers}

    def security(self) -> dict[str, Any]:
        """What the gateway refused from the mesh: {"refused": {reason: count}, "total",
        "top_offenders": [{"id", "refused"}]}, as `akitactl security --json` prints it."""
        reply = self._gateway(protocol.PeerStats())
        assert isinstance(reply, protocol.PeerStatsReply)
        found = reply.stats.get("security")
        return found if isinstance(found, dict) else {}

    def clusters(self) -> list[dict[str, Any]]:
        """Each cluster as this node sees it: {"id", "members", "coordinator", "term"}."""
        reply = self._gateway(protocol.ClusterList())
        assert isinstance(reply, protocol.ClusterListReply)
        return reply.clusters

    def state(self, node: str = "") -> dict[str, Any]:
        """A node's state record from the merged view (default: this node's):
        {"node", "generation", "version", "data"}. `node`: id, unique id prefix or name."""
        reply = self._gateway(protocol.StateGet(node=node))
        assert isinstance(reply, protocol.StateReply)
        return {"node": reply.node, "generation": reply.generation, "version": reply.version,
                "data": reply.data}

    def state_set(self, key: str, value: Any) -> None:
        """Set a custom key of this node's state (returns once it is durable)."""
        self._gateway(protocol.StateSet(key=key, value=value))

    def services(self) -> list[dict[str, Any]]:
        """Who offers what: [{"name", "kind" ("task" | "service"), "nodes": [NODE_ID…]}]."""
        reply = self._gateway(protocol.ServiceList())
        assert isinstance(reply, protocol.ServiceListReply)
        return reply.services

    def mesh(self) -> dict[str, Any]:
        """What the gateway counts and derives: {"traffic": {"interfaces", "by_kind"},
        "budget": {...}} as `akitactl status --json` shows them, and "feeds": the ledger
        feeds held here, feed → latest sequence."""
        reply = self._gateway(protocol.PeerStats())
        assert isinstance(reply, protocol.PeerStatsReply)
        feeds = (reply.stats.get("replication") or {}).get("feeds")
        return {"traffic": reply.stats.get("traffic"), "budget": reply.stats.get("budget"),
                "feeds": feeds}

    def _gateway(self, msg: protocol.Message) -> protocol.Message:
        with transport.Requester(self.run_dir, GATEWAY, ctx=self._ctx) as requester:
            return requester.request(msg, self.timeout_s)

    # --- inter-cluster messages (akita.subscription) ----------------------------------------

    def send(self, cluster_id: str, topic: str, payload: Any, *, deadline_s: float = 0.0,
             message_id: str = "") -> dict[str, Any]:
        """Send `payload` (any JSON value) to the subscribers of `topic` in cluster
        `cluster_id`; returns once delivery is acknowledged end to end: {"id", "cluster",
        "coordinator", "delivered": [NODE_ID…], "attempts"}. Raises
        `akita.subscription.MessageUndeliverable` after `deadline_s` (0: the node's
        [cluster] message_deadline); `message_id` (hex) makes a resend safe."""
        return subscription.send(self.run_dir, cluster_id, topic, payload,
                                 deadline_s=deadline_s or self.config.cluster.message_deadline,
                                 message_id=message_id, ctx=self._ctx)

    def subscribe(self, prefix: str, *,
                  lease_s: float = subscription.DEFAULT_LEASE_S) -> subscription.Subscription:
        """Follow messages arriving at this node for topics starting with `prefix`: an
        iterator of {"id", "from", "cluster", "topic", "payload"} (or `.get(timeout_s)`);
        close it (or use `with`) to stop advertising the prefix. It has its own ZeroMQ
        context, so it may outlive this client."""
        return subscription.Subscription(self.run_dir, prefix, lease_s=lease_s)

    # --- the socket -------------------------------------------------------------------------

    def _check_socket(self) -> None:
        path = transport.socket_path(self.run_dir, EXECUTOR)
        if not path.exists():
            raise NodeNotRunning(f"no node is running with an executor (no socket at {path})")

    def _request(self, msg: protocol.Message) -> protocol.Message:
        self._check_socket()
        rid = next(self._rids)
        self._sock.send(protocol.encode(msg, rid=rid))
        deadline = time.monotonic() + self.timeout_s
        while rid not in self._replies:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NodeNotResponding(f"the executor did not answer within "
                                        f"{self.timeout_s:g} s")
            self._pump(remaining)
        reply = self._replies.pop(rid)
        if isinstance(reply, protocol.Error):
            raise RequestFailed(reply.code, reply.message)
        return reply

    def _pump(self, timeout_s: float) -> bool:
        """Read whatever arrives within `timeout_s`; True if anything did."""
        if not self._sock.poll(max(0, int(timeout_s * 1000)), zmq.POLLIN):
            return False
        while True:
            try:
                data = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return True
            rid, msg = protocol.decode_frame(data)
            if isinstance(msg, protocol.TaskResults):
                self._on_results(msg.results)
            elif rid is not None:
                self._replies[rid] = msg

    def _on_results(self, results: list[dict[str, Any]]) -> None:
        for outcome in results:
            task_id = outcome.get("id")
            if not isinstance(task_id, str):
                continue
            if outcome.get("state") == "unknown":
                self._unknown.add(task_id)
            else:
                self._results[task_id] = outcome
                self._arrived.append(task_id)


def _spec(task: TaskSpec, priority: int, requires: list[str]) -> dict[str, Any]:
    needs: Any = requires
    if isinstance(task, dict):
        name, args, prio = task.get("name"), task.get("args", ()), task.get("priority", priority)
        needs = task.get("requires", requires)
    elif len(task) == 2:
        (name, args), prio = task, priority  # type: ignore[misc]
    else:
        name, args, prio = task  # type: ignore[misc]
    if isinstance(args, tuple):
        args = list(args)
    elif args is None:
        args = []
    spec = {"name": name, "args": args, "priority": prio}
    if needs:
        spec["requires"] = list(needs)
    return spec


def _frames(specs: list[dict[str, Any]], sizes: list[int], chunk: int
            ) -> list[list[dict[str, Any]]]:
    """Specs cut into frames of at most `chunk` tasks and about `FRAME_BYTES` of args."""
    frames: list[list[dict[str, Any]]] = []
    frame: list[dict[str, Any]] = []
    frame_bytes = 0
    for spec, size in zip(specs, sizes):
        if frame and (len(frame) >= chunk or frame_bytes + size > FRAME_BYTES):
            frames.append(frame)
            frame, frame_bytes = [], 0
        frame.append(spec)
        frame_bytes += size
    if frame:
        frames.append(frame)
    return frames


def _new_ids(count: int) -> list[str]:
    raw = os.urandom(8 * count).hex()
    return [raw[i:i + 16] for i in range(0, 16 * count, 16)]
