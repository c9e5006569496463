"""Every pickle the project reads goes through a restricted unpickler: a source audit.

The only unpickler of plain-data files is ``ditsam.data.refer``'s (no global resolved at all);
torch files are read with ``torch.load(..., weights_only=True)`` (torch's own restricted
unpickler); numpy files with ``allow_pickle=False``. This test parses every Python file of the
package and of the benchmarks and fails on any other way of unpickling.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AUDITED = [*sorted((ROOT / "src" / "ditsam").rglob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]
# The one module allowed to build an unpickler (the restricted one).
UNPICKLER_MODULE = ROOT / "src" / "ditsam" / "data" / "refer.py"
# Module names whose load functions unpickle arbitrary objects.
UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}
UNPICKLING_CALLS = {"load", "loads", "Unpickler", "open", "read_pickle"}


def _name(node: ast.AST) -> str:
    """``a.b.c`` for an attribute chain, the id for a name, "" otherwise."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword.value
    return None


def unsafe_loads(path: Path, *, root: Path = ROOT) -> list[str]:
    """Lines of ``path`` that unpickle without a restricted unpickler (file names relative to ``root``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imported: dict[str, str] = {}  # local name -> "module.function" for `from pickle import load`
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in UNPICKLING_MODULES:
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ClassDef) and any(_name(base).endswith("Unpickler") for base in node.bases):
            if path != UNPICKLER_MODULE:
                found.append(f"{where}: an Unpickler subclass outside {UNPICKLER_MODULE.relative_to(ROOT)}")
        if not isinstance(node, ast.Call):
            continue
        name = imported.get(_name(node.func), _name(node.func))
        module, _, function = name.rpartition(".")
        if module.split(".")[-1] in UNPICKLING_MODULES and function in UNPICKLING_CALLS:
            found.append(f"{where}: {name}(...) unpickles arbitrary objects; use ditsam.data.refer.read_plain_pickle")
        elif name.endswith("read_pickle"):
            found.append(f"{where}: {name}(...) unpickles arbitrary objects")
        elif name == "torch.load" and _keyword(node, "weights_only") is not True:
            found.append(f"{where}: torch.load without weights_only=True")
        elif name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") not in (None, False):
            found.append(f"{where}: np.load with allow_pickle")
    return found


def test_the_audit_finds_unsafe_loads(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import pickle, torch, numpy as np\nfrom pickle import loads as l\n"
        "pickle.load(open('f', 'rb'))\nl(b'')\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
        "np.load('m.npy', allow_pickle=True)\nclass U(pickle.Unpickler): pass\n"
        "torch.load('x', weights_only=True)\nnp.load('m.npy', allow_pickle=False)\n"
    )
    found = unsafe_loads(sample, root=tmp_path)
    assert sorted(int(line.split(":")[1]) for line in found) == [3, 4, 5, 6, 7, 8], found


def test_restricted_unpickler_is_where_the_audit_expects_it() -> None:
    source = UNPICKLER_MODULE.read_text(encoding="utf-8")
    assert "class _NoGlobalsUnpickler(pickle.Unpickler)" in source and "def read_plain_pickle(" in source


def test_no_unrestricted_unpickling_anywhere() -> None:
    assert len(AUDITED) > 50
    found = [line for path in AUDITED for line in unsafe_loads(path)]
    assert found == [], "\n".join(found)
