"""The package's modules import each other without a cycle.

Every import of a `hos_keras` module counts, at module level or inside a
function (a deferred import is a cycle hidden, not removed), and so does an
import under `TYPE_CHECKING`.
"""

import ast
import pathlib

import hos_keras

PACKAGE = pathlib.Path(hos_keras.__file__).parent


def _imports() -> dict[str, set[str]]:
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    edges = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "hos_keras":
                found |= {alias.name for alias in node.names} & modules
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("hos_keras."):
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {
                    alias.name.split(".")[1]
                    for alias in node.names
                    if alias.name.startswith("hos_keras.")
                }
        edges[path.stem] = found - {path.stem, "__init__"}
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for other in sorted(edges.get(module, ())):
            if state.get(other) == 1:
                return [*path[path.index(other) :], other]
            if other not in state:
                found = visit(other)
                if found:
                    return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [
        "a",
        "b",
        "c",
        "a",
    ]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_of_the_package_imports_itself_back():
    edges = _imports()
    assert {"plan", "plan_record", "surgery", "latency"} <= set(edges)
    assert "plan_record" in edges["surgery"]
    cycle = _cycle(edges)
    assert cycle is None, " -> ".join(cycle)
