"""A positional discovery's run folder (``discover --positions``): every file written atomically, manifest last.

Files: ``circuit.json`` (the positional graph: nodes ``COMPONENT@SPAN`` and edges carrying their ``span``,
see :mod:`circuits.graphs.positions`), ``circuit_plain.json`` (its projection: each edge kept at some span),
``circuit.svg`` and ``circuit.html`` (one column band per span), ``span_scores.tsv`` (every (edge, span)
pair's score: ``edge<TAB>span<TAB>score``, largest |score| first), ``report.md`` (the kept components per
span) and ``manifest.json``.  Nothing here prints.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from circuits.atomic import write_atomic
from circuits.circuit.run_folder import MANIFEST_FILE, WrittenRun, check_out_dir, package_versions

SPAN_SCORES_FILE = "span_scores.tsv"
PLAIN_FILE = "circuit_plain.json"

__all__ = ["SPAN_SCORES_FILE", "PLAIN_FILE", "positional_manifest", "write_positional_run", "span_scores_text"]


def positional_manifest(result, run: Mapping[str, Any], timings: Optional[Mapping[str, float]] = None) -> Dict[str, Any]:
    from circuits.circuit.positions import kept_pairs, project

    sel, faith = result.selection, result.faithfulness
    pairs = kept_pairs(result.scores, sel.kept, result.spans)
    per_span = {s: sum(1 for _, sp, _ in pairs if sp == s) for s in result.spans}
    info = {k: v for k, v in result.scores.info.items() if k != "node_span_scores"}
    return {
        **dict(run),
        "granularity": "positional" if sel.node_spans is None else "positional-node",
        **({} if sel.node_spans is None else {"node_spans_kept": [{"node": n, "span": s, "score": v} for n, s, v in sel.node_spans]}),
        "spans": list(result.spans),
        "aggregate": info.get("aggregate"),
        "faithfulness": faith.f,
        "pairs_kept": sel.pairs_kept,
        "pairs_total": result.pairs_total,
        "pairs_per_span": per_span,
        "edges_kept": len(project(pairs)),  # the projection: edges kept at some span
        "edges_total": result.scores.graph.n_edges,
        "metric_full": faith.m_full,
        "metric_empty": faith.m_empty,
        "metric_circuit": faith.m_circuit,
        "faithfulness_heldout": None if result.heldout is None else result.heldout.f,
        "n_heldout": result.n_heldout,
        "selection": {"mode": sel.mode, "value": sel.value, "ranking": sel.ranking, "k": sel.k,
                      "pairs_kept": sel.pairs_kept, "evaluations": sel.evaluations, "reached": sel.reached},
        "circuit_evaluations": result.circuit_evaluations,
        "method_info": info,
        "timings": {**dict(timings or {}), **dict(result.timings)},
        "versions": package_versions(),
    }


def span_scores_text(scores, spans) -> str:
    """Every valid (edge, span) pair's score, largest |score| first."""
    import torch

    g = scores.graph
    values = torch.as_tensor(scores.edge_scores).double()
    rows = []
    for s, r in g.edges():
        name = g.edge_name(s, r)
        for k, span in enumerate(spans):
            rows.append((name, span, float(values[s, r, k])))
    rows.sort(key=lambda row: (-(abs(row[2]) if math.isfinite(row[2]) else -1.0), row[0], row[1]))
    return "\n".join(["edge\tspan\tscore"] + [f"{e}\t{sp}\t{v!r}" for e, sp, v in rows]) + "\n"


def write_positional_run(folder: Union[str, Path], result, run: Mapping[str, Any], *,
                         timings: Optional[Mapping[str, float]] = None, force: bool = False) -> WrittenRun:
    """Write the run folder of a :class:`circuits.circuit.positions.PositionalResult`."""
    from circuits.graphs.build import CIRCUIT_FILE, jsonable, write_json
    from circuits.graphs.positions import build_positional_graph, positional_report, project_graph
    from circuits.graphs.svg import to_svg
    from circuits.graphs.viewer import HTML_FILE, viewer_html
    from circuits.circuit.positions import kept_pairs

    folder = check_out_dir(folder, force)
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    manifest = positional_manifest(result, run, timings)
    meta = {k: manifest.get(k) for k in ("task", "model", "method", "granularity", "metric", "n", "seed", "faithfulness",
                                         "pairs_kept", "pairs_total", "aggregate", "faithfulness_heldout")}
    meta.update(selection=result.selection.mode, ranking=result.selection.ranking, k=result.selection.k,
                n_layers=result.scores.graph.n_layers, n_heads=result.scores.graph.n_heads)
    G = build_positional_graph(kept_pairs(result.scores, result.selection.kept, result.spans), result.spans, metadata=meta)
    written = [write_json(G, folder / CIRCUIT_FILE), write_json(project_graph(G), folder / PLAIN_FILE),
               write_atomic(folder / SPAN_SCORES_FILE, span_scores_text(result.scores, result.spans)),
               write_atomic(folder / "circuit.svg", to_svg(G)),
               write_atomic(folder / HTML_FILE, viewer_html(G, manifest=jsonable(manifest))),
               write_atomic(folder / "report.md", positional_report(G, manifest))]
    manifest["timings"]["write"] = time.perf_counter() - t
    written.append(write_atomic(folder / MANIFEST_FILE, json.dumps(jsonable(manifest), indent=2, allow_nan=False) + "\n"))
    return WrittenRun(folder=folder, files=tuple(written), svg=True, manifest=manifest)
