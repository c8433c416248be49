"""The package's layers (docs/design.md §3): no import circle and no arrow that points up, lazy imports included.

The import graph is read from the source with ``ast`` (every ``import`` and ``from ... import`` anywhere in a
file: at module level, inside functions and under ``TYPE_CHECKING``), one node per module. A *circle* is a
strongly connected set of two or more modules; an *upward arrow* is an import from a unit (a top-level module or
subpackage of ``trustregion_lab``) of a unit in the same or a higher layer of `LAYERS`.

``python tests/test_layers.py`` prints the counts and every offending arrow; the tests assert both counts are 0.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "trustregion_lab"
# bottom to top: a unit may import units of lower layers only (and its own modules). "trustregion_lab" is the
# package's own __init__ (it imports envs to register the environments).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_arrays", "_validate", "_io", "progress", "experiment"),
    ("divergence",),
    ("masks",),
    ("losses",),
    ("mismatch", "policies", "envs"),
    (PACKAGE,),
    ("analysis", "conformance", "exercises", "explore"),
    ("report",),
    ("train",),
    ("plots",),
    ("sweep",),
)


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """{dotted module name: file} for every module of the package (a package is its ``__init__.py``)."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported_names(module: str, path: Path, tree: ast.AST) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:  # `from pkg import sub` imports the submodule pkg.sub
                yield f"{source}.{alias.name}"


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from every import statement in its source."""
    modules = module_files(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        for name in _imported_names(module, path, ast.parse(path.read_text(encoding="utf-8"))):
            while name and name not in modules:  # `from a.b import function` -> a.b
                name = name.rpartition(".")[0]
            if name and name != module:
                graph[module].add(name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected sets of two or more modules (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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
    return found


def unit(module: str) -> str:
    """The layer unit of a module: ``trustregion_lab.train.step`` -> ``train``; the package itself -> its name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def layer_of(name: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if name in layer:
            return rank
    raise KeyError(
        f"unit {name!r} is in no layer of LAYERS; add it to tests/test_layers.py and docs/design.md §3"
    )


def upward_arrows(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports between two units whose target is not in a strictly lower layer."""
    return sorted(
        (module, target)
        for module, targets in graph.items()
        for target in targets
        if unit(module) != unit(target) and layer_of(unit(target)) >= layer_of(unit(module))
    )


def test_every_unit_has_a_layer():
    units = {unit(module) for module in module_files()}
    assert units == {name for layer in LAYERS for name in layer}


def test_the_graph_sees_lazy_imports(tmp_path):
    """The reader finds an import inside a function and a relative one (so a lazy arrow cannot hide)."""
    package = tmp_path / PACKAGE
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("def f():\n    from trustregion_lab.high import g\n")
    (package / "high.py").write_text("from .low import f\n")
    graph = import_graph(tmp_path)
    assert graph[f"{PACKAGE}.low"] == {f"{PACKAGE}.high"}
    assert graph[f"{PACKAGE}.high"] == {f"{PACKAGE}.low"}
    assert circles(graph) == [[f"{PACKAGE}.high", f"{PACKAGE}.low"]]


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_no_upward_arrow():
    assert upward_arrows(import_graph()) == []


if __name__ == "__main__":
    graph = import_graph()
    found, upward = circles(graph), upward_arrows(graph)
    arrows = sum(len(targets) for targets in graph.values())
    print(f"{len(graph)} modules, {arrows} import arrows: {len(found)} circles, {len(upward)} upward arrows")
    for component in found:
        print("circle:", " -> ".join(component))
    for source, target in upward:
        print(f"upward: {source} -> {target}")
    sys.exit(1 if found or upward else 0)
