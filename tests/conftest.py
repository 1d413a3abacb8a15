from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Node, stop_all


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ak-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_node(short_tmp: Path) -> Iterator[Callable[..., Node]]:
    """make_node(sections=None, name="n0") → a Node (not started); all are stopped at teardown,
    and the test fails if one still running then does not stop cleanly."""
    nodes: list[Node] = []

    def make(sections: dict[str, dict[str, Any]] | None = None, name: str = "n0") -> Node:
        node = Node(short_tmp / name, sections)
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        stop_all(nodes)
