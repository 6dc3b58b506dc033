"""No import cycles in the ancsync package: a walk of its import graph, read from the source.

Every ``import ancsync...`` and ``from ancsync... import ...`` (and relative import) counts, at
module level and inside functions, since both run. An import under ``if TYPE_CHECKING:`` does
not: it never runs, so it cannot make a module wait for another that waits for it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import ancsync

Graph = dict[str, set[str]]


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package under ``root`` by dotted name (``pkg.sub`` for __init__)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, typing_too: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements under ``node``; the body of ``if TYPE_CHECKING:`` only if
    ``typing_too`` (it never runs)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test) and not typing_too:
            for other in child.orelse:
                yield from _imports(ast.Module(body=[other], type_ignores=[]), typing_too)
        else:
            yield from _imports(child, typing_too)


def _imported(statement: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement may load (a module, or a name inside one)."""
    if isinstance(statement, ast.Import):
        return [alias.name for alias in statement.names]
    base = statement.module or ""
    if statement.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (statement.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    return [base, *(f"{base}.{alias.name}" for alias in statement.names)]


def import_graph(root: Path, package: str, *, typing_too: bool = False) -> Graph:
    """Module -> the package's modules it imports at run time (and for type checking too, if
    ``typing_too``)."""
    modules = module_names(root, package)
    graph: Graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for statement in _imports(tree, typing_too):
            for dotted in _imported(statement, name, is_package):
                # `from pkg.mod import name`: the module itself, or pkg.mod if `name` is no module
                while dotted and dotted not in modules:
                    dotted = dotted.rpartition(".")[0]
                if dotted and dotted != name:
                    targets.add(dotted)
        graph[name] = targets
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected group of modules, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(_a_cycle_in(group, graph) for group in groups)


def _a_cycle_in(group: set[str], graph: Graph) -> list[str]:
    """A path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first: the shortest way back
        node = frontier.pop(0)
        for target in sorted(graph[node] & group):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                frontier.append(target)
    raise AssertionError(f"{sorted(group)} is not a cycle")


def test_the_ancsync_package_has_no_import_cycle() -> None:
    root = Path(ancsync.__file__).parent
    graph = import_graph(root, "ancsync")
    assert len(graph) > 40, "the walk found too few modules to be the package"
    found = [" -> ".join(cycle) for cycle in cycles(graph)]
    assert found == [], "import cycles in ancsync:\n" + "\n".join(found)


def test_the_emulator_has_no_import_cycle_even_through_type_checking_imports() -> None:
    """The emulator depends one way (broker -> amqtt_broker -> decisions), typing included."""
    root = Path(ancsync.__file__).parent
    graph = import_graph(root, "ancsync", typing_too=True)
    emulator = {name: targets for name, targets in graph.items() if ".emulator" in name}
    found = [" -> ".join(cycle) for cycle in cycles(emulator)]
    assert found == [], "import cycles in ancsync.emulator:\n" + "\n".join(found)


# --- the walker itself, on a package written for the test ----------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize(
    ("a_imports_b", "kind"),
    [
        ("from pkg import b", "module level"),
        ("def f():\n    from pkg.b import thing", "inside a function"),
        ("from . import b", "relative"),
        ("import pkg.b", "plain import"),
        ("from .b import thing", "relative, a name of the module"),
    ],
)
def test_the_walker_finds_a_cycle_however_it_is_imported(
    tmp_path: Path, a_imports_b: str, kind: str
) -> None:
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": a_imports_b + "\n",
            "b.py": "from pkg.c import x\nthing = 1\n",
            "c.py": "import pkg.a\nx = 2\n",
        },
    )
    assert cycles(import_graph(package, "pkg")) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]], kind


def test_type_checking_imports_and_outside_imports_are_no_cycle(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "import os\nfrom pkg import b\n",
            "b.py": (
                "from typing import TYPE_CHECKING\n"
                "import typing\n"
                "if TYPE_CHECKING:\n    from pkg import a\n"
                "if typing.TYPE_CHECKING:\n    import pkg.a\nelse:\n    import pkg.c\n"
            ),
            "c.py": "",
        },
    )
    graph = import_graph(package, "pkg")
    assert graph["pkg.b"] == {"pkg.c"}  # the `else:` of TYPE_CHECKING runs
    assert cycles(graph) == []
    typing_too = import_graph(package, "pkg", typing_too=True)
    assert cycles(typing_too) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_a_package_init_that_imports_its_module_back_is_a_cycle(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "sub/__init__.py": "from .impl import f\n",
            "sub/impl.py": "import pkg.sub\n",
        },
    )
    assert cycles(import_graph(package, "pkg")) == [["pkg.sub", "pkg.sub.impl", "pkg.sub"]]
