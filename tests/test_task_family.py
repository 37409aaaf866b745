"""The greater-than family: every template's prompts, corruption, refusals, balance and signed metrics."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.data.evaluation import model_forward
from circuits.models import load_model
from circuits.registry import TASKS, plugins
from circuits.data.task import answer_logits
from circuits.tasks.greater_than import GreaterThan, Vocabulary, cutoff_sharpness, load_nouns, probability_difference
from circuits.tasks.greater_than_family import FAMILY, ITEMS_FILE

TASKS_ = [cls() for cls in FAMILY]
IDS = [t.name for t in TASKS_]


@pytest.fixture(scope="module")
def smollm2_tok(smollm2_gguf):
    """SmolLM2's own digit-splitting tokenizer, read from the GGUF's metadata (no weights)."""
    from circuits.models.gguf import GGUFFile, _tokenizer

    return _tokenizer(GGUFFile(smollm2_gguf), "llama")


@pytest.fixture(scope="module")
def gpt2_model(tiny_gpt2_dir):
    return load_model(str(tiny_gpt2_dir))


def _noun(task) -> str:
    return load_nouns(task.template.words)[0] if task.template.words else ""


def test_every_template_is_a_registered_task():
    tasks = plugins(TASKS)
    for task in TASKS_:
        assert type(tasks[task.name]) is type(task)
        assert task.template.direction == ("less" if task.name.startswith("less-than") else "greater")
        assert task.template.corrupt_yy == (99 if task.template.direction == "less" else 1)
        assert "Hanna" in task.template.source


def test_items_are_single_gpt2_tokens(gpt2_tok):
    items = load_nouns(ITEMS_FILE)
    assert len(items) >= 40 and len(set(items)) == len(items)
    assert all(len(gpt2_tok.encode(" " + w)) == 1 for w in items)


@pytest.mark.parametrize("task", TASKS_, ids=IDS)
def test_prompts_and_corruption_gpt2(gpt2_tok, task):
    ds = task.build(gpt2_tok, n=60, seed=0)
    tpl = task.template
    assert ds.task == task.name and ds.info["mode"] == "token" and ds.info["direction"] == tpl.direction
    pos = ds.info["yy_pos"]
    bad = gpt2_tok.convert_tokens_to_ids(f"{tpl.corrupt_yy:02d}")
    for clean, corrupt, meta, answer in zip(ds.clean, ds.corrupted, ds.metadata, ds.answer_pos):
        assert gpt2_tok.decode(clean) == "<|endoftext|>" + tpl.prompt(meta["noun"], meta["century"], meta["yy"])
        assert gpt2_tok.decode(corrupt) == "<|endoftext|>" + tpl.prompt(meta["noun"], meta["century"], tpl.corrupt_yy)
        assert meta["century"] in tpl.centuries and int(answer) == ds.clean.shape[1] - 1
        assert (clean != corrupt).nonzero().flatten().tolist() == [pos]  # only the YY token differs
        assert gpt2_tok.convert_ids_to_tokens(int(clean[pos])) == f"{meta['yy']:02d}" and int(corrupt[pos]) == bad


@pytest.mark.parametrize("task", TASKS_, ids=IDS)
def test_prompts_and_corruption_smollm2(smollm2_tok, task):
    """SmolLM2 splits digits: YY is two tokens, the prompts still have one length, only YY's digits differ."""
    ds = task.build(smollm2_tok, n=30, seed=1)
    assert ds.info["mode"] == "digits"
    pos = ds.info["yy_pos"]
    digits = [smollm2_tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    for clean, corrupt, meta in zip(ds.clean, ds.corrupted, ds.metadata):
        yy, bad = meta["yy"], task.template.corrupt_yy
        assert clean[pos:pos + 2].tolist() == [digits[yy // 10], digits[yy % 10]]
        assert corrupt[pos:pos + 2].tolist() == [digits[bad // 10], digits[bad % 10]]
        assert set((clean != corrupt).nonzero().flatten().tolist()) <= {pos, pos + 1}
        century, end = str(meta["century"]), ds.info.get("prompt_len", ds.clean.shape[1])  # before any forced digit
        assert smollm2_tok.convert_ids_to_tokens(clean[end - len(century):end].tolist()) == list(century)
        assert int(clean[-1]) == int(corrupt[-1]) == digits[yy // 10]  # the teacher-forced tens digit (issue 12)


@pytest.mark.parametrize("task", TASKS_, ids=IDS)
def test_a_year_that_does_not_split_is_refused(tmp_path, gpt2_tok, task):
    vocab = Vocabulary(gpt2_tok)
    xx, yy = next((xx, yy) for xx in (task.template.centuries[0], 18) for yy in range(2, 99) if not vocab.valid(xx, yy))
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"noun": _noun(task), "century": xx, "yy": yy}) + "\n")
    with pytest.raises(CircuitsError, match=f"year {xx}{yy:02d} does not split"):
        task.build(gpt2_tok, n=5, seed=0, data=path)
    # the same template's own text is read back from a prompt file
    good = task.template.prompt(_noun(task), task.template.centuries[0], 40)
    path.write_text(json.dumps({"clean": good}) + "\n" + json.dumps({"clean": "The war began in 1740"}) + "\n")
    with pytest.raises(CircuitsError, match="line|does not follow"):
        task.build(gpt2_tok, n=5, seed=0, data=path)
    path.write_text(json.dumps({"clean": good}) + "\n")
    ds = task.build(gpt2_tok, n=1, seed=0, data=path)
    assert (ds.metadata[0]["century"], ds.metadata[0]["yy"]) == (task.template.centuries[0], 40)


@pytest.mark.parametrize("task", TASKS_, ids=IDS)
def test_sampling_is_seeded_and_balanced(gpt2_tok, task):
    ds = task.build(gpt2_tok, n=250, seed=3)
    again = task.build(gpt2_tok, n=250, seed=3)
    assert torch.equal(ds.clean, again.clean) and ds.metadata == again.metadata
    valid = Vocabulary(gpt2_tok).valid_years(task.template.centuries)
    values = set().union(*map(set, valid.values()))
    counts = Counter(m["yy"] for m in ds.metadata)
    assert set(counts) == values and max(counts.values()) - min(counts.values()) <= 1


def _pd_loop(p: list[float], yy: int, direction: str) -> float:
    right = [y > yy if direction == "greater" else y < yy for y in range(100)]
    return sum(p[y] for y in range(100) if right[y]) - sum(p[y] for y in range(100) if not right[y])


def test_signed_pd_and_cs_match_a_python_loop():
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(32, 100, generator=g, dtype=torch.float64), -1)
    yy = torch.randint(2, 99, (32,), generator=g)
    for direction in ("greater", "less"):
        pd, cs = probability_difference(p, yy, direction), cutoff_sharpness(p, yy, direction)
        for i in range(32):
            row, y = p[i].tolist(), int(yy[i])
            assert abs(float(pd[i]) - _pd_loop(row, y, direction)) < 1e-12
            sign = 1 if direction == "greater" else -1
            assert abs(float(cs[i]) - sign * (row[y + 1] - row[y - 1])) < 1e-12
    below = torch.zeros(1, 100, dtype=torch.float64)
    below[0, 10] = 1.0  # all mass below YY = 50: the less-than answer
    assert probability_difference(below, torch.tensor([50]), "less").tolist() == [1.0]
    assert probability_difference(below, torch.tensor([50]), "greater").tolist() == [-1.0]


@pytest.mark.parametrize("task", TASKS_, ids=IDS)
def test_metrics_on_a_model_match_a_python_loop(gpt2_model, task):
    tok = gpt2_model.tokenizer
    ds = task.build(tok, n=4, seed=4)
    forward = model_forward(gpt2_model)
    reported = task.evaluate(forward, ds)
    year_ids = [tok.convert_tokens_to_ids(f"{y:02d}") for y in range(100)]
    direction = task.template.direction
    for i in range(0, len(ds), 3):
        with torch.no_grad():
            probs = torch.softmax(gpt2_model.bridge(ds.clean[i:i + 1])[0, -1].double(), -1)
        p = [float(probs[t]) for t in year_ids]
        yy = ds.metadata[i]["yy"]
        assert abs(float(reported["probability_difference"][i]) - _pd_loop(p, yy, direction)) < 1e-5
        cs = p[yy + 1] - p[yy - 1]
        assert abs(float(reported["cutoff_sharpness"][i]) - (cs if direction == "greater" else -cs)) < 1e-5
    single = task.metric(answer_logits(forward(ds.clean), ds), ds)
    assert torch.allclose(single, reported["probability_difference"], atol=1e-6)


def test_less_than_flips_the_sign_of_the_same_prompts(gpt2_model):
    """The less-than PD is minus the greater-than PD of the same probabilities, except that both count p(YY) as wrong."""
    tok = gpt2_model.tokenizer
    ended = next(t for t in TASKS_ if t.name == "less-than-ended")
    ds = ended.build(tok, n=6, seed=0)
    probs = torch.softmax(answer_logits(model_forward(gpt2_model)(ds.clean), ds).double(), -1)
    p = probs[:, [tok.convert_tokens_to_ids(f"{y:02d}") for y in range(100)]]
    yy = torch.tensor([m["yy"] for m in ds.metadata])
    at_yy = p[torch.arange(len(ds)), yy]
    # greater counts y == YY as wrong, less counts it as wrong too: less = -greater - 2 p(YY)
    assert torch.allclose(probability_difference(p, yy, "less"), -probability_difference(p, yy) - 2 * at_yy)
    assert torch.allclose(ended.metric(answer_logits(model_forward(gpt2_model)(ds.clean), ds), ds).double(),
                          probability_difference(p, yy, "less"), atol=1e-6)


def test_base_task_is_unchanged():
    assert GreaterThan.template.direction == "greater" and GreaterThan.name == "greater-than"
