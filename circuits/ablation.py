"""What a patched edge carries instead of its clean value.

- ``corrupted``: the corrupted twin's activations (counterfactual ablation, the default);
- ``mean``: the clean activations' mean over the prompts, **per position** (each position keeps
  its own mean; the prompts of a dataset have equal length);
- ``mean-positions``: the clean activations' mean over the prompts *and* the positions (one
  vector per sender, the same at every position);
- ``zero``: zeros (the input embedding included).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Sequence

import torch
from torch import Tensor

from circuits.dataset import PromptDataset
from circuits.errors import CircuitsError

ABLATIONS = ("corrupted", "mean", "mean-positions", "zero")
STATIC = ("mean", "mean-positions", "zero")  # the same reference for every prompt


def check_ablation(ablation: str) -> None:
    if ablation not in ABLATIONS:
        raise CircuitsError(f"unknown ablation {ablation!r}; use one of: {', '.join(ABLATIONS)}")


def chunks(dataset: PromptDataset, batch_size: int) -> Iterator[PromptDataset]:
    """The dataset in pieces of ``batch_size`` prompts (all at once when 0)."""
    size = batch_size if batch_size and batch_size > 0 else len(dataset)
    for start in range(0, len(dataset), size):
        yield dataset if size >= len(dataset) else dataset.subset(slice(start, start + size))


@dataclass(frozen=True)
class Reference:
    """Reference activations: sender outputs [S, b, p, d] and MLP hidden activations per layer [b, p, m]."""

    outputs: Tensor
    hidden: Dict[int, Tensor] = field(default_factory=dict)


def dataset_means(engine, dataset: PromptDataset, *, hidden_layers: Sequence[int] = (), batch_size: int = 0) -> Reference:
    """Mean over the dataset of the clean activations, per position (batch dimension 1)."""
    outs, hidden = None, {}
    with torch.no_grad():
        for part in chunks(dataset, batch_size):
            run = engine.run(part.clean.to(engine.device), part.answer_pos, collect=True, capture_hidden=tuple(hidden_layers))
            s = run.outputs.sum(1, keepdim=True)
            outs = s if outs is None else outs + s
            for layer, h in (run.hidden or {}).items():
                hs = h.sum(0, keepdim=True)
                hidden[layer] = hs if layer not in hidden else hidden[layer] + hs
    n = len(dataset)
    return Reference(outs / n, {k: v / n for k, v in hidden.items()})


def static_reference(engine, dataset: PromptDataset, ablation: str, *, hidden_layers: Sequence[int] = (),
                     batch_size: int = 0) -> Optional[Reference]:
    """The one reference every prompt shares (batch dimension 1) for ``mean``, ``mean-positions`` and
    ``zero``; None for ``corrupted`` (each prompt has its own)."""
    check_ablation(ablation)
    if ablation == "corrupted":
        return None
    if ablation == "zero":
        w, p = engine.w, int(dataset.clean.shape[1])
        zeros = torch.zeros(engine.graph.n_senders, 1, p, w.d_model, dtype=w.W_E.dtype, device=engine.device)
        return Reference(zeros, {l: torch.zeros(1, p, w.d_mlp, dtype=w.W_E.dtype, device=engine.device)
                                 for l in hidden_layers})
    means = dataset_means(engine, dataset, hidden_layers=hidden_layers, batch_size=batch_size)
    if ablation == "mean-positions":
        means = Reference(means.outputs.mean(2, keepdim=True).expand_as(means.outputs),
                          {k: v.mean(1, keepdim=True).expand_as(v) for k, v in means.hidden.items()})
    return means


def reference(engine, part: PromptDataset, ablation: str = "corrupted", *, means: Optional[Reference] = None,
              hidden_layers: Sequence[int] = ()) -> Reference:
    """Activations that patched edges (and neurons) carry for the prompts in ``part``.

    ``corrupted``: the corrupted prompts' own activations.  ``mean``, ``mean-positions``, ``zero``:
    ``means`` (from :func:`prepare` over the whole dataset) broadcast to the batch.
    """
    check_ablation(ablation)
    b = len(part)
    if ablation in STATIC:
        if means is None:
            raise ValueError(f"{ablation} ablation needs the dataset's shared reference (ablation.prepare)")
        return Reference(means.outputs.expand(-1, b, -1, -1).contiguous(),
                         {k: v.expand(b, -1, -1) for k, v in means.hidden.items()})
    with torch.no_grad():
        run = engine.run(part.corrupted.to(engine.device), part.answer_pos, collect=True, capture_hidden=tuple(hidden_layers))
    return Reference(run.outputs, run.hidden or {})


def prepare(engine, dataset: PromptDataset, ablation: str, *, hidden_layers: Sequence[int] = (), batch_size: int = 0) -> Optional[Reference]:
    """The shared reference of ``mean``, ``mean-positions`` and ``zero`` (None for ``corrupted``), checked up front."""
    return static_reference(engine, dataset, ablation, hidden_layers=hidden_layers, batch_size=batch_size)
