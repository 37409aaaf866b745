"""Multiple-choice questions in MIB's prompt form, shared by ``mcqa`` and ``arc``.

    Question: Bananas are yellow. What color are bananas?
    A. blue
    B. yellow
    C. black
    D. red
    Answer:                                          -> `` B``

Corrupted twin: the same question with the options rotated, so the right option sits under another
letter (MIB's answer-position counterfactual): `` B`` in the clean prompt, `` D`` in the corrupted
one.  Rotating keeps every option line, so both prompts have the same tokens in another order and
the same length (checked).  Each letter must be one token after a space (`` A``), as the model
writes it after ``Answer:``; a letter that is not is a one-line error.

Metric: ``logit(right letter) - logit(the corrupted prompt's right letter)``.  ``evaluate``
reports it, ``accuracy`` (the right letter has the highest logit among the options' letters, the
usual multiple-choice score) and ``top1`` (the right letter is the model's top token overall).

``--data FILE``: ARC's records, one JSON object per line: ``question`` (text) with ``choices``
``{"text": [...], "label": [...]}`` and ``answerKey`` (a label, or MIB's index), or AI2's original
layout ``{"question": {"stem", "choices": [{"text", "label"}, ...]}, "answerKey"}``; optional
``shift`` (how far the options rotate in the corrupted twin; default drawn with ``--seed``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from circuits.data.dataset import PromptDataset
from circuits.errors import CircuitsError
from circuits.tasks.contrast import (AnswerContrast, answer_difference, build_pairs, check_n, one_token, pad_id, token_ids,
                                     top1_correct)
from circuits.tasks.greater_than import _read_records, bos_id


@dataclass(frozen=True)
class Question:
    """One question: its text, the options' texts and labels, the right option's index, and how far the
    options rotate in the corrupted twin (1 .. len(options) - 1)."""

    where: str
    question: str
    texts: Tuple[str, ...]
    labels: Tuple[str, ...]
    answer: int
    shift: int

    @property
    def corrupt_answer(self) -> int:
        return (self.answer + self.shift) % len(self.texts)

    def rotated(self) -> Tuple[str, ...]:
        """The options with option ``j`` moved to ``j + shift`` (mod the number of options)."""
        m = len(self.texts)
        out = [""] * m
        for j, text in enumerate(self.texts):
            out[(j + self.shift) % m] = text
        return tuple(out)


def prompt(question: str, texts: Sequence[str], labels: Sequence[str]) -> str:
    lines = [f"Question: {question.strip()}"] + [f"{label}. {text.strip()}" for label, text in zip(labels, texts)]
    return "\n".join(lines) + "\nAnswer:"


class MultipleChoice(AnswerContrast):
    """A multiple-choice task: subclasses give ``name``, ``description`` and ``_sample`` (the built-in questions)."""

    def build(self, tokenizer, *, n: int = 100, seed: int = 0, data: Optional[Path] = None) -> PromptDataset:
        check_n(n)
        rng = random.Random(seed)
        questions = read_questions(Path(data), n=n, rng=rng) if data is not None else self._sample(n=n, rng=rng)
        bos = bos_id(tokenizer)
        rows = []
        for q in questions:
            letters = [one_token(tokenizer, label, q.where, "option label") for label in q.labels]
            if len(set(letters)) != len(letters):
                raise CircuitsError(f"{q.where}: two option labels share a token; use distinct labels")
            c = [bos] + token_ids(tokenizer, prompt(q.question, q.texts, q.labels))
            k = [bos] + token_ids(tokenizer, prompt(q.question, q.rotated(), q.labels))
            meta = {"question": q.question, "options": list(q.texts), "labels": list(q.labels), "label_ids": letters,
                    "answer_index": q.answer, "corrupt_index": q.corrupt_answer,
                    "answer_ids": [letters[q.answer]], "wrong_ids": [letters[q.corrupt_answer]]}
            rows.append((q.where, c, k, 1, meta))
        return build_pairs(rows, task=self.name, pad=pad_id(tokenizer, bos))

    def _sample(self, *, n: int, rng: random.Random) -> List[Question]:
        raise NotImplementedError

    def report(self, logits, dataset: PromptDataset) -> Dict[str, Any]:
        """Per-prompt ``logit_difference``, ``accuracy`` (best among the options' letters) and ``top1``."""
        import torch

        best = [int(torch.argmax(row[m["label_ids"]])) == m["answer_index"] for row, m in zip(logits, dataset.metadata)]
        return {"logit_difference": answer_difference(logits, dataset), "accuracy": torch.tensor(best, dtype=torch.float),
                "top1": top1_correct(logits, dataset)}


def read_questions(path: Path, *, n: int, rng: random.Random) -> List[Question]:
    """ARC-format records (see the module docstring) -> questions, at most ``n``."""
    records = _read_records(path)[:n]
    if not records:
        raise CircuitsError(f"{path} holds no questions")
    return [_question(rec, f"{path}:{i + 1}", rng) for i, rec in enumerate(records)]


def _question(rec: Dict[str, Any], where: str, rng: random.Random) -> Question:
    q, choices = rec.get("question"), rec.get("choices")
    if isinstance(q, dict):  # AI2's original layout
        q, choices = q.get("stem"), q.get("choices")
    if isinstance(choices, list):
        try:
            texts, labels = [str(c["text"]) for c in choices], [str(c["label"]) for c in choices]
        except (KeyError, TypeError) as exc:
            raise CircuitsError(f"{where}: each choice needs 'text' and 'label'") from exc
    elif isinstance(choices, dict) and isinstance(choices.get("text"), list) and isinstance(choices.get("label"), list):
        texts, labels = [str(t) for t in choices["text"]], [str(x).strip() for x in choices["label"]]
    else:
        raise CircuitsError(f"{where}: needs 'question', 'choices' ({{'text': [...], 'label': [...]}}) and 'answerKey', as in ARC")
    if not q or not str(q).strip():
        raise CircuitsError(f"{where}: the question is empty")
    if len(texts) != len(labels) or len(texts) < 2:
        raise CircuitsError(f"{where}: needs at least two choices, each with a text and a label")
    key = rec.get("answerKey")
    if isinstance(key, int) and not isinstance(key, bool):
        answer = key
    elif str(key).strip() in labels:
        answer = labels.index(str(key).strip())
    else:
        raise CircuitsError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
    if not 0 <= answer < len(texts):
        raise CircuitsError(f"{where}: answerKey {key!r} is out of range for {len(texts)} choices")
    shift = rec.get("shift")
    if shift is None:
        shift = rng.randrange(1, len(texts))
    elif not isinstance(shift, int) or not 1 <= shift < len(texts):
        raise CircuitsError(f"{where}: shift must be a whole number from 1 to {len(texts) - 1} (got {shift!r})")
    return Question(where, str(q), tuple(texts), tuple(labels), answer, int(shift))
