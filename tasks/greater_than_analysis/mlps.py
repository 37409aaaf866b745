"""What MLPs write into the answer: logit lens on the year tokens, and direct vs indirect effects.

**Logit lens.**  An MLP's output ``x`` at the answer position is read as logits
``((x - mean(x)) / s) * lnf_w @ W_U[:, years]``: the final norm is *frozen* at the clean run's
scale ``s`` (that prompt's final residual stream at the answer position), its centring applied
for LayerNorm (not for RMSNorm), and its bias and ``b_U`` left out (they do not depend on the
MLP).  The columns are the 100 two-digit year tokens, or, when the tokenizer splits digits, the
10 digit tokens read as the *tens* digit.  Each row is centred over those columns (a shift
shared by all years changes none of their probabilities).

**Direct and indirect effects** (path patching, corrupted run as reference):
``direct`` patches only the edge ``m{l} -> logits``; ``total`` patches the MLP node (all its
outgoing edges, i.e. its output in the residual stream); ``indirect = total - direct``.  An effect is ``mean M(patched) - mean M(clean)``
of the task's metric (PD), so a negative effect means the MLP helps.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from circuits.analysis.files import figure, save_png, write_csv
from circuits.analysis.runs import Runs, collect_runs, sliced_batches

__all__ = ["answer_columns", "frozen_lens", "logit_lens", "MlpEffect", "direct_indirect", "plot_logit_lens",
           "plot_effects", "write_effects"]


def answer_columns(dataset) -> Tuple[List[int], List[str], str]:
    """(token ids, column labels, axis label) the lens reads: 100 year tokens or 10 tens digits."""
    if dataset.info.get("mode") == "token":
        return list(dataset.info["year_ids"]), [f"{y:02d}" for y in range(100)], "year token YY'"
    return list(dataset.info["digit_ids"]), [str(d) for d in range(10)], "tens digit of YY' (digit tokens)"


def frozen_lens(engine, x: Tensor, final_resid: Tensor, ids: Sequence[int]) -> Tensor:
    """Logits over ``ids`` [b, k] of a residual-stream contribution ``x`` [b, d], through the final
    norm frozen at ``final_resid`` [b, d]'s scale (see the module docstring; rows not centred)."""
    w = engine.w
    if w.norm == "LN":
        x = x - x.mean(-1, keepdim=True)
        final_resid = final_resid - final_resid.mean(-1, keepdim=True)
    scale = (final_resid.pow(2).mean(-1, keepdim=True) + w.eps).sqrt()
    return ((x / scale) * w.lnf_w) @ w.W_U[:, list(ids)]


def logit_lens(engine, dataset, layers: Sequence[int], *, batch_size: int = 0,
               runs: Optional[Runs] = None) -> Dict[int, Tensor]:
    """Per MLP layer: its direct contribution to the answer columns [n, k] (row-centred)."""
    ids, _, _ = answer_columns(dataset)
    if runs is None or not runs.covers(mlp_layers=layers):
        runs = collect_runs(engine, dataset, mlp_layers=layers, batch_size=batch_size)
    idx = torch.arange(len(dataset), device=engine.device)
    final = runs.resid_pre[-1][idx, dataset.first_answer_pos.to(engine.device)]
    out: Dict[int, Tensor] = {}
    with torch.no_grad():
        for layer in layers:
            lens = frozen_lens(engine, runs.mlp_answer[layer], final, ids)
            out[layer] = (lens - lens.mean(-1, keepdim=True)).double().cpu()
    return out


@dataclass(frozen=True)
class MlpEffect:
    layer: int
    total: float
    direct: float

    @property
    def indirect(self) -> float:
        return self.total - self.direct

    @property
    def name(self) -> str:
        return f"m{self.layer}"


def direct_indirect(engine, dataset, metric, layers: Sequence[int], *, batch_size: int = 0,
                    runs: Optional[Runs] = None, progress=None) -> List[MlpEffect]:
    """Total and direct effect of each MLP by path patching (corrupted reference); see the module docstring.

    Patching every outgoing edge of ``m{l}`` is adding ``corrupted - clean`` output to the residual
    stream after it, so ``total`` restarts at layer ``l + 1`` from the clean residual plus that
    difference; ``direct`` adds it to the final residual only (the logits' input).
    """
    L = engine.w.n_layers
    n = len(dataset)
    if runs is None or not runs.covers(mlp_layers=layers):
        runs = collect_runs(engine, dataset, mlp_layers=layers, batch_size=batch_size)
    totals = {layer: 0.0 for layer in layers}
    directs = {layer: 0.0 for layer in layers}
    pieces = list(sliced_batches(dataset, batch_size))
    with torch.no_grad():
        for i, (sl, part) in enumerate(pieces):
            tokens = part.clean.to(engine.device)
            base = float(metric(runs.logits[sl], part).double().sum())
            for j, layer in enumerate(layers):
                delta = runs.mlp_delta[layer][sl]
                for kind, start in (("total", layer + 1), ("direct", L)):
                    run = engine.run(tokens, part.answer_pos, start_layer=start, start_resid=runs.resid_pre[start][sl] + delta)
                    value = (float(metric(run.logits, part).double().sum()) - base) / n
                    (totals if kind == "total" else directs)[layer] += value
                if progress is not None:
                    progress(i * len(layers) + j + 1, len(pieces) * len(layers), "MLP direct and indirect effects")
    return [MlpEffect(layer=l, total=totals[l], direct=directs[l]) for l in layers]


def plot_logit_lens(matrices: Dict[int, np.ndarray], cols: Sequence[str], xlabel: str,
                    path: Union[str, Path]) -> Path:
    """One heatmap per MLP (rows: YY, mean over the prompts sharing it; columns: the answer tokens)."""
    import math

    import matplotlib

    k = max(1, len(matrices))
    ncols = min(2 if k <= 4 else 3 if k <= 9 else 4, k)
    nrows = math.ceil(k / ncols)
    fig = figure(5.4 * ncols, 4.6 * nrows)
    colours = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#d9d9d9")
    for i, (layer, matrix) in enumerate(matrices.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        finite = np.abs(matrix[np.isfinite(matrix)])
        limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        im = ax.imshow(np.ma.masked_invalid(matrix), origin="upper", aspect="auto", cmap=colours,
                       vmin=-limit, vmax=limit, interpolation="nearest")
        width = matrix.shape[1]
        if width == 100:
            ax.plot([-0.5, 99.5], [-0.5, 99.5], color="black", linewidth=0.5, linestyle=":")
            ax.set_xticks(range(0, 100, 10))
            ax.set_xticklabels([cols[t] for t in range(0, 100, 10)])
        else:
            ax.set_xticks(range(width))
            ax.set_xticklabels(list(cols))
        ax.set_yticks(range(0, 100, 10))
        ax.set_yticklabels([f"{y:02d}" for y in range(0, 100, 10)])
        ax.set_title(f"m{layer}: direct logits (logit lens)", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("start year YY", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if not matrices:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no MLPs", ha="center", va="center")
        ax.set_axis_off()
    return save_png(fig, path)


def plot_effects(effects: Sequence[MlpEffect], path: Union[str, Path], *, metric_name: str = "PD") -> Path:
    """Grouped bars: total, direct and indirect effect of each MLP."""
    fig = figure(max(4.8, 1.0 + 0.9 * len(effects)), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(effects))
    width = 0.27
    for i, (label, colour) in enumerate((("total", "#34495e"), ("direct", "#1f5fbf"), ("indirect", "#e67e22"))):
        ax.bar(x + (i - 1) * width, [getattr(e, label) for e in effects], width, label=label, color=colour)
    ax.set_xticks(x)
    ax.set_xticklabels([e.name for e in effects])
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_ylabel(f"change of mean {metric_name} when patched")
    ax.set_title("MLP effects by path patching (negative: the MLP helps)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def write_effects(path: Union[str, Path], effects: Sequence[MlpEffect]) -> Path:
    return write_csv(path, ["mlp", "total", "direct", "indirect"],
                     [[e.name, e.total, e.direct, e.indirect] for e in effects])
