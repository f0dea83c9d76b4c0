"""Every module of treasure imports, and the `treasure.*` modules import each other without a cycle.

The graph's edges are the imports a module runs when it is imported: its module-level statements, including
those inside module-level `if`/`try`/`with` blocks and class bodies, but not the `if TYPE_CHECKING:` ones
(never run) nor imports inside functions. Function-level imports are deliberately left out: they are how the
CLI stays fast (a command imports torch or its stage only when it runs) and they run after every module involved
has finished importing, so they cannot leave a half-initialised module behind. A cycle of module-level imports
can, and it ties the modules on it into one unit that cannot be read, tested or replaced alone.

The full graph, function-level imports included, is checked too, only for cycles that are new: the one known
today (the annotate pipeline and the annotators that import names back from it inside functions) is being split by
issue 15's annotate part and is marked as an expected failure until then.

An edge goes to the module an import names (`from treasure.a import b` is an edge to `treasure.a.b` when that is
a module, else to `treasure.a`); the parent packages every import also runs are not edges, or every module would
sit on a cycle through `treasure/__init__.py`.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import treasure

ROOT = Path(treasure.__file__).parent
# Modules that need an optional extra (pyproject's [project.optional-dependencies]): skipped, with the reason,
# when the extra is not installed.
EXTRAS = {"treasure.serve": "serve", "treasure.annotate.ray_engine": "ray", "treasure.annotate.llm": "llm"}
# Cycles through function-level imports in code being reworked (issue 15 item 2, the annotate core): known, named
# here, and expected to go. No module-level cycle is known.


def _modules() -> dict[str, Path]:
    """Every module of the package: name -> source file (a package's is its __init__.py)."""
    out = {"treasure": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="treasure."):
        rel = Path(*info.name.split(".")[1:])
        out[info.name] = ROOT / rel / "__init__.py" if info.ispkg else (ROOT / rel).with_suffix(".py")
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_statements(body: list[ast.stmt]):
    """The statements of `body` that run when the module is imported (not function bodies, not TYPE_CHECKING)."""
    for node in body:
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_statements(node.body)
            yield from _import_time_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _import_time_statements(block)
        elif isinstance(node, ast.With | ast.ClassDef):
            yield from _import_time_statements(node.body)


def _target(name: str) -> str | None:
    """The treasure module an imported dotted name is: itself, or the closest enclosing module."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _every_statement(body: list[ast.stmt]):
    for top in body:
        yield from ast.walk(top)


def _edges(module: str, path: Path, lazy: bool) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    statements = _every_statement if lazy else _import_time_statements
    for node in statements(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out |= {t for n in names if n.split(".")[0] == "treasure" and (t := _target(n)) and t != module}
    return out


def import_graph(*, lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the treasure modules it imports at import time (`lazy`: anywhere, functions included)."""
    return {name: _edges(name, path, lazy) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan): each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if name in EXTRAS and e.name and not e.name.startswith("treasure"):
            pytest.skip(f"needs the [{EXTRAS[name]}] extra ({e.name} is not installed)")
        raise


def test_the_graph_sees_the_imports():
    """A check of the checker: known edges are found, lazy and TYPE_CHECKING-only ones are not."""
    graph = import_graph()
    assert "treasure.taxonomy" in graph["treasure.markers"]
    assert "treasure.recipe" in graph["treasure.bundle"]
    assert "treasure.train.trainer" not in graph["treasure.arms"]  # imported inside train_from_yaml
    assert "treasure.train.config" not in graph["treasure.train.bundle"]  # TYPE_CHECKING only
    assert not any(m.startswith("treasure.train") for m in graph["treasure.bundle"])  # the stage contract


def test_cycles_finds_every_loop_and_only_loops():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"a"}}
    assert sorted(sorted(c) for c in cycles(graph)) == [["a", "b", "c"], ["e", "f"]]


def test_no_import_cycle_among_treasure_modules():
    found = [sorted(c) for c in cycles(import_graph())]
    assert not found, f"module-level import cycles: {found}"


def test_no_import_cycle_even_through_function_level_imports():
    found = [sorted(c) for c in cycles(import_graph(lazy=True))]
    assert not found, f"import cycles through function-level imports: {found}"
