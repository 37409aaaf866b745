"""Year probabilities p(YY' | YY) as heatmaps, and PD and CS against the start year YY.

The probabilities are ``GreaterThan.year_probabilities`` (the reported form: one token per YY,
or P(tens) x P(units | tens) with teacher forcing); PD and CS are
``circuits.tasks.greater_than.probability_difference`` and ``cutoff_sharpness``.  Rows of the
matrices are the start years 0..99 (NaN where no prompt has that YY), columns YY' 00..99.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import torch

from circuits.analysis.files import figure, save_png, write_csv, write_matrix_csv
from circuits.tasks.greater_than import cutoff_sharpness, probability_difference

__all__ = ["YearResult", "year_result", "by_start_year", "start_years", "plot_year_heatmap", "plot_pd_cs",
           "write_year_matrix", "write_pd_cs"]


def start_years(dataset) -> torch.Tensor:
    """YY of every prompt [n] (int64)."""
    return torch.tensor([int(m["yy"]) for m in dataset.metadata], dtype=torch.long)


def by_start_year(values, yy) -> np.ndarray:
    """Mean of ``values`` [n, ...] over the prompts sharing each YY: [100, ...], NaN where YY is absent."""
    values = np.asarray(torch.as_tensor(values).double().cpu())
    yy = np.asarray(torch.as_tensor(yy).cpu())
    out = np.full((100,) + values.shape[1:], np.nan)
    for y in np.unique(yy):
        out[int(y)] = values[yy == y].mean(0)
    return out


@dataclass(frozen=True)
class YearResult:
    """One model's (or circuit's) year probabilities and metrics.

    probs: [n, 100] per prompt.  yy: [n] start years.  pd, cs: [n] per prompt.
    matrix: [100, 100] mean p(YY'|YY).  pd_by_yy, cs_by_yy: [100] means per YY (NaN where absent).
    """

    probs: torch.Tensor
    yy: torch.Tensor
    pd: torch.Tensor
    cs: torch.Tensor
    matrix: np.ndarray
    pd_by_yy: np.ndarray
    cs_by_yy: np.ndarray

    @property
    def pd_mean(self) -> float:
        return float(self.pd.double().mean())

    @property
    def cs_mean(self) -> float:
        return float(self.cs.double().mean())

    @property
    def pd_std(self) -> float:
        return float(self.pd.double().std()) if self.pd.numel() > 1 else 0.0

    @property
    def cs_std(self) -> float:
        return float(self.cs.double().std()) if self.cs.numel() > 1 else 0.0


def year_result(probs: torch.Tensor, dataset, pd=None, cs=None) -> YearResult:
    """PD, CS and the per-YY means from year probabilities [n, 100] (PD and CS computed from them
    unless given: with digit tokens, pass ``GreaterThan.year_table``'s exact two-digit PD)."""
    yy = start_years(dataset).to(probs.device)
    pd = probability_difference(probs, yy) if pd is None else pd
    cs = cutoff_sharpness(probs, yy) if cs is None else cs
    return YearResult(probs=probs, yy=yy.cpu(), pd=pd, cs=cs, matrix=by_start_year(probs, yy),
                      pd_by_yy=by_start_year(pd, yy), cs_by_yy=by_start_year(cs, yy))


def plot_year_heatmap(matrix: np.ndarray, path: Union[str, Path], *, title: str, colorbar: str = "p(YY' | YY)",
                      cols: Sequence[str] = (), xlabel: str = "predicted YY'", cmap: str = "viridis",
                      diverging: bool = False) -> Path:
    """A [100, k] matrix (rows: start year YY, top to bottom) as a heatmap PNG; absent YY rows are grey.

    With 100 columns the diagonal YY' = YY is drawn: greater-than puts its mass right of it.
    """
    import matplotlib

    k = matrix.shape[1]
    fig = figure(6.4 if k > 20 else 4.8, 5.6)
    ax = fig.add_subplot(1, 1, 1)
    colours = matplotlib.colormaps[cmap].with_extremes(bad="#d9d9d9")
    data = np.ma.masked_invalid(matrix)
    kwargs = {}
    if diverging:
        finite = np.abs(matrix[np.isfinite(matrix)])
        limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        kwargs = {"vmin": -limit, "vmax": limit}
    im = ax.imshow(data, origin="upper", aspect="auto", cmap=colours, interpolation="nearest", **kwargs)
    if k == 100:
        ax.plot([-0.5, 99.5], [-0.5, 99.5], color="white", linewidth=0.6, linestyle=":")
        ax.set_xticks(range(0, 100, 10))
        ax.set_xticklabels([f"{y:02d}" for y in range(0, 100, 10)])
    else:
        ax.set_xticks(range(k))
        ax.set_xticklabels(list(cols) or [str(i) for i in range(k)])
    ax.set_yticks(range(0, 100, 10))
    ax.set_yticklabels([f"{y:02d}" for y in range(0, 100, 10)])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("start year YY")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=colorbar, fraction=0.046, pad=0.04)
    return save_png(fig, path)


def plot_pd_cs(series: Mapping[str, YearResult], path: Union[str, Path]) -> Path:
    """PD and CS against YY (two panels), one line per entry of ``series`` (e.g. model, circuit)."""
    fig = figure(7.2, 5.4)
    axes = [fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)]
    x = np.arange(100)
    styles = ["-", "--", "-.", ":"]
    for i, (label, res) in enumerate(series.items()):
        for ax, values, name, mean in ((axes[0], res.pd_by_yy, "PD", res.pd_mean), (axes[1], res.cs_by_yy, "CS", res.cs_mean)):
            ok = np.isfinite(values)
            ax.plot(x[ok], values[ok], styles[i % len(styles)], marker="o", markersize=2.5, linewidth=1.1,
                    label=f"{label} (mean over prompts {mean:+.3f})")
            ax.set_ylabel(name)
    axes[0].set_title("probability difference and cutoff sharpness by start year", fontsize=10)
    axes[0].axhline(0.0, color="grey", linewidth=0.6)
    axes[1].axhline(0.0, color="grey", linewidth=0.6)
    axes[1].set_xlabel("start year YY")
    for ax in axes:
        ax.set_xlim(0, 99)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return save_png(fig, path)


def write_year_matrix(path: Union[str, Path], matrix: np.ndarray, cols: Sequence[str] = ()) -> Path:
    """The [100, k] matrix as CSV: rows YY 0..99 (NaN where absent), columns YY' 00..99 (or ``cols``)."""
    cols = list(cols) or [f"{y:02d}" for y in range(matrix.shape[1])]
    return write_matrix_csv(path, matrix, "YY", list(range(100)), cols)


def write_pd_cs(path: Union[str, Path], series: Mapping[str, YearResult]) -> Path:
    """PD and CS per YY for each series: columns ``YY, <label>_pd, <label>_cs, ...`` and a ``count`` column."""
    first = next(iter(series.values()))
    counts = np.bincount(first.yy.numpy(), minlength=100)
    header = ["YY", "count"]
    for label in series:
        header += [f"{label}_pd", f"{label}_cs"]
    rows = []
    for y in range(100):
        row = [y, int(counts[y])]
        for res in series.values():
            row += [float(res.pd_by_yy[y]), float(res.cs_by_yy[y])]
        rows.append(row)
    return write_csv(path, header, rows)

