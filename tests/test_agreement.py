"""``circuits agreement``: figures against plainly computed ones, and its one-line errors."""
from __future__ import annotations

import json
import math
import random

import pytest

from circuits.graphs.compare import write_scores
from cli_helpers import assert_user_error, invoke

EDGES = [f"a0.h{h}->m{layer}" for h in range(4) for layer in range(1, 26)]  # 100 edge names


def make_run(folder, scores, *, method="eap", model="planted", seconds=2.0):
    folder.mkdir()
    write_scores(scores, folder / "scores.tsv")
    (folder / "manifest.json").write_text(json.dumps({"method": method, "model": model, "timings": {"scoring": seconds}}))
    return folder


def plain_pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def plain_ranks(x):
    return [sum(1 for b in x if b < a) + (sum(1 for b in x if b == a) + 1) / 2 for a in x]


@pytest.fixture
def runs(tmp_path):
    rng = random.Random(0)
    gold = {e: rng.gauss(0, 1) for e in EDGES[:60]}
    gold.update({e: None for e in EDGES[60:]})  # unscored by the gold run
    est = {e: (gold[e] or 0.0) * 0.5 + rng.gauss(0, 0.3) for e in EDGES}
    est[EDGES[0]] = est[EDGES[1]]  # a tie for the ranks
    g = make_run(tmp_path / "gold", gold, method="edge-patching", seconds=8.0)
    r = make_run(tmp_path / "eap", est, seconds=2.0)
    return g, r, gold, est


def test_figures_equal_plain_formulas(runs):
    from circuits.bench.agreement import compare_runs

    g, r, gold, est = runs
    (row,) = compare_runs([r], g)
    edges = [e for e in EDGES if gold[e] is not None]
    x, y = [est[e] for e in edges], [gold[e] for e in edges]
    assert row.edges == 60
    assert row.pearson == pytest.approx(plain_pearson(x, y), abs=1e-12)
    assert row.spearman == pytest.approx(plain_pearson(plain_ranks(x), plain_ranks(y)), abs=1e-12)
    assert row.sign == pytest.approx(sum((a > 0) == (b > 0) for a, b in zip(x, y)) / 60)
    top3 = lambda v: {e for e, _ in sorted(zip(edges, v), key=lambda p: -abs(p[1]))[:3]}  # 5% of 60
    assert row.top_5 == pytest.approx(len(top3(x) & top3(y)) / 3)
    top1 = lambda v: max(zip(edges, v), key=lambda p: abs(p[1]))[0]  # 1% of 60: one edge
    assert row.top_1 == float(top1(x) == top1(y))
    assert row.cost == pytest.approx(0.25)


def test_the_gold_run_agrees_with_itself(runs):
    from circuits.bench.agreement import compare_runs

    g, *_ = runs
    (row,) = compare_runs([g], g)
    assert (row.pearson, row.spearman, row.sign, row.top_1, row.top_5, row.cost) == (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)


def test_cli_table_and_json(runs):
    g, r, *_ = runs
    code, out, err = invoke("agreement", str(r), str(g), "--gold", str(g))
    assert code == 0, err
    assert "pearson" in out.splitlines()[0] and "edge-patching" in out and "0.250x" in out
    code, out, err = invoke("agreement", str(r), "--gold", str(g), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [row["method"] for row in data["runs"]] == ["eap"] and data["runs"][0]["edges"] == 60


def test_user_errors(runs, tmp_path):
    g, r, gold, est = runs
    code, _, err = invoke("agreement", str(tmp_path / "nothing"), "--gold", str(g))
    assert_user_error(code, err, "not a run folder")
    other = make_run(tmp_path / "other", est, model="gpt2")
    code, _, err = invoke("agreement", str(other), "--gold", str(g))
    assert_user_error(code, err, "compare runs of one model")
    small = make_run(tmp_path / "small", {e: 1.0 for e in EDGES[:10]})
    code, _, err = invoke("agreement", str(small), "--gold", str(g))
    assert_user_error(code, err, "did not score 50 of the gold run's edges")
    empty = make_run(tmp_path / "empty", {e: None for e in EDGES}, method="edge-patching")
    code, _, err = invoke("agreement", str(r), "--gold", str(empty))
    assert_user_error(code, err, "scored no edges")
