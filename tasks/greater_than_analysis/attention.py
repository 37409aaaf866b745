"""Where heads look: mean attention from the answer (last) position over the prompt's positions."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from circuits import names
from circuits.analysis.files import figure, save_png, write_csv
from circuits.analysis.runs import Runs, collect_runs, sliced_batches

__all__ = ["mean_attention", "position_labels", "yy_positions", "plot_attention", "write_attention"]


def mean_attention(engine, dataset, heads: Sequence[Tuple[int, int]], *, batch_size: int = 0,
                   runs: Optional[Runs] = None) -> np.ndarray:
    """Attention of each (layer, head) from each prompt's answer position, averaged over the prompts:
    [len(heads), seq] (clean prompts, full model).  ``runs``: the clean residual streams, if already run."""
    seq = int(dataset.clean.shape[1])
    total = torch.zeros(len(heads), seq, dtype=torch.float64)
    if not heads:
        return total.numpy()
    layers = sorted({layer for layer, _ in heads})
    if runs is None:
        runs = collect_runs(engine, dataset, batch_size=batch_size)
    with torch.no_grad():
        for sl, part in sliced_batches(dataset, batch_size):
            idx = torch.arange(len(part), device=engine.device)
            answer = part.first_answer_pos.to(engine.device)
            for layer in layers:
                pattern = engine.attention_pattern(layer, runs.resid_pre[layer][sl])  # [b, H, q, k]
                rows = pattern[idx, :, answer]  # [b, H, k]
                for i, (l, h) in enumerate(heads):
                    if l == layer:
                        total[i] += rows[:, h].double().sum(0).cpu()
    return (total / len(dataset)).numpy()


def yy_positions(dataset) -> List[int]:
    """Positions of the start year's tokens: YY (one token), or its two digits."""
    pos = int(dataset.info["yy_pos"])
    return [pos] if dataset.info.get("mode") == "token" else [pos, pos + 1]


def position_labels(tokenizer, dataset) -> List[str]:
    """One label per position: the token shared by every prompt there, else ``<varies>``; the YY
    position(s) are labelled ``YY`` (``Y1``, ``Y2`` for digits)."""
    clean = dataset.clean
    labels = []
    for pos in range(clean.shape[1]):
        column = clean[:, pos]
        if bool((column == column[0]).all()):
            text = tokenizer.decode([int(column[0])])
            labels.append(repr(text)[1:-1] if text.strip() else repr(text))
        else:
            labels.append("<varies>")
    marks = yy_positions(dataset)
    if len(marks) == 1:
        labels[marks[0]] = "YY"
    else:
        for i, pos in enumerate(marks):
            labels[pos] = f"Y{i + 1}"
    return labels


def plot_attention(values: np.ndarray, heads: Sequence[Tuple[int, int]], labels: Sequence[str],
                   marks: Sequence[int], path: Union[str, Path], *, title: str = "") -> Path:
    """A grid of bar plots, one per head: mean attention over positions, YY position(s) in red."""
    k = max(1, len(heads))
    cols = min(3 if k <= 12 else 4, k)
    rows = math.ceil(k / cols)
    fig = figure(4.2 * cols, 2.9 * rows)
    x = np.arange(len(labels))
    for i, (layer, h) in enumerate(heads):
        ax = fig.add_subplot(rows, cols, i + 1)
        colours = ["#c0392b" if p in marks else "#1f5fbf" for p in x]
        ax.bar(x, values[i], color=colours)
        ax.set_ylim(0, 1)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
        ax.set_title(names.format_node(names.head(layer, h)), fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        if i % cols == 0:
            ax.set_ylabel("attention")
    if not heads:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no heads", ha="center", va="center")
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, path)


def write_attention(path: Union[str, Path], values: np.ndarray, heads: Sequence[Tuple[int, int]],
                    labels: Sequence[str]) -> Path:
    """CSV: one row per head, one column per position (``<pos>:<label>``)."""
    header = ["head", *[f"{p}:{label}" for p, label in enumerate(labels)]]
    rows = [[names.format_node(names.head(l, h)), *(float(v) for v in values[i])] for i, (l, h) in enumerate(heads)]
    return write_csv(path, header, rows)
