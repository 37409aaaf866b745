"""The house's rules that a test can keep: no import cycle, and no function over 80 lines.

The package's import graph has no cycle, imports inside functions included.

Every ``import`` and ``from ... import`` in ``circuits/``, ``tasks/`` (installed as
``circuits.tasks``) and ``graphs/`` (``circuits.graphs``) is an edge from its module to the module
it names (for ``from a.b import c``: ``a.b.c`` when that is a module, else ``a.b``).  Importing a
submodule runs its package's ``__init__`` first, but that is not counted as an edge: a package's
``__init__`` may re-export its modules, and its modules import each other directly.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
TREES = {"circuits": ROOT / "circuits", "circuits.tasks": ROOT / "tasks", "circuits.graphs": ROOT / "graphs"}


def modules() -> Dict[str, Path]:
    found = {}
    for prefix, folder in TREES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([prefix, *parts])
            if prefix == "circuits" and parts[:1] in (["tasks"], ["graphs"]):
                continue
            found[name] = path
    return found


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> Dict[str, Set[str]]:
    mods = modules()
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != mod and t != "circuits":
                    graph[mod].add(t)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100


def test_no_import_cycle_in_the_package():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


MAX_FUNCTION_LINES = 80


def long_functions(limit: int = MAX_FUNCTION_LINES) -> List[str]:
    """``path:line name (N lines)`` for every function or method over ``limit`` lines (decorators excluded)."""
    out = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_the_length_check_sees_long_functions():
    assert long_functions(limit=30), "some functions are over 30 lines: the check must see them"


def test_no_function_over_80_lines():
    found = long_functions()
    assert not found, "split these: " + "; ".join(found)


def test_every_built_in_plugin_loads():
    """A built-in method or task that fails to import is only a warning at run time: here it is a failure."""
    import warnings

    from circuits.registry import METHODS, TASKS, PluginWarning, plugins

    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        methods, tasks = plugins(METHODS), plugins(TASKS)
    assert {"eap", "eap-ig", "activation-patching", "path-patching", "acdc", "edge-pruning", "ugs"} <= set(methods)
    assert {"greater-than", "ioi", "arithmetic", "mcqa", "arc", "facts"} <= set(tasks)


def test_tensor_shapes_in_the_types_are_checked():
    """The engine's and the methods' public functions carry jaxtyping shapes; beartype checks them here."""
    import pytest
    import torch

    jaxtyping = pytest.importorskip("jaxtyping", reason="jaxtyping is a dependency (make install)")
    beartype = pytest.importorskip("beartype", reason="beartype comes with the dev extra (make install)")
    from circuits.engine.engine import GraphEngine
    from circuits.models.synthetic import random_llama_weights

    engine = GraphEngine(random_llama_weights(1, 16, 2, 2, 32, 50))
    embed = jaxtyping.jaxtyped(typechecker=beartype.beartype)(GraphEngine.embed)
    tokens = torch.randint(0, 50, (2, 5))
    assert embed(engine, tokens).shape == (2, 5, 16)
    with pytest.raises(Exception, match="(?i)type|shape|dimension"):
        embed(engine, tokens[0])  # one prompt without its batch axis
    run = jaxtyping.jaxtyped(typechecker=beartype.beartype)(GraphEngine.run)
    assert run(engine, tokens, torch.tensor([4, 4])).logits.shape == (2, 50)
