"""ARC (Clark et al., 2018) questions, read from ARC-format files: no dataset ships.

``circuits evaluate arc --data ARC-Easy-Test.jsonl`` reads one question per line, as AI2 and the
Hugging Face copy (``allenai/ai2_arc``) write them (see :mod:`circuits.tasks.choices` for the
fields), and asks them in MIB's multiple-choice form; the corrupted twin rotates the options so the
right one sits under another label.  Questions have three to five options, so prompts are padded on
the right.  Without ``--data`` it is a one-line error.
"""
from __future__ import annotations

import random
from typing import List

from circuits.errors import CircuitsError
from circuits.tasks.choices import MultipleChoice, Question


class ARC(MultipleChoice):
    """ARC-format multiple choice, from a file; the answer moved to another label as the corruption."""

    name = "arc"
    description = "ARC questions from --data FILE (ARC-format JSONL) in MIB's multiple-choice form -> ' B'"

    def _sample(self, *, n: int, rng: random.Random) -> List[Question]:
        raise CircuitsError("arc ships no questions: pass --data FILE, an ARC-format JSONL file "
                            "(question, choices {text, label}, answerKey), e.g. ARC-Easy's test split")
