"""The package's import graph, read with ``ast``: no circle among modules (neither at import time nor
through imports inside functions or under ``TYPE_CHECKING``), and the one-way rules the layout promises
(SAM parts import nothing above ``model/sam``; the model reaches its checkpoint room only through its
public face, lazily, and the room never imports the model; outside ``ditsam.model`` only that face is
imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import ditsam

PACKAGE = Path(ditsam.__file__).parent
BENCHMARKS = PACKAGE.parents[1] / "benchmarks"
ROOM = "ditsam.model.checkpoints"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The ditsam modules an import statement runs (``from pkg import sub`` runs ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in MODULES]
    if node.level:  # relative import
        base = module.split(".")
        if MODULES[module].name != "__init__.py":
            base = base[:-1]
        base = base[: len(base) - node.level + 1]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    if target not in MODULES:
        return []
    subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES]
    return subs or [target]


def imports_of(module: str, *, top_level_only: bool) -> set[str]:
    """ditsam modules imported by ``module``: at import time only (module level, outside
    ``if TYPE_CHECKING:``), or anywhere in it."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update(imported(module, node))
            elif isinstance(node, ast.If) and is_type_checking(node):
                continue
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *(handler.body for handler in node.handlers)):
                    visit(block)

    if top_level_only:
        visit(tree.body)
    else:
        statements = (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))
        found = {name for node in statements for name in imported(module, node)}
    found.discard(module)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
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

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_circle_at_import_time():
    graph = {module: imports_of(module, top_level_only=True) for module in MODULES}
    assert cycles(graph) == []


def test_no_import_circle_even_through_deferred_or_typing_imports():
    graph = {module: imports_of(module, top_level_only=False) for module in MODULES}
    assert cycles(graph) == []


def test_sam_parts_import_nothing_above_them():
    inside = lambda name: name == "ditsam.model.sam" or name.startswith("ditsam.model.sam.")  # noqa: E731
    for module in filter(inside, MODULES):
        above = {m for m in imports_of(module, top_level_only=False) if not inside(m)}
        assert not above, f"{module} imports {sorted(above)}"


def in_room(name: str) -> bool:
    return name == ROOM or name.startswith(f"{ROOM}.")


def test_the_model_never_imports_its_loaders():
    model_side = [m for m in MODULES if m.startswith("ditsam.model.") and not in_room(m)]
    for module in model_side:
        loaders = {m for m in imports_of(module, top_level_only=False) if in_room(m)}
        assert loaders <= {ROOM}, f"{module} imports {sorted(loaders - {ROOM})}: only {ROOM} itself"
        assert ROOM not in imports_of(module, top_level_only=True), f"{module} imports {ROOM} at import time"
    for module in filter(in_room, MODULES):
        model = {m for m in imports_of(module, top_level_only=False) if m == "ditsam.model.dit"}
        assert not model, f"{module} imports the model ({sorted(model)}): type it as LoadableModel"


def absolute_imports(path: Path) -> set[str]:
    """Every module named by an absolute import anywhere in ``path`` (``from pkg import sub``: ``pkg.sub`` too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_only_the_face_of_the_checkpoint_room_is_imported_from_outside_the_model():
    outside = {module: path for module, path in MODULES.items() if not module.startswith("ditsam.model")}
    outside.update({f"benchmarks/{path.name}": path for path in BENCHMARKS.glob("*.py")})
    for module, path in outside.items():
        submodules = {name for name in absolute_imports(path) if name.startswith(f"{ROOM}.") and name in MODULES}
        assert not submodules, f"{module} imports {sorted(submodules)}: import {ROOM} instead"
