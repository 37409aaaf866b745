"""The task contract.  A task is any object with these members (subclassing ``Task`` is optional).

A task turns a tokenizer into a ``PromptDataset`` and scores logits:

- ``name`` and ``description``: shown by ``circuits tasks list``.
- ``build(tokenizer, *, n, seed, data=None) -> PromptDataset``: ``n`` clean/corrupted pairs,
  sampled with ``seed``; ``data`` is an optional file of prompts.
- ``metric(logits, dataset) -> Tensor[n]``: the differentiable metric, read from ``logits``
  [n, vocab] at ``dataset.answer_pos`` [n] (or [n, k, vocab] when ``answer_pos`` is [n, k]:
  several scored positions, e.g. teacher-forced answer tokens).  Methods and faithfulness use it.
- ``evaluate(forward, dataset) -> dict[str, Tensor[n]]`` (optional): the task's reported
  metrics, given ``forward(tokens) -> logits [n, seq, vocab]``.  It may run extra forwards
  (e.g. teacher forcing).  Without it, ``{"metric": metric(...)}`` is reported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

from circuits.data.dataset import PromptDataset

Forward = Callable[[Any], Any]


class Task:
    """Convenience base class; plugins may also be plain objects with the same members."""

    name: str = "unnamed"
    description: str = ""

    def build(self, tokenizer, *, n: int, seed: int, data: Optional[Path] = None) -> PromptDataset:
        raise NotImplementedError

    def metric(self, logits, dataset: PromptDataset):
        raise NotImplementedError

    def evaluate(self, forward: Forward, dataset: PromptDataset) -> Dict[str, Any]:
        return {"metric": self.metric(answer_logits(forward(dataset.clean), dataset), dataset)}


def answer_logits(logits, dataset: PromptDataset):
    """Logits [n, seq, vocab] -> [n, vocab] at each prompt's answer position ([n, k, vocab] for k positions)."""
    import torch

    pos = dataset.answer_pos
    rows = torch.arange(logits.shape[0])
    return logits[rows if pos.ndim == 1 else rows[:, None], pos]


def evaluate(task, forward: Forward, dataset: PromptDataset) -> Dict[str, Any]:
    """The task's reported metrics (its ``evaluate`` if it has one, else its single-position metric)."""
    if hasattr(task, "evaluate"):
        return task.evaluate(forward, dataset)
    return {"metric": task.metric(answer_logits(forward(dataset.clean), dataset), dataset)}
