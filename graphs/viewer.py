"""The interactive viewer: one self-contained HTML page for a circuit (no CDN, no network, works from file://).

:func:`viewer_html` is the library entry point: ``circuits export RUN --format html`` and
``discover`` (``circuit.html``) write its text, and the service serves the same page for its
runs. The page's CSS and JavaScript are package data (``viewer.css``, ``viewer.js`` next to
this module), inlined into the page together with the circuit's data as JSON.

The data (:func:`viewer_data`) holds the layered layout of :mod:`circuits.graphs.layout`, every
scored edge of the run (``scores.tsv``) ranked by ``|score|`` with the kept ones flagged, the
faithfulness curves of ``manifest.json`` (signed ranking: CPR; ``|score|``: CMD), each kept edge's bootstrap
inclusion frequency when ``discover --bootstrap`` measured it, and an optional second circuit to compare with.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Union
from xml.sax.saxutils import escape

import networkx as nx

from circuits import names
from circuits.atomic import write_atomic
from circuits.errors import CircuitsError
from circuits.graphs.build import edge_frequencies, edge_names, jsonable
from circuits.graphs.compare import SCORES_FILE, load_scores, overlap
from circuits.graphs.layout import first_neurons, layout
from circuits.graphs.positions import pair_names
from circuits.graphs.report import CURVE_LABELS, manifest_curves
from circuits.graphs.svg import title_of

MANIFEST_FILE = "manifest.json"
HTML_FILE = "circuit.html"

__all__ = ["HTML_FILE", "viewer_data", "viewer_html", "run_viewer_html", "write_viewer", "run_inputs"]


def run_inputs(path: Union[str, Path]) -> tuple[Optional[dict[str, float]], Optional[dict[str, Any]]]:
    """The full edge scores (``scores.tsv``) and ``manifest.json`` next to a circuit, where they exist."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    scores = load_scores(folder) if (folder / SCORES_FILE).is_file() else None
    manifest = None
    if (folder / MANIFEST_FILE).is_file():
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CircuitsError(f"cannot read {folder / MANIFEST_FILE} ({exc}); fix or remove it") from None
    return scores, manifest if isinstance(manifest, dict) else None


class _Ends:
    """An edge name's ends as node ids, and its q/k/v: ``a0.h1->m2`` or, in a positional circuit,
    ``a0.h1->m2@YY`` (ends ``a0.h1@YY``, ``m2@YY``)."""

    def __init__(self, name: str):
        base, span = names.split_span(name)
        edge = names.parse_edge(base)
        at = f"{names.SPAN_SEP}{span}" if span is not None else ""
        self.src, self.dst, self.qkv = names.format_node(edge.src) + at, names.format_node(edge.dst) + at, edge.qkv


def viewer_data(G: nx.DiGraph, *, scores: Optional[Mapping[str, float]] = None,
                manifest: Optional[Mapping[str, Any]] = None, compare: Optional[nx.DiGraph] = None,
                compare_label: str = "B") -> dict[str, Any]:
    """The JSON the page draws: layout, ranked edges (kept flagged), curve and comparison."""
    spans = G.graph.get("spans") or None  # a positional circuit: edges and nodes are NAME@SPAN
    kept = pair_names(G) if spans else edge_names(G)
    all_scores = _edge_scores(G, scores, spans)
    parsed = {n: _Ends(n) for n in all_scores}
    other = edge_names(compare) if compare is not None else set()
    for n in other:
        parsed.setdefault(n, _Ends(n))
    node_attrs: dict[str, dict] = {n: dict(G.nodes[n]) for n in G.nodes}
    for e in parsed.values():
        for end in (e.src, e.dst):
            node_attrs.setdefault(end, {})
    if compare is not None:
        for n in compare.nodes:
            node_attrs.setdefault(n, dict(compare.nodes[n]))
    lay = layout({n: {"position": a.get("position")} for n, a in node_attrs.items()}, n_heads=_int(G.graph.get("n_heads")),
                 spans=spans)
    order = sorted(lay.boxes, key=lambda n: (lay.boxes[n].y, lay.boxes[n].x))
    index = {n: i for i, n in enumerate(order)}
    ranked = sorted(all_scores.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    frequency = edge_frequencies(G)  # bootstrap inclusion frequency of kept edges (discover --bootstrap)
    edges = [[index[parsed[n].src], index[parsed[n].dst], parsed[n].qkv or "", float(f"{s:.6g}"), 1 if n in kept else 0]
             + ([round(frequency[n], 4)] if n in frequency else []) for n, s in ranked]
    meta = jsonable(dict(G.graph))
    manifest = dict(manifest or {})
    curves = _curves(manifest)
    data: dict[str, Any] = {
        "title": title_of({**manifest, **meta}, edges=len(kept)),
        "meta": {k: meta.get(k, manifest.get(k)) for k in (
            "task", "model", "method", "n", "seed", "ablation", "metric", "granularity", "faithfulness",
            "edges_kept", "edges_total", "pairs_total", "cpr", "cmd", "selection", "k", "stability")},
        "layout": {"width": lay.width, "height": lay.height,
                   "rows": [{"label": r.label, "y": r.y, "top": r.top, "bottom": r.bottom, "kind": r.key[0]} for r in lay.rows],
                   "columns": [[x, label] for x, label in lay.columns],
                   "bands": [[left, right, span] for left, right, span in lay.bands]},
        "nodes": _nodes(G, lay, order, node_attrs, all_scores, parsed),
        "edges": edges,
        "kept": len(kept),
        "scores_complete": scores is not None,
        "curve": jsonable(curves[0]["points"] if curves else []),
        "curves": jsonable(curves),
        "chosen": jsonable({"edges": len(kept), "faithfulness": manifest.get("faithfulness", meta.get("faithfulness"))}),
        "compare": None,
    }
    if compare is not None:
        stats = {"nodes": overlap(set(G.nodes), set(compare.nodes)), "edges": overlap(kept, other)}
        data["compare"] = {
            "label": compare_label,
            "edges": sorted(f"{index[parsed[n].src]}:{index[parsed[n].dst]}:{parsed[n].qkv or ''}"
                            for n in other),
            "nodes": sorted(index[n] for n in compare.nodes if n in index),
            "kept_stats": stats,
        }
    return data


def _edge_scores(G: nx.DiGraph, scores: Optional[Mapping[str, float]], spans) -> dict[str, float]:
    """Every edge's score: the kept edges' own (q/k/v apart), then the run's full scores (plain circuits)."""
    out: dict[str, float] = {}
    for u, v, data in G.edges(data=True):
        per = data.get("scores") or {}
        for name in data.get("names") or []:
            value = per.get(names.parse_edge(name).qkv or "")
            key = f"{name}{names.SPAN_SEP}{data.get('span')}" if spans else name
            out[key] = float(value) if _number(value) else float(data.get("score") or 0.0)
    for name, value in (scores or {}).items() if not spans else ():
        out[names.format_edge(names.parse_edge(name))] = float(value)
    return out


def _nodes(G: nx.DiGraph, lay, order, node_attrs, all_scores, parsed) -> list:
    """The drawn nodes: position, label, own score, the sum of their outgoing edges' scores."""
    linked = first_neurons(lay)
    out_sum: dict[str, float] = {}
    for name, value in all_scores.items():
        src = parsed[name].src
        out_sum[src] = out_sum.get(src, 0.0) + value
    nodes = []
    for n in order:
        box, attrs = lay.boxes[n], node_attrs.get(n, {})
        own = attrs.get("score")
        nodes.append({
            "name": n, "kind": box.kind, "layer": box.layer, "label": box.label,
            "x": box.x, "y": box.y, "w": box.w, "h": box.h,
            "score": float(own) if _number(own) else None,
            "out_sum": out_sum.get(n),
            "top_neurons": attrs.get("top_neurons"), "neurons": attrs.get("neurons"),
            "parent": attrs.get("parent") or (f"m{box.layer}" if box.kind == "neuron" else None),
            "kept": n in G, "link": n in linked,
        })
    return nodes


def _curves(manifest: Mapping[str, Any]) -> list:
    """The manifest's faithfulness curves (signed and |score|), the selection's ranking first."""
    found = manifest_curves(manifest)
    curves = [{"label": label, "key": key,
               "points": [{"fraction": p.get("fraction"), "edges": p.get("edges"), "faithfulness": p.get("faithfulness")}
                          for p in found[key]]} for key, label in CURVE_LABELS if found[key]]
    ranking = (manifest.get("selection") or {}).get("ranking") if isinstance(manifest.get("selection"), Mapping) else None
    curves.sort(key=lambda c: c["key"] != f"curve_{ranking or 'abs'}")
    return curves


def viewer_html(G: nx.DiGraph, *, scores: Optional[Mapping[str, float]] = None,
                manifest: Optional[Mapping[str, Any]] = None, compare: Optional[nx.DiGraph] = None,
                compare_label: str = "B") -> str:
    """The viewer page of a circuit, as one HTML text (everything inlined)."""
    data = viewer_data(G, scores=scores, manifest=manifest, compare=compare, compare_label=compare_label)
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False, sort_keys=True)
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    css, js = _asset("viewer.css"), _asset("viewer.js")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{escape(data['title'] or 'circuit')}</title>\n<style>\n{css}</style>\n</head>\n<body>\n"
        f"{_BODY}"
        f"<script type=\"application/json\" id=\"circuit-data\">{blob}</script>\n"
        f"<script>\n{js}</script>\n</body>\n</html>\n"
    )


def run_viewer_html(run: Union[str, Path], *, compare: Optional[Union[str, Path]] = None) -> str:
    """The viewer page of a run folder (or circuit .json): its circuit, ``scores.tsv`` and
    ``manifest.json``, and optionally a second circuit to compare with. The service's entry point."""
    from circuits.graphs.files import load_circuit

    scores, manifest = run_inputs(run)
    other = load_circuit(compare) if compare is not None else None
    return viewer_html(load_circuit(run), scores=scores, manifest=manifest, compare=other,
                       compare_label=Path(compare).name if compare is not None else "B")


def write_viewer(G: nx.DiGraph, path: Union[str, Path], **kwargs: Any) -> Path:
    """Write :func:`viewer_html` to ``path`` atomically; returns the path."""
    return write_atomic(path, viewer_html(G, **kwargs))


def _asset(name: str) -> str:
    return resources.files("circuits.graphs").joinpath(name).read_text(encoding="utf-8")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


_BODY = """<header><h1 id="title"></h1><div id="summary"></div></header>
<div id="controls">
  <label>edges shown <input type="range" id="k-slider" min="0" max="1000" step="1"></label>
  <input type="number" id="k-number" min="0" step="1">
  <button type="button" id="show-circuit">kept circuit</button>
  <span id="count" aria-live="polite"></span>
  <span class="sep"></span>
  <label>layers <input type="number" id="layer-lo" step="1"> to <input type="number" id="layer-hi" step="1"></label>
  <label><input type="checkbox" class="kind" value="head" checked> heads</label>
  <label><input type="checkbox" class="kind" value="mlp" checked> MLPs</label>
  <label><input type="checkbox" class="kind" value="neuron" checked> neurons</label>
  <button type="button" id="zoom-out" title="zoom out">&minus;</button><button type="button" id="zoom-in" title="zoom in">+</button>
  <label id="compare-toggle" hidden><input type="checkbox" id="compare" checked> compare</label>
</div>
<main>
  <div id="canvas"><svg id="graph"></svg></div>
  <aside>
    <section id="details"><p class="hint">Hover or click a node or an edge.</p></section>
    <section id="compare-stats" hidden></section>
    <section id="curve"><h2>Faithfulness</h2><svg id="curve-svg"></svg></section>
    <section id="legend"></section>
  </aside>
</main>
<div id="tooltip" hidden></div>
"""
