"""The import graph of layercut has no cycle, counting imports inside functions as well."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import layercut

PACKAGE_ROOT = Path(layercut.__file__).parent


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, not `__init__`)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports anywhere in its file; `from pkg import mod` counts as `pkg.mod`,
    and so does a string that is exactly a module's name (imported with importlib)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            targets = [node.value]  # a module named for importlib (the CLI's command table)
        else:
            continue
        found.update(target for target in targets if target in known and target != name)
    return found


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that returns to its start, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_resolves_submodules_and_relative_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "leaf.py").write_text("from .. import top\n")
    (package / "top.py").write_text("def f():\n    from pkg.sub import leaf\n")
    (package / "table.py").write_text("import importlib\nMODULES = ('pkg.top',)\n")
    assert import_graph(package) == {"pkg": set(), "pkg.sub": set(), "pkg.sub.leaf": {"pkg.top"},
                                     "pkg.top": {"pkg.sub.leaf"}, "pkg.table": {"pkg.top"}}


def test_layercut_imports_have_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_methods_never_import_the_dispatcher_or_the_front_ends() -> None:
    """Methods sit below `layercut.prune`, the commands and recipes, which find them through the registry."""
    graph = import_graph()
    above = {"layercut.prune", "layercut.recipe", "layercut.cli", "layercut.compare"}
    for name, targets in graph.items():
        if name.startswith("layercut.methods"):
            bad = {t for t in targets if t in above or t.startswith("layercut.commands")}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_architecture_doc_maps_every_module() -> None:
    """docs/ARCHITECTURE.md names every module (or its package) and no file that does not exist."""
    doc = (PACKAGE_ROOT.parents[1] / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for path in PACKAGE_ROOT.rglob("*.py"):
        relative = path.relative_to(PACKAGE_ROOT)
        if path.name in ("__init__.py", "__main__.py"):
            continue
        assert f"`{relative.as_posix()}" in doc or f"`{relative.parent.as_posix()}/`" in doc, relative
    named = re.findall(r"`([\w/]+\.py)", doc)
    missing = [name for name in named if not (PACKAGE_ROOT / name).is_file()
               and not (PACKAGE_ROOT.parents[1] / name).is_file()]
    assert not missing, missing
