"""The prompt dataset every task builds and every method consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class PromptDataset:
    """Clean/corrupted prompt pairs of equal length.

    Attributes:
        clean: int64 tensor [n, seq]: the clean prompts' token ids.
        corrupted: int64 tensor [n, seq]: the corrupted twins (same length, same positions).
        answer_pos: int64 tensor [n] (one scored position per prompt) or [n, k] (k scored positions
            per prompt, e.g. teacher-forced answer tokens already appended to ``clean`` and
            ``corrupted``): the positions whose next-token logits the metric reads.
        metadata: one dict per prompt (task-specific: e.g. the start year).
        task: the task's name.
        ids: int64 tensor [n] naming each prompt (default ``arange(n)``; kept by ``subset``), so a
            metric with per-prompt state (KL against the clean run) finds it in a subset.
    """

    clean: Any
    corrupted: Any
    answer_pos: Any
    metadata: Sequence[Mapping[str, Any]]
    task: str
    info: Mapping[str, Any] = field(default_factory=dict)
    ids: Any = None

    def __post_init__(self) -> None:
        import torch

        if tuple(self.clean.shape) != tuple(self.corrupted.shape):
            raise ValueError(f"clean {tuple(self.clean.shape)} and corrupted {tuple(self.corrupted.shape)} differ in shape")
        if self.clean.ndim != 2 or len(self.answer_pos) != self.clean.shape[0] or len(self.metadata) != self.clean.shape[0]:
            raise ValueError("clean must be [n, seq] with one answer position (or one row of them) and one metadata dict per prompt")
        if self.answer_pos.ndim not in (1, 2):
            raise ValueError(f"answer_pos must be [n] or [n, k] (got shape {tuple(self.answer_pos.shape)})")
        if self.ids is None:
            object.__setattr__(self, "ids", torch.arange(len(self.metadata)))
        elif len(self.ids) != self.clean.shape[0]:
            raise ValueError("ids must name every prompt: [n]")

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def positions(self) -> int:
        """Scored positions per prompt (k; 1 for an ``[n]`` answer_pos)."""
        return 1 if self.answer_pos.ndim == 1 else int(self.answer_pos.shape[1])

    @property
    def first_answer_pos(self):
        """The first scored position of each prompt [n] (the prompt's own last token)."""
        return self.answer_pos if self.answer_pos.ndim == 1 else self.answer_pos[:, 0]

    def subset(self, index) -> "PromptDataset":
        """The prompts at ``index`` (a slice or a list/tensor of indices)."""
        import torch

        if isinstance(index, slice):
            idx = torch.arange(len(self))[index]
        else:
            idx = torch.as_tensor(index, dtype=torch.long)
        return PromptDataset(
            clean=self.clean[idx], corrupted=self.corrupted[idx], answer_pos=self.answer_pos[idx],
            metadata=[self.metadata[int(i)] for i in idx], task=self.task, info=self.info,
            ids=torch.as_tensor(self.ids)[idx],
        )


def repeat_positions(answer_pos, k: int):
    """``answer_pos`` ([b] or [b, q]) for ``k`` copies of a batch stacked along the batch: [k*b] or [k*b, q]."""
    return answer_pos.repeat(k, *([1] * (answer_pos.ndim - 1)))
