"""Operator access over LXMF, end to end: a real LXMF client process talks to a real node
over loopback Reticulum. An allowed identity gets answers and can submit; a read-only one
cannot submit; an unknown one gets nothing and is counted. Plus the pure rules."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from akita import config as config_mod
from akita.errors import ConfigError
from akita.identity import destination_hash, load_or_create
from akita.ledger import chain
from akita.wire import protocol
from tests.helpers import REPO, Node, free_port, net_sections, wait_for
from workers.gateway import operator_replies as replies
from workers.gateway import operator_rules as rules

CLIENT = REPO / "tests" / "lxmf_operator.py"
TASKS = {"pool_size": 1, "modules": "tests.sample_tasks", "task_timeout": 20}


def run_client(root: Path, hub_port: int, address: str, commands: list[Any],
               wait_s: float = 10.0, handshake: bool = True) -> list[dict[str, Any]]:
    argv = [sys.executable, str(CLIENT), "--dir", str(root), "--connect",
            f"127.0.0.1:{hub_port}", "--to", address, "--commands", json.dumps(commands),
            "--wait", str(wait_s)]
    if handshake:
        argv.append("--handshake")
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=False,
                          timeout=60 + wait_s * (len(commands) + 2))
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines and lines[-1].get("done"), (done.returncode, done.stdout[-2000:],
                                             done.stderr[-2000:])
    return lines[:-1]


def operators_stats(node: Node) -> dict[str, int]:
    reply = node.request(protocol.PeerStats())
    assert isinstance(reply, protocol.PeerStatsReply)
    return reply.stats.get("operators", {})  # type: ignore[no-any-return]


@pytest.fixture
def operator_ids(short_tmp: Path) -> dict[str, tuple[Path, str]]:
    """Three client identities: (directory, identity hash)."""
    found = {}
    for name in ("admin", "reader", "stranger"):
        root = short_tmp / f"op-{name}"
        found[name] = (root, load_or_create(root).node_id)
    return found


@pytest.mark.slow
def test_lxmf_operator_end_to_end(make_node: Callable[..., Node],
                                  operator_ids: dict[str, tuple[Path, str]]) -> None:
    hub_port = free_port()
    admin_dir, admin = operator_ids["admin"]
    reader_dir, reader = operator_ids["reader"]
    stranger_dir, _stranger = operator_ids["stranger"]
    node = make_node(net_sections(
        hub_port, True, "opnode", supervisor={"workers": "ledger, executor, gateway"},
        tasks=TASKS, operators={"identities": f"{admin}:submit, {reader}:read",
                                "rate_limit": 30}))
    node.start()
    address = node.ctl_json("status")["node"]["lxmf_address"]
    assert address == destination_hash(node.status()["node"]["id"], "lxmf.delivery")

    results = run_client(admin_dir, hub_port, address, [
        "status", "peers", "clusters", {"field": "status"}, "submit sample.add [2, 3] 5",
        "tasks", "frobnicate", "submit sample.add not-json"])
    by_command = {json.dumps(r["command"]): r for r in results}
    status = by_command['"status"']["reply"]
    assert status is not None and status.startswith("opnode "), status
    assert "tasks:" in status
    assert len(status.encode()) <= rules.REPLY_BYTES
    assert by_command['{"field": "status"}']["reply"].startswith("opnode ")
    assert by_command['"peers"']["reply"] == "no peers"
    submitted = by_command['"submit sample.add [2, 3] 5"']
    assert submitted["reply"].startswith("submitted "), submitted
    task_id = submitted["reply"].split()[1]
    assert task_id == submitted["hash"][:32]  # idempotent: the message hash names the task
    assert "unknown command 'frobnicate'" in by_command['"frobnicate"']["reply"]
    assert "not JSON" in by_command['"submit sample.add not-json"']["reply"]

    def task_reply() -> Any:
        reply = run_client(admin_dir, hub_port, address, [f"task {task_id}"])[0]["reply"]
        return reply if reply and " succeeded " in reply else None

    final = wait_for(task_reply, 60, "the submitted task reported succeeded", interval_s=0.5)
    assert final.startswith(task_id) and "result 5" in final

    read_only = run_client(reader_dir, hub_port, address, ["status", "submit sample.add [1, 1]"])
    assert read_only[0]["reply"].startswith("opnode ")
    assert read_only[1]["reply"] == "submit: not allowed for role read"

    before = operators_stats(node)
    nothing = run_client(stranger_dir, hub_port, address, ["status", "help"], wait_s=4,
                         handshake=False)
    assert [r["reply"] for r in nothing] == [None, None]
    stats = wait_for(lambda: (s := operators_stats(node)).get("refused_unknown", 0)
                     + s.get("unverified", 0) > before.get("refused_unknown", 0)
                     + before.get("unverified", 0) and s, 10, "the stranger counted")
    assert stats["accepted"] >= 8

    events = [e for e in chain.read_events(chain.db_path(node.config),
                                           kind_prefix="operator.")]
    senders = {e.data["from"] for e in events}
    assert senders == {admin, reader}
    assert any(e.data["command"].startswith("submit sample.add") for e in events)


def test_operators_config(tmp_path: Path) -> None:
    base = "[node]\ndata_dir = d\nrun_dir = r\nlog_dir = l\n[operators]\n"
    good = "a" * 32
    config = config_mod.parse(base + f"identities = {good}:submit, {'b' * 32}\n",
                              tmp_path / "a.ini")
    assert config.operators.identities == ((good, "submit"), ("b" * 32, "read"))
    with pytest.raises(ConfigError, match="role 'admin' is not one of read, submit"):
        config_mod.parse(base + f"identities = {good}:admin\n", tmp_path / "a.ini")
    with pytest.raises(ConfigError, match="32 hex digits"):
        config_mod.parse(base + "identities = alice:read\n", tmp_path / "a.ini")
    assert config_mod.parse(base, tmp_path / "a.ini").operators.identities == ()


def test_parse_commands() -> None:
    assert rules.parse(" STATUS ") == rules.Command("status")
    assert rules.parse("task ABCDEF12") == rules.Command("task", ("abcdef12",))
    assert rules.parse('submit resize {"w": 640} 7') == rules.Command(
        "submit", ("resize", {"w": 640}, 7))
    assert rules.parse("submit t") == rules.Command("submit", ("t", [], 0))
    for bad, why in [("rm -rf /", "unknown command"), ("task zz", "usage: task ID"),
                     ("submit", "usage: submit"), ("submit t [1] high", "not a whole number"),
                     ("submit t 5", "JSON list or object"), ("submit t [1] 99999", "from -1000"),
                     ("x" * 2000, "too long")]:
        with pytest.raises(rules.CommandError, match=why):
            rules.parse(bad)
    assert rules.allowed("status", "read") and not rules.allowed("submit", "read")
    assert rules.allowed("submit", "submit")


def test_commands_from_fields_and_content() -> None:
    assert rules.commands_of("status", None) == ["status"]
    assert rules.commands_of("", {rules.FIELD_COMMANDS: [{"task": ["ab12"]}, "peers"]}) == [
        "task ab12", "peers"]
    assert rules.commands_of("ignored", {rules.FIELD_COMMANDS: ["help"] * 9}) == ["help"] * 4
    assert rules.commands_of("", {rules.FIELD_COMMANDS: [{1: {}}]}) == []


def test_replies_fit_one_packet() -> None:
    long = "\n".join(f"line {i} " + "x" * 40 for i in range(20))
    cut = rules.fit(long)
    assert len(cut.encode()) <= rules.REPLY_BYTES and cut.endswith("…")
    assert rules.fit("short") == "short"
    assert len(rules.fit("é" * 400).encode()) <= rules.REPLY_BYTES
    peers = [{"id": f"{i:032x}", "name": f"n{i}", "state": "alive", "role": "member",
              "cluster": "c" * 32} for i in range(40)]
    assert len(rules.fit(replies.peers(peers)).encode()) <= rules.REPLY_BYTES


def test_rate_limiter() -> None:
    now = [0.0]
    limiter = rules.RateLimiter(3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.take("b")
    now[0] += 20.0  # one token back at 3 per minute
    assert limiter.take("a") and not limiter.take("a")


def test_task_id_is_the_message_hash() -> None:
    digest = bytes(range(32))
    assert rules.task_id_for(digest) == digest.hex()[:32]
    assert rules.task_id_for(digest) == rules.task_id_for(bytes(digest))


def test_lxmf_address_matches_reticulum() -> None:
    # RNS is kept out of pytest: the expected value was computed with
    # RNS.Destination.hash_from_name_and_identity("lxmf.delivery", identity).
    code = ("import RNS,sys; i=RNS.Identity(); print(i.hash.hex(), "
            "RNS.Destination.hash_from_name_and_identity('lxmf.delivery', i).hex())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    node_id, expected = done.stdout.split()
    assert destination_hash(node_id, "lxmf.delivery") == expected
