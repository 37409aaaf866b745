"""The facts task: the built-in facts, the same-relation corruption, balance, padding, the single-token
checks, prompt files, the metric against a plain Hugging Face loop, and (slow) SmolLM2 knowing every fact."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.data.evaluation import model_forward
from circuits.models import load_model
from circuits.tasks.facts import MIN_FACTS, Facts, load_relations
from reference import check_answer_contrast, hf_model

TASK = Facts()


def test_facts_file():
    relations = load_relations()
    assert set(relations) == {"capital", "language", "city", "landmark", "currency", "opposite"}
    assert sum(len(r["facts"]) for r in relations.values()) == 85
    for spec in relations.values():
        assert spec["template"].count("{subject}") == 1
        subjects = [s for s, _ in spec["facts"]]
        assert len(set(subjects)) == len(subjects) and len({o for _, o in spec["facts"]}) >= 2


def test_prompts_and_the_same_relation_corruption(gpt2_tok):
    relations = load_relations()
    ds = TASK.build(gpt2_tok, n=36, seed=0)
    assert ds.answer_pos.shape == (36,) and ds.info["padded"]
    for clean, corrupt, meta, pos in zip(ds.clean, ds.corrupted, ds.metadata, ds.answer_pos):
        template = relations[meta["relation"]]["template"]
        a = int(pos)
        assert gpt2_tok.decode(clean[:a + 1]) == "<|endoftext|>" + template.format(subject=meta["subject"])
        assert gpt2_tok.decode(corrupt[:a + 1]) == "<|endoftext|>" + template.format(subject=meta["corrupted_subject"])
        assert [meta["subject"], meta["answer"]] in relations[meta["relation"]]["facts"]
        assert [meta["corrupted_subject"], meta["corrupted_answer"]] in relations[meta["relation"]]["facts"]
        assert meta["answer_ids"] == gpt2_tok.encode(" " + meta["answer"]) and meta["answer"] != meta["corrupted_answer"]
        assert meta["wrong_ids"] == gpt2_tok.encode(" " + meta["corrupted_answer"])
        assert torch.equal(clean[a + 1:], corrupt[a + 1:]) and all(int(t) == ds.info["pad"] for t in clean[a + 1:])


def test_sampling_is_seeded_and_balanced(gpt2_tok):
    a, b, c = (TASK.build(gpt2_tok, n=60, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.clean, b.clean) and a.metadata == b.metadata and not torch.equal(a.clean, c.clean)
    relations = [m["relation"] for m in a.metadata]
    assert all(len(set(relations[i:i + 6])) == 6 for i in range(0, 60, 6))  # each relation once per round
    capitals = Counter(m["subject"] for m in a.metadata if m["relation"] == "capital")
    assert set(capitals.values()) == {1}  # 10 capitals, none twice before the round ends


def test_a_tokenizer_that_splits_the_answers_is_refused(digit_tokenizer):
    with pytest.raises(CircuitsError, match=f"facts needs at least {MIN_FACTS} built-in facts whose answer is one token"):
        TASK.build(digit_tokenizer, n=4, seed=0)


def test_data_files(tmp_path, gpt2_tok):
    rows = [{"clean": "The Eiffel Tower is in", "answer": "Paris", "corrupted": "The Colosseum is in", "corrupted_answer": "Rome"},
            {"prompt": "Water is made of hydrogen and", "answer": "oxygen", "corrupted": "Salt is made of sodium and",
             "corrupted_answer": "chlorine"}]
    path = tmp_path / "f.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = TASK.build(gpt2_tok, n=5, seed=0, data=path)
    assert len(ds) == 2 and gpt2_tok.decode(ds.clean[0][: int(ds.answer_pos[0]) + 1]) == "<|endoftext|>" + rows[0]["clean"]
    assert ds.metadata[1]["answer_ids"] == gpt2_tok.encode(" oxygen")


@pytest.mark.parametrize("record, fragment", [
    ({"clean": "The capital of France is", "answer": "Paris"}, "missing corrupted, corrupted_answer"),
    ({"clean": "The capital of France is", "answer": "Paris", "corrupted": "The capital of Italy is", "corrupted_answer": "Paris"},
     "the same token"),
    ({"clean": "The capital of France is", "answer": "Parisianistically", "corrupted": "The capital of Italy is",
      "corrupted_answer": "Rome"}, "answer 'Parisianistically' is"),
    ({"clean": "The capital of France is", "answer": "Paris", "corrupted": "The capital of the Italian Republic is",
      "corrupted_answer": "Rome"}, "different lengths"),
])
def test_bad_data_records(tmp_path, gpt2_tok, record, fragment):
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(CircuitsError, match=fragment):
        TASK.build(gpt2_tok, n=5, seed=0, data=path)


def test_metric_and_accuracy_match_a_plain_hf_loop(tiny_gpt2_dir, one_thread):
    loaded = load_model(str(tiny_gpt2_dir))
    ds = TASK.build(loaded.tokenizer, n=6, seed=1)
    assert ds.info["padded"]
    check_answer_contrast(TASK, loaded, hf_model(tiny_gpt2_dir), ds)


@pytest.mark.slow
def test_smollm2_knows_every_built_in_fact(smollm2_loaded, one_thread):
    """The shipped facts are those SmolLM2-135M gets right at top-1 (docs/tasks.md): check each one."""
    tok, bridge = smollm2_loaded.tokenizer, smollm2_loaded.bridge
    facts = [(spec["template"].format(subject=s), o) for spec in load_relations().values() for s, o in spec["facts"]]
    prompts = [[tok.bos_token_id] + tok.encode(p, add_special_tokens=False) for p, _ in facts]
    width = max(len(p) for p in prompts)
    with torch.no_grad():  # one right-padded batch; each prompt is read at its own last token
        logits = bridge(torch.tensor([p + [tok.eos_token_id] * (width - len(p)) for p in prompts]))
    top = [int(logits[i, len(p) - 1].argmax()) for i, p in enumerate(prompts)]
    wrong = [f"{p} -> {o} (model: {tok.decode([t])!r})" for (p, o), t in zip(facts, top)
             if [t] != tok.encode(" " + o, add_special_tokens=False)]
    assert len(facts) == 85 and not wrong, wrong
    ds = TASK.build(tok, n=24, seed=0)
    out = TASK.evaluate(model_forward(smollm2_loaded), ds)
    assert float(out["accuracy"].mean()) == 1.0 and float(out["logit_difference"].min()) > 0
