"""The package as a whole: no import circles (lazy imports inside functions included), ``model/``
importing nothing above it, and every docstring example in every module run."""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest

import seganswer_cli

ROOT = Path(seganswer_cli.__file__).parent
#: What ``model/`` may import from the rest of the package: the error types and the version.
MODEL_MAY_IMPORT = {"seganswer_cli", "seganswer_cli.errors"}


def module_files() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = module_files()


def _runs_at_import(tree: ast.Module):
    """Every import statement of a module that can run (inside functions too; not ``if TYPE_CHECKING:``)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skipped:
            yield node


def imports_of(name: str) -> set[str]:
    """The package's modules that ``name`` imports: ``from a.b import c`` counts as ``a.b.c`` when
    that is a module, else as ``a.b``; relative imports are resolved."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runs_at_import(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        found.update(t for t in targets if t in MODULES and t != name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_circles():
    graph = {name: imports_of(name) for name in MODULES}
    assert sum(len(v) for v in graph.values()) > 100  # the walk sees the package's imports
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_model_imports_nothing_above_it():
    upward = {name: sorted(t for t in imports_of(name) if not t.startswith("seganswer_cli.model")
                           and t not in MODEL_MAY_IMPORT)
              for name in MODULES if name.startswith("seganswer_cli.model")}
    assert not {k: v for k, v in upward.items() if v}


WITH_EXAMPLES = [name for name, path in MODULES.items() if ">>> " in path.read_text()]


def test_modules_with_examples_are_found():
    assert {"seganswer_cli.model.conversation", "seganswer_cli.eval.answers", "seganswer_cli.train.rewards",
            "seganswer_cli.data.mixture", "seganswer_cli.config"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    failures, tried = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0
