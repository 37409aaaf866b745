"""What a patched edge carries instead of its clean value: corrupted or mean activations."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Sequence, Tuple

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
    dtype = engine.w.W_E.dtype
    acc = torch.promote_types(dtype, torch.float32)  # sums of half-precision activations kept in float32
    with torch.no_grad():
        for part in chunks(dataset, batch_size):
            run = engine.run(part.clean.to(engine.device), part.answer_pos, collect=True, capture_hidden=tuple(hidden_layers))
            s = run.outputs.sum(1, keepdim=True, dtype=acc)
            outs = s if outs is None else outs + s
            for layer, h in (run.hidden or {}).items():
                hs = h.sum(0, keepdim=True, dtype=acc)
                hidden[layer] = hs if layer not in hidden else hidden[layer] + hs
    n = len(dataset)
    return Reference((outs / n).to(dtype), {k: (v / n).to(dtype) for k, v in hidden.items()})


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
        # a copy for every batch (callers may write into it; ``contiguous`` would return the means themselves when b == 1)
        return Reference(means.outputs.repeat(1, b, 1, 1),
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


# Reference outputs a batch-by-batch evaluation keeps between passes (the rest are recomputed).
REFERENCE_CACHE_BYTES = 1 << 30


class BatchReferences:
    """The reference sender outputs patched edges carry, batch by batch, for repeated evaluations.

    Iterating yields ``(part, outputs)``: the dataset's pieces of ``batch_size`` prompts (all at
    once when 0) and each piece's reference outputs [S, b, p, d].  ``mean`` outputs are the
    dataset's means (computed once, [S, 1, p, d]) broadcast to each piece; ``corrupted`` outputs
    are each piece's corrupted run, kept for later passes while the kept ones total at most
    ``cache_bytes`` and recomputed otherwise, so memory is bounded by the batch (plus the cache),
    not by the number of prompts.  With ``batch_size`` 0 the single piece is always kept.
    """

    def __init__(self, engine, dataset: PromptDataset, ablation: str = "corrupted", *, batch_size: int = 0,
                 cache_bytes: int = REFERENCE_CACHE_BYTES, means: Optional[Reference] = None):
        check_ablation(ablation)
        self.engine, self.dataset, self.ablation, self.batch_size = engine, dataset, ablation, batch_size
        self.cache_bytes = cache_bytes
        self._parts = list(chunks(dataset, batch_size))
        self._cache: Dict[int, Tensor] = {}
        self._cached_bytes = 0
        self.computed = 0  # reference runs made (recomputations included)
        self.means = means
        if ablation == "mean" and means is None:
            self.means = dataset_means(engine, dataset, batch_size=batch_size)

    def __len__(self) -> int:
        return len(self._parts)

    def outputs(self, i: int) -> Tensor:
        """Piece ``i``'s reference outputs [S, b, p, d] (a broadcast view for ``mean``)."""
        part = self._parts[i]
        if self.ablation == "mean":
            return self.means.outputs.expand(-1, len(part), -1, -1)
        if i in self._cache:
            return self._cache[i]
        out = reference(self.engine, part, self.ablation).outputs
        self.computed += 1
        size = out.numel() * out.element_size()
        if len(self._parts) == 1 or self._cached_bytes + size <= self.cache_bytes:
            self._cache[i] = out
            self._cached_bytes += size
        return out

    def __iter__(self) -> Iterator[Tuple[PromptDataset, Tensor]]:
        for i, part in enumerate(self._parts):
            yield part, self.outputs(i)
