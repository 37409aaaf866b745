"""Our layered layout of a circuit: a grid that every reader of a transformer circuit expects.

Rows run bottom to top: ``input`` at the bottom, then for each layer a row of its attention
heads and, just above it, a row with its MLP, ``logits`` at the top. Columns are head indices,
with the MLP at the right of the heads and the MLP's neuron nodes (``m10.n123``) right of the
MLP (wrapping onto more lines of the MLP row when there are many). When nodes carry a
``position``, each position is a block of such columns, left to right.

No layout library is used: positions depend only on the node names and attributes, so the
same circuit always gets the same picture. The SVG writer (:mod:`circuits.graphs.svg`) and the
viewer (:mod:`circuits.graphs.viewer`) both draw from :func:`layout`. Coordinates are SVG
pixels, y growing downwards, the node's centre at ``(x, y)``.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from circuits import names

MIN_COL_W = 62.0  # the narrowest head column
MAX_COL_W = 130.0
GRID_W = 1100.0  # columns widen (up to MAX_COL_W) until the heads and MLP span this
ROW_H = 40.0  # one row (attention or MLP of one layer)
NODE_W, NODE_H = 50.0, 20.0
NEURON_W, NEURON_H = 38.0, 14.0
NEURON_COLS = 4  # neurons per line next to an MLP
NEURON_LINE_H = 18.0
IO_W = 84.0
LEFT = 74.0  # room for the row labels
TOP = 34.0  # room for the title
BOTTOM = 30.0

__all__ = ["Box", "Row", "Layout", "layout", "node_info", "first_neurons"]


@dataclass(frozen=True)
class Box:
    """One node's box: centre ``(x, y)``, size ``w`` x ``h``, ``kind``, ``layer`` and short ``label``."""

    name: str
    kind: str
    layer: Optional[int]
    x: float
    y: float
    w: float
    h: float
    label: str


@dataclass(frozen=True)
class Row:
    """A horizontal band: its centre ``y``, top and bottom, and its label (``L5 attn``, ``L5 MLP``)."""

    key: tuple
    label: str
    y: float
    top: float
    bottom: float


@dataclass(frozen=True)
class Layout:
    width: float
    height: float
    boxes: Mapping[str, Box]
    rows: tuple[Row, ...]
    columns: tuple[tuple[float, str], ...]  # (x, label) of each head / MLP column
    n_heads: int
    bands: tuple[tuple[float, float, str], ...] = ()  # (left, right, span name) of each span's column band


def node_info(name: str, attrs: Optional[Mapping[str, Any]] = None) -> tuple[names.Node, Optional[int]]:
    """The parsed node and its position (None when the circuit has no positions)."""
    node = names.parse_node(str(name).partition("@")[0])  # a positional node: COMPONENT@SPAN
    pos = (attrs or {}).get("position")
    return node, (int(pos) if isinstance(pos, (int, float)) and not isinstance(pos, bool) else None)


def layout(nodes: Mapping[str, Mapping[str, Any]] | Iterable[str], *, n_heads: Optional[int] = None,
           compact: bool = True, spans: Optional[Sequence[str]] = None) -> Layout:
    """Place ``nodes`` (names, or name -> attributes with an optional ``position``) on the grid.

    ``n_heads`` fixes the number of head columns (default: the largest head index + 1).
    ``spans`` (a positional circuit's span names): every span is a column band, labelled, even when empty;
    ``input`` and ``logits`` are drawn in each band where they occur.
    With ``compact``, rows that hold no node are left out (the row labels still name the
    layer), so a circuit spread over a deep model stays short. Columns are wider for models
    with few heads, so that the grid spans about :data:`GRID_W` pixels.
    """
    attrs = dict(nodes) if isinstance(nodes, Mapping) else {n: {} for n in nodes}
    parsed = {n: node_info(n, a) for n, a in attrs.items()}
    heads = [node.index for node, _ in parsed.values() if node.kind == "head"]
    n_heads = max([n_heads or 0, *(h + 1 for h in heads)]) or 1
    layers = sorted({node.layer for node, _ in parsed.values() if node.layer is not None})
    positions = sorted({p for _, p in parsed.values() if p is not None})
    blocks = list(range(len(spans))) if spans else (positions or [None])

    col_w = max(MIN_COL_W, min(MAX_COL_W, GRID_W / ((n_heads + 1) * len(blocks))))
    neurons: dict[tuple, list[str]] = defaultdict(list)  # (layer, position) -> neuron names
    for n, (node, pos) in parsed.items():
        if node.kind == "neuron":
            neurons[(node.layer, pos)].append(n)
    for key in neurons:
        neurons[key].sort(key=lambda n: parsed[n][0].index)
    neuron_cols = min(NEURON_COLS, max((len(v) for v in neurons.values()), default=0))
    block_cols = n_heads + 1 + (neuron_cols * NEURON_W / col_w if neuron_cols else 0.0)
    block_w = block_cols * col_w + (col_w * 0.4 if len(blocks) > 1 else 0.0)

    # rows, bottom to top, with their heights
    row_keys: list[tuple] = [("input",)]
    for layer in (layers if compact else range(layers[-1] + 1) if layers else ()):
        has_attn = any(node.layer == layer and node.kind == "head" for node, _ in parsed.values())
        has_mlp = any(node.layer == layer and node.kind in ("mlp", "neuron") for node, _ in parsed.values())
        if has_attn or not compact:
            row_keys.append(("attn", layer))
        if has_mlp or not compact:
            row_keys.append(("mlp", layer))
    row_keys.append(("logits",))
    heights = {}
    for key in row_keys:
        lines = 1
        if key[0] == "mlp":
            counts = [len(v) for (layer, _), v in neurons.items() if layer == key[1]]
            lines = max([1, *(-(-c // NEURON_COLS) for c in counts)])
        heights[key] = ROW_H + (lines - 1) * NEURON_LINE_H
    total = sum(heights.values())
    width = LEFT + block_w * len(blocks) + col_w * 0.5
    height = TOP + total + BOTTOM
    rows: list[Row] = []
    bottom = TOP + total
    for key in row_keys:  # bottom row first: y decreases as we go up
        top = bottom - heights[key]
        label = {"input": "input", "logits": "logits"}.get(key[0]) or f"L{key[1]} {'attn' if key[0] == 'attn' else 'MLP'}"
        rows.append(Row(key=key, label=label, y=top + ROW_H / 2 if key[0] == "mlp" else (top + bottom) / 2,
                        top=top, bottom=bottom))
        bottom = top
    row_of = {r.key: r for r in rows}

    def block_x(pos: Optional[int]) -> float:
        return LEFT + blocks.index(pos) * block_w if pos in blocks else LEFT

    boxes: dict[str, Box] = {}
    mid = LEFT + block_w * len(blocks) / 2 - col_w * 0.2
    for n in sorted(attrs, key=lambda n: _sort_key(parsed[n])):
        node, pos = parsed[n]
        if node.kind in ("input", "logits"):
            row = row_of[(node.kind,)]
            x = mid if not spans or pos is None else block_x(pos) + block_w / 2 - col_w * 0.2
            boxes[n] = Box(n, node.kind, None, x, row.y, min(IO_W, block_w - 8) if spans else IO_W, NODE_H + 2,
                           n.partition("@")[0])
        elif node.kind == "head":
            row = row_of[("attn", node.layer)]
            x = block_x(pos) + (node.index + 0.5) * col_w
            boxes[n] = Box(n, "head", node.layer, x, row.y, NODE_W, NODE_H, n.partition("@")[0])
        elif node.kind == "mlp":
            row = row_of[("mlp", node.layer)]
            x = block_x(pos) + (n_heads + 0.5) * col_w
            boxes[n] = Box(n, "mlp", node.layer, x, row.y, NODE_W, NODE_H, n.partition("@")[0])
        else:  # neuron, right of its MLP
            row = row_of[("mlp", node.layer)]
            i = neurons[(node.layer, pos)].index(n)
            x = block_x(pos) + (n_heads + 1) * col_w + (i % NEURON_COLS + 0.5) * NEURON_W
            y = row.y + (i // NEURON_COLS) * NEURON_LINE_H
            boxes[n] = Box(n, "neuron", node.layer, x, y, NEURON_W - 4, NEURON_H, f"n{node.index}")
    columns = []
    bands = tuple((block_x(pos), block_x(pos) + block_w - col_w * 0.4, spans[pos]) for pos in blocks) if spans else ()
    for pos in blocks:
        suffix = "" if pos is None or spans else f"@{pos}"  # span bands carry their own label
        columns += [(block_x(pos) + (h + 0.5) * col_w, f"h{h}{suffix}") for h in range(n_heads)]
        columns.append((block_x(pos) + (n_heads + 0.5) * col_w, f"MLP{suffix}"))
    return Layout(width=round(width, 1), height=round(height, 1), boxes=boxes, rows=tuple(rows),
                  columns=tuple(columns), n_heads=n_heads, bands=bands)


def first_neurons(lay: Layout) -> set[str]:
    """The neuron boxes that start a line beside their MLP (the ones a connector joins to the MLP)."""
    first: dict[tuple, Box] = {}
    for box in lay.boxes.values():
        if box.kind == "neuron":
            key = (box.layer, box.y)
            if key not in first or box.x < first[key].x:
                first[key] = box
    return {b.name for b in first.values()}


def _sort_key(item: tuple[names.Node, Optional[int]]) -> tuple:
    node, pos = item
    return (names.node_layer_order(node), node.kind, -1 if pos is None else pos)
