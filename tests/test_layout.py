"""The package layout, read from the source with `ast`: no import cycles, no private names
taken across packages, no module-level shadowing of a module by a function.

Every import counts, also those inside functions and under ``if TYPE_CHECKING:``: an import
hidden in a function is still a dependency, and a cycle hidden that way is still a cycle.
Layering is checked between packages (the top-level package's modules each count as one
node, every sub-package as one node) and between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "specdyn"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _package(module: str) -> str:
    """The package a module belongs to (a package's ``__init__`` belongs to itself)."""
    if MODULES[module].name == "__init__.py":
        return module
    return module.rsplit(".", 1)[0]


def _absolute(module: str, node: ast.ImportFrom) -> str:
    base = _package(module).split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every specdyn import of `module`."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                (a.name, None, node.lineno) for a in node.names if a.name.startswith("specdyn")
            ]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node) if node.level else (node.module or "")
            if not target.startswith("specdyn"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:  # `from . import _linalg` imports a module
                    found.append((sub, None, node.lineno))
                else:
                    found.append((target, alias.name, node.lineno))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _node(module: str) -> str:
    """The layering node: a sub-package (``specdyn.store``) or a top-level module."""
    parts = module.split(".")
    candidate = ".".join(parts[:2])
    if candidate in MODULES and MODULES[candidate].name == "__init__.py":
        return candidate
    return module


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _module_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _name, _line in _imports(module):
            if target in MODULES and target != module:
                edges[module].add(target)
    return edges


def test_the_scan_sees_the_packages():
    # guards the checks below against passing on an empty or misread tree
    assert {"specdyn.store", "specdyn.plots", "specdyn.sources", "specdyn.cli"} <= set(MODULES)
    assert ("specdyn.errors", "SpecdynError") in {(t, n) for t, n, _ in _imports("specdyn.cli")}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_modules():
    assert _cycles(_module_edges()) == []


def test_no_import_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for module, targets in _module_edges().items():
        a = _node(module)
        for target in targets:
            b = _node(target)
            if a != b and not (a == "specdyn" or b == "specdyn"):
                edges.setdefault(a, set()).add(b)
    # the top-level `specdyn/__init__` re-exports everything, so it is left out of the layering
    assert _cycles(edges) == []


def test_no_private_name_crosses_a_package_boundary():
    crossings = []
    for module in MODULES:
        home = _package(module)
        for target, name, line in _imports(module):
            there = _package(target) if target in MODULES else target
            if there == home:
                continue
            parts = target.split(".")[1:]
            if any(_private(p) for p in parts) or (name is not None and _private(name)):
                crossings.append(
                    f"{MODULES[module].relative_to(ROOT.parent)}:{line} {target} {name}"
                )
    assert crossings == []


@pytest.mark.parametrize("package", ["specdyn.analysis", "specdyn.comparison"])
def test_a_package_is_not_shadowed_by_a_function(package):
    import importlib

    import specdyn

    short = package.rsplit(".", 1)[1]
    assert getattr(specdyn, short) is importlib.import_module(package)


def test_no_module_shares_a_name_with_a_top_level_function():
    import specdyn

    for module in MODULES:
        parts = module.split(".")
        if len(parts) == 2:
            value = getattr(specdyn, parts[1], None)
            assert value is None or isinstance(value, type(specdyn)), module


def test_the_tests_mirror_the_packages():
    tests = Path(__file__).resolve().parent
    packages = {
        m.split(".")[1] for m in MODULES if m.count(".") == 1 and MODULES[m].name == "__init__.py"
    }
    assert packages, "no sub-packages found"
    missing = [p for p in sorted(packages) if not list((tests / p).glob("test_*.py"))]
    assert missing == []
    # pytest imports test files by base name (no __init__.py in tests/): they must be unique
    names = [p.name for p in tests.rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


def test_only_the_store_opens_hdf5_files():
    # the store package owns every HDF5 schema: runs, comparisons, prune results
    outside = [
        m
        for m in MODULES
        if not m.startswith("specdyn.store")
        and any(
            isinstance(n, (ast.Import, ast.ImportFrom))
            and any(a.name.split(".")[0] == "h5py" for a in n.names)
            or isinstance(n, ast.ImportFrom)
            and (n.module or "").split(".")[0] == "h5py"
            for n in ast.walk(ast.parse(MODULES[m].read_text(encoding="utf-8")))
        )
    ]
    assert outside == []


def _functions(module: str):
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{node.name}.{item.name}", item
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node


def test_no_function_is_over_120_lines():
    long = [
        f"{module}:{name} {node.end_lineno - node.lineno + 1}"
        for module in MODULES
        for name, node in _functions(module)
        if node.end_lineno - node.lineno + 1 > 120
    ]
    assert long == []


def test_the_analysis_run_is_made_of_short_named_steps():
    methods = {
        name: node.end_lineno - node.lineno + 1
        for name, node in _functions("specdyn.analysis._run")
        if name.startswith("_AnalysisRun.")
    }
    assert len(methods) >= 8  # plan views, pairs, open the store, order, analyse one step…
    assert {n: length for n, length in methods.items() if length >= 60} == {}
