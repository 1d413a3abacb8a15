"""Operator access over LXMF: the node as a contact in Sideband, NomadNet or MeshChat.

The gateway runs an `LXMF.LXMRouter` on its own Reticulum instance, with one delivery
destination for the node's identity (its address is `lxmf_address`; `akitactl status` shows
the same value, worked out from the identity). Only identities in `[operators] identities`
are served, by role; everything else is dropped without a reply (a reply would cost
airtime and confirm the node to a stranger) and counted. Each accepted command is recorded
in the ledger (`operator.command`) with who sent it, before it runs.

Like RNS, the router puts in SIGINT/SIGTERM handlers that end the process and an atexit
hook: the gateway re-installs its own handlers after `start()`, this module takes the
atexit hook out, and `close()` runs the router's exit handler itself (atexit hooks do not
run in a forked worker). The router calls back on its own threads: messages are posted to
the gateway loop through the `LoopBridge`, like every other Reticulum callback.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import LXMF
import RNS
import zmq

from akita import transport
from akita.wire import events, protocol
from workers.gateway import operator_replies as replies
from workers.gateway import operator_rules as rules
from workers.gateway.bridge import LoopBridge

log = logging.getLogger(__name__)

EXECUTOR = "executor"
REQUEST_TIMEOUT_S = 10.0
TASKS_SHOWN = 8
Record = Callable[..., None]


class OperatorAccess:
    """The LXMF router, the allowlist and the command handlers, on the gateway's loop."""

    def __init__(self, config: Any, net: Any, bridge: LoopBridge, record: Record) -> None:
        self.config = config
        self.settings = config.operators
        self.net = net
        self.bridge = bridge
        self.record = record
        self.roles = dict(self.settings.identities)
        self.limiter = rules.RateLimiter(self.settings.rate_limit)
        self.counters = {name: 0 for name in (
            "received", "accepted", "refused_unknown", "refused_role", "unverified",
            "rate_limited", "bad_command", "replies", "reply_failures", "announces")}
        self.router: Any = None
        self.destination: Any = None
        self.executor: transport.AsyncRequester | None = None
        self._next_announce = 0.0
        # Never announced more often than [operators] announce_interval; the gateway raises
        # it to the node's own announce interval when the airtime budget derives a longer one.
        self.announce_interval_s = float(self.settings.announce_interval)

    @property
    def address(self) -> str:
        return self.destination.hash.hex() if self.destination is not None else ""

    def start(self, identity: Any, ctx: zmq.Context, run_dir: Path) -> None:
        """Construct the router (the caller re-installs its signal handlers afterwards)."""
        storage = Path(self.config.node.data_dir) / "lxmf"
        storage.mkdir(mode=0o700, exist_ok=True)
        self.router = LXMF.LXMRouter(identity=identity, storagepath=str(storage),
                                     autopeer=False)
        atexit.unregister(self.router.exit_handler)
        self.destination = self.router.register_delivery_identity(
            identity, display_name=f"akita {self.config.node.name}")
        self.router.register_delivery_callback(
            lambda message: self.bridge.post(self._on_message, message))
        if EXECUTOR in self.config.supervisor.workers:
            self.executor = transport.AsyncRequester(ctx, run_dir, EXECUTOR)
        log.info("operator access over LXMF at %s for %d identities", self.address,
                 len(self.roles))

    def readers(self) -> list[tuple[Any, Callable[[], None]]]:
        return [] if self.executor is None else [(self.executor.sock, self.executor.on_readable)]

    def tick(self, now: float) -> None:
        if self.executor is not None:
            self.executor.tick(now)
        if now >= self._next_announce and _any_interface_online():
            self.router.announce(self.destination.hash)
            self.counters["announces"] += 1
            self._next_announce = now + self.announce_interval_s

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "announce_interval_s": self.announce_interval_s}

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()
        if self.router is not None:
            self.router.exit_handler()

    # --- one message ----------------------------------------------------------------------------

    def _on_message(self, message: Any) -> None:
        self.counters["received"] += 1
        source = bytes(message.source_hash)
        if not message.signature_validated:
            # Unknown sender (its announce not heard yet) or a bad signature: no reply can
            # be trusted to reach the right party. Ask for its path so a resend validates.
            self.counters["unverified"] += 1
            RNS.Transport.request_path(source)
            return
        sender = RNS.Identity.recall(source)
        who = sender.hash.hex() if sender is not None else ""
        role = self.roles.get(who) or self.roles.get(source.hex())
        if role is None:
            self.counters["refused_unknown"] += 1
            log.info("LXMF message from %s (identity %s) refused: not an operator",
                     source.hex(), who or "unknown")
            return
        if not self.limiter.take(who):
            self.counters["rate_limited"] += 1
            return
        try:
            content = message.content_as_string() or ""
        except (UnicodeDecodeError, AttributeError):
            content = ""
        texts = rules.commands_of(content, message.fields)
        if not texts:
            self._reply(source, rules.HELP)
            return
        for text in texts[:rules.MAX_COMMANDS]:
            self._run(text, role, who, source, bytes(message.hash))

    def _run(self, text: str, role: str, who: str, source: bytes, message_hash: bytes) -> None:
        try:
            command = rules.parse(text)
        except rules.CommandError as exc:
            self.counters["bad_command"] += 1
            self._reply(source, str(exc))
            return
        if not rules.allowed(command.verb, role):
            self.counters["refused_role"] += 1
            self._reply(source, f"{command.verb}: not allowed for role {role}")
            return
        self.counters["accepted"] += 1
        self.record(*events.OperatorCommand(from_=who, via="lxmf", command=command.describe(),
                                            message=message_hash.hex()).entry())
        handler = _HANDLERS[command.verb]
        handler(self, command, lambda text: self._reply(source, text), message_hash)

    def _reply(self, destination_hash: bytes, text: str) -> None:
        identity = RNS.Identity.recall(destination_hash)
        if identity is None:
            self.counters["reply_failures"] += 1
            return
        destination = RNS.Destination(identity, RNS.Destination.OUT, RNS.Destination.SINGLE,
                                      "lxmf", "delivery")
        message = LXMF.LXMessage(destination, self.destination, rules.fit(text),
                                 desired_method=LXMF.LXMessage.OPPORTUNISTIC)
        message.register_failed_callback(lambda _m: self._count("reply_failures"))
        self.router.handle_outbound(message)
        self.counters["replies"] += 1

    def _count(self, name: str) -> None:
        self.bridge.post(self._bump, name)  # LXMF calls back on its own thread

    def _bump(self, name: str) -> None:
        self.counters[name] += 1

    # --- requests to the executor -------------------------------------------------------------

    def ask_executor(self, msg: protocol.Message, expect: type[protocol.Message],
                     on_reply: Callable[[Any], None], say: Callable[[str], None]) -> None:
        if self.executor is None:
            say("this node runs no executor: no tasks here")
            return
        self.executor.ask(msg, expect, on_reply,
                          lambda code, text: say(f"executor: {code}: {text}"),
                          REQUEST_TIMEOUT_S)


Say = Callable[[str], None]


def _help(access: OperatorAccess, _cmd: rules.Command, say: Say, _hash: bytes) -> None:
    say(rules.HELP)


def _status(access: OperatorAccess, _cmd: rules.Command, say: Say, _hash: bytes) -> None:
    net = access.net

    def send(counts: dict[str, int] | None) -> None:
        say(replies.status(net.name, net.node_id, net.stats(), net.peers(), net.clusters(),
                           counts))

    if access.executor is None:
        send(None)
        return
    access.executor.ask(protocol.TaskStats(), protocol.TaskStatsReply,
                        lambda reply: send(reply.counts), lambda _c, _t: send(None),
                        REQUEST_TIMEOUT_S)


def _peers(access: OperatorAccess, _cmd: rules.Command, say: Say, _hash: bytes) -> None:
    say(replies.peers(access.net.peers()))


def _clusters(access: OperatorAccess, _cmd: rules.Command, say: Say, _hash: bytes) -> None:
    net = access.net
    say(replies.clusters(net.clusters(), net.peers(), net.node_id, net.name))


def _tasks(access: OperatorAccess, _cmd: rules.Command, say: Say, _hash: bytes) -> None:
    access.ask_executor(protocol.TaskList(limit=TASKS_SHOWN), protocol.TaskListReply,
                        lambda reply: say(replies.tasks(reply.tasks)), say)


def _task(access: OperatorAccess, cmd: rules.Command, say: Say, _hash: bytes) -> None:
    task_id = cmd.args[0]
    access.ask_executor(protocol.TaskStatus(ids=[task_id]), protocol.TaskStatusReply,
                        lambda reply: say(replies.task(reply.tasks[0], task_id)), say)


def _submit(access: OperatorAccess, cmd: rules.Command, say: Say, message_hash: bytes) -> None:
    name, args, priority = cmd.args
    task_id = rules.task_id_for(message_hash)

    def accepted(reply: protocol.TaskAccepted) -> None:
        if reply.ids and reply.ids[0]:
            say(f"submitted {reply.ids[0]} ({name}, priority {priority})")
        else:
            error = reply.errors[0] if reply.errors else ["refused", "refused"]
            say(f"refused: {error[1]}: {str(error[2] if len(error) > 2 else '')[:200]}")

    access.ask_executor(protocol.TaskSubmit(tasks=[{"id": task_id, "name": name, "args": args,
                                                    "priority": priority}]),
                        protocol.TaskAccepted, accepted, say)


_HANDLERS: dict[str, Callable[[OperatorAccess, rules.Command, Say, bytes], None]] = {
    "help": _help, "status": _status, "peers": _peers, "clusters": _clusters,
    "tasks": _tasks, "task": _task, "submit": _submit,
}


def _any_interface_online() -> bool:
    return any(getattr(iface, "online", False) for iface in list(RNS.Transport.interfaces))

