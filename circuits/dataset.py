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
        answer_pos: int64 tensor [n]: the position whose next-token logits the metric reads.
        metadata: one dict per prompt (task-specific: e.g. the start year).
        task: the task's name.
    """

    clean: Any
    corrupted: Any
    answer_pos: Any
    metadata: Sequence[Mapping[str, Any]]
    task: str
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if tuple(self.clean.shape) != tuple(self.corrupted.shape):
            raise ValueError(f"clean {tuple(self.clean.shape)} and corrupted {tuple(self.corrupted.shape)} differ in shape")
        if self.clean.ndim != 2 or len(self.answer_pos) != self.clean.shape[0] or len(self.metadata) != self.clean.shape[0]:
            raise ValueError("clean must be [n, seq] with one answer position and one metadata dict per prompt")

    def __len__(self) -> int:
        return int(self.clean.shape[0])

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
        )
