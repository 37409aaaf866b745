"""What a patched edge carries instead of its clean value: corrupted or mean activations."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Sequence

import torch
from torch import Tensor

from circuits.dataset import PromptDataset
from circuits.errors import CircuitsError

ABLATIONS = ("corrupted", "mean")


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


def reference(engine, part: PromptDataset, ablation: str = "corrupted", *, means: Optional[Reference] = None,
              hidden_layers: Sequence[int] = ()) -> Reference:
    """Activations that patched edges (and neurons) carry for the prompts in ``part``.

    ``corrupted``: the corrupted prompts' own activations.  ``mean``: ``means`` (from
    ``dataset_means`` over the whole dataset) broadcast to the batch.
    """
    check_ablation(ablation)
    b = len(part)
    if ablation == "mean":
        if means is None:
            raise ValueError("mean ablation needs the dataset's means (dataset_means)")
        return Reference(means.outputs.expand(-1, b, -1, -1).contiguous(),
                         {k: v.expand(b, -1, -1) for k, v in means.hidden.items()})
    with torch.no_grad():
        run = engine.run(part.corrupted.to(engine.device), part.answer_pos, collect=True, capture_hidden=tuple(hidden_layers))
    return Reference(run.outputs, run.hidden or {})


def prepare(engine, dataset: PromptDataset, ablation: str, *, hidden_layers: Sequence[int] = (), batch_size: int = 0) -> Optional[Reference]:
    """The dataset means when ``ablation`` is ``mean`` (None otherwise), checked up front."""
    check_ablation(ablation)
    if ablation == "mean":
        return dataset_means(engine, dataset, hidden_layers=hidden_layers, batch_size=batch_size)
    return None
