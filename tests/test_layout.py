"""The rules of the house that import-linter cannot express (its contracts are in
pyproject.toml and run in CI as `lint-imports`).

Only the ledger worker's wing may open the database for writing: every other
`apsw.Connection(...)` in the project passes `flags=apsw.SQLITE_OPEN_READONLY`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PROJECT_DIRS = ("akita", "workers", "supervisor", "bench")
WRITER_WING = REPO / "workers" / "ledger"


def connection_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "Connection"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "apsw"]


def read_only(call: ast.Call) -> bool:
    for keyword in call.keywords:
        if keyword.arg == "flags":
            return "SQLITE_OPEN_READONLY" in ast.unparse(keyword.value)
    return False


def writable_connections(root: Path) -> list[str]:
    found = []
    for directory in PROJECT_DIRS:
        for path in sorted((root / directory).rglob("*.py")):
            if path.is_relative_to(root / "workers" / "ledger"):
                continue
            found += [f"{path.relative_to(root)}:{call.lineno}"
                      for call in connection_calls(path) if not read_only(call)]
    return found


def test_only_the_ledger_wing_opens_the_database_for_writing() -> None:
    assert writable_connections(REPO) == [], (
        "a read-write apsw connection outside workers/ledger/ (open the file read-only, "
        "or send the write to the ledger worker)")


def test_the_check_sees_a_writable_connection(tmp_path: Path) -> None:
    (tmp_path / "akita").mkdir()
    (tmp_path / "akita" / "bad.py").write_text(
        "import apsw\n"
        "ok = apsw.Connection('x', flags=apsw.SQLITE_OPEN_READONLY)\n"
        "bad = apsw.Connection('x')\n")
    assert writable_connections(tmp_path) == ["akita/bad.py:3"]


def test_the_writer_wing_does_open_the_database() -> None:
    """The exemption is not vacuous: the writer's own connections are where we expect."""
    calls = [call for path in WRITER_WING.rglob("*.py") for call in connection_calls(path)]
    assert calls and not all(read_only(call) for call in calls)
