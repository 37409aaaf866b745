"""GraphViz DOT text for a circuit graph, written by hand (no pydot or pygraphviz).

Layout: bottom to top (``rankdir=BT``): ``input`` alone at the bottom, then for each layer
a rank with its heads and, just above, a rank with its MLP (and neurons), ``logits`` alone
at the top. Heads are ellipses, MLPs boxes, neurons rounded boxes, ``input`` a house and
``logits`` a double octagon. An edge's width grows with ``|score|`` (0.5 to 6 points,
relative to the largest in the graph), its colour gives the sign (blue positive, red
negative), and edges into heads are labelled with the inputs they feed (``q,k``).
A reduced MLP (kept through some neurons only) says how many in its label, and each kept
neuron (``n123``) sits in the MLP's rank, tied to it by a dashed line.
The output depends only on the graph, so equal graphs give byte-equal files.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import networkx as nx

from circuits import names

POSITIVE = "#1f5fbf"
NEGATIVE = "#c0392b"
MIN_WIDTH, MAX_WIDTH = 0.5, 6.0

_SHAPES: dict[str, dict[str, str]] = {
    "input": {"shape": "house", "style": "filled", "fillcolor": "#e6e6e6"},
    "logits": {"shape": "doubleoctagon", "style": "filled", "fillcolor": "#e6e6e6"},
    "head": {"shape": "ellipse", "style": "filled", "fillcolor": "#fdf1d6"},
    "mlp": {"shape": "box", "style": "filled", "fillcolor": "#dcebf7"},
    "neuron": {"shape": "box", "style": "rounded,filled", "fillcolor": "#e8f4e8"},
}

__all__ = ["to_dot", "quote", "penwidth", "edge_colour"]


def to_dot(G: nx.DiGraph) -> str:
    """The DOT text of a circuit graph (see the module docstring for the drawing rules)."""
    order = sorted(G.nodes, key=names.sort_key)
    max_abs = max((abs(float(d.get("score") or 0.0)) for _, _, d in G.edges(data=True)), default=0.0)
    lines = ["digraph circuit {"]
    graph_attrs = {"rankdir": "BT", "ranksep": "0.5", "nodesep": "0.3", "fontname": "Helvetica"}
    title = _title(G.graph)
    if title:
        graph_attrs.update(label=title, labelloc="t", fontsize="14")
    lines.append(f"  graph [{_attrs(graph_attrs)}];")
    lines.append('  node [fontname="Helvetica", fontsize="11"];')
    lines.append('  edge [fontname="Helvetica", fontsize="9", arrowsize="0.6"];')
    for n in order:
        lines.append(f"  {quote(n)} [{_attrs(_node_style(n, G.nodes[n]))}];")
    for rank in _ranks(order):
        lines.append("  {rank=same; " + " ".join(f"{quote(n)};" for n in rank) + "}")
    edges = sorted(G.edges(data=True), key=lambda e: (names.sort_key(e[0]), names.sort_key(e[1])))
    for u, v, data in edges:
        lines.append(f"  {quote(u)} -> {quote(v)} [{_attrs(_edge_style(data, max_abs))}];")
    tie = {"style": "dashed", "dir": "none", "color": "#7f9f7f", "constraint": "false"}
    for n in order:
        parent = G.nodes[n].get("parent")
        if (G.nodes[n].get("kind") or names.parse_node(n).kind) == "neuron" and parent in G:
            lines.append(f"  {quote(parent)} -> {quote(n)} [{_attrs(tie)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def quote(text: Any) -> str:
    """A DOT double-quoted ID: backslashes and quotes escaped, newlines as ``\\n``."""
    s = str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "\\n")
    return f'"{s}"'


def penwidth(score: float, max_abs: float) -> float:
    """Line width for an edge: 0.5 to 6 points, linear in ``|score| / max_abs``."""
    if max_abs <= 0:
        return 1.0
    return MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * min(abs(score) / max_abs, 1.0)


def edge_colour(score: float) -> str:
    """Blue for a positive (or zero) score, red for a negative one."""
    return NEGATIVE if score < 0 else POSITIVE


def _edge_style(data: dict, max_abs: float) -> dict[str, str]:
    score = float(data.get("score") or 0.0)
    colour = edge_colour(score)
    style = {
        "penwidth": f"{penwidth(score, max_abs):.2f}",
        "color": colour,
        "tooltip": f"{', '.join(data.get('names') or [])}: {score:.4g}",
    }
    qkv = data.get("qkv") or []
    if qkv:
        style.update(label=",".join(q for q in names.QKV if q in qkv), fontcolor=colour)
    return style


def _node_style(name: str, data: dict) -> dict[str, str]:
    node = names.parse_node(name)
    kind = data.get("kind") or node.kind
    label = name
    if kind == "neuron":
        label = f"n{node.index}"
    elif kind == "mlp" and data.get("neurons"):
        label = f"{name}\n{len(data['neurons'])} neurons"
    style = {"label": label, **_SHAPES.get(kind, {"shape": "box"})}
    score = data.get("score")
    if isinstance(score, (int, float)):
        style["tooltip"] = f"{name}: {score:.4g}"
    return style


def _ranks(order: Iterable[str]) -> list[list[str]]:
    """Groups of node names that share a rank, bottom to top."""
    groups: dict[float, list[str]] = defaultdict(list)
    for n in order:
        groups[names.node_layer_order(names.parse_node(n))[0]].append(n)
    return [groups[k] for k in sorted(groups)]


def _title(meta: dict) -> str:
    parts = [str(meta[k]) for k in ("task", "model", "method") if meta.get(k) not in (None, "")]
    f = meta.get("faithfulness")
    if isinstance(f, (int, float)) and not isinstance(f, bool):
        parts.append(f"f = {f:.3f}")
    return " | ".join(parts)


def _attrs(attrs: dict[str, str]) -> str:
    return ", ".join(f"{k}={quote(v)}" for k, v in attrs.items())
