"""The package's layout: programs at the top, one concern per sub-package, no import cycle.

Read from the source with `ast`, so the checks hold whatever order modules happen to load in.
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "yolov4_jax")
PROGRAMS = {"main", "detect", "evaluate", "anchors", "export"}
# Function-local imports of the package, each with its reason.
LOCAL_IMPORTS = {
    # training imports JAX, which must come after the huge-page restart (ops/hostmem.py).
    ("yolov4_jax.main", "yolov4_jax.training"),
}


def _modules() -> dict[str, str]:
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))
                module = rel[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = os.path.join(folder, name)
    return found


def _imports(tree: ast.Module, modules: dict[str, str]):
    """(module-level, function-local) package modules that ``tree`` imports."""
    top, local = set(), set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` names the submodule where there is one.
            targets = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names
            ]
        targets = [t for t in targets if t in modules]
        if not targets:
            continue
        (top if node.col_offset == 0 else local).update(targets)
    return top, local


def test_the_top_level_is_the_programs():
    tops = {name[:-3] for name in os.listdir(ROOT) if name.endswith(".py")}
    assert tops - {"__init__"} == PROGRAMS
    packages = {n for n in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, n, "__init__.py"))}
    assert packages == {
        "cli",
        "darknet",
        "data",
        "deploy",
        "detection",
        "evaluation",
        "models",
        "ops",
        "training",
    }


def test_no_import_cycles_and_no_hidden_local_imports():
    modules = _modules()
    graph, local_found = {}, set()
    for module, path in modules.items():
        with open(path) as f:
            top, local = _imports(ast.parse(f.read()), modules)
        graph[module] = top - {module}
        local_found |= {(module, target) for target in local}
    assert local_found == LOCAL_IMPORTS
    # Depth-first search for a cycle; a package's own __init__ re-exporting its submodules
    # is not one (Python loads the submodule first).
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if nxt == node.rsplit(".", 1)[0] or node == nxt.rsplit(".", 1)[0]:
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_cpu_only_machinery_lives_in_ops():
    """ctypes, custom calls, malloc tunables and XLA flags are ops/'s alone."""
    markers = ("ctypes", "ffi_call", "XLA_FLAGS", "GLIBC_TUNABLES", "/proc/")
    for module, path in _modules().items():
        if module.startswith("yolov4_jax.ops"):
            continue
        with open(path) as f:
            text = f.read()
        assert not [m for m in markers if m in text], module
