"""Write a circuit graph as DOT, SVG, PNG, GraphML, node-link JSON, the HTML viewer, EAP-IG's
JSON or MIB's submission folder (every file written atomically).

SVG is drawn by us (:mod:`circuits.graphs.svg`). PNG is drawn from the DOT text by GraphViz's
``dot`` when it is on PATH, else by ``graphviz-pure`` (a pip-installable port of ``dot``, the
``png`` extra), run as a subprocess.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Union

import networkx as nx

from circuits.atomic import write_atomic
from circuits.errors import CircuitsError
from circuits.graphs.build import jsonable, write_json
from circuits.graphs.dot import to_dot

FORMATS = ("dot", "svg", "png", "graphml", "json", "html", "eap-ig", "mib")
DOT_TIMEOUT_S = 120

__all__ = ["FORMATS", "export", "dot_available", "dot_program", "render", "render_svg", "to_graphml"]


def export(G: nx.DiGraph, fmt: str, out_path: Union[str, Path], *, scores: Optional[dict] = None,
           manifest: Optional[dict] = None, compare: Optional[nx.DiGraph] = None, compare_label: str = "B",
           mib_caps: bool = False) -> Path:
    """Write ``G`` to ``out_path`` in format ``fmt`` (one of :data:`FORMATS`); returns the path.

    ``scores`` (every edge's score, from the run's ``scores.tsv``) feed the viewer's slider and
    the EAP-IG and MIB files; ``manifest`` gives the viewer its faithfulness curve; ``compare``
    is a second circuit for the viewer's compare mode. ``mib`` writes a folder under ``out_path``.
    """
    fmt = fmt.lower().lstrip(".")
    if fmt == "json":
        return write_json(G, out_path)
    if fmt == "dot":
        return write_atomic(out_path, to_dot(G))
    if fmt == "svg":
        from circuits.graphs.svg import to_svg

        return write_atomic(out_path, to_svg(G))
    if fmt == "png":
        return write_atomic(out_path, render(to_dot(G), fmt))
    if fmt == "graphml":
        return write_atomic(out_path, to_graphml(G))
    if fmt == "html":
        from circuits.graphs.viewer import write_viewer

        return write_viewer(G, out_path, scores=scores, manifest=manifest, compare=compare, compare_label=compare_label)
    if fmt == "eap-ig":
        from circuits.graphs.interop import write_eap_ig

        return write_eap_ig(G, out_path, scores=scores)
    if fmt == "mib":
        from circuits.graphs.interop import write_mib

        return write_mib(G, out_path, scores=scores, caps=mib_caps)
    raise CircuitsError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")


def dot_program() -> Optional[str]:
    """GraphViz's ``dot`` on PATH, else the ``graphviz-pure`` binary (PATH or this Python's bin folder), else None."""
    for name in ("dot", "graphviz-pure"):
        found = shutil.which(name)
        if found:
            return found
    local = Path(sys.executable).parent / "graphviz-pure"
    return str(local) if local.is_file() else None


def dot_available() -> bool:
    """Whether a ``dot`` program (GraphViz's or graphviz-pure's) can be run."""
    return dot_program() is not None


def render(dot_text: str, fmt: str) -> bytes:
    """Run ``dot -T<fmt>`` on DOT text and return its output; CircuitsError without GraphViz."""
    exe = dot_program()
    if exe is None:
        raise CircuitsError(
            f"drawing {fmt.upper()} needs GraphViz's `dot` program, which is not on PATH: "
            "install graphviz (apt-get install graphviz, brew install graphviz) or `pip install graphviz-pure`, "
            "or export --format svg (drawn without GraphViz)"
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
    """GraphViz's SVG drawing of DOT text, or None when no ``dot`` program is installed."""
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
