"""The package's shape: no import cycles, and each layer imports only the layers below it.

Imports are read from the source (every ``import``, lazy ones inside functions too, except
those under ``if TYPE_CHECKING:``), so the rules hold for every code path, not only for what
one test run happens to import. docs/ARCHITECTURE.md states the same rules in words.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "textdistill"

LAYERS: dict[str, set[str]] = {
    "core": set(),
    "runtime": {"core"},
    "data": {"core"},
    "models": {"core", "data"},
    "training": {"core", "data", "models"},
    "distill": {"core", "data", "models", "training"},
    "inference": {"core", "runtime", "data", "models"},
    "deploy": {"core", "runtime", "data", "models", "inference"},
    "evaluation": {"core", "runtime", "data", "models", "training", "inference"},
    "pipeline": {
        "core", "runtime", "data", "models", "training", "distill", "inference", "evaluation",
    },
    "cli": {
        "core", "runtime", "data", "models", "training", "distill", "inference", "deploy",
        "evaluation", "pipeline",
    },
}  # fmt: skip
"""Layer -> the other layers its modules may import."""

LEAVES = {f"{PACKAGE}.evaluation.metrics"}
"""Modules any layer may import: measuring instruments with no imports of ours but core
(the training loop selects on the same metrics that ``evaluate`` reports)."""


def modules() -> dict[str, Path]:
    found = {}
    for f in (SRC / PACKAGE).rglob("*.py"):
        rel = f.relative_to(SRC).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        found[".".join(parts)] = f
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(path: Path, here: str, known: dict[str, Path]) -> set[str]:
    """Modules of the package that ``path`` imports (absolute imports; TYPE_CHECKING skipped)."""
    out: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
            ):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE and (m := _resolve(alias.name, known)):
                    out.add(m)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            assert node.level == 0, f"{path}: relative import; use absolute imports"
            module = node.module or ""
            if module.split(".")[0] != PACKAGE:
                return
            for alias in node.names:
                target = _resolve(f"{module}.{alias.name}", known) or _resolve(module, known)
                if target:
                    out.add(target)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    # A package and its own parents are not edges (``from textdistill import __version__``).
    return {m for m in out if m != here and not here.startswith(m + ".")}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, name, known) for name, path in known.items()}


def layer_of(module: str) -> str | None:
    """``textdistill.data.corpus`` -> ``data``; None for the package root (``textdistill``,
    whose lazy ``textdistill.load`` is the public entry point, and ``textdistill.__main__``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else None


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_cycle_detection_finds_a_cycle() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def layer_violations(g: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(g.items()):
        layer = layer_of(module)
        if layer is None:
            continue
        allowed = LAYERS[layer] | {layer}
        for target in sorted(targets):
            there = layer_of(target)
            if there is None or there in allowed or target in LEAVES:
                continue
            wrong.append(f"{module} ({layer}) imports {target} ({there})")
    return wrong


def test_every_layer_imports_only_the_layers_below_it() -> None:
    assert layer_violations(graph()) == []


def test_a_layer_importing_upwards_is_reported() -> None:
    g = {
        "textdistill.training.loop": {
            "textdistill.inference.load",
            "textdistill.evaluation.metrics",
        },
        "textdistill.data.corpus": {"textdistill.core.io"},
    }
    assert layer_violations(g) == [
        "textdistill.training.loop (training) imports textdistill.inference.load (inference)"
    ]


def test_every_module_belongs_to_a_layer() -> None:
    layers = {layer_of(m) for m in modules()} - {None}
    assert layers <= set(LAYERS), layers - set(LAYERS)


@pytest.mark.parametrize("layer", ["training", "distill"])
def test_training_code_never_imports_inference_or_deploy(layer: str) -> None:
    g = graph()
    offending = {
        (m, t)
        for m, targets in g.items()
        if layer_of(m) == layer
        for t in targets
        if layer_of(t) in ("inference", "deploy")
    }
    assert offending == set()


def test_leaves_import_only_core() -> None:
    g = graph()
    for leaf in LEAVES:
        assert {layer_of(t) for t in g[leaf]} <= {"core"}, g[leaf]
