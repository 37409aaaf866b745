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
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor

from circuits.data.dataset import PromptDataset
from circuits.errors import CircuitsError
from circuits.data.batching import batches

ABLATIONS = ("corrupted", "mean", "mean-positions", "zero")
STATIC = ("mean", "mean-positions", "zero")  # the same reference for every prompt


def check_ablation(ablation: str) -> None:
    if ablation not in ABLATIONS:
        raise CircuitsError(f"unknown ablation {ablation!r}; use one of: {', '.join(ABLATIONS)}")


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
        for part in batches(dataset, batch_size):
            run = engine.run(part.clean.to(engine.device), part.answer_pos, collect=True, capture_hidden=tuple(hidden_layers))
            s = run.outputs.sum(1, keepdim=True, dtype=acc)
            outs = s if outs is None else outs + s
            for layer, h in (run.hidden or {}).items():
                hs = h.sum(0, keepdim=True, dtype=acc)
                hidden[layer] = hs if layer not in hidden else hidden[layer] + hs
    n = len(dataset)
    return Reference((outs / n).to(dtype), {k: (v / n).to(dtype) for k, v in hidden.items()})


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
    ``means`` (from :func:`static_reference` over the whole dataset) broadcast to the batch.
    """
    check_ablation(ablation)
    b = len(part)
    if ablation in STATIC:
        if means is None:
            raise ValueError(f"{ablation} ablation needs the dataset's shared reference (ablation.static_reference)")
        # a copy for every batch (callers may write into it; ``contiguous`` would return the shared tensor when b == 1)
        return Reference(means.outputs.repeat(1, b, 1, 1),
                         {k: v.expand(b, -1, -1) for k, v in means.hidden.items()})
    with torch.no_grad():
        run = engine.run(part.corrupted.to(engine.device), part.answer_pos, collect=True, capture_hidden=tuple(hidden_layers))
    return Reference(run.outputs, run.hidden or {})


# Reference outputs a batch-by-batch evaluation keeps between passes (the rest are recomputed).
REFERENCE_CACHE_BYTES = 1 << 30


class BatchReferences:
    """The reference sender outputs patched edges carry, batch by batch, for repeated evaluations.

    Iterating yields ``(part, outputs)``: the dataset's pieces of ``batch_size`` prompts (all at
    once when 0) and each piece's reference outputs [S, b, p, d].  The shared references of
    ``mean``, ``mean-positions`` and ``zero`` (computed once, [S, 1, p, d]) are broadcast to each
    piece (views, no copies); ``corrupted`` outputs
    are each piece's corrupted run, kept for later passes while the kept ones total at most
    ``cache_bytes`` and recomputed otherwise, so memory is bounded by the batch (plus the cache),
    not by the number of prompts.  With ``batch_size`` 0 the single piece is always kept.
    :meth:`piece` and :meth:`items` also give the MLP hidden activations reduced MLPs' dropped neurons carry.
    """

    def __init__(self, engine, dataset: PromptDataset, ablation: str = "corrupted", *, batch_size: int = 0,
                 cache_bytes: int = REFERENCE_CACHE_BYTES, means: Optional[Reference] = None):
        check_ablation(ablation)
        self.engine, self.dataset, self.ablation, self.batch_size = engine, dataset, ablation, batch_size
        self.cache_bytes = cache_bytes
        self._parts = batches(dataset, batch_size)
        self._cache: Dict[int, Tensor] = {}
        self._hidden: Dict[Tuple[int, int], Tensor] = {}  # (piece, MLP layer) -> [b, p, d_mlp]
        self._shared_hidden: Dict[int, Tensor] = {}  # MLP layer -> [1, p, d_mlp] of the shared references
        self._cached_bytes = 0
        self.computed = 0  # reference runs made (recomputations included)
        self.means = means
        if ablation in STATIC and means is None:
            self.means = static_reference(engine, dataset, ablation, batch_size=batch_size)

    def __len__(self) -> int:
        return len(self._parts)

    def outputs(self, i: int) -> Tensor:
        """Piece ``i``'s reference outputs [S, b, p, d] (a broadcast view for the shared references)."""
        return self.piece(i)[0]

    def piece(self, i: int, layers: Sequence[int] = ()) -> Tuple[Tensor, Dict[int, Tensor]]:
        """Piece ``i``'s reference outputs [S, b, p, d] and the hidden activations [b, p, d_mlp] of these MLP layers.

        ``corrupted``: the piece's corrupted run, made once for whatever is not kept (outputs and hidden
        activations share the ``cache_bytes`` budget).  The shared references: broadcast views, their hidden
        activations computed once over the dataset for each new layer.
        """
        part = self._parts[i]
        layers = sorted({int(layer) for layer in layers})
        if self.ablation in STATIC:
            missing = [layer for layer in layers if layer not in self._shared_hidden]
            if missing:
                shared = static_reference(self.engine, self.dataset, self.ablation, hidden_layers=missing,
                                          batch_size=self.batch_size)
                self._shared_hidden.update(shared.hidden)
            return (self.means.outputs.expand(-1, len(part), -1, -1),
                    {layer: self._shared_hidden[layer].expand(len(part), -1, -1) for layer in layers})
        hidden = {layer: self._hidden[(i, layer)] for layer in layers if (i, layer) in self._hidden}
        missing = [layer for layer in layers if layer not in hidden]
        if i in self._cache and not missing:
            return self._cache[i], hidden
        ref = reference(self.engine, part, self.ablation, hidden_layers=missing)
        self.computed += 1
        for layer in missing:
            hidden[layer] = ref.hidden[layer]
            if self._keeps(ref.hidden[layer]):
                self._hidden[(i, layer)] = ref.hidden[layer]
        if i not in self._cache and self._keeps(ref.outputs):
            self._cache[i] = ref.outputs
        return self._cache.get(i, ref.outputs), hidden

    def items(self, layers: Sequence[int] = ()) -> Iterator[Tuple[PromptDataset, Tensor, Dict[int, Tensor]]]:
        """``(part, outputs, hidden)`` for every piece: :meth:`piece` in order (the heap trimmed between pieces)."""
        for i, part in enumerate(self._parts):
            outputs, hidden = self.piece(i, layers)
            yield part, outputs, hidden

    def _keeps(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` fits the cache (always with one piece); counts it when it does."""
        size = tensor.numel() * tensor.element_size()
        if len(self._parts) == 1 or self._cached_bytes + size <= self.cache_bytes:
            self._cached_bytes += size
            return True
        return False

    def __iter__(self) -> Iterator[Tuple[PromptDataset, Tensor]]:
        for part, outputs, _ in self.items():
            yield part, outputs
