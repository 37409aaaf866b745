"""Each batch's clean run and reference outputs, for methods that restart patched passes from them.

Path patching restarts every patched pass at the receiver's layer from the clean run's
residual stream and sender outputs.  :class:`CleanRuns` yields, batch by batch, the clean run
(outputs ``[S, b, p, d]`` and residual streams), the reference outputs and the clean metric's
sum.  Batches are kept while they total at most ``cache_bytes`` and recomputed (two forward
passes) when asked again beyond that, so memory follows the batch size, not the prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, Optional

import torch

from circuits.data.batching import batches

from circuits.engine.ablation import REFERENCE_CACHE_BYTES, Reference, reference
from circuits.engine.engine import RestartBuffer


@dataclass(frozen=True)
class CleanBatch:
    part: object  # the batch's PromptDataset
    tokens: torch.Tensor
    clean: object  # RunResult with outputs and resid_pre
    ref: torch.Tensor  # reference outputs [S, b, p, d]
    base: float  # sum of the clean metric over the batch
    buffer: RestartBuffer  # the patched passes' difference buffer (its clean rows are filled once)


def _nbytes(batch: CleanBatch) -> int:
    tensors = [batch.clean.outputs, batch.ref, *batch.clean.resid_pre]
    return sum(t.numel() * t.element_size() for t in tensors) + batch.buffer.nbytes


class CleanRuns:
    """Iterate ``CleanBatch`` for every piece of ``batch_size`` prompts; ``passes`` counts the forward passes made."""

    def __init__(self, engine, dataset, metric, ablation: str, *, batch_size: int = 0, means: Optional[Reference] = None,
                 cache_bytes: int = REFERENCE_CACHE_BYTES):
        self.engine, self.metric, self.ablation, self.means = engine, metric, ablation, means
        self.parts = batches(dataset, batch_size)
        self.cache_bytes = cache_bytes
        self._cache: Dict[int, CleanBatch] = {}
        self._bytes = 0
        self.passes = 0
        self.sum_dtype = torch.promote_types(engine.w.W_E.dtype, torch.float32)  # metric sums: float32 at least

    def __len__(self) -> int:
        return len(self.parts)

    def batch(self, i: int) -> CleanBatch:
        if i in self._cache:
            return self._cache[i]
        part, engine = self.parts[i], self.engine
        tokens = part.clean.to(engine.device)
        with torch.no_grad():
            clean = engine.run(tokens, part.answer_pos, collect=True, keep_resid=True)
            ref = reference(engine, part, self.ablation, means=self.means).outputs
        self.passes += 2
        out = CleanBatch(part, tokens, clean, ref, float(self.metric(clean.logits, part).sum(dtype=self.sum_dtype)),
                         RestartBuffer(engine.graph, clean.outputs, ref))
        size = _nbytes(out)
        if len(self.parts) == 1 or self._bytes + size <= self.cache_bytes:
            self._cache[i] = out
            self._bytes += size
        return out

    def __iter__(self) -> Iterator[CleanBatch]:
        for i, _ in enumerate(self.parts):
            yield self.batch(i)
