"""The arithmetic task: MIB's form, number tokens (GPT-2) and digit tokens (teacher forcing), balance,
MIB's records, the single-token checks, and the metric against a plain Hugging Face loop."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.data.evaluation import model_forward
from circuits.models import load_model
from circuits.tasks.arithmetic import ANSWERS, FORM, Arithmetic, differs_everywhere
from reference import check_answer_contrast, hf_model

TASK = Arithmetic()


def test_gpt2_prompts_are_mibs_form_with_one_token_answers(gpt2_tok):
    ds = TASK.build(gpt2_tok, n=40, seed=0)
    assert ds.info["mode"] == "token" and ds.answer_pos.shape == (40,) and not ds.info["padded"]
    for clean, corrupt, meta, pos in zip(ds.clean, ds.corrupted, ds.metadata, ds.answer_pos):
        a, b, op = meta["a"], meta["b"], meta["op"]
        assert gpt2_tok.decode(clean) == "<|endoftext|>" + FORM.format(a=a, op=op, b=b)
        assert gpt2_tok.decode(corrupt) == "<|endoftext|>" + FORM.format(a=meta["corrupted_a"], op=op, b=meta["corrupted_b"])
        assert meta["answer"] == (a + b if op == "+" else a - b) and 10 <= min(a, b) and max(a, b) <= 99
        assert meta["wrong"] == (meta["corrupted_a"] + meta["corrupted_b"] if op == "+" else meta["corrupted_a"] - meta["corrupted_b"])
        assert differs_everywhere(meta["answer"], meta["wrong"])
        assert meta["answer_ids"] == gpt2_tok.encode(str(meta["answer"])) and meta["wrong_ids"] == gpt2_tok.encode(str(meta["wrong"]))
        # the answer is the natural next token: the full equation tokenizes as prompt + answer
        assert gpt2_tok.encode(FORM.format(a=a, op=op, b=b) + str(meta["answer"])) == clean[1:].tolist() + meta["answer_ids"]
        assert int(pos) == len(clean) - 1 and gpt2_tok.decode(clean[pos]) == "="


def test_digit_tokens_teacher_force_the_tens_digit(digit_tokenizer):
    ds = TASK.build(digit_tokenizer, n=12, seed=1)
    assert ds.info["mode"] == "digits" and ds.answer_pos.shape == (12, 2)
    digit = {d: digit_tokenizer.encode(str(d), add_special_tokens=False)[0] for d in range(10)}
    for clean, corrupt, meta, pos in zip(ds.clean, ds.corrupted, ds.metadata, ds.answer_pos):
        tens, units = divmod(meta["answer"], 10)
        assert meta["answer_ids"] == [digit[tens], digit[units]]
        assert meta["wrong_ids"] == [digit[meta["wrong"] // 10], digit[meta["wrong"] % 10]]
        assert pos.tolist() == [len(clean) - 2, len(clean) - 1]
        assert int(clean[-1]) == int(corrupt[-1]) == digit[tens]  # the forced tens digit, in both prompts
        assert digit_tokenizer.decode(clean[pos[0]]) == "="
        assert (clean != corrupt).sum() >= 1 and torch.equal(clean[-2:], corrupt[-2:])


def test_sampling_is_seeded_and_balanced(gpt2_tok):
    a, b, c = (TASK.build(gpt2_tok, n=160, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.clean, b.clean) and a.metadata == b.metadata and not torch.equal(a.clean, c.clean)
    assert [m["op"] for m in a.metadata[:6]] == ["+", "-"] * 3
    for op in ("+", "-"):  # every answer of the operator once in the first round
        answers = Counter(m["answer"] for m in a.metadata if m["op"] == op)
        assert set(answers) == set(ANSWERS[op]) and set(answers.values()) == {1}


def test_mib_records_and_plain_equations(tmp_path, gpt2_tok):
    rows = [{"prompt": "12+34=", "label": "46", "random_counterfactual": {"prompt": "51+27=", "label": 78}},
            {"clean": "70-25="},
            {"clean": "Q: 8+9=", "label": 17, "corrupted": "Q: 2+3=", "corrupted_label": 5}]
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = TASK.build(gpt2_tok, n=10, seed=0, data=path)
    assert [m["answer"] for m in ds.metadata] == [46, 45, 17] and ds.metadata[0]["wrong"] == 78
    assert differs_everywhere(45, ds.metadata[1]["wrong"]) and ds.metadata[2]["wrong"] == 5
    assert gpt2_tok.decode(ds.corrupted[0][: int(ds.answer_pos[0]) + 1]) == "<|endoftext|>51+27="
    assert ds.info["padded"] and int(ds.answer_pos[2]) == len(gpt2_tok.encode("Q: 8+9="))


@pytest.mark.parametrize("record, fragment", [
    ({"clean": "12+34=", "label": "many"}, "not a whole number"),
    ({"clean": "What is twelve plus four?"}, "needs a 'label'"),
    ({"clean": "12-34="}, "negative"),
    ({"clean": "12+34=", "corrupted": "30+16="}, "same answer"),
    ({"clean": "600+634=", "corrupted": "1+2="}, "one token"),
    ({"clean": "Q: 12+34=", "label": 46}, "A\\+B= or A-B="),
])
def test_bad_records(tmp_path, gpt2_tok, record, fragment):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(CircuitsError, match=fragment):
        TASK.build(gpt2_tok, n=5, seed=0, data=path)


def test_answers_of_two_lengths_are_refused_with_digit_tokens(tmp_path, digit_tokenizer):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"clean": "60+40=", "corrupted": "11+12="}) + "\n")
    with pytest.raises(CircuitsError, match="differ in length"):
        TASK.build(digit_tokenizer, n=5, seed=0, data=path)
    path.write_text(json.dumps({"clean": "6+3=", "corrupted": "1+1="}) + "\n" + json.dumps({"clean": "60+30=", "corrupted": "11+12="}) + "\n")
    with pytest.raises(CircuitsError, match="same number of tokens"):
        TASK.build(digit_tokenizer, n=5, seed=0, data=path)


@pytest.mark.parametrize("folder", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_metric_and_accuracy_match_a_plain_hf_loop(request, tmp_path, folder, one_thread):
    """The engine's metric (what discovery scores) and `evaluate` equal a float64 Hugging Face loop over
    unpadded prompts, on prompts of two lengths (padded on the right)."""
    path = request.getfixturevalue(folder)
    loaded = load_model(str(path))
    rows = [{"clean": "12+34=", "corrupted": "51+27="}, {"clean": "70-25="}, {"clean": "Sum: 23+41=", "corrupted": "Sum: 10+11="},
            {"clean": "99-47=", "corrupted": "98-10="}]
    data = tmp_path / "a.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = TASK.build(loaded.tokenizer, n=6, seed=2, data=data)
    assert ds.info["padded"]
    check_answer_contrast(TASK, loaded, hf_model(path), ds)


@pytest.mark.slow
def test_smollm2_arithmetic_evaluates(smollm2_loaded, one_thread):
    """SmolLM2-135M does not do two-digit arithmetic in MIB's form (docs/tasks.md): evaluate runs and says so."""
    ds = TASK.build(smollm2_loaded.tokenizer, n=20, seed=0)
    assert ds.info["mode"] == "digits" and ds.answer_pos.shape == (20, 2)
    out = TASK.evaluate(model_forward(smollm2_loaded), ds)
    assert set(out) == {"logit_difference", "accuracy"} and out["accuracy"].mean() < 0.2
