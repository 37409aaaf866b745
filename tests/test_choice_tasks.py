"""The multiple-choice tasks: mcqa (MIB's colors, four options) and arc (ARC-format files): prompts, the
rotated corruption, balance, the single-token letter check, ARC's two layouts, and the metric against a
plain Hugging Face loop."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.data.evaluation import model_forward
from circuits.models import load_model
from circuits.tasks.arc import ARC
from circuits.tasks.choices import prompt
from circuits.tasks.mcqa import COLORS, MCQA, load_questions
from cli_helpers import assert_user_error, invoke
from reference import check_answer_contrast, hf_model

ARC_SAMPLE = Path(__file__).parent / "data" / "arc_sample.jsonl"


def _letter(tok, label):
    return tok.encode(" " + label, add_special_tokens=False)[0]


def test_questions_file():
    questions = load_questions()
    assert len(questions) == 40 and len(set(questions)) == 40
    assert all(color in COLORS and color in question for question, color in questions)


def test_mcqa_prompts_and_the_rotated_twin(gpt2_tok):
    ds = MCQA().build(gpt2_tok, n=24, seed=0)
    assert ds.answer_pos.shape == (24,)
    for clean, corrupt, meta, pos in zip(ds.clean, ds.corrupted, ds.metadata, ds.answer_pos):
        options, right = meta["options"], meta["answer_index"]
        assert meta["labels"] == ["A", "B", "C", "D"] and len(set(options)) == 4
        color = options[right]
        assert color in meta["question"] and sum(c in COLORS for c in options) == 4
        text = gpt2_tok.decode(clean[1:int(pos) + 1])
        assert text == prompt(meta["question"], options, "ABCD") and text.endswith("\nD. " + options[3] + "\nAnswer:")
        twin = gpt2_tok.decode(corrupt[1:int(pos) + 1]).split("\n")[1:5]
        assert twin[meta["corrupt_index"]] == f"{'ABCD'[meta['corrupt_index']]}. {color}" and meta["corrupt_index"] != right
        assert sorted(line[3:] for line in twin) == sorted(options)  # the same options, rotated
        assert meta["answer_ids"] == [_letter(gpt2_tok, "ABCD"[right])]
        assert meta["wrong_ids"] == [_letter(gpt2_tok, "ABCD"[meta["corrupt_index"]])]
        assert sorted(clean.tolist()) == sorted(corrupt.tolist())  # same tokens in another order


def test_mcqa_is_seeded_and_balanced(gpt2_tok):
    a, b, c = (MCQA().build(gpt2_tok, n=48, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.clean, b.clean) and not torch.equal(a.clean, c.clean)
    letters = [m["answer_index"] for m in a.metadata]
    assert all(sorted(letters[i:i + 4]) == [0, 1, 2, 3] for i in range(0, 48, 4))
    shifts = Counter((m["corrupt_index"] - m["answer_index"]) % 4 for m in a.metadata)
    assert shifts == {1: 16, 2: 16, 3: 16}
    assert len({m["question"] for m in a.metadata[:40]}) == 40


def test_arc_reads_both_layouts_and_needs_a_file(gpt2_tok):
    with pytest.raises(CircuitsError, match="arc ships no questions: pass --data FILE"):
        ARC().build(gpt2_tok, n=4, seed=0)
    ds = ARC().build(gpt2_tok, n=10, seed=0, data=ARC_SAMPLE)
    assert len(ds) == 4 and ds.info["padded"]
    assert [m["answer_index"] for m in ds.metadata] == [1, 0, 2, 2]
    assert ds.metadata[1]["options"] == ["sunlight", "sand", "salt"] and ds.metadata[2]["labels"] == list("12345")
    assert ds.metadata[3]["corrupt_index"] == 3  # shift 1 from the record
    for clean, meta, pos in zip(ds.clean, ds.metadata, ds.answer_pos):
        assert gpt2_tok.decode(clean[1:int(pos) + 1]) == prompt(meta["question"], meta["options"], meta["labels"])
        assert meta["answer_ids"] == [_letter(gpt2_tok, meta["labels"][meta["answer_index"]])]
    assert "Question: What do plants need" in gpt2_tok.decode(ds.clean[1])
    again = ARC().build(gpt2_tok, n=2, seed=0, data=ARC_SAMPLE)
    assert len(again) == 2


@pytest.mark.parametrize("record, fragment", [
    ({"question": "Q?", "answerKey": "A"}, "needs 'question', 'choices'"),
    ({"question": "Q?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "C"}, "not one of the labels"),
    ({"question": "Q?", "choices": {"text": ["x"], "label": ["A"]}, "answerKey": "A"}, "at least two choices"),
    ({"question": "Q?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": 5}, "out of range"),
    ({"question": "", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "A"}, "question is empty"),
    ({"question": "Q?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "A", "shift": 2}, "shift must be"),
    ({"question": "Q?", "choices": {"text": ["x", "y"], "label": ["Alpha1", "B"]}, "answerKey": "A"}, "not one of the labels"),
    ({"question": "Q?", "choices": {"text": ["x", "y"], "label": ["Xylophonic", "B"]}, "answerKey": "B"}, "option label 'Xylophonic' is 4 tokens after a space"),
])
def test_bad_arc_records(tmp_path, gpt2_tok, record, fragment):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(CircuitsError, match=fragment):
        ARC().build(gpt2_tok, n=3, seed=0, data=path)


def test_letters_that_are_not_one_token_are_refused(digit_tokenizer):
    """The digit tokenizer (trained on greater-than prompts) has no `` A`` token."""
    assert len(digit_tokenizer.encode(" A", add_special_tokens=False)) > 1
    with pytest.raises(CircuitsError, match="option label 'A' is 2 tokens after a space"):
        MCQA().build(digit_tokenizer, n=4, seed=0)


@pytest.fixture(scope="module")
def gpt2_models(tiny_gpt2_dir, one_thread):
    return load_model(str(tiny_gpt2_dir)), hf_model(tiny_gpt2_dir)


@pytest.mark.parametrize("task, data", [(MCQA(), None), (ARC(), ARC_SAMPLE)])
def test_metric_and_accuracy_match_a_plain_hf_loop(gpt2_models, task, data):
    loaded, hf = gpt2_models
    ds = task.build(loaded.tokenizer, n=6, seed=3, data=data)
    reported, rows = check_answer_contrast(task, loaded, hf, ds)
    for row, meta, acc in zip(rows, ds.metadata, reported["accuracy"]):  # the right letter beats the others
        best = max(range(len(meta["labels"])), key=lambda j: float(row[0, meta["label_ids"][j]]))
        assert float(acc) == float(best == meta["answer_index"])


def test_cli_evaluate_arc(tiny_gpt2_dir, one_thread):
    code, _, err = invoke("evaluate", "arc", "--model", str(tiny_gpt2_dir))
    assert_user_error(code, err, "arc ships no questions: pass --data FILE")
    code, out, err = invoke("evaluate", "arc", "--model", str(tiny_gpt2_dir), "--data", str(ARC_SAMPLE), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["task"] == "arc" and result["n"] == 4
    assert set(result["metrics"]) == {"logit_difference", "accuracy", "top1"}


@pytest.mark.slow
def test_smollm2_mcqa_evaluates(smollm2_loaded, one_thread):
    """SmolLM2-135M does not do MIB's MCQA (docs/tasks.md): `evaluate` runs and reports the three metrics."""
    ds = MCQA().build(smollm2_loaded.tokenizer, n=8, seed=0)
    out = MCQA().evaluate(model_forward(smollm2_loaded), ds)
    assert set(out) == {"logit_difference", "accuracy", "top1"} and all(v.shape == (8,) for v in out.values())
