"""Neurons of one MLP: exact patching effects, their output directions read as year logits, joint effect.

**Effects** are activation patching's neuron effects (``ActivationPatching`` with
``options.neurons``): the neuron's hidden activation at every position takes the corrupted
run's value and the task's metric (PD) is re-read; effect = ``mean M(patched) -
mean M(clean)``.  Because an MLP's output is linear in its hidden activations, the patched run
restarts at the *next* layer from the clean residual stream plus ``delta_h * W_out[n]`` — the
same numbers as editing the activation, without recomputing the MLP's own layer.

Scoring every neuron exactly costs one restarted pass per neuron and prompt.  With
``candidates``, neurons are first ranked by attribution patching (``delta_h * dM/dh``, one
backward pass from the MLP's layer) and only that many are patched exactly; the top ``k`` are then chosen by their
exact effect.  ``candidates=None`` scores every neuron exactly.

**Output direction**: ``W_out[layer, n]`` read through the unembedding over the answer columns
(100 year tokens, or the 10 digit tokens as the tens digit), with the final norm's weight (and
centring for LayerNorm) applied and no scale, centred over the columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from circuits.analysis.files import figure, save_png, write_csv
from circuits.analysis.runs import Runs, collect_runs, sliced_batches
from circuits.data.dataset import repeat_positions

__all__ = ["NeuronReport", "neuron_effects", "joint_effect", "attribution", "top_neurons", "output_directions",
           "plot_directions", "plot_joint", "write_neurons"]

MAX_ROWS = 2048  # prompts x neurons per restarted pass


def _runs(engine, dataset, layer: int, batch_size: int, runs: Optional[Runs]) -> Runs:
    if runs is None or not runs.covers(hidden_layers=(layer,)):
        runs = collect_runs(engine, dataset, hidden_layers=(layer,), batch_size=batch_size)
    return runs


def _patched_metric(engine, part, metric, resid_next: Tensor, layer: int, delta_out: Tensor) -> Tensor:
    """Metric [k, b] with ``delta_out`` [k, b, p, d] added to the MLP's output (restart at layer + 1)."""
    k, b = delta_out.shape[:2]
    resid = (resid_next[None] + delta_out).reshape(k * b, *delta_out.shape[2:])
    run = engine.run(part.clean.to(engine.device).repeat(k, 1), repeat_positions(part.answer_pos, k),
                     start_layer=layer + 1, start_resid=resid)
    expanded = part.subset(list(range(b)) * k) if k > 1 else part
    return metric(run.logits, expanded).double().view(k, b)


def neuron_effects(engine, dataset, metric, layer: int, neurons: Optional[Sequence[int]] = None, *,
                   batch_size: int = 0, runs: Optional[Runs] = None, progress=None) -> Tensor:
    """Exact effect of patching each neuron alone: [len(neurons)] (all neurons when None), float64."""
    w = engine.w
    runs = _runs(engine, dataset, layer, batch_size, runs)
    idx = torch.arange(w.d_mlp) if neurons is None else torch.as_tensor(list(neurons), dtype=torch.long)
    total = torch.zeros(len(idx), dtype=torch.float64)
    pieces = list(sliced_batches(dataset, batch_size))
    with torch.no_grad():
        for i, (sl, part) in enumerate(pieces):
            base = metric(runs.logits[sl], part).double()
            delta_h = runs.hidden_delta[layer][sl]
            step = max(1, MAX_ROWS // len(part))
            for start in range(0, len(idx), step):
                group = idx[start:start + step].to(engine.device)
                # [k, b, p, d]: each copy of the batch moves one neuron
                delta_out = delta_h[:, :, group].permute(2, 0, 1)[..., None] * w.W_out[layer][group][:, None, None, :]
                values = _patched_metric(engine, part, metric, runs.resid_pre[layer + 1][sl], layer, delta_out)
                total[start:start + len(group)] += (values - base[None]).sum(1).cpu()
                if progress is not None:
                    progress(i * len(idx) + start + len(group), len(pieces) * len(idx), f"neurons of m{layer}")
    return total / len(dataset)


def joint_effect(engine, dataset, metric, layer: int, neurons: Sequence[int], *, batch_size: int = 0,
                 runs: Optional[Runs] = None) -> float:
    """Effect of patching all ``neurons`` of the MLP together."""
    w = engine.w
    runs = _runs(engine, dataset, layer, batch_size, runs)
    idx = torch.as_tensor(list(neurons), dtype=torch.long, device=engine.device)
    total = 0.0
    with torch.no_grad():
        for sl, part in sliced_batches(dataset, batch_size):
            delta_out = (runs.hidden_delta[layer][sl][:, :, idx] @ w.W_out[layer][idx])[None]
            values = _patched_metric(engine, part, metric, runs.resid_pre[layer + 1][sl], layer, delta_out)
            total += float((values[0] - metric(runs.logits[sl], part).double()).sum())
    return total / len(dataset)


def attribution(engine, dataset, metric, layer: int, *, batch_size: int = 0, runs: Optional[Runs] = None) -> Tensor:
    """First-order estimate of every neuron's effect, ``sum delta_h * dM/dh`` over prompts and positions
    (mean metric): [d_mlp], float64."""
    runs = _runs(engine, dataset, layer, batch_size, runs)
    total = torch.zeros(engine.w.d_mlp, dtype=torch.float64)
    n = len(dataset)
    for sl, part in sliced_batches(dataset, batch_size):
        leaf = {}

        def edit(l: int, hidden: Tensor) -> Tensor:
            if l != layer:
                return hidden
            leaf["h"] = hidden.detach().requires_grad_(True)
            return leaf["h"]

        with torch.enable_grad():
            run = engine.run(part.clean.to(engine.device), part.answer_pos, start_layer=layer,
                             start_resid=runs.resid_pre[layer][sl], edit_hidden=edit)
            (metric(run.logits, part).sum() / n).backward()
        total += (runs.hidden_delta[layer][sl] * leaf["h"].grad).double().sum((0, 1)).cpu()
    return total


@dataclass(frozen=True)
class NeuronReport:
    """One MLP's top neurons: (index, exact effect) strongest first, the joint effect of all of them,
    how many neurons were scored exactly, and their output directions [k, columns]."""

    layer: int
    top: Tuple[Tuple[int, float], ...]
    joint: float
    scored: int
    directions: np.ndarray

    @property
    def sum_single(self) -> float:
        return float(sum(e for _, e in self.top))


def top_neurons(engine, dataset, metric, layer: int, k: int, *, candidates: Optional[int] = None,
                batch_size: int = 0, runs: Optional[Runs] = None, progress=None) -> List[Tuple[int, float]]:
    """The ``k`` neurons with the largest |exact effect| (among ``candidates`` screened by attribution)."""
    d_mlp = engine.w.d_mlp
    runs = _runs(engine, dataset, layer, batch_size, runs)
    pool = None
    if candidates is not None and candidates < d_mlp:
        est = attribution(engine, dataset, metric, layer, batch_size=batch_size, runs=runs)
        pool = est.abs().argsort(descending=True)[:max(candidates, k)].tolist()
    effects = neuron_effects(engine, dataset, metric, layer, pool, batch_size=batch_size, runs=runs, progress=progress)
    index = list(range(d_mlp)) if pool is None else pool
    order = effects.abs().argsort(descending=True)[:k].tolist()
    return [(int(index[i]), float(effects[i])) for i in order]


def output_directions(engine, layer: int, neurons: Sequence[int], ids: Sequence[int]) -> np.ndarray:
    """Each neuron's ``W_out`` row read through the final norm's weight and ``W_U[:, ids]``: [k, len(ids)]."""
    w = engine.w
    with torch.no_grad():
        rows = w.W_out[layer][torch.as_tensor(list(neurons), dtype=torch.long, device=engine.device)]
        if w.norm == "LN":
            rows = rows - rows.mean(-1, keepdim=True)
        logits = (rows * w.lnf_w) @ w.W_U[:, list(ids)]
        logits = logits - logits.mean(-1, keepdim=True)
    return logits.double().cpu().numpy()


def plot_directions(reports: Sequence[NeuronReport], cols: Sequence[str], xlabel: str,
                    path: Union[str, Path]) -> Path:
    """One panel per MLP: each top neuron's output direction over the answer columns (a line each)."""
    k = max(1, len(reports))
    fig = figure(7.0, 3.4 * k)
    for i, rep in enumerate(reports):
        ax = fig.add_subplot(k, 1, i + 1)
        x = np.arange(rep.directions.shape[1])
        for (n, effect), row in zip(rep.top, rep.directions):
            ax.plot(x, row, linewidth=1.0, label=f"n{n} ({effect:+.3g})")
        step = 10 if len(x) == 100 else 1
        ax.set_xticks(x[::step])
        ax.set_xticklabels([cols[t] for t in x[::step]])
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("logit (centred)", fontsize=8)
        ax.set_title(f"m{rep.layer}: top neurons' output directions through the unembedding", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=2, loc="best")
    return save_png(fig, path)


def plot_joint(reports: Sequence[NeuronReport], path: Union[str, Path]) -> Path:
    """Per MLP: each top neuron's single effect, their sum, and the joint effect."""
    k = max(1, len(reports))
    fig = figure(7.0, 3.0 * k)
    for i, rep in enumerate(reports):
        ax = fig.add_subplot(k, 1, i + 1)
        labels = [f"n{n}" for n, _ in rep.top] + ["sum", "joint"]
        values = [e for _, e in rep.top] + [rep.sum_single, rep.joint]
        colours = ["#1f5fbf"] * len(rep.top) + ["#7f8c8d", "#c0392b"]
        ax.bar(np.arange(len(values)), values, color=colours)
        ax.set_xticks(np.arange(len(values)))
        ax.set_xticklabels(labels, rotation=45, fontsize=7)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_ylabel("effect on mean metric", fontsize=8)
        ax.set_title(f"m{rep.layer}: single effects, their sum, and the joint effect of the top {len(rep.top)}", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    return save_png(fig, path)


def write_neurons(path: Union[str, Path], reports: Sequence[NeuronReport]) -> Path:
    """CSV: one row per top neuron (rank, effect), then per MLP a ``sum`` and a ``joint`` row."""
    rows = []
    for rep in reports:
        for rank, (n, effect) in enumerate(rep.top, 1):
            rows.append([f"m{rep.layer}", rank, f"m{rep.layer}.n{n}", effect])
        rows.append([f"m{rep.layer}", "", "sum of single effects", rep.sum_single])
        rows.append([f"m{rep.layer}", "", "joint effect", rep.joint])
    return write_csv(path, ["mlp", "rank", "neuron", "effect"], rows)
