"""``circuit.svg`` drawn by us on the layered grid of :mod:`circuits.graphs.layout` (no GraphViz).

- one band per row (``L5 attn``, ``L5 MLP``), ``input`` at the bottom and ``logits`` on top;
- an edge is a curve from the top of its sender to the bottom of its receiver; its width (and
  opacity) grow with ``|score|`` (relative to the largest kept edge), its colour gives the sign
  (blue positive, red negative), and the strongest edges are drawn last;
- an edge into a head ends at the head's q, k or v port (left, middle, right of its bottom
  side), and the used ports are lettered;
- every node is labelled; hovering an edge or node shows its name and score (SVG ``<title>``);
- the title gives the task, model, method, faithfulness and edge count;
- a positional circuit (``graph["spans"]``) is drawn with one column band per span, labelled on top.

Node circuits (``graph["granularity"] == "node"``) keep every edge among their nodes, so
their edges are drawn thin and grey and the nodes are shaded by ``|score|`` instead.
The text depends only on the graph: equal graphs give byte-equal files.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional
from xml.sax.saxutils import escape

import networkx as nx

from circuits import names
from circuits.graphs.dot import MAX_WIDTH, MIN_WIDTH, NEGATIVE, POSITIVE
from circuits.graphs.layout import Box, Layout, first_neurons, layout

FILL = {"input": "#e6e6e6", "logits": "#e6e6e6", "head": "#fdf1d6", "mlp": "#dcebf7", "neuron": "#e8f4e8"}
PORT = {"q": -0.32, "k": 0.0, "v": 0.32}  # port offset, as a fraction of the head's width

__all__ = ["to_svg", "title_of", "edge_path", "port_x", "FILL", "PORT"]


def to_svg(G: nx.DiGraph, *, n_heads: Optional[int] = None) -> str:
    """The SVG text of a circuit graph (see the module docstring)."""
    lay = layout(_node_attrs(G), n_heads=n_heads or _n_heads(G), spans=G.graph.get("spans") or None)
    node_level = G.graph.get("granularity") == "node"
    title = title_of(G.graph, edges=len(_edge_items(G)))
    width = max(lay.width, 7.6 * len(title) + 24)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_f(width)}" height="{_f(lay.height)}" '
        f'viewBox="0 0 {_f(width)} {_f(lay.height)}" font-family="Helvetica, Arial, sans-serif">',
        f"<title>{escape(title or 'circuit')}</title>",
        f'<rect x="0" y="0" width="{_f(width)}" height="{_f(lay.height)}" fill="#ffffff"/>',
    ]
    parts += _bands(lay, width)
    parts.append(f'<text x="8" y="20" font-size="14" font-weight="bold">{escape(title)}</text>')
    edges, ports = _edges(G, lay, node_level)
    parts += edges
    parts += _nodes(G, lay, node_level)
    parts += ports
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def title_of(meta: Mapping[str, Any], *, edges: Optional[int] = None) -> str:
    """``task | model | method | f = 0.900 | 378 of 123,211 edges`` from the graph's metadata (a positional circuit:
    ``... | 24,334 of 862,477 (edge, span) pairs``)."""
    parts = [str(meta[k]) for k in ("task", "model", "method") if meta.get(k) not in (None, "")]
    parts = [p.rsplit("/", 1)[-1] for p in parts]  # a model path: its file name
    f = meta.get("faithfulness")
    if isinstance(f, (int, float)) and not isinstance(f, bool):
        parts.append(f"f = {f:.3f}")
    total, pairs = meta.get("edges_total"), meta.get("pairs_total")
    if edges is not None and isinstance(pairs, int):  # a positional circuit counts (edge, span) pairs
        parts.append(f"{edges:,} of {pairs:,} (edge, span) pairs")
    elif edges is not None:
        parts.append(f"{edges:,} of {total:,} edges" if isinstance(total, int) else f"{edges:,} edges")
    return " | ".join(parts)


def port_x(box: Box, qkv: Optional[str]) -> float:
    """Where an edge meets its receiver: the q/k/v port of a head, the middle otherwise."""
    return box.x + PORT.get(qkv or "k", 0.0) * box.w if box.kind == "head" else box.x


def edge_path(src: Box, dst: Box, qkv: Optional[str]) -> str:
    """SVG path data of the curve from the top of ``src`` to the (q/k/v port at the) bottom of ``dst``."""
    x1, y1 = src.x, src.y - src.h / 2
    x2, y2 = port_x(dst, qkv), dst.y + dst.h / 2
    dy = max(y1 - y2, 1.0)
    bend = 0.0
    if abs(x1 - x2) < src.w and dy > 60:  # same column: bow out so the curve passes beside the boxes between
        bend = min(18.0 + dy * 0.08, 70.0)
    c = dy * 0.45
    return (f"M{_f(x1)},{_f(y1)} C{_f(x1 + bend)},{_f(y1 - c)} {_f(x2 + bend)},{_f(y2 + c)} {_f(x2)},{_f(y2)}")


def _edges(G: nx.DiGraph, lay: Layout, node_level: bool) -> tuple[list[str], list[str]]:
    items = _edge_items(G)
    max_abs = max((abs(s) for *_, s in items), default=0.0)
    items.sort(key=lambda e: (abs(e[3]), e[0]))  # weakest first, strongest on top
    out = ['<g fill="none" stroke-linecap="round">']
    for name, u, (v, qkv), score in items:
        d = edge_path(lay.boxes[u], lay.boxes[v], qkv)
        if node_level:
            colour, width, opacity = "#9a9a9a", 0.8, 0.5
        else:
            colour = NEGATIVE if score < 0 else POSITIVE
            t = abs(score) / max_abs if max_abs > 0 else 1.0
            width = MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * t
            opacity = f"{0.3 + 0.6 * t:.2f}"  # weak edges fade, so the strong paths stand out
        out.append(f'<path d="{d}" stroke="{colour}" stroke-width="{_f(width)}" stroke-opacity="{opacity}">'
                   f"<title>{escape(name)}: {score:.4g}</title></path>")
    out.append("</g>")
    # the q/k/v letters at the head ports that receive an edge, drawn over the nodes
    used = sorted({(v, qkv) for _, _, (v, qkv), _ in items if qkv})
    ports = ['<g font-size="8" fill="#555555" text-anchor="middle">']
    for v, qkv in used:
        box = lay.boxes[v]
        ports.append(f'<text x="{_f(port_x(box, qkv))}" y="{_f(box.y + box.h / 2 + 8)}">{qkv}</text>')
    ports.append("</g>")
    return out, ports


def _nodes(G: nx.DiGraph, lay: Layout, node_level: bool) -> list[str]:
    scores = [abs(float(G.nodes[n].get("score"))) for n in G.nodes if _number(G.nodes[n].get("score"))]
    max_abs = max(scores, default=0.0)
    out = ['<g font-size="10" text-anchor="middle">']
    linked = first_neurons(lay)
    for n in sorted(lay.boxes, key=lambda n: (lay.boxes[n].y, lay.boxes[n].x)):
        box, data = lay.boxes[n], G.nodes[n]
        score = data.get("score")
        tip = n if not _number(score) else f"{n}: {float(score):.4g}"
        fill = FILL.get(box.kind, "#ffffff")
        if node_level and _number(score) and max_abs > 0 and box.kind not in ("input", "logits"):
            fill = _shade(NEGATIVE if score < 0 else POSITIVE, abs(float(score)) / max_abs)
        if n in linked:
            parent = lay.boxes.get(names.format_node(names.mlp(box.layer)))
            if parent is not None:
                out.append(f'<line x1="{_f(parent.x + parent.w / 2)}" y1="{_f(parent.y)}" x2="{_f(box.x - box.w / 2)}" '
                           f'y2="{_f(box.y)}" stroke="#7aa37a" stroke-width="0.8"/>')
        rx = 10 if box.kind == "head" else 3
        out.append(f'<g><title>{escape(tip)}</title><rect x="{_f(box.x - box.w / 2)}" y="{_f(box.y - box.h / 2)}" '
                   f'width="{_f(box.w)}" height="{_f(box.h)}" rx="{rx}" fill="{fill}" stroke="#333333" stroke-width="0.8"/>'
                   f'<text x="{_f(box.x)}" y="{_f(box.y + 3.5)}"{_small(box)}>{escape(box.label)}</text></g>')
    out.append("</g>")
    return out


def _bands(lay: Layout, width: float) -> list[str]:
    out = ['<g font-size="10" fill="#666666">']
    for row in lay.rows:
        shade = "#f4f6f9" if row.key[0] == "mlp" else "#fbfbfb"
        out.append(f'<rect x="0" y="{_f(row.top)}" width="{_f(width)}" height="{_f(row.bottom - row.top)}" fill="{shade}"/>')
        out.append(f'<text x="6" y="{_f(row.y + 3.5)}">{escape(row.label)}</text>')
    for i, (left, right, span) in enumerate(lay.bands):  # a positional circuit: one column band per span
        if i % 2 == 0:
            out.append(f'<rect x="{_f(left)}" y="{_f(lay.rows[-1].top if lay.rows else 0)}" width="{_f(right - left)}" '
                       f'height="{_f(lay.rows[0].bottom - lay.rows[-1].top if lay.rows else lay.height)}" fill="#5b7fbf" fill-opacity="0.06"/>')
        out.append(f'<text x="{_f((left + right) / 2)}" y="30" text-anchor="middle" font-weight="bold">{escape(span)}</text>')
    out.append("</g>")
    if lay.rows:
        y = lay.height - 10
        out.append('<g font-size="9" fill="#888888" text-anchor="middle">')
        out += [f'<text x="{_f(x)}" y="{_f(y)}">{escape(label)}</text>' for x, label in lay.columns]
        out.append("</g>")
    return out


def _edge_items(G: nx.DiGraph) -> list[tuple[str, str, tuple[str, Optional[str]], float]]:
    """(full edge name, sender, (receiver, q/k/v), score) of every kept edge, q, k and v apart."""
    items = []
    for u, v, data in G.edges(data=True):
        scores = data.get("scores") or {}
        for name in data.get("names") or []:
            qkv = names.parse_edge(name).qkv
            s = scores.get(qkv or "")
            if not _number(s):
                s = data.get("score") if len(data.get("names") or []) == 1 else 0.0
            items.append((name, u, (v, qkv), float(s or 0.0)))
    return sorted(items)


def _node_attrs(G: nx.DiGraph) -> dict[str, dict]:
    return {n: {"position": G.nodes[n].get("position")} for n in G.nodes}


def _n_heads(G: nx.DiGraph) -> Optional[int]:
    value = G.graph.get("n_heads")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _small(box: Box) -> str:
    return ' font-size="8"' if box.kind == "neuron" else (' font-weight="bold"' if box.kind in ("input", "logits") else "")


def _shade(colour: str, t: float) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    mix = lambda c: round(255 - (255 - c) * (0.15 + 0.6 * t))  # noqa: E731
    return f"#{mix(r):02x}{mix(g):02x}{mix(b):02x}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _f(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text
