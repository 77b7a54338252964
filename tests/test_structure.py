"""The shape of the code, read from its imports: dependencies run one way.

* ``coordtok`` (the base: tokenizer, data, training skeleton, checkpoints) imports none of the
  others, except in ``coordtok/cli.py``, the one composition root;
* ``sit`` imports ``coordtok``; ``baselines`` (MAGVIT-v2, ProMAG, REGEN) imports ``coordtok`` and
  ``sit``; ``eval`` may import all three;
* no module imports another package's private (``_name``) objects;
* no import cycle between modules, counting imports inside functions too;
* every user-facing error class derives from ``coordtok.errors.CoordTokError``.
"""

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("coordtok", "sit", "baselines", "eval")
ALLOWED = {
    "coordtok": set(),
    "sit": {"coordtok"},
    "baselines": {"coordtok", "sit"},
    "eval": {"coordtok", "sit", "baselines"},
}
COMPOSITION_ROOT = "coordtok.cli"


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """``(imported module, imported names)`` for every import statement, at any depth."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((target, [a.name for a in node.names]))
    return found


MODULES = _modules()


def test_the_module_list_is_complete():
    assert {"coordtok.loop", "coordtok.cli", "sit.train", "eval.recon", "baselines.magvit2"} <= set(MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_dependencies_run_one_way(name):
    mine = name.split(".")[0]
    for target, names in _imports(name, MODULES[name]):
        top = target.split(".")[0]
        if top in PACKAGES and top != mine and name != COMPOSITION_ROOT:
            assert top in ALLOWED[mine], f"{name} imports {target}: {mine} must not depend on {top}"
        if top in PACKAGES and top != mine:
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{name} imports private {private} from {target}"


def test_no_import_cycles():
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for target, names in _imports(name, path):
            for cand in [target] + [f"{target}.{n}" for n in names]:
                if cand in MODULES and cand != name:
                    deps.add(cand)
        graph[name] = deps
    # a package's __init__ that re-exports its modules is not a cycle with them
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".")}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_every_user_facing_error_derives_from_one_base():
    from coordtok.errors import CoordTokError

    errors = []
    for name in MODULES:
        if name == "coordtok.__main__":
            continue
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == name and issubclass(obj, Exception) and obj.__name__.endswith(("Error", "Missing")):
                errors.append(obj)
    assert len(errors) >= 10
    strays = [e.__qualname__ for e in errors if not issubclass(e, CoordTokError)]
    assert not strays, f"user-facing errors outside CoordTokError: {strays}"
    assert pkgutil.resolve_name("coordtok.loop:TrainingDiverged").__mro__[1] is CoordTokError
