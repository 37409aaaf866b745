"""The metric a discovery scores and selects with: the task's own, or KL divergence from the clean run.

``build_metric(name, task, engine, dataset)`` returns a :data:`circuits.scores.Metric`:

- ``task`` (the default): the task's ``metric``.
- ``kl``: for each prompt, ``sum over its answer positions of KL(P_clean || P_patched)``, the
  divergence of the patched model's next-token distribution from the clean model's (ACDC's
  metric, in nats).  The clean distributions come from one unpatched engine pass over
  ``dataset`` when the metric is built, and are found again by ``PromptDataset.ids``, so the
  metric works on any subset (batches, held-out parts) of that dataset.  It is 0 for the full
  model and grows as the circuit loses behaviour, so edge scores are positive where an edge
  matters; faithfulness ``(m(C) - m(empty)) / (m(N) - m(empty))`` is ``1 - KL(C) / KL(empty)``.
  Its gradient at the clean run is zero: use it with methods that do not rely on that point
  alone (``eap-ig``, ``activation-patching``, ``path-patching``); with ``eap`` every score is 0.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from circuits.ablation import chunks
from circuits.dataset import PromptDataset
from circuits.errors import CircuitsError
from circuits.scores import Metric

METRICS: Tuple[str, ...] = ("task", "kl")

__all__ = ["METRICS", "check_metric", "build_metric", "KLMetric"]


def check_metric(name: str) -> str:
    if name not in METRICS:
        raise CircuitsError(f"--metric must be one of {', '.join(METRICS)} (got {name!r})")
    return name


class KLMetric:
    """``KL(clean || patched)`` per prompt, summed over its answer positions (see the module docstring).

    ``log_clean`` [n, V] or [n, k, V]: the clean run's log-probabilities, row ``i`` for prompt id ``i``
    of the dataset it was built on.
    """

    name = "kl"

    def __init__(self, log_clean: Tensor, ids: Tensor):
        order = torch.as_tensor(ids).long()
        self.log_clean = log_clean
        self.row_of = {int(i): j for j, i in enumerate(order.tolist())}

    @classmethod
    def from_engine(cls, engine, dataset: PromptDataset, *, batch_size: int = 0) -> "KLMetric":
        parts = []
        with torch.no_grad():
            for part in chunks(dataset, batch_size):
                logits = engine.run(part.clean.to(engine.device), part.answer_pos).logits
                parts.append(torch.log_softmax(_float(logits), -1))
        return cls(torch.cat(parts), dataset.ids)

    def __call__(self, logits: Tensor, dataset: PromptDataset) -> Tensor:
        try:
            rows = torch.tensor([self.row_of[int(i)] for i in torch.as_tensor(dataset.ids).tolist()],
                                device=self.log_clean.device)
        except KeyError as exc:
            raise ValueError(f"prompt id {exc.args[0]} is not in the dataset the KL metric was built on") from exc
        ref = self.log_clean[rows].to(logits.device)
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
