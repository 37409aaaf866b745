"""Factual recall: ``The capital of France is`` -> `` Paris`` (Geva et al., 2023, "Dissecting Recall of
Factual Associations in Auto-Regressive Language Models", study how GPT models recall such facts).

Clean prompt:    ``<bos>The capital of France is``  (-> `` Paris``)
Corrupted twin:  the same relation with another subject whose answer differs, and whose prompt has the
                 same number of tokens: ``<bos>The capital of Italy is`` (-> `` Rome``).

Built in: ``facts.json``, six relations (capitals, official languages, the country of a city, the
city of a landmark, currencies, opposites), 85 facts kept because SmolLM2-135M gets each right at
top-1 (docs/tasks.md).  With another tokenizer a fact is used only if its answer is one token after a
space and some fact of its relation can corrupt it (another answer, a prompt of the same length);
fewer than ``MIN_FACTS`` usable facts is a one-line error.  Sampling is seeded and balanced: the
relations take turns in a seeded order, and each relation's facts are used once per round.
Templates differ in length, so prompts are padded on the right.

Metric: ``logit(answer) - logit(corrupted answer)`` at the prompt's last token; ``evaluate`` adds
``accuracy`` (the answer is the model's top token).

``--data FILE``: records with ``clean`` (the prompt, ending before the answer), ``answer``,
``corrupted`` (a prompt of the same length) and ``corrupted_answer``; each answer must be one token
after a space.
"""
from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from circuits.data.dataset import PromptDataset
from circuits.errors import CircuitsError
from circuits.tasks.contrast import AnswerContrast, build_pairs, check_n, one_token, pad_id, token_ids
from circuits.tasks.greater_than import _read_records, bos_id

FACTS_FILE = "facts.json"
MIN_FACTS = 4


def load_relations() -> Dict[str, Dict[str, Any]]:
    """relation -> ``{"template": "... {subject} ...", "facts": [[subject, answer], ...]}``."""
    text = (resources.files("circuits.tasks") / FACTS_FILE).read_text(encoding="utf-8")
    return json.loads(text)["relations"]


def usable_facts(tokenizer) -> Dict[str, List[Tuple[str, str, List[int], int]]]:
    """relation -> ``(subject, answer, prompt ids, answer id)`` for the facts this tokenizer can score:
    a one-token answer, and at least one partner (same relation, other answer, same prompt length)."""
    out = {}
    for relation, spec in load_relations().items():
        facts = []
        for subject, answer in spec["facts"]:
            ids = token_ids(tokenizer, " " + answer)
            if len(ids) == 1:
                facts.append((subject, answer, token_ids(tokenizer, spec["template"].format(subject=subject)), ids[0]))
        kept = [f for f in facts if any(_partners(f, g) for g in facts)]
        if kept:
            out[relation] = kept
    total = sum(len(v) for v in out.values())
    if total < MIN_FACTS:
        raise CircuitsError(f"facts needs at least {MIN_FACTS} built-in facts whose answer is one token after a space "
                            f"(and another fact of the same relation and prompt length); this tokenizer keeps {total}; "
                            "pass your own with --data FILE")
    return out


def _partners(f, g) -> bool:
    return f[3] != g[3] and len(f[2]) == len(g[2])


class Facts(AnswerContrast):
    """Factual recall, corrupted by another subject of the same relation."""

    name = "facts"
    description = "Factual recall: 'The capital of France is' -> ' Paris', corrupted by another subject (logit answer - corrupted answer)"

    def build(self, tokenizer, *, n: int = 100, seed: int = 0, data: Optional[Path] = None) -> PromptDataset:
        check_n(n)
        bos = bos_id(tokenizer)
        rows = self._read(tokenizer, Path(data), n=n) if data is not None else self._sample(tokenizer, n=n, seed=seed)
        rows = [(where, [bos] + c, [bos] + k, 1, meta) for where, c, k, meta in rows]
        return build_pairs(rows, task=self.name, pad=pad_id(tokenizer, bos))

    @staticmethod
    def _sample(tokenizer, *, n: int, seed: int):
        facts = usable_facts(tokenizer)
        rng = random.Random(seed)
        relations, pools = [], {r: [] for r in facts}
        rows = []
        for i in range(n):
            if not relations:  # balanced: every relation once per round, in a seeded order
                relations = sorted(facts)
                rng.shuffle(relations)
            relation = relations.pop()
            if not pools[relation]:  # and every fact of a relation once per round of that relation
                pools[relation] = list(facts[relation])
                rng.shuffle(pools[relation])
            fact = pools[relation].pop()
            other = rng.choice([g for g in facts[relation] if _partners(fact, g)])
            meta = {"relation": relation, "subject": fact[0], "answer": fact[1], "corrupted_subject": other[0],
                    "corrupted_answer": other[1], "answer_ids": [fact[3]], "wrong_ids": [other[3]]}
            rows.append((f"prompt {i}", fact[2], other[2], meta))
        return rows

    @staticmethod
    def _read(tokenizer, path: Path, *, n: int):
        records = _read_records(path)[:n]
        if not records:
            raise CircuitsError(f"{path} holds no prompts")
        rows = []
        for i, rec in enumerate(records):
            where = f"{path}:{i + 1}"
            fields = {key: str(rec.get(key) or "").strip() for key in ("clean", "answer", "corrupted", "corrupted_answer")}
            fields["clean"] = fields["clean"] or str(rec.get("prompt") or "").strip()
            missing = [key for key, value in fields.items() if not value]
            if missing:
                raise CircuitsError(f"{where}: needs 'clean', 'answer', 'corrupted' and 'corrupted_answer' (missing {', '.join(missing)})")
            right = one_token(tokenizer, fields["answer"], where)
            wrong = one_token(tokenizer, fields["corrupted_answer"], where, "corrupted answer")
            if right == wrong:
                raise CircuitsError(f"{where}: the answer and the corrupted answer are the same token; corrupt with a subject whose answer differs")
            meta = {"relation": None, "subject": None, "answer": fields["answer"], "corrupted_subject": None,
                    "corrupted_answer": fields["corrupted_answer"], "answer_ids": [right], "wrong_ids": [wrong]}
            rows.append((where, token_ids(tokenizer, fields["clean"]), token_ids(tokenizer, fields["corrupted"]), meta))
        return rows
