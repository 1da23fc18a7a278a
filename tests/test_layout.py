"""The code's shape: no import cycle, core free of kfp, the README's folder map true to the tree.

Imports are read from the source (every `import` and `from ... import`, also inside functions and
under `if TYPE_CHECKING:`), so a cycle is found even where a lazy or annotation-only import keeps
it from failing at run time.
"""

import ast
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("components", "pipelines")


def _modules() -> dict[str, str]:
    """{dotted module name: file path} of every module in PACKAGES."""
    found = {}
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in names:
                if name.endswith(".py"):
                    relative = os.path.relpath(os.path.join(folder, name), ROOT)[:-3]
                    dotted = relative.replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = os.path.join(folder, name)
    return found


def _imported(path: str, modules: dict) -> set[str]:
    """The PACKAGES modules the file at `path` imports (a `from package import name` counts
    as importing module `package.name` when that is a module, else `package`)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(path, modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return stack[stack.index(successor):] + [successor]
            if successor not in state:
                cycle = visit(successor)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_module_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_core_subpackages():
    """components.core's subpackages form layers: none imports one that imports it back."""
    graph = {}
    for module, imports in import_graph().items():
        source = _core_package(module)
        if source:
            graph.setdefault(source, set()).update(
                target for target in map(_core_package, imports) if target and target != source)
    cycle = find_cycle(graph)
    assert cycle is None, "subpackage cycle: " + " -> ".join(cycle)


def _core_package(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:3]) if parts[:2] == ["components", "core"] and len(parts) > 2 else None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_core_imports_no_kfp():
    for name, path in _modules().items():
        if name.startswith("components.core"):
            tree = ast.parse(open(path, encoding="utf-8").read())
            for node in ast.walk(tree):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n.split(".")[0] == "kfp" for n in names), f"{name} imports kfp"


def _readme_map() -> list[str]:
    """The folder paths in the README's folder map (the fenced block under "## Folder map")."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = readme.split("## Folder map", 1)[1].split("```", 2)[1]
    return [line.split()[0] for line in block.splitlines()
            if line.strip() and not line.startswith(" ")]


def _tracked_folders() -> set[str]:
    """Every folder holding a file git tracks, hidden ones (.ci/) aside, as "path/"."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return {os.path.dirname(path) + "/" for path in files
            if os.path.dirname(path) and not path.startswith(".")}


def test_readme_folder_map_matches_the_tree():
    if not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout: the tracked folders are unknown")
    listed, actual = set(_readme_map()), _tracked_folders()
    assert listed == actual, (f"README folder map lists {sorted(listed - actual)} that hold no "
                              f"tracked file and misses {sorted(actual - listed)}")
