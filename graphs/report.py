"""A run's ``report.md``: summary, top components, kept heads and MLPs, and the faithfulness curves.

The curves (signed ranking: CPR; ``|score|`` ranking: CMD) are drawn to ``faithfulness_curve.png`` with
matplotlib's Agg canvas (imported here only when a curve is drawn); both files are written atomically.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

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

# The manifest's curve keys and how the report and the viewer label them.
CURVE_LABELS: Tuple[Tuple[str, str], ...] = (("curve_signed", "signed ranking (CPR)"), ("curve_abs", "|score| ranking (CMD)"))

__all__ = ["REPORT_FILE", "CURVE_FILE", "CURVE_LABELS", "write_report", "plot_curve", "plot_curves", "manifest_curves"]

Points = Sequence[Tuple[float, float]]


def write_report(
    run_dir: Union[str, Path],
    *,
    G: nx.DiGraph,
    manifest: Mapping[str, Any],
    curves: Optional[Mapping[str, Points]] = None,
    top_components: Sequence[tuple[str, float]],
    curve: Optional[Points] = None,
) -> Path:
    """Write ``run_dir/report.md`` (and ``faithfulness_curve.png`` when a curve is given); returns the report's path.

    ``manifest`` supplies task, model, method, faithfulness, edges_kept, edges_total, cpr,
    cmd, n, seed and timings (a dict of stage -> seconds) where present, and ``curve_signed`` / ``curve_abs``
    (lists of ``{"fraction", "edges", "faithfulness"}``) for the curves' table; ``G.graph`` fills
    in the first four. ``curves``: ranking (``signed``, ``abs``) -> list of (edge fraction, faithfulness) points;
    ``curve``: one curve alone (an older run's).
    """
    run_dir = Path(run_dir)
    info = {**dict(G.graph), **dict(manifest)}
    title = " / ".join(str(info[k]) for k in ("task", "model", "method") if info.get(k) not in (None, ""))
    lines = [f"# Circuit report: {title or 'unnamed run'}", ""]
    lines += _summary(info, G) + [""]
    lines += ["## Top components", ""] + _components(top_components) + [""]
    lines += ["## Kept heads and MLPs", ""] + _kept(G) + [""]
    lines += _neurons(G)
    lines += ["## Faithfulness curves", ""]
    named = {_label(k): v for k, v in (curves or {}).items() if v} or ({"faithfulness": curve} if curve else {})
    drawn = plot_curves(named, run_dir / CURVE_FILE, kept=_kept_fraction(info, G)) if named else None
    if drawn is not None:
        lines += [
            f"![Faithfulness f against the fraction of edges kept (log scale)]({CURVE_FILE})",
            "",
        ]
    else:
        lines += ["No faithfulness curve was recorded for this run.", ""]
    lines += _curve_table(manifest)
    return write_atomic(run_dir / REPORT_FILE, "\n".join(lines))


def plot_curve(curve: Points, path: Union[str, Path], *, kept: Optional[float] = None) -> Optional[Path]:
    """Draw one curve (see :func:`plot_curves`)."""
    return plot_curves({"faithfulness": curve}, path, kept=kept)


def plot_curves(curves: Mapping[str, Points], path: Union[str, Path], *, kept: Optional[float] = None,
                title: Optional[str] = None) -> Optional[Path]:
    """Draw faithfulness against edge fraction (log x), one line per labelled curve, to a PNG or SVG (by the
    path's suffix) atomically; None if no curve has a point with a fraction > 0."""
    series = {label: sorted((float(x), float(y)) for x, y in pts if float(x) > 0 and math.isfinite(float(y)))
              for label, pts in curves.items()}
    series = {label: pts for label, pts in series.items() if pts}
    if not series:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, pts) in enumerate(series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label,
                linestyle="-" if i % 2 == 0 or len(series) > 2 else "--")
    ax.set_xscale("log")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    if kept is not None and kept > 0:
        ax.axvline(kept, color="#c0392b", linewidth=0.8, linestyle="--", label="kept circuit")
    if len(series) > 1 or (kept is not None and kept > 0):
        ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel("fraction of edges kept")
    ax.set_ylabel("faithfulness f")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg" if str(path).endswith(".svg") else "png")
    return write_atomic(path, buffer.getvalue())


def manifest_curves(manifest: Mapping[str, Any]) -> dict:
    """``{"curve_signed": [...], "curve_abs": [...]}`` of a manifest; an older manifest's single ``curve`` is
    read as the ``|score|`` one (its ranking's)."""
    out = {key: [p for p in manifest.get(key) or [] if isinstance(p, Mapping)] for key, _ in CURVE_LABELS}
    if not any(out.values()) and manifest.get("curve"):
        out["curve_abs"] = [p for p in manifest["curve"] if isinstance(p, Mapping)]
    return out


def _label(ranking: str) -> str:
    return dict(CURVE_LABELS).get(f"curve_{ranking}", ranking)


def _curve_table(manifest: Mapping[str, Any]) -> list[str]:
    """Each fraction's edges and f on both curves (none recorded: nothing)."""
    curves = manifest_curves(manifest)
    fractions = sorted({p.get("fraction") for pts in curves.values() for p in pts if p.get("fraction") is not None})
    if not fractions:
        return []
    keys = [k for k, _ in CURVE_LABELS if curves[k]]
    short = {"curve_signed": "signed (CPR)", "curve_abs": "abs (CMD)"}
    rows = ["| fraction | " + " | ".join(f"edges, {short[k]} | f, {short[k]}" for k in keys) + " |",
            "| --- |" + " --- | --- |" * len(keys)]
    for x in fractions:
        cells = []
        for k in keys:
            p = next((q for q in curves[k] if q.get("fraction") == x), {})
            cells += [_fmt(p.get("edges", "")), _fmt(p.get("faithfulness", ""))]
        rows.append(f"| {_fmt(x)} | " + " | ".join(cells) + " |")
    return rows + [""]


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
