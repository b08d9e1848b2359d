"""The package's import structure: every module imports on its own, and no import cycle exists.

The graph is built from the sources (`ast`), counting imports inside functions too (a cycle hidden
behind a function-level import still breaks as soon as that function runs first); imports under
`if TYPE_CHECKING:` never run and are left out.
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
from typing import Dict, List, Set

import tdmpc_prune

ROOT = pathlib.Path(tdmpc_prune.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: Dict[str, pathlib.Path] = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: pathlib.Path) -> Set[str]:
    """Package modules `name` imports (anywhere in its body, functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # `from . import metrics` imports a module; `from .x import y` needs x
                found.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in MODULES and m != name}


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a path [a, b, ..., a], or [] if there is none."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def dfs(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return []


def test_the_package_has_no_import_cycle() -> None:
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    assert graph["tdmpc_prune.sb3.wrap"] >= {"tdmpc_prune.sb3.callback", "tdmpc_prune.sb3.saving"}  # the graph sees imports
    cycle = _cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_behind_a_function_level_import(tmp_path) -> None:
    a = tmp_path / "a.py"
    a.write_text("from tdmpc_prune import errors\n\ndef f():\n    from tdmpc_prune.pruner import Pruner\n")
    graph = {"tdmpc_prune.errors": set(), "tdmpc_prune.pruner": {"tdmpc_prune.errors"}}
    graph["tdmpc_prune.errors"] = {m for m in _imports("tdmpc_prune.errors", a)}
    assert _cycle(graph) == ["tdmpc_prune.errors", "tdmpc_prune.pruner", "tdmpc_prune.errors"]


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    print(m, flush=True)\n    importlib.import_module(m)\n"
    # deepest modules first, so a module that works only once its package has imported a sibling fails here
    names = sorted(MODULES, key=lambda m: (-m.count("."), m))
    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True)
    last = done.stdout.strip().splitlines()[-1:] or ["?"]
    assert done.returncode == 0, f"import {last[0]} failed:\n{done.stderr[-2000:]}"
