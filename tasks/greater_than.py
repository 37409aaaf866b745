"""Greater-than (Hanna, Liu & Variengien, NeurIPS 2023).

Clean prompt:      ``<|endoftext|>The {noun} lasted from the year {XX}{YY} to the year {XX}``
Corrupted twin:    the same with the start year ``{XX}01``.

Centuries XX = 11..17 and YY = 02..98.  A year counts only if `` XXYY`` tokenizes as
exactly `` XX`` followed by ``YY``; the first and last such year of each century are
dropped.  Positions and answer tokens are derived from the tokenizer, never hard-coded.

Year probabilities p(YY') of the 100 two-digit continuations ``00``..``99``: with a tokenizer
that has two-digit tokens (GPT-2) they are read at the answer position; with a digit-splitting
tokenizer (SmolLM2) they are ``P(tens) x P(units | tens)``, teacher-forced.

**Two-digit tokens.**  ``answer_pos`` is ``[n]`` (the prompt's last token) and
``PD = sum p(y > YY) - sum p(y <= YY)``, ``CS = p(YY+1) - p(YY-1)``.

**Digit tokens.**  The prompts carry one teacher-forced token: the true tens digit ``t`` of YY is
appended to the clean *and* the corrupted prompt, and ``answer_pos`` is ``[n, 2]``: the prompt's
last token (which predicts the tens digit) and ``t`` (which predicts the units digit).  The
metric is the exact two-digit PD, differentiable:

    PD = sum_{d != t} sign(d - t) P(d) + P(t) [sum_{u > u0} P(u | t) - sum_{u <= u0} P(u | t)]

with ``u0`` YY's units digit: a year in another decade is decided by its tens digit alone.
``evaluate`` reports the same PD (so ``discover``'s m(N) is ``evaluate``'s PD), and
``CS = p(YY+1) - p(YY-1)`` with ``p(y) = P(tens) x P(units | tens)`` (teacher-forced for every
tens digit, since YY +- 1 may lie in the next or the previous decade).

The prompt form is a :class:`YearTemplate` (class attribute ``template``): its text, its
centuries, the corrupted start year and its direction.  ``direction="less"`` flips the sign of
PD and CS (the correct years are those below YY), so the model's expected behaviour is positive
for every template.  ``circuits.tasks.greater_than_family`` holds the paper's other templates.
"""
from __future__ import annotations

import csv
import io
import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from circuits.data.dataset import PromptDataset
from circuits.errors import CircuitsError

CENTURIES = tuple(range(11, 18))
YEARS = tuple(range(2, 99))
TEMPLATE = "The {noun} lasted from the year {xx}{yy:02d} to the year {xx}"
NOUNS_FILE = "greater_than_nouns.txt"
DIRECTIONS = ("greater", "less")


@dataclass(frozen=True)
class YearTemplate:
    """One prompt form: ``text`` with ``{noun}``, ``{xx}{yy:02d}`` (the start year) and ``{xx}`` after it.

    ``direction``: ``greater`` (the correct continuations are above YY) or ``less`` (below YY).
    ``corrupt_yy``: the start year's YY in the corrupted twin.  ``words``: the file of fillers for
    ``{noun}`` (None: the text has no noun).  ``source``: where the template comes from.
    """

    text: str = TEMPLATE
    direction: str = "greater"
    centuries: Tuple[int, ...] = CENTURIES
    corrupt_yy: int = 1
    words: Optional[str] = NOUNS_FILE
    source: str = "Hanna, Liu & Variengien (2023), the task they study"

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS or "{xx}{yy:02d}" not in self.text:
            raise ValueError(f"bad year template {self.text!r} ({self.direction})")

    def prompt(self, noun: str, xx: int, yy: int) -> str:
        return self.text.format(noun=noun, xx=xx, yy=yy)

    def regex(self) -> "re.Pattern[str]":
        """Parses a prompt written with this template (leading spaces optional)."""
        out, seen_year = [], False
        for part in re.split(r"(\{noun\}|\{xx\}\{yy:02d\}|\{xx\})", self.text.lstrip()):
            if part == "{noun}":
                out.append(r"(?P<noun>.+?)")
            elif part == "{xx}{yy:02d}":
                out.append(r"(?P<xx>\d{1,2})(?P<yy>\d\d)")
                seen_year = True
            elif part == "{xx}":
                out.append(r"(?P=xx)" if seen_year else r"(?P<xx>\d{1,2})")
            else:
                out.append(re.escape(part))
        return re.compile(r"\s*" + "".join(out) + r"\s*$")


def load_nouns(words: str = NOUNS_FILE) -> List[str]:
    text = (resources.files("circuits.tasks") / words).read_text(encoding="utf-8")
    words = [w for line in text.splitlines() if not line.startswith("#") for w in line.split()]
    return list(dict.fromkeys(words))


def _ids(tokenizer, text: str) -> List[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def bos_id(tokenizer) -> int:
    """The id standing in for GPT-2's ``<|endoftext|>`` at the start of each prompt."""
    for tok_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tok_id is not None:
            return int(tok_id)
    raise CircuitsError("the tokenizer has neither a BOS nor an EOS token to start greater-than prompts with")


class Vocabulary:
    """How a tokenizer writes two-digit years: one token per ``YY``, or one per digit."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        two_digit = [_ids(tokenizer, f"{y:02d}") for y in range(100)]
        if all(len(ids) == 1 for ids in two_digit):
            self.mode = "token"
            self.year_ids = [ids[0] for ids in two_digit]
            self.digit_ids: List[int] = []
        else:
            digits = [_ids(tokenizer, str(d)) for d in range(10)]
            if not all(len(ids) == 1 for ids in digits) or any(two_digit[y] != digits[y // 10] + digits[y % 10] for y in range(100)):
                raise CircuitsError("this tokenizer writes two-digit years neither as one token nor as two digit tokens; greater-than needs one of the two")
            self.mode = "digits"
            self.digit_ids = [ids[0] for ids in digits]
            self.year_ids = []

    def valid(self, xx: int, yy: int) -> bool:
        """`` XXYY`` must tokenize as exactly `` XX`` then ``YY``."""
        return _ids(self.tokenizer, f" {xx}{yy:02d}") == _ids(self.tokenizer, f" {xx}") + _ids(self.tokenizer, f"{yy:02d}")

    def valid_years(self, centuries: Tuple[int, ...] = CENTURIES) -> Dict[int, List[int]]:
        """Century -> valid YY values, with the first and last valid year of each century dropped."""
        result = {}
        for xx in centuries:
            ok = [yy for yy in YEARS if self.valid(xx, yy)]
            if len(ok) > 2:
                result[xx] = ok[1:-1]
        if not result:
            raise CircuitsError(f"no year in {centuries[0]}xx..{centuries[-1]}xx splits into ' XX' + 'YY' with this tokenizer")
        return result


def _read_records(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        raise CircuitsError(f"prompt file not found: {path}; pass a .csv or .jsonl file")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise CircuitsError(f"unsupported prompt file {path.name}: use .csv or .jsonl")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's byte-order mark is not part of the header
    except UnicodeDecodeError as exc:
        raise CircuitsError(f"{path} is not UTF-8 text") from exc
    if suffix == ".jsonl":
        records = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CircuitsError(f"{path} is not valid JSONL (line {i}): one JSON object per line") from exc
            if not isinstance(rec, dict):
                raise CircuitsError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
            records.append(rec)
        return records
    try:
        return list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise CircuitsError(f"{path} is not a valid CSV file: {exc}") from exc


def _parse_record(rec: Dict[str, Any], where: str, template: YearTemplate = YearTemplate()) -> tuple[str, int, int]:
    """A record gives either ``clean`` (the prompt text) or ``noun``, ``century``/``XX`` and ``year``/``YY``."""
    text = rec.get("clean") or rec.get("prompt") or rec.get("text")
    if text:
        m = template.regex().search(str(text).replace("<|endoftext|>", ""))
        if not m:
            raise CircuitsError(f"{where}: prompt does not follow the template '{template.text.strip()}': {text!r}")
        noun, xx, yy = m.groupdict().get("noun") or "", int(m["xx"]), int(m["yy"])
    else:
        try:
            noun = str(rec["noun"]).strip() if template.words else ""
            if "year" in rec and len(str(rec["year"]).strip()) == 4:
                year = str(rec["year"]).strip()
                xx, yy = int(year[:2]), int(year[2:])
            else:
                xx, yy = int(rec.get("century", rec.get("XX"))), int(rec.get("yy", rec.get("YY")))
        except (KeyError, TypeError, ValueError) as exc:
            raise CircuitsError(f"{where}: needs a 'clean' prompt or 'noun', 'century' and 'yy' fields") from exc
    if (template.words and not noun) or not 1 <= xx <= 99 or yy not in YEARS:
        raise CircuitsError(f"{where}: year {xx}{yy:02d} is out of range: the century must have two digits and YY be in {YEARS[0]:02d}..{YEARS[-1]}")
    return noun, xx, yy


class GreaterThan:
    """The greater-than task of Hanna et al. (2023)."""

    name = "greater-than"
    description = "Years after the start year: 'The war lasted from the year 1732 to the year 17' -> 33..99"
    template = YearTemplate()
    analysis = "circuits.tasks.greater_than_analysis.command:GREATER_THAN"  # `circuits analyze greater-than`

    # ------------------------------------------------------------------ prompts
    def build(self, tokenizer, *, n: int = 100, seed: int = 0, data: Optional[Path] = None) -> PromptDataset:
        import torch

        if n < 1:
            raise CircuitsError(f"--n must be at least 1 (got {n})")
        vocab = Vocabulary(tokenizer)
        if data is not None:
            triples = [_parse_record(r, f"{data}:{i + 1}", self.template) for i, r in enumerate(_read_records(Path(data)))][:n]
            if not triples:
                raise CircuitsError(f"{data} holds no prompts")
        else:
            triples = self._sample(tokenizer, vocab, n=n, seed=seed)
        bos = bos_id(tokenizer)
        clean, corrupted, meta = [], [], []
        tpl, bad = self.template, self.template.corrupt_yy
        for noun, xx, yy in triples:
            if not vocab.valid(xx, yy) or not vocab.valid(xx, bad):
                year = f"{xx}{yy:02d}" if not vocab.valid(xx, yy) else f"{xx}{bad:02d} (the corrupted start year)"
                raise CircuitsError(f"year {year} does not split into ' {xx}' + its last two digits with this tokenizer; pick another year")
            c = [bos] + _ids(tokenizer, tpl.prompt(noun, xx, yy))
            k = [bos] + _ids(tokenizer, tpl.prompt(noun, xx, bad))
            clean.append(c)
            corrupted.append(k)
            meta.append({"noun": noun, "century": xx, "yy": yy, "year": xx * 100 + yy})
        lengths = {len(c) for c in clean} | {len(k) for k in corrupted}
        if len(lengths) != 1:
            raise CircuitsError(f"greater-than prompts tokenize to different lengths {sorted(lengths)}; use nouns that are one token each")
        seq = len(clean[0])
        info = {"mode": vocab.mode, "year_ids": vocab.year_ids, "digit_ids": vocab.digit_ids,
                "yy_pos": self._yy_pos(tokenizer, triples[0], bos), "direction": tpl.direction,
                "prompt_len": seq}
        if vocab.mode == "token":
            answer_pos = torch.full((len(clean),), seq - 1, dtype=torch.long)
        else:  # teacher-force the true tens digit: positions seq - 1 (tens) and seq (units | tens)
            for c, k, m in zip(clean, corrupted, meta):
                forced = vocab.digit_ids[m["yy"] // 10]
                c.append(forced)
                k.append(forced)
            answer_pos = torch.tensor([[seq - 1, seq]] * len(clean), dtype=torch.long)
        return PromptDataset(
            clean=torch.tensor(clean, dtype=torch.long), corrupted=torch.tensor(corrupted, dtype=torch.long),
            answer_pos=answer_pos, metadata=meta, task=self.name, info=info,
        )

    def _yy_pos(self, tokenizer, triple, bos: int) -> int:
        """Position of the (first) YY token, found by tokenizing the prompt up to the start year."""
        noun, xx, yy = triple
        prefix = self.template.text.split("{yy:02d}")[0].format(noun=noun, xx=xx)
        return 1 + len(_ids(tokenizer, prefix))

    def _sample(self, tokenizer, vocab: Vocabulary, *, n: int, seed: int) -> List[tuple[str, int, int]]:
        words = self.template.words
        nouns = [w for w in load_nouns(words) if len(_ids(tokenizer, " " + w)) == 1] if words else [""]
        if not nouns:  # the tokenizer splits every noun: keep the nouns whose length is the most common one
            by_len: Dict[int, List[str]] = {}
            for w in load_nouns(words):
                by_len.setdefault(len(_ids(tokenizer, " " + w)), []).append(w)
            nouns = max(by_len.values(), key=len)
        years = vocab.valid_years(self.template.centuries)
        by_yy: Dict[int, List[int]] = {}
        for xx, yys in years.items():
            for yy in yys:
                by_yy.setdefault(yy, []).append(xx)
        rng = random.Random(seed)
        yy_values = sorted(by_yy)
        triples = []
        order: List[int] = []
        while len(triples) < n:  # balanced over YY: every YY once per round, in a seeded order
            if not order:
                order = yy_values[:]
                rng.shuffle(order)
            yy = order.pop()
            triples.append((rng.choice(nouns), rng.choice(by_yy[yy]), yy))
        return triples

    # ------------------------------------------------------------------ metrics
    def metric(self, logits, dataset: PromptDataset):
        """PD from the logits at the answer positions (differentiable): [n, vocab] with two-digit
        tokens, [n, 2, vocab] (tens, then units given the forced tens digit) with digit tokens."""
        import torch

        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        yy = torch.tensor([m["yy"] for m in dataset.metadata], device=logits.device)
        direction = self.template.direction
        if dataset.info["mode"] == "token":
            probs = torch.softmax(logits, dim=-1)
            return probability_difference(probs[:, dataset.info["year_ids"]], yy, direction)
        if logits.ndim != 3 or logits.shape[1] != 2:
            raise ValueError("greater-than with digit tokens scores two positions (tens, units | tens): "
                             f"expected logits [n, 2, vocab], got {tuple(logits.shape)}")
        digits = dataset.info["digit_ids"]
        p = torch.softmax(logits, dim=-1)[:, :, digits]  # [n, 2, 10]
        return digit_probability_difference(p[:, 0], p[:, 1], yy, direction)

    @staticmethod
    def prompts(dataset: PromptDataset):
        """The clean prompts without teacher-forced tokens: [n, prompt_len] (everything up to the
        first answer position)."""
        return dataset.clean[:, : int(dataset.first_answer_pos.max()) + 1]

    def digit_probabilities(self, forward, dataset: PromptDataset, *, batch_size: int = 64):
        """Digit tokens: ``(P(tens) [n, 10], P(units | tens) [n, 10, 10])``, teacher-forced, no gradient."""
        import torch

        tens, units = [], []
        digits = torch.tensor(dataset.info["digit_ids"])
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                prompts = self.prompts(dataset.subset(slice(start, start + batch_size)))
                b = prompts.shape[0]
                tens.append(torch.softmax(forward(prompts)[:, -1].float(), -1)[:, digits])
                # teacher forcing: append each tens digit, read the units digit's distribution
                forced = torch.cat([prompts.repeat_interleave(10, 0), digits.repeat(b)[:, None]], dim=1)
                units.append(torch.softmax(forward(forced)[:, -1].float(), -1)[:, digits].view(b, 10, 10))
        return torch.cat(tens), torch.cat(units)

    def year_table(self, forward, dataset: PromptDataset, *, batch_size: int = 64):
        """``(p(YY') [n, 100], PD [n], CS [n])`` in the reported form (see the module docstring)."""
        import torch

        yy = torch.tensor([m["yy"] for m in dataset.metadata])
        direction = self.template.direction
        if dataset.info["mode"] == "token":
            out = []
            with torch.no_grad():
                for start in range(0, len(dataset), batch_size):
                    prompts = self.prompts(dataset.subset(slice(start, start + batch_size)))
                    out.append(torch.softmax(forward(prompts)[:, -1].float(), -1)[:, dataset.info["year_ids"]])
            p = torch.cat(out)
            return p, probability_difference(p, yy, direction), cutoff_sharpness(p, yy, direction)
        p_tens, p_units = self.digit_probabilities(forward, dataset, batch_size=batch_size)
        p = (p_tens[:, :, None] * p_units).reshape(len(dataset), 100)
        own = p_units[torch.arange(len(dataset)), yy // 10]
        return p, digit_probability_difference(p_tens, own, yy, direction), cutoff_sharpness(p, yy, direction)

    def year_probabilities(self, forward, dataset: PromptDataset, *, batch_size: int = 64):
        """p(YY') for the 100 two-digit continuations: [n, 100], no gradient."""
        return self.year_table(forward, dataset, batch_size=batch_size)[0]

    def evaluate(self, forward, dataset: PromptDataset) -> Dict[str, Any]:
        """Per-prompt ``probability_difference`` and ``cutoff_sharpness`` (reported form)."""
        _, pd, cs = self.year_table(forward, dataset)
        return {"probability_difference": pd, "cutoff_sharpness": cs}


def digit_probability_difference(p_tens, p_units, yy, direction: str = "greater"):
    """The exact two-digit PD from digit probabilities: ``p_tens`` [n, 10] = P(d), ``p_units``
    [n, 10] = P(u | t) after the true tens digit t, yy [n]:
    ``sum_{d != t} sign(d - t) P(d) + P(t) (sum_{u > u0} P(u | t) - sum_{u <= u0} P(u | t))``.

    ``direction="less"`` (the correct years are below YY): ``sum_{d != t} sign(t - d) P(d)
    + P(t) (sum_{u < u0} P(u | t) - sum_{u >= u0} P(u | t))``.
    """
    import torch

    t, u0 = yy // 10, yy % 10
    d = torch.arange(10, device=p_tens.device)
    sign = ((d[None, :] > t[:, None]).to(p_tens.dtype) - (d[None, :] < t[:, None]).to(p_tens.dtype))
    right = d[None, :] > u0[:, None] if direction == "greater" else d[None, :] < u0[:, None]
    within = right.to(p_units.dtype) * 2 - 1
    if direction != "greater":
        sign = -sign
    p_t = p_tens.gather(1, t[:, None])[:, 0]
    return (p_tens * sign).sum(-1) + p_t * (p_units * within).sum(-1)


def probability_difference(p_years, yy, direction: str = "greater"):
    """``sum p(y > YY) - sum p(y <= YY)``; p_years [n, 100], yy [n].

    ``direction="less"``: ``sum p(y < YY) - sum p(y >= YY)`` (the correct years are below YY).
    """
    import torch

    y = torch.arange(100, device=p_years.device)
    right = y[None, :] > yy[:, None] if direction == "greater" else y[None, :] < yy[:, None]
    sign = right.to(p_years.dtype) * 2 - 1
    return (p_years * sign).sum(-1)


def cutoff_sharpness(p_years, yy, direction: str = "greater"):
    """``p(YY+1) - p(YY-1)`` (``less``: ``p(YY-1) - p(YY+1)``); p_years [n, 100], yy [n] with 1 <= YY <= 98."""
    import torch

    idx = torch.arange(p_years.shape[0])
    cs = p_years[idx, yy + 1] - p_years[idx, yy - 1]
    return cs if direction == "greater" else -cs

