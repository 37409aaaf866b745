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
    neurons = _neuron_groups(parsed)
    neuron_cols = min(NEURON_COLS, max((len(v) for v in neurons.values()), default=0))
    block_cols = n_heads + 1 + (neuron_cols * NEURON_W / col_w if neuron_cols else 0.0)
    block_w = block_cols * col_w + (col_w * 0.4 if len(blocks) > 1 else 0.0)
    grid = _Grid(blocks=blocks, block_w=block_w, col_w=col_w, n_heads=n_heads, spans=spans)
    rows, total = _rows(parsed, layers, compact, neurons)
    row_of = {r.key: r for r in rows}
    boxes = {n: _box(n, parsed[n], grid, row_of, neurons) for n in sorted(attrs, key=lambda n: _sort_key(parsed[n]))}
    columns, bands = _columns(grid)
    width = LEFT + block_w * len(blocks) + col_w * 0.5
    height = TOP + total + BOTTOM
    return Layout(width=round(width, 1), height=round(height, 1), boxes=boxes, rows=tuple(rows),
                  columns=tuple(columns), n_heads=n_heads, bands=bands)


@dataclass(frozen=True)
class _Grid:
    """The column blocks (one per position or span) and their widths."""

    blocks: list
    block_w: float
    col_w: float
    n_heads: int
    spans: Optional[Sequence[str]]

    def x(self, pos: Optional[int]) -> float:
        return LEFT + self.blocks.index(pos) * self.block_w if pos in self.blocks else LEFT


def _neuron_groups(parsed) -> dict:
    """(layer, position) -> the neuron names there, by neuron index."""
    neurons: dict[tuple, list[str]] = defaultdict(list)
    for n, (node, pos) in parsed.items():
        if node.kind == "neuron":
            neurons[(node.layer, pos)].append(n)
    for key in neurons:
        neurons[key].sort(key=lambda n: parsed[n][0].index)
    return neurons


def _rows(parsed, layers, compact: bool, neurons) -> tuple[list, float]:
    """The rows bottom to top (input, each layer's attention and MLP, logits) and their total height."""
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
    rows: list[Row] = []
    bottom = TOP + total
    for key in row_keys:  # bottom row first: y decreases as we go up
        top = bottom - heights[key]
        label = {"input": "input", "logits": "logits"}.get(key[0]) or f"L{key[1]} {'attn' if key[0] == 'attn' else 'MLP'}"
        rows.append(Row(key=key, label=label, y=top + ROW_H / 2 if key[0] == "mlp" else (top + bottom) / 2,
                        top=top, bottom=bottom))
        bottom = top
    return rows, total


def _box(n: str, info, grid: _Grid, row_of, neurons) -> Box:
    """Where node ``n`` goes: input and logits centred (in its band for a positional circuit), heads by index,
    the MLP right of the heads, neurons right of their MLP."""
    node, pos = info
    label = names.split_span(n)[0]
    if node.kind in ("input", "logits"):
        row = row_of[(node.kind,)]
        mid = LEFT + grid.block_w * len(grid.blocks) / 2 - grid.col_w * 0.2
        x = mid if not grid.spans or pos is None else grid.x(pos) + grid.block_w / 2 - grid.col_w * 0.2
        return Box(n, node.kind, None, x, row.y, min(IO_W, grid.block_w - 8) if grid.spans else IO_W, NODE_H + 2, label)
    if node.kind == "head":
        x = grid.x(pos) + (node.index + 0.5) * grid.col_w
        return Box(n, "head", node.layer, x, row_of[("attn", node.layer)].y, NODE_W, NODE_H, label)
    row = row_of[("mlp", node.layer)]
    if node.kind == "mlp":
        return Box(n, "mlp", node.layer, grid.x(pos) + (grid.n_heads + 0.5) * grid.col_w, row.y, NODE_W, NODE_H, label)
    i = neurons[(node.layer, pos)].index(n)  # a neuron, right of its MLP
    x = grid.x(pos) + (grid.n_heads + 1) * grid.col_w + (i % NEURON_COLS + 0.5) * NEURON_W
    y = row.y + (i // NEURON_COLS) * NEURON_LINE_H
    return Box(n, "neuron", node.layer, x, y, NEURON_W - 4, NEURON_H, f"n{node.index}")


def _columns(grid: _Grid) -> tuple[list, tuple]:
    """The column labels (head index and MLP per block) and, for a positional circuit, the span bands."""
    columns = []
    bands = tuple((grid.x(pos), grid.x(pos) + grid.block_w - grid.col_w * 0.4, grid.spans[pos])
                  for pos in grid.blocks) if grid.spans else ()
    for pos in grid.blocks:
        suffix = "" if pos is None or grid.spans else f"@{pos}"  # span bands carry their own label
        columns += [(grid.x(pos) + (h + 0.5) * grid.col_w, f"h{h}{suffix}") for h in range(grid.n_heads)]
        columns.append((grid.x(pos) + (grid.n_heads + 0.5) * grid.col_w, f"MLP{suffix}"))
    return columns, bands


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
