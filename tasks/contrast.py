"""What the answer-contrast tasks share (``arithmetic``, ``mcqa``, ``arc``, ``facts``).

Each prompt has a right answer and its corrupted twin another one, each as one token per scored
position: ``metadata[i]["answer_ids"]`` and ``metadata[i]["wrong_ids"]`` (lists of k ids).  The
metric is the logit difference summed over the k positions:

    m = sum_j logit_j(answer_j) - logit_j(wrong_j)

and ``accuracy`` is 1 where the model's top token is the right one at every position (with the
right tokens teacher-forced before each, this is greedy decoding of the whole answer).

Prompts may differ in length: each starts at position 0 (after the BOS token), its teacher-forced
tokens follow it, and the batch is padded on the right; ``answer_pos`` names each prompt's own
positions, so with a causal model the padding never reaches a scored position.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from circuits.data.dataset import PromptDataset
from circuits.errors import CircuitsError


def token_ids(tokenizer, text: str) -> List[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def one_token(tokenizer, word: str, where: str, what: str = "answer") -> int:
    """The id of `` word`` (a space, then the word) when it is a single token; else a one-line error."""
    ids = token_ids(tokenizer, " " + word)
    if len(ids) != 1:
        raise CircuitsError(f"{where}: the {what} {word!r} is {len(ids)} tokens after a space with this tokenizer; "
                            f"use a one-token {what}")
    return ids[0]


def pad_id(tokenizer, bos: int) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos


def build_pairs(rows: Sequence[Tuple[str, List[int], List[int], int, Dict[str, Any]]], *, task: str, pad: int,
                info: Dict[str, Any] | None = None) -> PromptDataset:
    """Rows ``(where, clean ids, corrupted ids, k, metadata)``, each sequence ending with the prompt's last
    token followed by its ``k - 1`` teacher-forced tokens -> the padded dataset, ``answer_pos`` [n] (k = 1)
    or [n, k] (the last k positions of each sequence)."""
    import torch

    if not rows:
        raise CircuitsError(f"{task}: no prompts")
    ks = {k for _, _, _, k, _ in rows}
    if len(ks) != 1:
        raise CircuitsError(f"{task}: every answer must have the same number of tokens (got {sorted(ks)}); "
                            "use answers of one length")
    k = ks.pop()
    clean, corrupted, meta, positions = [], [], [], []
    for where, c, w, _, m in rows:
        if len(c) != len(w):
            raise CircuitsError(f"{where}: the clean and corrupted prompts tokenize to different lengths "
                                f"({len(c)} and {len(w)} tokens); make them the same length")
        clean.append(c)
        corrupted.append(w)
        meta.append(m)
        positions.append(list(range(len(c) - k, len(c))))
    seq = max(len(c) for c in clean)
    clean = [c + [pad] * (seq - len(c)) for c in clean]
    corrupted = [w + [pad] * (seq - len(w)) for w in corrupted]
    answer_pos = torch.tensor(positions if k > 1 else [p[0] for p in positions], dtype=torch.long)
    return PromptDataset(
        clean=torch.tensor(clean, dtype=torch.long), corrupted=torch.tensor(corrupted, dtype=torch.long),
        answer_pos=answer_pos, metadata=meta, task=task,
        info={"pad": pad, "padded": len({p[-1] for p in positions}) > 1, **(info or {})},
    )


def _ids(dataset: PromptDataset, key: str, device):
    import torch

    return torch.tensor([m[key] for m in dataset.metadata], dtype=torch.long, device=device)  # [n, k]


def answer_difference(logits, dataset: PromptDataset):
    """``sum_j logit_j(answer_j) - logit_j(wrong_j)`` from answer-position logits [n, vocab] or
    [n, k, vocab]: [n], differentiable."""
    if logits.ndim == 2:
        logits = logits[:, None]
    right = logits.gather(2, _ids(dataset, "answer_ids", logits.device)[:, :, None])[..., 0]
    wrong = logits.gather(2, _ids(dataset, "wrong_ids", logits.device)[:, :, None])[..., 0]
    return (right - wrong).float().sum(-1)


def top1_correct(logits, dataset: PromptDataset):
    """1 where the top token is the right one at every answer position: [n]."""
    if logits.ndim == 2:
        logits = logits[:, None]
    return (logits.argmax(-1) == _ids(dataset, "answer_ids", logits.device)).all(-1).float()


class AnswerContrast:
    """``metric``: the logit difference (right answer vs the corrupted twin's); ``evaluate``: it and ``accuracy``."""

    name = "unnamed"

    def metric(self, logits, dataset: PromptDataset):
        """Logits at the answer positions ([n, vocab] or [n, k, vocab]) -> [n], differentiable."""
        return answer_difference(logits, dataset)

    def evaluate(self, forward, dataset: PromptDataset) -> Dict[str, Any]:
        """The per-prompt metrics of :meth:`report`, from one forward of the clean prompts."""
        import torch

        from circuits.data.task import answer_logits

        with torch.no_grad():
            logits = answer_logits(forward(dataset.clean), dataset).float()
        return self.report(logits, dataset)

    def report(self, logits, dataset: PromptDataset) -> Dict[str, Any]:
        """``logit_difference`` and ``accuracy`` (1 where the model's top token is the answer): [n] each."""
        return {"logit_difference": answer_difference(logits, dataset), "accuracy": top1_correct(logits, dataset)}


def check_n(n: int) -> None:
    if n < 1:
        raise CircuitsError(f"--n must be at least 1 (got {n})")
