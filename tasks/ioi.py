"""Indirect object identification (Wang et al., 2023, "Interpretability in the Wild").

Clean prompt:    ``<bos>Then, John and Mary went to the store. John gave a drink to``  (-> `` Mary``)
Corrupted twin:  the same with a third name in place of the subject's second mention
                 (``... store. Paul gave a drink to``): the ABC distribution, no name repeats.

The fifteen templates are the paper's; each has an ABBA form (the indirect object IO named
first) and a BABA form (the subject S first).  Names, places and objects are kept only if they
are one token after a space with the model's tokenizer; too few of them is a one-line error.
Sampling is seeded and balanced: ABBA and BABA alternate, and every template is used once per
round in a seeded order.  Templates tokenize to different lengths, so prompts are padded on
the right: each prompt starts at position 0 and ``answer_pos`` is its own last token, so with a
causal model the padding never reaches a scored position.

Metric: the logit difference ``logit(IO) - logit(S)`` at the answer position.
"""
from __future__ import annotations

import random
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

from circuits.data.dataset import PromptDataset
from circuits.errors import CircuitsError
from circuits.tasks.greater_than import _read_records, bos_id

# Wang et al. (2023), appendix: the BABA templates; {n1} {n2} is "B and A" in BABA and "A and B" in ABBA.
TEMPLATES = (
    "Then, {n1} and {n2} went to the {place}. {s} gave a {obj} to",
    "Then, {n1} and {n2} had a lot of fun at the {place}. {s} gave a {obj} to",
    "Then, {n1} and {n2} were working at the {place}. {s} decided to give a {obj} to",
    "Then, {n1} and {n2} were thinking about going to the {place}. {s} wanted to give a {obj} to",
    "Then, {n1} and {n2} had a long argument, and afterwards {s} said to",
    "After {n1} and {n2} went to the {place}, {s} gave a {obj} to",
    "When {n1} and {n2} got a {obj} at the {place}, {s} decided to give it to",
    "When {n1} and {n2} got a {obj} at the {place}, {s} decided to give the {obj} to",
    "While {n1} and {n2} were working at the {place}, {s} gave a {obj} to",
    "While {n1} and {n2} were commuting to the {place}, {s} gave a {obj} to",
    "After the lunch, {n1} and {n2} went to the {place}. {s} gave a {obj} to",
    "Afterwards, {n1} and {n2} went to the {place}. Then, {s} gave a {obj} to",
    "Then, {n1} and {n2} had a long argument. Afterwards {s} said to",
    "The {place} {n1} and {n2} went to had a {obj}. {s} gave it to",
    "Friends {n1} and {n2} found a {obj} at the {place}. {s} gave it to",
)
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")  # the paper's
OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")  # the paper's
ORDERS = ("ABBA", "BABA")
MIN_NAMES = 8
NAMES_FILE = "ioi_names.txt"


def load_names() -> List[str]:
    text = (resources.files("circuits.tasks") / NAMES_FILE).read_text(encoding="utf-8")
    return list(dict.fromkeys(w for line in text.splitlines() if not line.startswith("#") for w in line.split()))


def _ids(tokenizer, text: str) -> List[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def single_tokens(tokenizer, words, what: str, minimum: int) -> Dict[str, int]:
    """word -> its token id, for the words that are one token after a space; too few is an error."""
    kept = {}
    for w in words:
        ids = _ids(tokenizer, " " + w)
        if len(ids) == 1:
            kept[w] = ids[0]
    if len(kept) < minimum:
        raise CircuitsError(f"ioi needs at least {minimum} {what} that are one token after a space; this tokenizer "
                            f"keeps {len(kept)} of {len(words)} ({', '.join(list(words)[:3])}, ... split into several tokens)")
    return kept


def fill(template: str, order: str, io: str, s: str, s2: str, place: str, obj: str) -> str:
    """The prompt text; ``s2`` is the name at the subject's second mention (S, or C when corrupted)."""
    n1, n2 = (io, s) if order == "ABBA" else (s, io)
    return template.format(n1=n1, n2=n2, s=s2, place=place, obj=obj)


class IOI:
    """Indirect object identification, ABBA and BABA, with the ABC corruption."""

    name = "ioi"
    description = "Indirect object: 'Then, John and Mary went to the store. John gave a drink to' -> ' Mary' (logit IO - S)"

    def build(self, tokenizer, *, n: int = 100, seed: int = 0, data: Optional[Path] = None) -> PromptDataset:
        import torch

        if n < 1:
            raise CircuitsError(f"--n must be at least 1 (got {n})")
        names = single_tokens(tokenizer, load_names(), "names", MIN_NAMES)
        if data is not None:
            rows = self._read(tokenizer, Path(data), names, n=n, seed=seed)
        else:
            rows = self._sample(tokenizer, names, n=n, seed=seed)
        bos = bos_id(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
        clean, corrupted, meta = [], [], []
        for where, clean_text, corrupt_text, m in rows:
            c, k = [bos] + _ids(tokenizer, clean_text), [bos] + _ids(tokenizer, corrupt_text)
            if len(c) != len(k):
                raise CircuitsError(f"{where}: the clean and corrupted prompts tokenize to different lengths "
                                    f"({len(c)} and {len(k)}); use names that are one token each")
            if c.count(m["io"]) != 1 or c.count(m["s"]) != 2 or k.count(m["s"]) != 1:
                raise CircuitsError(f"{where}: the prompt must name IO once and S twice as single tokens: {clean_text!r}")
            clean.append(c)
            corrupted.append(k)
            meta.append(m)
        seq = max(len(c) for c in clean)
        answer = [len(c) - 1 for c in clean]
        clean = [c + [pad] * (seq - len(c)) for c in clean]
        corrupted = [k + [pad] * (seq - len(k)) for k in corrupted]
        return PromptDataset(
            clean=torch.tensor(clean, dtype=torch.long), corrupted=torch.tensor(corrupted, dtype=torch.long),
            answer_pos=torch.tensor(answer, dtype=torch.long), metadata=meta, task=self.name,
            info={"pad": pad, "padded": len(set(answer)) > 1},
        )

    @staticmethod
    def _sample(tokenizer, names: Dict[str, int], *, n: int, seed: int):
        places = list(single_tokens(tokenizer, PLACES, "places", 2))
        objects = list(single_tokens(tokenizer, OBJECTS, "objects", 2))
        rng = random.Random(seed)
        pool = list(names)
        rows, order = [], []
        for i in range(n):
            if not order:  # balanced: every template once per round, in a seeded order
                order = list(range(len(TEMPLATES)))
                rng.shuffle(order)
            t = order.pop()
            kind = ORDERS[i % 2]
            io, s, c = rng.sample(pool, 3)
            place, obj = rng.choice(places), rng.choice(objects)
            meta = {"io": names[io], "s": names[s], "c": names[c], "io_name": io, "s_name": s, "c_name": c,
                    "template": t, "order": kind}
            rows.append((f"prompt {i}", fill(TEMPLATES[t], kind, io, s, s, place, obj),
                         fill(TEMPLATES[t], kind, io, s, c, place, obj), meta))
        return rows

    @staticmethod
    def _read(tokenizer, path: Path, names: Dict[str, int], *, n: int, seed: int):
        """Records with ``clean`` (the prompt, ending before IO), ``io`` and ``s``; optional ``c`` or ``corrupted``."""
        records = _read_records(path)[:n]
        if not records:
            raise CircuitsError(f"{path} holds no prompts")
        rng = random.Random(seed)
        rows = []
        for i, rec in enumerate(records):
            where = f"{path}:{i + 1}"
            clean = str(rec.get("clean") or rec.get("prompt") or "").replace("<|endoftext|>", "").strip()
            io, s = str(rec.get("io") or "").strip(), str(rec.get("s") or "").strip()
            if not clean or not io or not s:
                raise CircuitsError(f"{where}: needs 'clean' (the prompt, ending before the answer), 'io' and 's'")
            ids = {}
            for role, word in (("io", io), ("s", s)):
                tok = _ids(tokenizer, " " + word)
                if len(tok) != 1:
                    raise CircuitsError(f"{where}: the name {word!r} ({role}) is {len(tok)} tokens with this tokenizer; use a single-token name")
                ids[role] = tok[0]
            corrupt = str(rec.get("corrupted") or "").replace("<|endoftext|>", "").strip()
            c = str(rec.get("c") or "").strip() or rng.choice([w for w in names if w not in (io, s)])
            if not corrupt:  # ABC: the third name replaces the subject's last mention
                at = clean.rfind(s)
                if at < 0:
                    raise CircuitsError(f"{where}: the subject {s!r} does not occur in the prompt")
                corrupt = clean[:at] + c + clean[at + len(s):]
            meta = {"io": ids["io"], "s": ids["s"], "io_name": io, "s_name": s, "c_name": c, "template": None, "order": None}
            rows.append((where, clean, corrupt, meta))
        return rows

    def metric(self, logits, dataset: PromptDataset):
        """``logit(IO) - logit(S)`` from answer-position logits [n, vocab]: [n], differentiable."""
        import torch

        rows = torch.arange(logits.shape[0], device=logits.device)
        io = torch.tensor([m["io"] for m in dataset.metadata], device=logits.device)
        s = torch.tensor([m["s"] for m in dataset.metadata], device=logits.device)
        return (logits[rows, io] - logits[rows, s]).float()

    def evaluate(self, forward, dataset: PromptDataset) -> Dict[str, Any]:
        """Per-prompt ``logit_difference`` (IO - S) and ``io_wins`` (1 where IO's logit beats S's)."""
        import torch

        from circuits.data.task import answer_logits

        with torch.no_grad():
            diff = self.metric(answer_logits(forward(dataset.clean), dataset), dataset)
        return {"logit_difference": diff, "io_wins": (diff > 0).float()}
