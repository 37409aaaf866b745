"""Multiple-choice questions with four options, in MIB's form (Mueller et al., 2025: its MCQA task).

MIB's MCQA asks the color of an object, with the answer given in the question ("copy colors"):
``Question: Bananas are yellow. What color are bananas?``, options A-D, ``Answer:`` -> `` B``
(the full form is in :mod:`circuits.tasks.choices`).

The corrupted twin rotates the options so the right color sits under another letter.  Built in:
40 objects of ``mcqa_colors.txt``; the three wrong options are other colors of ``COLORS``.
Sampling is seeded and balanced: the objects are used once per round, the right letter takes each
of A-D once per four prompts, and the rotation (1, 2 or 3 places) each value once per three.
``--data FILE`` reads ARC-format records (see :mod:`circuits.tasks.choices`).  Prompts, the
single-token letter check, the metric and ``evaluate`` are :class:`~circuits.tasks.choices.MultipleChoice`'s.
"""
from __future__ import annotations

import random
from importlib import resources
from typing import List, Tuple

from circuits.tasks.choices import MultipleChoice, Question

LETTERS = ("A", "B", "C", "D")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray")
QUESTIONS_FILE = "mcqa_colors.txt"


def load_questions() -> List[Tuple[str, str]]:
    """``(question, right color)`` pairs from the package's data file."""
    text = (resources.files("circuits.tasks") / QUESTIONS_FILE).read_text(encoding="utf-8")
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            question, color = (part.strip() for part in line.rsplit("|", 1))
            pairs.append((question, color))
    return pairs


def _rounds(values, rng: random.Random):
    """Each value once per round, in a seeded order, for ever."""
    while True:
        order = list(values)
        rng.shuffle(order)
        yield from order


class MCQA(MultipleChoice):
    """Four-option multiple choice (colors), with the answer moved to another letter as the corruption."""

    name = "mcqa"
    description = "Multiple choice, MIB's form: 'Question: Bananas are yellow. What color ...? A. blue B. yellow ... Answer:' -> ' B'"

    def _sample(self, *, n: int, rng: random.Random) -> List[Question]:
        items, letters, shifts = _rounds(load_questions(), rng), _rounds(range(len(LETTERS)), rng), _rounds((1, 2, 3), rng)
        questions = []
        for i in range(n):
            (question, color), answer, shift = next(items), next(letters), next(shifts)
            texts = rng.sample([c for c in COLORS if c != color], len(LETTERS) - 1)
            texts.insert(answer, color)
            questions.append(Question(f"prompt {i}", question, tuple(texts), LETTERS, answer, shift))
        return questions
