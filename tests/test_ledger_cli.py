"""akitactl ledger tail|verify, run as the real command on real ledger files (no node running)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from akita.ledger import chain
from tests.helpers import REPO, TEST_DEFAULTS, render_config
from tests.test_ledger_chain import build_feed, tamper


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    (tmp_path / "akita.ini").write_text(render_config(TEST_DEFAULTS))
    return tmp_path


def akitactl(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "akita.cli", "-c", str(root / "akita.ini"),
                           "ledger", *args], capture_output=True, text=True, timeout=30, cwd=REPO,
                          check=False)


def test_tail_prints_the_last_events(node_dir: Path) -> None:
    build_feed(node_dir / "data" / chain.DB_FILE, 10)
    done = akitactl(node_dir, "tail", "-n", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "KIND", "DATA"]
    assert [line.split()[0] for line in lines[1:]] == ["8", "9", "10"]
    assert '{"i":9}' in lines[-1]


def test_tail_json_with_kind_filter(node_dir: Path) -> None:
    build_feed(node_dir / "data" / chain.DB_FILE, 10)
    done = akitactl(node_dir, "tail", "-n", "2", "--kind", "task.", "--json")
    assert done.returncode == 0, done.stderr
    events = json.loads(done.stdout)
    assert [(e["seq"], e["kind"], e["data"]) for e in events] == [
        (7, "task.submitted", {"i": 6}), (9, "task.submitted", {"i": 8})]
    assert set(events[0]) == {"feed", "seq", "ts", "kind", "data"}


def test_verify_intact_and_tampered(node_dir: Path) -> None:
    db = node_dir / "data" / chain.DB_FILE
    build_feed(db, 10)
    done = akitactl(node_dir, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "intact, 10 events" in done.stdout
    tamper(db, "UPDATE events SET kind = 'task.forged' WHERE seq = 5")
    done = akitactl(node_dir, "verify")
    feed = chain.own_feed(db)
    assert done.returncode == 1
    assert f"feed {feed}: BROKEN at seq 5" in done.stdout
    report = json.loads(akitactl(node_dir, "verify", "--json").stdout)
    assert report["ok"] is False
    assert report["feeds"][0]["first_bad_seq"] == 5 and report["feeds"][0]["feed"] == feed


def test_verify_all_feeds(node_dir: Path) -> None:
    db = node_dir / "data" / chain.DB_FILE
    build_feed(db, 3)
    done = akitactl(node_dir, "verify", "--all", "--json")
    assert done.returncode == 0, done.stderr
    assert [f["events"] for f in json.loads(done.stdout)["feeds"]] == [3]


@pytest.mark.parametrize("verb", ["tail", "verify"])
def test_no_ledger_file_exits_3_with_one_line(node_dir: Path, verb: str) -> None:
    done = akitactl(node_dir, verb)
    assert done.returncode == 3
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "no ledger at" in done.stderr


@pytest.mark.parametrize("verb, option", [("tail", "--kind"), ("verify", "--all")])
def test_help(node_dir: Path, verb: str, option: str) -> None:
    done = akitactl(node_dir, verb, "--help")
    assert done.returncode == 0 and option in done.stdout and "--json" in done.stdout
