"""Write a circuit graph as DOT, SVG, PNG, GraphML or node-link JSON (every file written atomically).

SVG and PNG are drawn by GraphViz's ``dot`` program, run as a subprocess.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional, Union

import networkx as nx

from circuits.atomic import write_atomic
from circuits.errors import CircuitsError
from circuits.graphs.build import jsonable, write_json
from circuits.graphs.dot import to_dot

FORMATS = ("dot", "svg", "png", "graphml", "json")
DOT_TIMEOUT_S = 120

__all__ = ["FORMATS", "export", "dot_available", "render", "render_svg", "to_graphml"]


def export(G: nx.DiGraph, fmt: str, out_path: Union[str, Path]) -> Path:
    """Write ``G`` to ``out_path`` in format ``fmt`` (one of :data:`FORMATS`); returns the path."""
    fmt = fmt.lower().lstrip(".")
    if fmt == "json":
        return write_json(G, out_path)
    if fmt == "dot":
        return write_atomic(out_path, to_dot(G))
    if fmt in ("svg", "png"):
        return write_atomic(out_path, render(to_dot(G), fmt))
    if fmt == "graphml":
        return write_atomic(out_path, to_graphml(G))
    raise CircuitsError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")


def dot_available() -> bool:
    """Whether GraphViz's ``dot`` program is on PATH."""
    return shutil.which("dot") is not None


def render(dot_text: str, fmt: str) -> bytes:
    """Run ``dot -T<fmt>`` on DOT text and return its output; CircuitsError without GraphViz."""
    exe = shutil.which("dot")
    if exe is None:
        raise CircuitsError(
            f"drawing {fmt.upper()} needs GraphViz's `dot` program, which is not on PATH: "
            "install graphviz (e.g. apt-get install graphviz or brew install graphviz), or export --format dot"
        )
    try:
        proc = subprocess.run(
            [exe, f"-T{fmt}"], input=dot_text.encode("utf-8"), capture_output=True, timeout=DOT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise CircuitsError(f"`dot -T{fmt}` took over {DOT_TIMEOUT_S} s; export --format dot and draw it yourself") from None
    if proc.returncode != 0:
        first = (proc.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[0]
        raise CircuitsError(f"`dot -T{fmt}` failed ({first}); export --format dot to inspect the DOT text")
    return proc.stdout


def render_svg(dot_text: str) -> Optional[str]:
    """The SVG drawing of DOT text, or None when GraphViz's ``dot`` is not installed."""
    if not dot_available():
        return None
    return render(dot_text, "svg").decode("utf-8")


def to_graphml(G: nx.DiGraph) -> str:
    """GraphML text of ``G``. GraphML holds only scalars: lists and dicts become JSON strings, None is left out."""
    H = nx.DiGraph()
    H.graph.update(_scalars(G.graph))
    for n, data in G.nodes(data=True):
        H.add_node(n, **_scalars(data))
    for u, v, data in G.edges(data=True):
        H.add_edge(u, v, **_scalars(data))
    return "\n".join(nx.generate_graphml(H)) + "\n"


def _scalars(attrs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in jsonable(dict(attrs)).items():
        if value is None:
            continue
        if isinstance(value, (bool, int, float, str)):
            out[str(key)] = value
        else:
            out[str(key)] = json.dumps(value, sort_keys=True)
    return out
