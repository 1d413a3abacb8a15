"""The node's NomadNet page, fetched by a real Reticulum client over loopback: open to
anyone, or only to identified operators; micron that names the node, its workers and its
cluster; peer-supplied text made inert."""

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
from akita.wire import protocol
from tests.helpers import REPO, Node, free_port, net_sections, wait_for
from workers.gateway import operator_replies as replies

FETCH = REPO / "tests" / "nomadnet_fetch.py"


def fetch(root: Path, hub_port: int, address: str, *paths: str,
          identify: bool = False) -> list[dict[str, Any]]:
    argv = [sys.executable, str(FETCH), "--dir", str(root), "--connect",
            f"127.0.0.1:{hub_port}", "--to", address]
    argv += [arg for path in paths for arg in ("--path", path)]
    if identify:
        argv.append("--identify")
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=False,
                          timeout=90)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines and lines[-1].get("done"), (done.stdout[-2000:], done.stderr[-2000:])
    return lines[:-1]


def page_node(make_node: Callable[..., Node], hub_port: int, page: str,
              identities: str = "") -> tuple[Node, str]:
    node = make_node(net_sections(hub_port, True, "pagenode",
                                  supervisor={"workers": "ledger, sampler, gateway"},
                                  operators={"page": page, "identities": identities}))
    node.start()
    wait_for(lambda: node.ctl_json("clusters").get("clusters"), 20, "the node's own cluster")
    return node, destination_hash(node.status()["node"]["id"], "nomadnetwork.node")


def page_stats(node: Node) -> dict[str, int]:
    reply = node.request(protocol.PeerStats())
    assert isinstance(reply, protocol.PeerStatsReply)
    return reply.stats["page"]  # type: ignore[no-any-return]


@pytest.mark.slow
def test_open_page_fetched_by_a_reticulum_client(make_node: Callable[..., Node],
                                                 short_tmp: Path) -> None:
    hub_port = free_port()
    node, address = page_node(make_node, hub_port, "open")
    client = short_tmp / "reader"
    load_or_create(client)
    got = fetch(client, hub_port, address, "/page/index.mu", "/page/index.mu",
                "/page/../../etc/passwd")
    first, second, bad = got
    assert first["page"] is not None, got
    page = second["page"]
    assert page.startswith("#!c=0\n>Akita node pagenode")
    for worker in ("ledger", "sampler", "gateway"):
        assert f"  {worker}" in page and "running" in page, page
    assert ">>Cluster" in page and "coordinator pagenode" in page, page
    assert ">>Last events" in page and "gateway.started" in page
    assert bad["page"] is None  # no such page: Reticulum answers nothing
    assert page_stats(node)["served"] == 2
    assert node.status()["workers"]["gateway"]["state"] == "running"


@pytest.mark.slow
def test_operators_page_needs_an_identified_operator(make_node: Callable[..., Node],
                                                     short_tmp: Path) -> None:
    hub_port = free_port()
    operator = load_or_create(short_tmp / "op").node_id
    load_or_create(short_tmp / "stranger")
    node, address = page_node(make_node, hub_port, "operators", f"{operator}:read")
    anonymous = fetch(short_tmp / "op", hub_port, address, "/page/index.mu")[0]["page"]
    assert anonymous == replies.denied_page()
    stranger = fetch(short_tmp / "stranger", hub_port, address, "/page/index.mu",
                     identify=True)[0]["page"]
    assert stranger == replies.denied_page()
    allowed = fetch(short_tmp / "op", hub_port, address, "/page/index.mu",
                    identify=True)[0]["page"]
    assert allowed.startswith("#!c=0\n>Akita node pagenode")
    assert page_stats(node) == {**page_stats(node), "served": 1, "refused": 2}


def test_page_text_from_peers_is_inert() -> None:
    peers = [{"id": "b" * 32, "name": "`!evil`! \\x\n>head", "state": "alive"}]
    clusters = [{"id": "c" * 32, "members": ["a" * 32, "b" * 32], "coordinator": "b" * 32,
                 "term": 3}]
    page = replies.page("me", "a" * 32, {"cluster": "c" * 32}, peers, clusters,
                        [{"name": "ledger", "state": "running", "pid": 5, "restarts": 0}],
                        [(0.0, "task.submitted", "name=`bad`")])
    assert "`" not in page.split("\n", 1)[1] and "\\" not in page
    assert "\n>head" not in page
    assert "coordinator !evil! x>head" in page
    assert "term 3" in page and "members me, !evil! x>head" in page


def test_page_operators_needs_identities(tmp_path: Path) -> None:
    base = "[node]\ndata_dir = d\nrun_dir = r\nlog_dir = l\n[operators]\n"
    with pytest.raises(ConfigError, match="none are listed"):
        config_mod.parse(base + "page = operators\n", tmp_path / "a.ini")
    with pytest.raises(ConfigError, match="expected one of: off, open, operators"):
        config_mod.parse(base + "page = public\n", tmp_path / "a.ini")
