"""No import circles among akita/, workers/ and supervisor/ modules.

A circle hidden under ``if TYPE_CHECKING:`` is still a circle: it means a helper knows its
owner's insides (DESIGN.md: a helper talks to its owner through a stated `Protocol`). So the
graph is built from every import statement in the source (ast), wherever it stands: module
level, under TYPE_CHECKING, or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("akita", "workers", "supervisor")


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → source file, for every module of PACKAGES."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that `name` (a dotted import target) is or lies in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _base_of(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[:len(parts) - node.level + 1]
    return ".".join([*parts, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of PACKAGES that `module` imports anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base_of(node, module, path.name == "__init__.py")
            # `from pkg import name`: name may be a submodule, else it lives in pkg itself
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
        else:
            continue
        for name in names:
            resolved = _resolve(name, modules)
            if resolved is not None and resolved != module:
                targets.add(resolved)
    return targets


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each listed
    as the modules in it, sorted: a circle is one of these."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        # iterative, so a deep chain of imports cannot hit the recursion limit
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph.get(step, ())))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def _describe(cycle: list[str], graph: dict[str, set[str]]) -> str:
    members = set(cycle)
    edges = [f"{a} -> {b}" for a in cycle for b in sorted(graph[a] & members)]
    return "; ".join(edges)


def test_the_graph_sees_type_checking_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a circle hidden under TYPE_CHECKING, made with a relative import,
    is found; a one-way import is not a circle."""
    package = tmp_path / "workers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "owner.py").write_text("from workers import helper\n")
    (package / "helper.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .owner import Owner\n")
    (package / "alone.py").write_text("import workers.helper\n")
    for other in ("akita", "supervisor"):
        (tmp_path / other).mkdir()
    graph = import_graph(tmp_path)
    assert graph["workers.alone"] == {"workers.helper"}
    assert find_cycles(graph) == [["workers.helper", "workers.owner"]]


def test_no_import_circles() -> None:
    graph = import_graph()
    assert "workers.executor.worker" in graph, f"no modules found under {ROOT}"
    cycles = find_cycles(graph)
    assert not cycles, "import circles (edges inside each): " + " | ".join(
        _describe(cycle, graph) for cycle in cycles)



def main() -> int:
    """As a script: print each circle's edges; 1 if there is any."""
    graph = import_graph()
    cycles = find_cycles(graph)
    for cycle in cycles:
        print(_describe(cycle, graph))
    print(f"{len(graph)} modules, {len(cycles)} import circles")
    return 1 if cycles else 0


if __name__ == "__main__":
    raise SystemExit(main())
