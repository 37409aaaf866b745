"""Positional circuits as graphs: (edge, span) pairs, their nodes, projection to a plain circuit (no torch).

A positional circuit's graph (``G.graph["spans"]``: the schema's span names, in prompt order) has
one node per component and span, with id ``COMPONENT@SPAN`` (``a0.h1@YY``) and attributes ``span``
(the name), ``position`` (the span's index, which the layout draws as a column band) and
``component``.  A kept pair ``s -> r`` at span ``k`` is the edge ``s@k -> r@k`` with attribute
``span``; for a head's k or v input the span is where the keys and values are read (the head reads
them from its queries at that span or later).  Its ``names`` are the plain edge names.
Pair names are ``EDGE@SPAN`` (``input->a0.h1<v>@YY``).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

import networkx as nx

from circuits import names
from circuits.errors import CircuitsError

SEP = "@"

__all__ = ["SEP", "node_id", "split_id", "is_positional", "build_positional_graph", "from_positional_node_link",
           "pair_names", "project_graph", "components_per_span", "positional_report"]


def node_id(component: str, span: str) -> str:
    return f"{component}{SEP}{span}"


def split_id(name: str) -> tuple[str, Optional[str]]:
    """``"a0.h1@YY"`` -> ``("a0.h1", "YY")``; a plain name -> ``(name, None)``."""
    base, sep, span = str(name).partition(SEP)
    return base, (span if sep else None)


def is_positional(G: nx.DiGraph) -> bool:
    return bool(G.graph.get("spans"))


def build_positional_graph(pairs: Iterable[tuple[str, str, float]], spans: Sequence[str], *,
                           metadata: Optional[Mapping[str, Any]] = None) -> nx.DiGraph:
    """The graph of kept (edge name, span name, score) pairs over the schema ``spans``."""
    G = nx.DiGraph()
    G.graph.update(dict(metadata or {}))
    G.graph["spans"] = list(spans)
    for edge_name, span, score in pairs:
        _add_pair(G, edge_name, span, score, list(spans))
    return G


def _add_pair(G: nx.DiGraph, edge_name: str, span: str, score: Any, spans: list) -> None:
    from circuits.graphs.build import node_attributes

    if span not in spans:
        raise CircuitsError(f"pair {edge_name}@{span}: span {span!r} is not in the schema {spans}")
    try:
        edge = names.parse_edge(edge_name)
    except names.NameError_ as exc:
        raise CircuitsError(str(exc)) from None
    u, v = (node_id(names.format_node(n), span) for n in (edge.src, edge.dst))
    for end, node in ((u, edge.src), (v, edge.dst)):
        if end not in G:
            G.add_node(end, **{**node_attributes(node), "position": spans.index(span), "span": span,
                               "component": names.format_node(node)})
    if not G.has_edge(u, v):
        G.add_edge(u, v, qkv=[], scores={}, score=0.0, names=[], span=span)
    data = G.edges[u, v]
    value = float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else 0.0
    data["scores"] = dict(sorted({**data["scores"], (edge.qkv or ""): value}.items()))
    data["qkv"] = sorted(k for k in data["scores"] if k)
    data["score"] = float(sum(data["scores"].values()))
    data["names"] = sorted(set(data["names"]) | {names.format_edge(edge)})


def from_positional_node_link(data: Mapping[str, Any]) -> nx.DiGraph:
    """A positional circuit from its node-link JSON (edges need ``source``, ``target`` and ``span``, and
    ``names`` or ``qkv``)."""
    meta = dict(data.get("graph") or {})
    spans = [str(s) for s in meta.get("spans") or []]
    G = nx.DiGraph()
    G.graph.update(meta)
    for i, entry in enumerate(data.get("edges", data.get("links")) or []):
        if not isinstance(entry, dict):
            raise CircuitsError(f"edge {i} of the positional circuit is not an object")
        src, span = split_id(entry.get("source", ""))
        dst, _ = split_id(entry.get("target", ""))
        span = entry.get("span", span)
        given = entry.get("names") or ([f"{src}->{dst}<{q}>" for q in entry.get("qkv") or []] or [f"{src}->{dst}"])
        per = entry.get("scores") or {}
        for name in given:
            qkv = names.parse_edge(name).qkv or ""
            _add_pair(G, name, str(span), per.get(qkv, entry.get("score") if len(given) == 1 else 0.0), spans)
    for node in data.get("nodes") or []:  # keep node attributes the file adds (scores, notes)
        if isinstance(node, dict) and node.get("id") in G:
            G.nodes[node["id"]].update({k: v for k, v in node.items() if k != "id"})
    return G


def pair_names(G: nx.DiGraph) -> set[str]:
    """``EDGE@SPAN`` of every kept pair."""
    out: set[str] = set()
    for u, _, data in G.edges(data=True):
        span = data.get("span") or split_id(u)[1]
        out.update(f"{n}{SEP}{span}" for n in data.get("names") or ())
    return out


def project_graph(G: nx.DiGraph) -> nx.DiGraph:
    """The plain circuit of a positional one: every edge kept at some span, its scores summed over spans."""
    from circuits.graphs.build import build_graph

    scores: dict[str, float] = {}
    for _, _, data in G.edges(data=True):
        for name in data.get("names") or ():
            qkv = names.parse_edge(name).qkv or ""
            value = (data.get("scores") or {}).get(qkv, 0.0)
            scores[name] = scores.get(name, 0.0) + float(value or 0.0)
    meta = {k: v for k, v in G.graph.items() if k != "spans"}
    meta["projected_from"] = "positional"
    return build_graph(scores, metadata=meta)


def components_per_span(G: nx.DiGraph) -> dict[str, list[str]]:
    """Span name -> the heads and MLPs the circuit keeps there (in layer order), spans in schema order."""
    out: dict[str, list[str]] = {s: [] for s in G.graph.get("spans") or []}
    for n in G.nodes:
        base, span = split_id(n)
        node = names.parse_node(base)
        if span is not None and node.kind in ("head", "mlp"):
            out.setdefault(span, []).append(base)
    return {s: sorted(v, key=lambda c: names.node_layer_order(names.parse_node(c))) for s, v in out.items()}


def positional_report(G: nx.DiGraph, manifest: Mapping[str, Any]) -> str:
    """``report.md`` of a positional run: the run in one table, then the kept components and pairs per span."""
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))

    lines = [f"# Positional circuit: {manifest.get('task')} on {manifest.get('model')} with {manifest.get('method')}", "",
             "| | |", "|---|---|"]
    for key in ("faithfulness", "faithfulness_heldout", "pairs_kept", "pairs_total", "edges_kept", "aggregate", "n", "n_heldout"):
        lines.append(f"| {key} | {fmt(manifest.get(key))} |")
    lines += ["", "Each pair is an edge at one span of the prompt: within a span, the sender's output there enters the "
              "receiver's input there; a head's k or v input at a span is read by its queries at that span or later.", "",
              "## Kept components per span", ""]
    per_span = components_per_span(G)
    pairs: dict[str, list[tuple[str, float]]] = {s: [] for s in per_span}
    for _, _, data in G.edges(data=True):
        for name in data.get("names") or ():
            qkv = names.parse_edge(name).qkv or ""
            pairs.setdefault(data.get("span"), []).append((name, float((data.get("scores") or {}).get(qkv) or 0.0)))
    for span, comps in per_span.items():
        kept = sorted(pairs.get(span, []), key=lambda p: -abs(p[1]))
        lines.append(f"### {span}: {len(comps)} components, {len(kept)} pairs")
        lines.append("")
        lines.append("components: " + (", ".join(comps) if comps else "none"))
        lines.append("")
        for name, score in kept[:20]:
            lines.append(f"- `{name}` {score:+.4g}")
        if len(kept) > 20:
            lines.append(f"- ... and {len(kept) - 20} more")
        lines.append("")
    return "\n".join(lines)
