"""The greater-than family: the other prompt forms of Hanna, Liu & Variengien (2023), section 5.

Each task is :class:`~circuits.tasks.greater_than.GreaterThan` with another
:class:`~circuits.tasks.greater_than.YearTemplate`: the prompts, sampling, corruption, ``--data``
files and metrics are greater-than's, parameterised by the template's text, centuries,
corrupted start year and direction.  For a ``less`` template the correct continuations lie
below YY and PD and CS are signed so that doing the task is positive:
``PD = sum p(y < YY) - sum p(y >= YY)``, ``CS = p(YY-1) - p(YY+1)``.  The corrupted start year is
``XX01`` for ``greater`` templates and ``XX99`` for ``less`` ones, as in the paper.

Sources: each template's ``source``.  The generalisation script of the paper's code lists the
ten tasks the paper discusses (task numbers below are its); two are not here: the
exact-answer sequence (it scores one exact year, not a range) and the randomly sampled
sequence (five start years per prompt, not one template).
"""
from __future__ import annotations

from circuits.tasks.greater_than import GreaterThan, YearTemplate

PAPER = "Hanna, Liu & Variengien (2023), How does GPT-2 compute greater-than?, section 5 and appendix"
CODE = "the generalisation script of the paper's code"
ITEMS_FILE = "greater_than_items.txt"


class _Form(GreaterThan):
    """A greater-than template other than the main one; the paper's analysis figures are greater-than's only."""

    analysis = None


class Started(_Form):
    name = "greater-than-started"
    description = "'The war started in the year 1732 and ended in the year 17' -> 33..99"
    template = YearTemplate("The {noun} started in the year {xx}{yy:02d} and ended in the year {xx}",
                            centuries=(17,), source=f"{PAPER}; {CODE}, task 0")


class Later(_Form):
    name = "greater-than-later"
    description = "'The war happened in 1732. Some years later, it is now the year 17' -> 33..99"
    template = YearTemplate("The {noun} happened in {xx}{yy:02d}. Some years later, it is now the year {xx}",
                            centuries=(17,), source=f"{PAPER}; {CODE}, task 1")


class Sequence(_Form):
    name = "greater-than-sequence"
    description = "A rising year sequence: '1599, 1607, 1633, 1679, 1732, 17' -> 33..99"
    template = YearTemplate(" 1599, 1607, 1633, 1679, {xx}{yy:02d}, {xx}", centuries=(17,), words=None,
                            source=f"{PAPER}; {CODE}, task 2")


class Smaller(_Form):
    name = "greater-than-smaller"
    description = "'1732 is smaller than 17' -> 33..99"
    template = YearTemplate(" {xx}{yy:02d} is smaller than {xx}", centuries=(17,), words=None,
                            source=f"{PAPER}; {CODE}, task 5")


class Price(_Form):
    name = "greater-than-price"
    description = "'The price of that watch ranges from $ 1732 to $ 17' -> 33..99"
    template = YearTemplate("The price of that {noun} ranges from $ {xx}{yy:02d} to $ {xx}", centuries=(17,),
                            words=ITEMS_FILE, source=f"{PAPER}; {CODE}, task 8; the item list is this project's")


class Ended(_Form):
    name = "less-than-ended"
    description = "Less-than: 'The war ended in the year 1732 and started in the year 17' -> 00..31"
    template = YearTemplate("The {noun} ended in the year {xx}{yy:02d} and started in the year {xx}",
                            direction="less", centuries=(17,), corrupt_yy=99, source=f"{PAPER}; {CODE}, task 6")


class FallingSequence(_Form):
    name = "less-than-sequence"
    description = "Less-than: a falling sequence '1799, 1753, 1733, 1701, 1632, 16' -> 00..31"
    template = YearTemplate(" 1799, 1753, 1733, 1701, {xx}{yy:02d}, {xx}", direction="less", centuries=(16,),
                            corrupt_yy=99, words=None, source=f"{PAPER}; {CODE}, task 3")


class BeforeChrist(_Form):
    name = "less-than-bc"
    description = "Less-than: 'The war lasted from the year 732 BC to the year 7' -> 00..31"
    template = YearTemplate("The {noun} lasted from the year {xx}{yy:02d} BC to the year {xx}", direction="less",
                            centuries=(7,), corrupt_yy=99, source=f"{PAPER}; {CODE}, task 7")


FAMILY = (Started, Later, Sequence, Smaller, Price, Ended, FallingSequence, BeforeChrist)
