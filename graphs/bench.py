"""A benchmark's ``results.json``, ``results.md`` and one figure per task (no torch).

``results.md`` has one table per task: method, CPR, CMD, held-out f of the default circuit, edges,
seconds, peak memory, stability (mean pairwise edge / node Jaccard of the bootstrap) and, for a model
with a known circuit, the AUROC.  ``TASK.png`` and ``TASK.svg`` overlay the methods' faithfulness
curves: the signed ranking's (CPR) on the left, the ``|score|`` ranking's (CMD) on the right.
"""
from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

from circuits.atomic import write_atomic
from circuits.graphs.build import jsonable

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
FIGURE_FORMATS = ("png", "svg")

__all__ = ["RESULTS_JSON", "RESULTS_MD", "FIGURE_FORMATS", "write_results", "results_markdown", "task_table",
           "plot_task", "figure_name"]


def write_results(out, results: Mapping[str, Any]) -> List[Path]:
    """Write ``results.json``, ``results.md`` and each task's figures into ``out`` atomically."""
    out = Path(out)
    written = [write_atomic(out / RESULTS_JSON, json.dumps(jsonable(dict(results)), indent=2, allow_nan=False) + "\n")]
    for task in _tasks(results):
        cells = [c for c in results.get("cells") or [] if c.get("task") == task]
        for fmt in FIGURE_FORMATS:
            path = plot_task(task, cells, out / f"{figure_name(task)}.{fmt}")
            if path is not None:
                written.append(path)
    written.append(write_atomic(out / RESULTS_MD, results_markdown(results)))
    return written


def figure_name(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9.\-_]+", "-", task) or "task"


def _tasks(results: Mapping[str, Any]) -> List[str]:
    listed = list((results.get("settings") or {}).get("tasks") or [])
    for cell in results.get("cells") or []:
        if cell.get("task") not in listed:
            listed.append(cell.get("task"))
    return listed


def results_markdown(results: Mapping[str, Any]) -> str:
    settings = results.get("settings") or {}
    lines = [f"# Benchmark: {settings.get('model', '?')}", ""]
    bits = [f"{k} {settings[k]}" for k in ("n", "seed", "holdout", "ablation", "metric", "bootstrap", "dtype")
            if settings.get(k) is not None]
    lines += ["Settings: " + ", ".join(bits) + ".", "",
              "CPR and CMD as MIB's circuit track scores them (signed and |score| rankings, int(pct * N) items, plain "
              "trapezoid sum over the fractions 0.001 ... 1). Held-out f: the default circuit (the smallest |score| "
              "circuit with f >= 0.9 on the scored prompts, or ACDC's own) on the prompts never scored. Peak memory: "
              "the growth above the loaded model and prompts.", ""]
    for task in _tasks(results):
        cells = [c for c in results.get("cells") or [] if c.get("task") == task]
        lines += [f"## {task}", ""] + task_table(cells, reference=results.get("reference")) + [""]
        if cells:
            lines += [f"![{task}: faithfulness curves]({figure_name(task)}.png)", ""]
    missing = results.get("missing") or []
    if missing:
        lines += ["Not run yet: " + ", ".join(missing) + ".", ""]
    return "\n".join(lines)


def task_table(cells: Sequence[Mapping[str, Any]], *, reference: Optional[str] = None) -> List[str]:
    if not cells:
        return ["No method has finished on this task yet."]
    head = ["method", "CPR", "CMD", "f held-out", "edges", "seconds", "peak memory", "stability (edge / node J)"]
    if reference:
        head.append(f"AUROC ({reference})")
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c in cells:
        edges = _int(c.get("edges_kept"))
        if c.get("nodes_kept") is not None:
            edges += f" ({c['nodes_kept']} nodes)"
        if c.get("complete") is False:
            edges += " (incomplete)"
        st = c.get("stability")
        stability = f"{_num(st.get('edge_jaccard'))} / {_num(st.get('node_jaccard'))} (k {st.get('k')})" if st else "-"
        row = [str(c.get("method")), _num(c.get("cpr")), _num(c.get("cmd")), _num(c.get("faithfulness_heldout")), edges,
               _num(c.get("seconds"), 1), _bytes(c.get("peak_memory_bytes")), stability]
        if reference:
            auroc = _num(c.get("auroc"))
            row.append(auroc + (" (nodes)" if c.get("granularity") == "node" and c.get("auroc") is not None else ""))
        rows.append("| " + " | ".join(row) + " |")
    return rows


def plot_task(task: str, cells: Sequence[Mapping[str, Any]], path) -> Optional[Path]:
    """The methods' curves of one task, signed (CPR) left and ``|score|`` (CMD) right, to PNG or SVG by suffix."""
    panels = [("curve_signed", "signed ranking (CPR: area under f)", "cpr"),
              ("curve_abs", "|score| ranking (CMD: area under |1 - f|)", "cmd")]
    series = [[(c.get("method"), c.get(score), _points(c.get(key))) for c in cells] for key, _, score in panels]
    if not any(pts for panel in series for _, _, pts in panel):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), dpi=110)
    FigureCanvasAgg(fig)
    for i, ((_, title, label), panel) in enumerate(zip(panels, series)):
        ax = fig.add_subplot(1, 2, i + 1)
        for method, value, pts in panel:
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                        label=f"{method} ({label.upper()} {_num(value)})")
        ax.set_xscale("log")
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"{task}: {title}", fontsize=9)
        ax.set_xlabel("fraction of edges kept (nodes, for a node method)")
        ax.set_ylabel("faithfulness f")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg" if str(path).endswith(".svg") else "png")
    return write_atomic(path, buffer.getvalue())


def _points(records: Any) -> list:
    """(fraction, f) of a curve's records, fraction > 0 and f finite (a log axis)."""
    out = []
    for p in records or []:
        x, y = p.get("fraction"), p.get("faithfulness")
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x > 0 and math.isfinite(y):
            out.append((float(x), float(y)))
    return sorted(out)


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "-"


def _bytes(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value / 2 ** 20:,.0f} MiB"
