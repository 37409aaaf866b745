"""The greater-than task: prompts, corruption, sampling, prompt files and the PD / CS metrics."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.data.evaluation import model_forward
from circuits.models import load_model
from circuits.data.task import answer_logits
from circuits.tasks.greater_than import (
    CENTURIES, TEMPLATE, GreaterThan, Vocabulary, cutoff_sharpness, load_nouns, probability_difference,
)

GT = GreaterThan()


def _tokens(tok, ids) -> list[str]:
    return tok.convert_ids_to_tokens([int(i) for i in ids])


def _expected_years(tok) -> dict[int, list[int]]:
    """Written out independently: years whose ' XXYY' is the tokens ' XX' + 'YY', minus each century's first and last."""
    out = {}
    for xx in CENTURIES:
        ok = [yy for yy in range(2, 99)
              if _tokens(tok, tok.encode(f" {xx}{yy:02d}", add_special_tokens=False)) == [f"Ġ{xx}", f"{yy:02d}"]]
        out[xx] = ok[1:-1]
    return out


@pytest.fixture(scope="module")
def gpt2_model(tiny_gpt2_dir):
    return load_model(str(tiny_gpt2_dir))


# ---------------------------------------------------------------- prompts (GPT-2 tokenizer)
def test_nouns_are_single_gpt2_tokens(gpt2_tok):
    nouns = load_nouns()
    assert len(nouns) >= 100 and len(set(nouns)) == len(nouns)
    for noun in nouns:
        ids = gpt2_tok.encode(" " + noun)
        assert len(ids) == 1 and _tokens(gpt2_tok, ids) == ["Ġ" + noun], noun


def test_prompts_follow_the_template_with_bos(gpt2_tok):
    ds = GT.build(gpt2_tok, n=300, seed=0)
    assert ds.task == "greater-than" and len(ds) == 300 and ds.info["mode"] == "token"
    seq = ds.clean.shape[1]
    nouns = set(load_nouns())
    for row, corrupt, meta, pos in zip(ds.clean, ds.corrupted, ds.metadata, ds.answer_pos):
        assert int(row[0]) == 50256  # <|endoftext|>
        text = TEMPLATE.format(noun=meta["noun"], xx=meta["century"], yy=meta["yy"])
        assert gpt2_tok.decode(row) == "<|endoftext|>" + text
        assert len(gpt2_tok.encode(text)) + 1 == seq  # every prompt has the same length, no padding
        assert int(pos) == seq - 1
        assert meta["noun"] in nouns and meta["year"] == meta["century"] * 100 + meta["yy"]
        assert gpt2_tok.decode(corrupt) == "<|endoftext|>" + TEMPLATE.format(noun=meta["noun"], xx=meta["century"], yy=1)


def test_years_are_valid_and_trimmed(gpt2_tok):
    expected = _expected_years(gpt2_tok)
    assert Vocabulary(gpt2_tok).valid_years() == expected
    assert all(min(v) > 2 and max(v) < 98 for v in expected.values())  # the first and last valid year are gone
    ds = GT.build(gpt2_tok, n=1000, seed=1)
    seen = set()
    for meta in ds.metadata:
        assert meta["century"] in CENTURIES and 2 <= meta["yy"] <= 98
        assert meta["yy"] in expected[meta["century"]]
        seen.add(meta["yy"])
    assert seen == set().union(*map(set, expected.values()))  # every valid YY is sampled


def test_corruption_only_sets_yy_to_01(gpt2_tok):
    ds = GT.build(gpt2_tok, n=200, seed=2)
    yy_pos = ds.info["yy_pos"]
    id01 = gpt2_tok.encode("01")
    assert len(id01) == 1
    for clean, corrupt, meta in zip(ds.clean, ds.corrupted, ds.metadata):
        diff = (clean != corrupt).nonzero().flatten().tolist()
        assert diff == [yy_pos]
        assert _tokens(gpt2_tok, [clean[yy_pos]]) == [f"{meta['yy']:02d}"]
        assert int(corrupt[yy_pos]) == id01[0]


def test_sampling_is_seeded(gpt2_tok):
    a, b, c = (GT.build(gpt2_tok, n=50, seed=s) for s in (7, 7, 8))
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupted, b.corrupted) and a.metadata == b.metadata
    assert not torch.equal(a.clean, c.clean)


@pytest.mark.parametrize("n", [95, 300, 1001])
def test_sampling_is_balanced_over_yy(gpt2_tok, n):
    ds = GT.build(gpt2_tok, n=n, seed=3)
    n_values = len(set().union(*map(set, _expected_years(gpt2_tok).values())))
    counts = Counter(m["yy"] for m in ds.metadata)
    assert sum(counts.values()) == n
    if n >= n_values:
        assert len(counts) == n_values
    else:
        assert len(counts) == n and set(counts.values()) == {1}
    lowest = min(counts.values()) if len(counts) == n_values else 0
    assert max(counts.values()) - lowest <= 1


def test_n_must_be_positive(gpt2_tok):
    with pytest.raises(CircuitsError, match="at least 1"):
        GT.build(gpt2_tok, n=0, seed=0)


# ---------------------------------------------------------------- prompt files
def test_data_files_csv_and_jsonl(tmp_path, gpt2_tok):
    rows = [("war", 17, 32), ("siege", 14, 55), ("drought", 16, 90)]
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("noun,century,yy\n" + "".join(f"{n},{c},{y}\n" for n, c, y in rows))
    jsonl_path = tmp_path / "p.jsonl"
    jsonl_path.write_text("\n".join(json.dumps({"clean": ("<|endoftext|>" if i % 2 else "") +
                                                TEMPLATE.format(noun=n, xx=c, yy=y)}) for i, (n, c, y) in enumerate(rows)) + "\n\n")
    clean_csv = tmp_path / "clean.csv"
    clean_csv.write_text("clean\n" + "".join(TEMPLATE.format(noun=n, xx=c, yy=y) + "\n" for n, c, y in rows))
    for path in (csv_path, jsonl_path, clean_csv):
        ds = GT.build(gpt2_tok, n=10, seed=0, data=path)
        assert [(m["noun"], m["century"], m["yy"]) for m in ds.metadata] == rows
        for row, (n, c, y) in zip(ds.clean, rows):
            assert row.tolist() == [50256] + gpt2_tok.encode(TEMPLATE.format(noun=n, xx=c, yy=y))
    assert len(GT.build(gpt2_tok, n=2, seed=0, data=csv_path)) == 2  # --n caps the file


@pytest.mark.parametrize("name, content, fragment", [
    ("missing.csv", None, "not found"),
    ("p.txt", "war,17,32\n", "use .csv or .jsonl"),
    ("p.jsonl", '{"clean": "The war lasted', "not valid JSONL"),
    ("p.jsonl", '["war", 17, 32]\n', "expected a JSON object"),
    ("p.jsonl", '{"noun": "war", "century": 17}\n', "needs a 'clean' prompt"),
    ("p.csv", "noun,century,yy\nwar,seventeen,32\n", "needs a 'clean' prompt"),
    ("p.csv", "clean\nThe war began in 1732\n", "does not follow the template"),
    ("p.csv", "noun,century,yy\nwar,17,99\n", "out of range"),
    ("p.csv", "noun,century,yy\nwar,17,00\n", "out of range"),
    ("p.csv", "noun,century,yy\n", "holds no prompts"),
    ("p.jsonl", '{"noun": "war", "century": 18, "yy": 50}\n', "does not split"),  # ' 1850' is one token
    ("p.csv", "noun,century,yy\nwar,17,32\nhippopotamus,17,33\n", "different lengths"),
])
def test_bad_data_files(tmp_path, gpt2_tok, name, content, fragment):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(CircuitsError, match=fragment):
        GT.build(gpt2_tok, n=10, seed=0, data=path)


def test_non_utf8_data_file(tmp_path, gpt2_tok):
    path = tmp_path / "p.csv"
    path.write_bytes(b"noun,century,yy\n\xff\xfe,17,32\n")
    with pytest.raises(CircuitsError, match="UTF-8"):
        GT.build(gpt2_tok, n=10, seed=0, data=path)


# ---------------------------------------------------------------- metrics
def _pd_loop(p: list[float], yy: int) -> float:
    return sum(p[y] for y in range(100) if y > yy) - sum(p[y] for y in range(100) if y <= yy)


def test_pd_and_cs_match_a_python_loop():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(64, 100, generator=g, dtype=torch.float64), -1)
    yy = torch.randint(2, 99, (64,), generator=g)
    pd, cs = probability_difference(p, yy), cutoff_sharpness(p, yy)
    for i in range(64):
        row, y = p[i].tolist(), int(yy[i])
        assert abs(float(pd[i]) - _pd_loop(row, y)) < 1e-12
        assert abs(float(cs[i]) - (row[y + 1] - row[y - 1])) < 1e-12
    # hand-made: all mass on YY+1 -> PD = 1, CS = 1; all mass on YY -> PD = -1
    one = torch.zeros(2, 100, dtype=torch.float64)
    one[0, 51], one[1, 50] = 1.0, 1.0
    assert probability_difference(one, torch.tensor([50, 50])).tolist() == [1.0, -1.0]
    assert cutoff_sharpness(one, torch.tensor([50, 50])).tolist() == [1.0, 0.0]


def test_token_mode_metrics_on_a_model(gpt2_model):
    tok = gpt2_model.tokenizer
    ds = GT.build(tok, n=40, seed=5)
    forward = model_forward(gpt2_model)
    reported = GT.evaluate(forward, ds)
    assert set(reported) == {"probability_difference", "cutoff_sharpness"}
    year_ids = [tok.convert_tokens_to_ids(f"{y:02d}") for y in range(100)]
    for i in range(0, len(ds), 4):  # one prompt at a time, from the raw logits
        with torch.no_grad():
            logits = gpt2_model.bridge(ds.clean[i:i + 1])[0, -1]
        probs = torch.softmax(logits.double(), -1)
        p = [float(probs[t]) for t in year_ids]
        yy = ds.metadata[i]["yy"]
        assert abs(float(reported["probability_difference"][i]) - _pd_loop(p, yy)) < 1e-5
        assert abs(float(reported["cutoff_sharpness"][i]) - (p[yy + 1] - p[yy - 1])) < 1e-5
    # the single-position metric is the reported PD, exactly
    single = GT.metric(answer_logits(forward(ds.clean), ds), ds)
    assert torch.equal(single, reported["probability_difference"])


def _digit_loop(model, ds, i: int) -> tuple[list[float], list[float], list[list[float]]]:
    """P(YY') = P(tens) x P(units | prompt + tens), one unbatched forward per tens digit; P(digit); P(u | t)."""
    tok = model.tokenizer
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    prompt = ds.clean[i:i + 1, :-1]  # without the teacher-forced tens digit
    with torch.no_grad():
        p_first = torch.softmax(model.bridge(prompt)[0, -1].double(), -1)
        p_tens = [float(p_first[d]) for d in digits]
        p = [0.0] * 100
        units = []
        for t in range(10):
            forced = torch.cat([prompt, torch.tensor([[digits[t]]])], dim=1)
            p_units = torch.softmax(model.bridge(forced)[0, -1].double(), -1)
            units.append([float(p_units[digits[u]]) for u in range(10)])
            for u in range(10):
                p[10 * t + u] = p_tens[t] * float(p_units[digits[u]])
    return p, p_tens, units


def _exact_pd_loop(p_tens, units, yy: int) -> float:
    """The issue's two-digit PD: decades other than t by their tens digit, decade t by its units digit."""
    t, u0 = divmod(yy, 10)
    out = sum((1.0 if d > t else -1.0) * p_tens[d] for d in range(10) if d != t)
    return out + p_tens[t] * sum((1.0 if u > u0 else -1.0) * units[t][u] for u in range(10))


def _check_digit_mode(model, n: int, seed: int, tol: float):
    """year_probabilities, PD, CS and the single-position metric against unbatched loops.

    ``tol``: batched and unbatched float32 forwards differ in the last bits of the logits.
    """
    tok = model.tokenizer
    ds = GT.build(tok, n=n, seed=seed)
    assert ds.info["mode"] == "digits"
    assert _tokens(tok, ds.clean[0, -4:-1]) == ["Ġ", *str(ds.metadata[0]["century"])]
    # one teacher-forced token, the true tens digit, on both prompts; scored at the prompt's end and there
    seq = ds.clean.shape[1]
    assert ds.answer_pos.tolist() == [[seq - 2, seq - 1]] * n
    for row, twin, meta in zip(ds.clean, ds.corrupted, ds.metadata):
        assert _tokens(tok, row[-1:]) == _tokens(tok, twin[-1:]) == [str(meta["yy"] // 10)]
    forward = model_forward(model)
    p = GT.year_probabilities(forward, ds, batch_size=2)  # more than one batch
    assert p.shape == (n, 100)
    reported = GT.evaluate(forward, ds)
    single = GT.metric(answer_logits(forward(ds.clean), ds), ds)
    for i in range(n):
        expected, p_tens, units = _digit_loop(model, ds, i)
        assert max(abs(a - b) for a, b in zip(p[i].tolist(), expected)) < tol
        yy = ds.metadata[i]["yy"]
        exact = _exact_pd_loop(p_tens, units, yy)
        assert abs(float(reported["probability_difference"][i]) - exact) < 10 * tol
        assert abs(float(reported["cutoff_sharpness"][i]) - (expected[yy + 1] - expected[yy - 1])) < 10 * tol
        # the metric (two scored positions) is the same exact PD
        assert abs(float(single[i]) - exact) < 10 * tol


def test_digit_mode_on_a_tiny_llama(tiny_llama_dir, digit_tokenizer):
    model = load_model(str(tiny_llama_dir))
    vocab = Vocabulary(model.tokenizer)
    assert vocab.mode == "digits"
    assert vocab.valid_years() == {xx: list(range(3, 98)) for xx in CENTURIES}  # every split is valid; 02 and 98 dropped
    _check_digit_mode(model, n=3, seed=0, tol=1e-6)


@pytest.mark.slow
def test_digit_mode_on_smollm2(smollm2_loaded):
    _check_digit_mode(smollm2_loaded, n=3, seed=0, tol=1e-5)
    # and SmolLM2 does the task: the reported PD is clearly positive on average
    more = GT.evaluate(model_forward(smollm2_loaded), GT.build(smollm2_loaded.tokenizer, n=8, seed=1))
    assert float(more["probability_difference"].mean()) > 0.5


def test_csv_with_byte_order_mark_and_quotes(tmp_path, gpt2_tok):
    path = tmp_path / "excel.csv"
    path.write_bytes('\ufeffclean,note\n"The war lasted from the year 1732 to the year 17","a, quoted\nnote"\n'.encode("utf-8"))
    ds = GT.build(gpt2_tok, n=5, seed=0, data=path)
    assert [(m["noun"], m["century"], m["yy"]) for m in ds.metadata] == [("war", 17, 32)]
