"""Packaging: the imported `supervisor` package is this project's, not supervisord's, and
pyproject.toml declares its packages explicitly so that nothing else is picked up."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import supervisor
import supervisor.main
from tests.helpers import REPO


def test_imported_supervisor_is_ours() -> None:
    assert supervisor.__file__ is not None
    assert REPO in Path(supervisor.__file__).resolve().parents
    assert callable(supervisor.main.main)
    # Every directory the package is searched in is ours, so none of supervisord's modules
    # (supervisor/supervisord.py, supervisor/options.py) can be found under the name.
    outside = [p for p in supervisor.__path__ if REPO not in Path(p).resolve().parents]
    assert not outside, f"the supervisor package is also searched in {outside}"
    assert importlib.util.find_spec("supervisor.supervisord") is None, (
        "supervisord's package is importable as ours")
    assert importlib.util.find_spec("supervisor.mainloop") is not None


def test_pyproject_declares_packages_explicitly() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]
    assert isinstance(packages, list), "packages must be a list, not a find: directive"
    assert {"akita", "workers", "supervisor"} <= set(packages)
    scripts = project["project"]["scripts"]
    assert scripts["akita-supervisor"] == "supervisor.main:main"
    assert scripts["akitactl"] == "akita.cli:main"


def test_every_package_directory_is_declared() -> None:
    """A sub-package left out of the list would be missing from a non-editable install."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = set(project["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(REPO).parts)
             for root in ("akita", "workers", "supervisor")
             for init in (REPO / root).rglob("__init__.py")}
    assert found <= declared, f"not declared in pyproject.toml: {sorted(found - declared)}"
