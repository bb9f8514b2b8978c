"""The modules' layering, read from their source: no import cycle, no other module's private names."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("farm", "workers")

#: Underscore names of other modules still used today, as (module, name).
#: This list may only shrink. The router files have none the check can see
#: (their mixins reach each other through ``self``, which items 1-2 of issue
#: 19 are replacing with components).
KNOWN_PRIVATE_USES: set[tuple[str, str]] = {
    # onnxruntime's own binding object: ORT has no public way to reach it.
    ("workers.backends.onnxruntime_backend", "_iobinding"),
    # The rknnrt backend borrows the RKNNLite backend's message helpers; both
    # are being reworked for dma-buf frames at the time of writing.
    ("workers.backends.rknnrt_backend", "_error_lines"),
    ("workers.backends.rknnrt_backend", "_guarded"),
    ("workers.backends.rknnrt_backend", "_hint"),
    ("workers.backends.rknnrt_backend", "_input_entry"),
    ("workers.backends.rknnrt_backend", "_output_entry"),
    ("workers.backends.rknnrt_backend", "_warn_if_outdated"),
}

#: Names with a leading underscore that are public API of the standard library
#: or of a namedtuple.
NOT_PRIVATE = {"_exit", "_make", "_fields", "_field_defaults", "_asdict", "_replace", "_getframe"}


def modules() -> dict[str, ast.Module]:
    """Every module of farm/ and workers/, by dotted name, parsed."""
    found = {}
    for package in PACKAGES:
        for directory, _, files in os.walk(os.path.join(ROOT, package)):
            for file in sorted(files):
                if not file.endswith(".py"):
                    continue
                path = os.path.join(directory, file)
                name = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
                name = name[: -len(".__init__")] if name.endswith(".__init__") else name
                with open(path, encoding="utf-8") as source:
                    found[name] = ast.parse(source.read(), path)
    return found


def imported_modules(module: str, tree: ast.Module, known: set[str]) -> Iterator[str]:
    """The project modules ``module`` imports, anywhere in it (a function's
    import or one for type checkers only is a dependency all the same)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{module}: a relative import; the project imports by absolute name"
            base = node.module or ""
            # `from farm.runtime import router` imports a module;
            # `from farm.runtime.router import Router` a name.
            names = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
            names = names or [base]
        else:
            continue
        for name in names:
            if name in known and name != module:
                yield name


def import_graph() -> dict[str, set[str]]:
    trees = modules()
    known = set(trees)
    return {name: set(imported_modules(name, tree, known)) for name, tree in trees.items()}


def find_cycle(graph: dict[str, set[str]]) -> Optional[list[str]]:
    """One import cycle (its modules in order, the first again at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> Optional[list[str]]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def own_names(tree: ast.Module) -> set[str]:
    """The names a module defines: functions, classes, assignments, attributes it sets."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def private_uses(tree: ast.Module) -> set[str]:
    """Underscore names a module takes from elsewhere: imported by name, or
    read as an attribute (``farm._arena``, ``protocol._KIND_OF``) that the
    module itself never defines. ``self._x`` and ``cls._x`` are its own."""
    mine = own_names(tree)
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            used |= {alias.name for alias in node.names if _private(alias.name)}
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in mine:
            own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if not own:
                used.add(node.attr)
    return used


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in NOT_PRIVATE


def test_no_module_imports_itself_through_others():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_session_and_iobinding_do_not_import_each_other():
    graph = import_graph()
    assert "farm.session" not in graph["farm.iobinding"]


def test_no_module_uses_another_modules_private_names():
    found = {(name, used) for name, tree in modules().items() for used in private_uses(tree)}
    unexpected = sorted(found - KNOWN_PRIVATE_USES)
    assert not unexpected, f"modules using other modules' underscore names (module, name): {unexpected}"
    gone = sorted(KNOWN_PRIVATE_USES - found)
    assert not gone, f"no longer used, take them off KNOWN_PRIVATE_USES: {gone}"


def test_pipes_are_made_in_three_places_only():
    """A worker's exit pipe (farm.runtime.processes) and the wake pipe (farm.runtime.wakepipe):
    a thread that needs waking from a poll uses a WakePipe. The bench's wake-up probe
    (farm.tools.bench.host) times round trips over pipes, with no farm in it."""
    makes_pipes = set()
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "pipe" and _is_name(node.value, "os"):
                makes_pipes.add(name)
    assert makes_pipes == {"farm.runtime.processes", "farm.runtime.wakepipe", "farm.tools.bench.host"}


#: What may sit at the top of farm/: the public API and what only it uses.
#: Everything else lives in a subpackage named for its part of a task's path.
API_MODULES = {
    "farm",
    "farm.__main__",
    "farm.backend_choice",
    "farm.errors",
    "farm.farm",
    "farm.iobinding",
    "farm.models",
    "farm.options",
    "farm.progress",
    "farm.session",
}
SUBPACKAGES = {"farm.data", "farm.node", "farm.runtime", "farm.tools"}


def _in(package: str, module: str) -> bool:
    return module == package or module.startswith(package + ".")


def imports_across(graph: dict[str, set[str]], importer: str, imported: str) -> list[tuple[str, str]]:
    """The (module, what it imports) pairs by which package ``importer`` depends on ``imported``."""
    return sorted(
        (module, target)
        for module, targets in graph.items()
        if _in(importer, module)
        for target in targets
        if _in(imported, target)
    )


def test_the_runtime_does_not_import_the_tools():
    assert imports_across(import_graph(), "farm.runtime", "farm.tools") == []


def test_the_data_plane_does_not_import_the_runtime():
    """Tasks, tensors and shared memory are described in farm.data; moving them is the runtime's job."""
    assert imports_across(import_graph(), "farm.data", "farm.runtime") == []


def test_workers_do_not_import_the_parent():
    """A worker process never loads the parent's code: workers/ stands alone."""
    assert imports_across(import_graph(), "workers", "farm") == []


def test_the_top_of_farm_is_the_public_api_and_the_rest_sits_in_named_subpackages():
    top_level = {name for name in modules() if name.count(".") <= 1 and _in("farm", name)}
    assert top_level == API_MODULES | SUBPACKAGES, (
        "a module at the top of farm/ that is not public API: move it into farm.runtime, farm.data, "
        f"farm.node or farm.tools (or add it to API_MODULES): {sorted(top_level - API_MODULES - SUBPACKAGES)}"
    )


def test_each_subpackage_says_what_it_holds():
    trees = modules()
    for package in sorted(SUBPACKAGES | {"farm"}):
        assert ast.get_docstring(trees[package]), f"{package}/__init__.py has no docstring"


def test_the_layer_check_sees_an_import_across():
    graph = {"farm.data.task": {"farm.runtime.books"}, "farm.runtime.books": {"farm.data.task"}}
    assert imports_across(graph, "farm.data", "farm.runtime") == [("farm.data.task", "farm.runtime.books")]
    assert imports_across(graph, "farm.runtime", "farm.tools") == []


def _is_name(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def test_the_checks_see_a_cycle_and_a_private_use():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    source = "from farm.runtime.processes import _helper\nimport x\nx._secret()\nself._mine = 1\nfarm._arena"
    tree = ast.parse(source)
    assert private_uses(tree) == {"_helper", "_secret", "_arena"}
