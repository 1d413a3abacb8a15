"""The zygote's `prepare_in_zygote` hook: work done once before the fork, found by children.

This module is itself the zygote's preload and its children's target: a real fork server
in a fresh interpreter, real forks, results written to files in tmp_path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from workers.zygote import Zygote

MODULE = "tests.test_zygote_prepare"

# Filled in the zygote by the hook; a child reads what it inherited.
prepared: dict[str, int] = {}


def prepare_in_zygote(args: dict[str, Any]) -> None:
    if args.get("fail"):
        raise RuntimeError("a hook that fails must not stop the fork")
    prepared[args["key"]] = os.getpid()  # the zygote's pid: proof of where it ran


def child_main(args: dict[str, Any]) -> int:
    Path(args["out"]).write_text(f"{prepared.get(args['key'], 0)} {os.getppid()}")
    return 0


def _spawn_and_read(zygote: Zygote, args: dict[str, Any]) -> tuple[int, int]:
    out = Path(args["out"])
    zygote.spawn(f"{MODULE}:child_main", args)
    text = wait_for(lambda: out.exists() and out.read_text(), 10, f"the child writing {out}")
    prepared_in, parent = map(int, text.split())
    return prepared_in, parent


def test_the_hook_runs_in_the_zygote_before_the_fork(tmp_path: Path) -> None:
    zygote = Zygote.start([MODULE])
    try:
        prepared_in, parent = _spawn_and_read(
            zygote, {"key": "config", "out": str(tmp_path / "first")})
        assert parent == zygote.pid
        assert prepared_in == zygote.pid, "the child did not inherit what the zygote prepared"
    finally:
        zygote.close()


def test_a_failing_hook_leaves_the_fork_to_go_on(tmp_path: Path) -> None:
    zygote = Zygote.start([MODULE])
    try:
        prepared_in, parent = _spawn_and_read(
            zygote, {"key": "config", "fail": True, "out": str(tmp_path / "failed")})
        assert (prepared_in, parent) == (0, zygote.pid)
    finally:
        zygote.close()


def test_a_worker_restarted_with_the_same_config_finds_it_parsed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """workers.base's hook: parsed once per (text, path), the latest two kept."""
    from workers import base

    monkeypatch.setattr(base, "_PARSED", {})
    config_path = tmp_path / "akita.ini"
    texts = [f"[node]\ndata_dir = data\nrun_dir = run\nlog_dir = log\nname = n{i}\n"
             for i in range(3)]
    for text in texts:
        base.prepare_in_zygote({"config_text": text, "config_path": str(config_path)})
        base.prepare_in_zygote({"config_text": text, "config_path": str(config_path)})
    assert [key[0] for key in base._PARSED] == texts[1:]
    parsed = base._PARSED[(texts[2], str(config_path))]
    assert parsed.node.name == "n2" and parsed.node.data_dir == tmp_path / "data"
