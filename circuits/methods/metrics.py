"""The metric a discovery scores and selects with: the task's own, or KL divergence from the clean run.

``build_metric(name, task, engine, dataset)`` returns a :data:`circuits.methods.base.Metric`:

- ``task`` (the default): the task's ``metric``.
- ``kl``: for each prompt, ``sum over its answer positions of KL(P_clean || P_patched)``, the
  divergence of the patched model's next-token distribution from the clean model's (ACDC's
  metric, in nats).  The clean distributions come from unpatched engine passes over
  ``dataset``, batch by batch, and are found again by ``PromptDataset.ids``, so the metric
  works on any subset (batches, held-out parts) of that dataset.  They are kept while they
  total at most ``cache_bytes`` (1 GiB; ``[n, V]`` floats: 1,600 GPT-2 prompts take 0.3 GiB);
  beyond that the prompts past the budget are run again when asked (one clean forward per
  batch), so memory stays bounded whatever ``n``.  It is 0 for the full
  model and grows as the circuit loses behaviour, so edge scores are positive where an edge
  matters; faithfulness ``(m(C) - m(empty)) / (m(N) - m(empty))`` is ``1 - KL(C) / KL(empty)``.
  Its gradient at the clean run is zero: use it with methods that do not rely on that point
  alone (``eap-ig``, ``activation-patching``, ``path-patching``); with ``eap`` every score is 0.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor

from circuits.data.batching import batches

from circuits.engine.ablation import REFERENCE_CACHE_BYTES
from circuits.data.dataset import PromptDataset
from circuits.errors import CircuitsError
from circuits.methods.base import Metric

METRICS: Tuple[str, ...] = ("task", "kl")

__all__ = ["METRICS", "check_metric", "build_metric", "KLMetric"]


def check_metric(name: str) -> str:
    if name not in METRICS:
        raise CircuitsError(f"--metric must be one of {', '.join(METRICS)} (got {name!r})")
    return name


class KLMetric:
    """``KL(clean || patched)`` per prompt, summed over its answer positions (see the module docstring).

    ``engine`` and ``dataset``: the clean runs are made on them; prompt ``i`` of the metric's input is
    looked up by its id in ``dataset``.  ``cache_bytes`` bounds the clean log-probabilities kept.
    """

    name = "kl"

    def __init__(self, engine, dataset: PromptDataset, *, batch_size: int = 0, cache_bytes: int = REFERENCE_CACHE_BYTES):
        self.engine, self.dataset, self.cache_bytes = engine, dataset, cache_bytes
        self.row_of = {int(i): j for j, i in enumerate(torch.as_tensor(dataset.ids).long().tolist())}
        self.kept: Dict[int, Tensor] = {}  # prompt id -> clean log-probabilities [V] or [k, V]
        self.kept_bytes = 0
        self.clean_passes = 0
        for part in batches(dataset, batch_size):  # fill the cache up to its budget
            if self.kept_bytes >= cache_bytes:
                break
            self._clean(part)

    @classmethod
    def from_engine(cls, engine, dataset: PromptDataset, *, batch_size: int = 0,
                    cache_bytes: int = REFERENCE_CACHE_BYTES) -> "KLMetric":
        return cls(engine, dataset, batch_size=batch_size, cache_bytes=cache_bytes)

    def _clean(self, part: PromptDataset) -> Tensor:
        """Clean log-probabilities of ``part``'s prompts (one unpatched pass), kept while the budget lasts."""
        with torch.no_grad():
            logits = self.engine.run(part.clean.to(self.engine.device), part.answer_pos).logits
            logp = torch.log_softmax(_float(logits), -1)
        self.clean_passes += 1
        for i, row in zip(torch.as_tensor(part.ids).tolist(), logp):
            size = row.numel() * row.element_size()
            if int(i) not in self.kept and self.kept_bytes + size <= self.cache_bytes:
                self.kept[int(i)] = row
                self.kept_bytes += size
        return logp

    def _reference(self, dataset: PromptDataset) -> Tensor:
        ids = [int(i) for i in torch.as_tensor(dataset.ids).tolist()]
        for i in ids:
            if i not in self.row_of:
                raise ValueError(f"prompt id {i} is not in the dataset the KL metric was built on")
        # prompts past the cache: each run once, even when ``dataset`` repeats them (ACDC's copies)
        missing = sorted({i for i in ids if i not in self.kept})
        fresh = {}
        if missing:
            logp = self._clean(self.dataset.subset([self.row_of[i] for i in missing]))
            fresh = dict(zip(missing, logp))
        return torch.stack([fresh[i] if i in fresh else self.kept[i] for i in ids])

    def __call__(self, logits: Tensor, dataset: PromptDataset) -> Tensor:
        ref = self._reference(dataset).to(logits.device)
        logp = torch.log_softmax(_float(logits), -1)
        if ref.shape != logp.shape:
            raise ValueError(f"KL metric: logits of shape {tuple(logp.shape)}, clean run {tuple(ref.shape)}")
        kl = (ref.exp() * (ref - logp)).sum(-1)
        return kl if kl.ndim == 1 else kl.sum(-1)


def _float(logits: Tensor) -> Tensor:
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def build_metric(name: str, task, engine, dataset: PromptDataset, *, batch_size: int = 0) -> Metric:
    """The metric called ``name`` (one of :data:`METRICS`) for ``task`` on ``dataset``."""
    check_metric(name)
    if name == "task":
        return task.metric
    return KLMetric.from_engine(engine, dataset, batch_size=batch_size)
