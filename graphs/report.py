"""A run's ``report.md``: summary, top components, kept heads and MLPs, and the faithfulness curve.

The curve is drawn to ``faithfulness_curve.png`` with matplotlib's Agg canvas (imported
here only when a curve is drawn); both files are written atomically.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import networkx as nx

from circuits import names
from circuits.atomic import write_atomic
from circuits.graphs.build import circuit_neurons, edge_names

REPORT_FILE = "report.md"
CURVE_FILE = "faithfulness_curve.png"

# Summary rows: label and the manifest keys that may hold the value (first present wins).
_SUMMARY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("faithfulness", ("faithfulness", "f")),
    ("CPR", ("cpr", "CPR")),
    ("CMD", ("cmd", "CMD")),
    ("faithfulness, held-out prompts", ("faithfulness_heldout",)),
    ("CPR, held-out prompts", ("cpr_heldout",)),
    ("CMD, held-out prompts", ("cmd_heldout",)),
    ("prompts (n)", ("n", "n_prompts")),
    ("held-out prompts (never scored or selected on)", ("n_heldout",)),
    ("metric", ("metric",)),
    ("ablation", ("ablation",)),
    ("seed", ("seed",)),
    ("device", ("device",)),
)

__all__ = ["REPORT_FILE", "CURVE_FILE", "write_report", "plot_curve"]


def write_report(
    run_dir: Union[str, Path],
    *,
    G: nx.DiGraph,
    manifest: Mapping[str, Any],
    curve: Optional[Sequence[tuple[float, float]]],
    top_components: Sequence[tuple[str, float]],
) -> Path:
    """Write ``run_dir/report.md`` (and ``faithfulness_curve.png`` when ``curve`` is given); returns the report's path.

    ``manifest`` supplies task, model, method, faithfulness, edges_kept, edges_total, cpr,
    cmd, n, seed and timings (a dict of stage -> seconds) where present; ``G.graph`` fills
    in the first four. ``curve`` is a list of (edge fraction, faithfulness) points.
    """
    run_dir = Path(run_dir)
    info = {**dict(G.graph), **dict(manifest)}
    title = " / ".join(str(info[k]) for k in ("task", "model", "method") if info.get(k) not in (None, ""))
    lines = [f"# Circuit report: {title or 'unnamed run'}", ""]
    lines += _summary(info, G) + [""]
    lines += ["## Top components", ""] + _components(top_components) + [""]
    lines += ["## Kept heads and MLPs", ""] + _kept(G) + [""]
    lines += _neurons(G)
    lines += ["## Faithfulness curve", ""]
    drawn = plot_curve(curve, run_dir / CURVE_FILE, kept=_kept_fraction(info, G)) if curve else None
    if drawn is not None:
        lines += [
            f"![Faithfulness f against the fraction of edges kept (log scale)]({CURVE_FILE})",
            "",
        ]
    else:
        lines += ["No faithfulness curve was recorded for this run.", ""]
    return write_atomic(run_dir / REPORT_FILE, "\n".join(lines))


def plot_curve(
    curve: Sequence[tuple[float, float]], path: Union[str, Path], *, kept: Optional[float] = None
) -> Optional[Path]:
    """Draw faithfulness against edge fraction (log x) to a PNG atomically; None if no point has a fraction > 0."""
    points = sorted((float(x), float(y)) for x, y in curve if float(x) > 0 and math.isfinite(float(y)))
    if not points:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, color="#1f5fbf")
    ax.set_xscale("log")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    if kept is not None and kept > 0:
        ax.axvline(kept, color="#c0392b", linewidth=0.8, linestyle="--", label="kept circuit")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("fraction of edges kept")
    ax.set_ylabel("faithfulness f")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_atomic(path, buffer.getvalue())


def _summary(info: Mapping[str, Any], G: nx.DiGraph) -> list[str]:
    rows: list[tuple[str, str]] = [(k, str(info[k])) for k in ("task", "model", "method") if k in info]
    kept = info.get("edges_kept")
    kept = len(edge_names(G)) if kept is None else kept
    total = info.get("edges_total")
    rows.append(("edges kept / total", f"{kept} / {total}" if total is not None else str(kept)))
    selection = info.get("selection")
    if isinstance(selection, Mapping) and selection.get("mode"):
        rows.append(("selection", f"{selection['mode']} {_fmt(selection.get('value'))}, ranking "
                                  f"{selection.get('ranking') or 'abs'}"))
        verified = selection.get("verified")
        if isinstance(verified, Mapping):
            removed = list(verified.get("removed") or [])
            rows.append(("verified by patching", f"{len(removed)} of {verified.get('tested')} edges removed"
                         + (": " + ", ".join(removed) if removed else "")))
    for label, keys in _SUMMARY:
        key = next((k for k in keys if info.get(k) is not None), None)
        if key is not None:
            rows.append((label, _fmt(info[key])))
    timings = info.get("timings")
    if isinstance(timings, Mapping):
        rows += [(f"time: {stage}", f"{_fmt(sec)} s") for stage, sec in timings.items()]
    return ["| quantity | value |", "| --- | --- |"] + [f"| {_cell(a)} | {_cell(b)} |" for a, b in rows]


def _components(top: Sequence[tuple[str, float]]) -> list[str]:
    if not top:
        return ["No component scores were recorded."]
    rows = ["| component | kind | score |", "| --- | --- | --- |"]
    for name, score in top:
        try:
            kind = names.parse_node(name).kind
        except names.NameError_:
            kind = "?"
        rows.append(f"| {_cell(name)} | {kind} | {_fmt(score)} |")
    return rows


def _kept(G: nx.DiGraph) -> list[str]:
    nodes = sorted((names.parse_node(n) for n in G.nodes), key=names.node_layer_order)
    heads = [str(n) for n in nodes if n.kind == "head"]
    reduced = circuit_neurons(G)
    mlps = [f"{n} ({len(reduced[str(n)])} neurons)" if str(n) in reduced else str(n) for n in nodes if n.kind == "mlp"]
    return [
        f"- heads ({len(heads)}): " + (", ".join(heads) or "none"),
        f"- MLPs ({len(mlps)}): " + (", ".join(mlps) or "none"),
    ]


def _neurons(G: nx.DiGraph) -> list[str]:
    """The "Neurons" section: each reduced MLP's kept neurons with their scores (none: no section)."""
    reduced = circuit_neurons(G)
    if not reduced:
        return []
    lines = ["## Neurons", "",
             "These MLPs are kept through the neurons listed only; their other neurons carry reference activations.", "",
             "| MLP | neurons kept | neurons (score) |", "| --- | --- | --- |"]
    for mlp_name, idx in reduced.items():
        layer = names.parse_node(mlp_name).layer
        cells = []
        for i in idx:
            score = G.nodes[names.format_node(names.neuron(layer, i))].get("score") if names.format_node(names.neuron(layer, i)) in G else None
            cells.append(f"n{i} ({_fmt(score)})" if isinstance(score, (int, float)) else f"n{i}")
        lines.append(f"| {mlp_name} | {len(idx)} | {_cell(', '.join(cells))} |")
    return lines + [""]


def _kept_fraction(info: Mapping[str, Any], G: nx.DiGraph) -> Optional[float]:
    total = info.get("edges_total")
    if not isinstance(total, (int, float)) or total <= 0:
        return None
    kept = info.get("edges_kept")
    kept = len(edge_names(G)) if not isinstance(kept, (int, float)) else kept
    return float(kept) / float(total)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
