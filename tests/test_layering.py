"""Imports run one way: core <- catalogue <- applications, and no module imports itself back.

Every ``import gcnet...`` in the source counts, function-local ones too (a local import that dodges
a cycle is still a cycle). Read from the source with ``ast``, so nothing needs to be imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "gcnet"

# first component under gcnet -> layer (0 core, 1 catalogue, 2 applications)
CORE = {
    "layers",
    "boxes",
    "structures",
    "masks",
    "image_io",
    "models",
    "data",
    "checkpoint",
    "evaluation",
    "errors",
    "paths",
    "visualise",
    "speed",
    "prefetch",
    "tiling",
}
CATALOGUE = {"config", "zoo", "zoo_flops"}
APPLICATIONS = {
    "build",
    "inference",
    "engine",
    "bench",
    "export",
    "demo",
    "cli",
    "__init__",
    "__main__",
    "report",
    "browse",
    "flops",
    "video",
}
LAYER_NAMES = ("core", "catalogue", "applications")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    for rank, names in enumerate((CORE, CATALOGUE, APPLICATIONS)):
        if head in names:
            return rank
    raise AssertionError(f"{module}: not assigned to a layer in tests/test_layering.py")


def _target(name: str) -> str:
    """The gcnet module an import names (``from gcnet.a import b`` names module gcnet.a.b if it
    exists, else gcnet.a)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_in(source: str, module: str) -> set[str]:
    """The gcnet modules ``source`` (the text of ``module``) imports, anywhere in it."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_target(a.name) for a in node.names if a.name.split(".")[0] == "gcnet")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "gcnet":
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else _target(node.module))
    found.discard(module)
    return found


def imports_of(module: str) -> set[str]:
    return imports_in(MODULES[module].read_text(encoding="utf-8"), module)


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_upward_import() -> None:
    upward = [
        f"{m} ({LAYER_NAMES[layer_of(m)]}) imports {t} ({LAYER_NAMES[layer_of(t)]})"
        for m, targets in GRAPH.items()
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert not upward, "\n".join(upward)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = _find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("graph", "has_cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
    ],
)
def test_the_cycle_finder_itself(graph: dict[str, set[str]], has_cycle: bool) -> None:
    assert (_find_cycle(graph) is not None) == has_cycle


def test_function_local_imports_are_seen() -> None:
    """The walker reads imports inside functions too (the dodge this test exists to catch)."""
    source = (
        "from gcnet.checkpoint.io import atomic_write\n"
        "def f():\n    from gcnet.zoo import ZOO\n    import gcnet.config\n"
        "class C:\n    def g(self):\n        from gcnet.data import load_image\n"
    )
    assert imports_in(source, "gcnet.checkpoint.remote") == {
        "gcnet.checkpoint.io",
        "gcnet.zoo",
        "gcnet.config",
        "gcnet.data",
    }
    # and such an import would be reported as upward
    assert layer_of("gcnet.checkpoint.remote") < layer_of("gcnet.zoo")
