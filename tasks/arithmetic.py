"""Two-operand addition and subtraction in MIB's prompt form (Mueller et al., 2025, the arithmetic task).

Clean prompt:    ``<bos>37+25=``  (-> ``62``)        ``<bos>81-46=``  (-> ``35``)
Corrupted twin:  the same operator with other operands whose answer differs in every digit
                 (``<bos>14+15=`` -> ``29``): MIB's random counterfactual.

MIB writes the equation with no spaces and reads the answer as the next token, without a leading
space (``str(label)``); its models (Llama-3) have a token for every number below 1000.  Here the
operands have two digits and so do the answers (addition 20..99, subtraction 10..89), so an answer
has one length whatever the tokenizer:

- **Number tokens** (GPT-2: every number below 100 is one token): ``answer_pos`` is ``[n]``, the
  ``=``, and the metric is ``logit(answer) - logit(corrupted answer)``.
- **Digit tokens** (SmolLM2 writes one token per digit): the answer's tens digit is teacher-forced
  (appended to the clean and the corrupted prompt), ``answer_pos`` is ``[n, 2]`` (the ``=``, which
  predicts the tens digit, and the forced tens digit, which predicts the units digit), and the
  metric sums the two digits' logit differences.  The corrupted answer differs in both digits, so
  each position compares two different digits.

``accuracy`` is 1 where the model's top token is the right one at every position: with the right
tens digit forced, exactly when greedy decoding writes the whole answer.

Sampling is seeded and balanced: ``+`` and ``-`` alternate, and each operator's answers are used
once per round in a seeded order; the operands are drawn uniformly among those giving the answer.
``--data FILE``: MIB's records (``prompt``, ``label`` and ``random_counterfactual`` with its own
``prompt`` and ``label``), or ``clean`` with optional ``label``, ``corrupted`` and ``corrupted_label``.
A prompt that ends with ``A+B=`` or ``A-B=`` needs no label; a record without a corrupted prompt
must be exactly ``A+B=`` or ``A-B=``, and its twin is drawn as above.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from circuits.data.dataset import PromptDataset
from circuits.errors import CircuitsError
from circuits.tasks.contrast import AnswerContrast, build_pairs, check_n, pad_id, token_ids
from circuits.tasks.greater_than import _read_records, bos_id

OPERATORS = ("+", "-")
FORM = "{a}{op}{b}="
ANSWERS = {"+": tuple(range(20, 100)), "-": tuple(range(10, 90))}
EQUATION = re.compile(r"(\d+)\s*([+-])\s*(\d+)\s*=\s*$")  # at the end of a prompt


def compute(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def operands(op: str, answer: int) -> List[Tuple[int, int]]:
    """The two-digit operand pairs ``(a, b)`` with ``a op b == answer``."""
    if op == "+":
        return [(a, answer - a) for a in range(10, 100) if 10 <= answer - a <= 99]
    return [(answer + b, b) for b in range(10, 100) if 10 <= answer + b <= 99]


def differs_everywhere(x: int, y: int) -> bool:
    """Same number of digits, and no digit in the same place."""
    sx, sy = str(x), str(y)
    return len(sx) == len(sy) and all(p != q for p, q in zip(sx, sy))


class Numbers:
    """How the tokenizer writes an answer: ``token`` (one token per number below 100) or ``digits``."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        whole = [token_ids(tokenizer, str(v)) for v in range(100)]
        digits = [token_ids(tokenizer, str(d)) for d in range(10)]
        if all(len(ids) == 1 for ids in whole):
            self.mode = "token"
        elif all(len(ids) == 1 for ids in digits) and all(whole[v] == [digits[int(c)][0] for c in str(v)] for v in range(100)):
            self.mode = "digits"
        else:
            raise CircuitsError("arithmetic needs a tokenizer that writes each number below 100 as one token or as one token per digit; this one does neither")

    def ids(self, value: int, where: str) -> List[int]:
        """The answer's tokens: one token (``token`` mode, checked) or one per digit."""
        ids = token_ids(self.tokenizer, str(value))
        if self.mode == "token" and len(ids) != 1:
            raise CircuitsError(f"{where}: the answer {value} is {len(ids)} tokens with this tokenizer; use answers that are one token")
        if self.mode == "digits" and len(ids) != len(str(value)):
            raise CircuitsError(f"{where}: the answer {value} does not split into one token per digit with this tokenizer")
        return ids


class Arithmetic(AnswerContrast):
    """Addition and subtraction of two-digit numbers, with a random-operands corruption."""

    name = "arithmetic"
    description = "Addition and subtraction in MIB's form: '37+25=' -> '62' (logit answer - corrupted answer)"

    def build(self, tokenizer, *, n: int = 100, seed: int = 0, data: Optional[Path] = None) -> PromptDataset:
        check_n(n)
        numbers = Numbers(tokenizer)
        rng = random.Random(seed)
        items = self._read(Path(data), n=n, rng=rng) if data is not None else self._sample(n=n, rng=rng)
        bos = bos_id(tokenizer)
        rows = []
        for where, clean, answer, corrupt, wrong, meta in items:
            right_ids, wrong_ids = numbers.ids(answer, where), numbers.ids(wrong, where)
            if len(right_ids) != len(wrong_ids):
                raise CircuitsError(f"{where}: the answer {answer} and the corrupted answer {wrong} differ in length "
                                    "with this tokenizer; use answers with the same number of digits")
            forced = right_ids[:-1]  # teacher forcing: every answer token but the last follows the prompt
            c = [bos] + token_ids(tokenizer, clean) + forced
            k = [bos] + token_ids(tokenizer, corrupt) + forced
            meta = {**meta, "answer": answer, "wrong": wrong, "answer_ids": right_ids, "wrong_ids": wrong_ids}
            rows.append((where, c, k, len(right_ids), meta))
        return build_pairs(rows, task=self.name, pad=pad_id(tokenizer, bos), info={"mode": numbers.mode})

    @staticmethod
    def _sample(*, n: int, rng: random.Random):
        rounds: Dict[str, List[int]] = {op: [] for op in OPERATORS}
        items = []
        for i in range(n):
            op = OPERATORS[i % 2]
            if not rounds[op]:  # balanced: every answer once per round, in a seeded order
                rounds[op] = list(ANSWERS[op])
                rng.shuffle(rounds[op])
            answer = rounds[op].pop()
            wrong = rng.choice([w for w in ANSWERS[op] if differs_everywhere(answer, w)])
            (a, b), (a2, b2) = rng.choice(operands(op, answer)), rng.choice(operands(op, wrong))
            meta = {"a": a, "b": b, "op": op, "corrupted_a": a2, "corrupted_b": b2}
            items.append((f"prompt {i}", FORM.format(a=a, op=op, b=b), answer, FORM.format(a=a2, op=op, b=b2), wrong, meta))
        return items

    @staticmethod
    def _read(path: Path, *, n: int, rng: random.Random):
        records = _read_records(path)[:n]
        if not records:
            raise CircuitsError(f"{path} holds no prompts")
        items = []
        for i, rec in enumerate(records):
            where = f"{path}:{i + 1}"
            clean = str(rec.get("clean") or rec.get("prompt") or "").strip()
            if not clean:
                raise CircuitsError(f"{where}: needs 'clean' (or MIB's 'prompt'): the equation up to '='")
            answer = _label(rec.get("label"), clean, where)
            counter = rec.get("random_counterfactual") if isinstance(rec.get("random_counterfactual"), dict) else {}
            corrupt = str(rec.get("corrupted") or counter.get("prompt") or "").strip()
            meta: Dict[str, Any] = {}
            if corrupt:
                wrong = _label(rec.get("corrupted_label", counter.get("label")), corrupt, where)
            else:
                parsed = EQUATION.fullmatch(clean)
                if not parsed:
                    raise CircuitsError(f"{where}: without a 'corrupted' prompt the prompt must read A+B= or A-B= (got {clean!r})")
                op = parsed[2]
                pool = [w for w in ANSWERS[op] if differs_everywhere(answer, w)]
                if not pool:
                    raise CircuitsError(f"{where}: no two-digit corrupted answer differs from {answer} in every digit; give a 'corrupted' prompt")
                wrong = rng.choice(pool)
                a2, b2 = rng.choice(operands(op, wrong))
                corrupt = FORM.format(a=a2, op=op, b=b2)
            if wrong == answer:
                raise CircuitsError(f"{where}: the corrupted prompt has the same answer ({answer}); pick other operands")
            items.append((where, clean, answer, corrupt, wrong, meta))
        return items


def _label(value: Any, prompt: str, where: str) -> int:
    """The record's label, or the value of an ``A+B=`` / ``A-B=`` prompt; a negative answer is refused."""
    if value is not None and str(value).strip() != "":
        try:
            label = int(str(value).strip())
        except ValueError as exc:
            raise CircuitsError(f"{where}: the label {value!r} is not a whole number") from exc
    else:
        parsed = EQUATION.search(prompt)
        if not parsed:
            raise CircuitsError(f"{where}: needs a 'label', or a prompt that ends with A+B= or A-B= (got {prompt!r})")
        label = compute(int(parsed[1]), parsed[2], int(parsed[3]))
    if label < 0:
        raise CircuitsError(f"{where}: the answer {label} is negative; arithmetic scores answers of 0 and above")
    return label
