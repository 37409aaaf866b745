"""Metrics over several positions, the KL metric, zero and mean-positions ablation (issue 12)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from circuits.engine.ablation import reference, static_reference
from circuits.data.dataset import PromptDataset
from circuits.engine.engine import GraphEngine
from circuits.circuit.faithfulness import faithfulness, reference_outputs
from circuits.methods.metrics import KLMetric, build_metric
from circuits.models import load_model
from circuits.models.planted import ground_truth
from circuits.registry import get_method, get_task
from circuits.methods.base import MethodOptions
from tests.cli_helpers import assert_user_error, invoke

FIXTURE = Path(__file__).parent / "data" / "planted_scores_6051453.json"


@pytest.fixture(scope="module")
def planted(one_thread):
    loaded = load_model("planted")
    task = get_task("greater-than")
    return GraphEngine.from_model(loaded), task, loaded


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


@pytest.mark.parametrize("key", ["eap/corrupted", "eap-ig/mean", "path-patching/corrupted",
                                 pytest.param("activation-patching/corrupted", marks=pytest.mark.slow),
                                 pytest.param("eap-ig/corrupted", marks=pytest.mark.slow),
                                 pytest.param("path-patching/mean", marks=pytest.mark.slow)])
def test_gpt2_tokenizer_scores_match_the_previous_release(planted, key):
    """With GPT-2's tokenizer (one answer position) every score is what commit 6051453 computed."""
    engine, task, loaded = planted
    old = json.loads(FIXTURE.read_text())
    data = task.build(loaded.tokenizer, n=old["n"], seed=old["seed"])
    assert data.answer_pos.ndim == 1
    method, ablation = key.split("/")
    s = get_method(method).score(engine, data, task.metric, MethodOptions(ablation=ablation, neurons=("m1",)))
    want = old["methods"][key]
    got = s.edge_dict()
    if method == "activation-patching":
        # Since 6051453 activation patching also scores `input` (issue 11), so its edges are new;
        # everything the old release scored is unchanged.
        new = {k: v for k, v in got.items() if k.startswith("input->")}
        assert new and all(v == s.node_scores["input"] for v in new.values()) and s.node_scores["input"] != 0.0
        got = {k: v for k, v in got.items() if k not in new}
    assert {k for k, v in got.items() if v != 0.0} == set(want["edges"])
    assert all(_close(got[k], v) for k, v in want["edges"].items())
    assert all(_close(s.node_scores[k], v) for k, v in want["nodes"].items())
    for mlp, rows in want["neurons"].items():
        assert [i for i, _ in s.neuron_scores[mlp]] == [i for i, _ in rows]
        assert all(_close(x, y) for (_, x), (_, y) in zip(s.neuron_scores[mlp], rows))


def test_gpt2_tokenizer_metric_and_faithfulness_match_the_previous_release(planted):
    engine, task, loaded = planted
    old = json.loads(FIXTURE.read_text())
    data = task.build(loaded.tokenizer, n=old["n"], seed=old["seed"])
    metric = task.metric(engine.run(data.clean, data.answer_pos).logits, data)
    assert all(_close(float(a), b) for a, b in zip(metric, old["metric"]))
    keep = engine.graph.valid_mask().clone()
    torch.manual_seed(0)
    keep &= torch.rand(keep.shape) < 0.5
    f = faithfulness(engine, data, task.metric, keep)
    want = old["faithfulness_random_half"]
    assert all(_close(getattr(f, k), v) for k, v in want.items())


def _two_positions(data: PromptDataset, a: int, b: int) -> PromptDataset:
    pos = torch.stack([torch.full((len(data),), a), torch.full((len(data),), b)], 1)
    return PromptDataset(clean=data.clean, corrupted=data.corrupted, answer_pos=pos, metadata=data.metadata,
                         task=data.task, info=data.info)


def test_logits_and_eap_over_several_positions(planted):
    """run(...).logits is [b, k, V]; EAP of a metric summed over two positions is the sum of the
    single-position EAPs (the logits' gradient is placed, and accumulated, at every position)."""
    engine, task, loaded = planted
    data = task.build(loaded.tokenizer, n=4, seed=1)
    last = int(data.answer_pos[0])
    one = lambda pos: PromptDataset(clean=data.clean, corrupted=data.corrupted,  # noqa: E731
                                    answer_pos=torch.full((len(data),), pos), metadata=data.metadata, task=data.task,
                                    info=data.info)
    both = _two_positions(data, last - 2, last)
    logits = engine.run(both.clean, both.answer_pos).logits
    assert logits.shape == (4, 2, engine.w.W_U.shape[1])
    torch.testing.assert_close(logits[:, 0], engine.run(data.clean, one(last - 2).answer_pos).logits)
    torch.testing.assert_close(logits[:, 1], engine.run(data.clean, data.answer_pos).logits)

    def pd_at(k):
        return lambda lg, ds: task.metric(lg if lg.ndim == 2 else lg[:, k], ds)

    eap = get_method("eap")
    total = eap.score(engine, both, lambda lg, ds: pd_at(0)(lg, ds) + pd_at(1)(lg, ds)).edge_scores
    parts = eap.score(engine, one(last - 2), pd_at(0)).edge_scores + eap.score(engine, data, pd_at(1)).edge_scores
    torch.testing.assert_close(total, parts, rtol=1e-5, atol=1e-6)
    twice = eap.score(engine, _two_positions(data, last, last), lambda lg, ds: pd_at(0)(lg, ds) + pd_at(1)(lg, ds))
    torch.testing.assert_close(twice.edge_scores, 2 * eap.score(engine, data, task.metric).edge_scores,
                               rtol=1e-5, atol=1e-6)


def test_kl_metric(planted):
    """Zero for the clean model, the plain formula for a patched run, and found by id in any subset."""
    engine, task, loaded = planted
    data = task.build(loaded.tokenizer, n=6, seed=2)
    kl = build_metric("kl", task, engine, data)
    assert isinstance(kl, KLMetric)
    clean = engine.run(data.clean, data.answer_pos).logits
    assert float(kl(clean, data).abs().max()) < 1e-6
    corrupted = engine.run(data.corrupted, data.answer_pos).logits
    p, q = torch.softmax(clean.double(), -1), torch.softmax(corrupted.double(), -1)
    want = torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(p)).sum(-1)  # 0 log 0 = 0
    torch.testing.assert_close(kl(corrupted, data).double(), want, rtol=1e-3, atol=1e-5)
    part = data.subset([4, 1])
    torch.testing.assert_close(kl(corrupted[[4, 1]], part).double(), want[[4, 1]], rtol=1e-3, atol=1e-5)
    both = _two_positions(data, 3, int(data.answer_pos[0]))
    kl2 = build_metric("kl", task, engine, both)
    assert kl2(engine.run(both.corrupted, both.answer_pos).logits, both).shape == (6,)
    f = faithfulness(engine, data, kl, engine.graph.valid_mask())
    assert f.m_full < 1e-6 < f.m_empty and f.f == pytest.approx(1.0)


@pytest.mark.parametrize("budget_rows", [0, 2, 6])
def test_kl_metric_within_a_memory_budget(planted, budget_rows):
    """The clean log-probabilities kept are bounded by ``cache_bytes``; prompts past it are run again,
    and the values equal those of a metric that keeps everything (also for a repeated batch)."""
    engine, task, loaded = planted
    data = task.build(loaded.tokenizer, n=6, seed=2)
    full = KLMetric.from_engine(engine, data)
    row = full.kept[int(data.ids[0])]
    small = KLMetric.from_engine(engine, data, batch_size=2, cache_bytes=budget_rows * row.numel() * row.element_size())
    assert len(small.kept) == budget_rows and small.kept_bytes <= small.cache_bytes
    corrupted = engine.run(data.corrupted, data.answer_pos).logits
    for index in ([0, 1, 2, 3, 4, 5], [5, 0], [3, 4, 3, 4]):
        part = data.subset(index)
        torch.testing.assert_close(small(corrupted[index], part), full(corrupted[index], part), rtol=1e-5, atol=1e-5)
    # filling the cache (batches of 2 until the budget), then one pass per call that misses it
    assert small.clean_passes == {0: 0 + 3, 2: 1 + 3, 6: 3 + 0}[budget_rows]


def test_zero_and_mean_positions_references(planted):
    engine, task, loaded = planted
    data = task.build(loaded.tokenizer, n=5, seed=0)
    S, p, d = engine.graph.n_senders, data.clean.shape[1], engine.w.d_model
    zero = reference_outputs(engine, data, ablation="zero")
    assert zero.shape == (S, 5, p, d) and float(zero.abs().max()) == 0.0
    outs = engine.run(data.clean, data.answer_pos, collect=True).outputs
    mean_pos = reference_outputs(engine, data, ablation="mean-positions")
    torch.testing.assert_close(mean_pos, outs.mean((1, 2), keepdim=True).expand_as(outs))
    torch.testing.assert_close(reference_outputs(engine, data, ablation="mean"), outs.mean(1, keepdim=True).expand_as(outs))
    shared = static_reference(engine, data, "zero", hidden_layers=(1,))
    ref = reference(engine, data, "zero", means=shared, hidden_layers=(1,))
    assert ref.hidden[1].shape == (5, p, engine.w.d_mlp) and float(ref.hidden[1].abs().max()) == 0.0
    # zero ablation of every edge: the logits come from the biases alone
    empty = engine.run(data.clean, data.answer_pos,
                       patch=__import__("circuits.engine", fromlist=["Patch"]).Patch(
                           keep=torch.zeros(S, engine.graph.n_receivers), reference=zero)).logits
    w = engine.w
    resid = w.b_O.sum(0) + w.b_out.sum(0)
    x = resid - resid.mean()
    want = (x / (x.pow(2).mean() + w.eps).sqrt()) * w.lnf_w + w.lnf_b
    torch.testing.assert_close(empty, (want @ w.W_U + w.b_U).expand_as(empty), rtol=1e-4, atol=1e-4)


def test_kl_with_corrupted_ablation_recovers_the_planted_circuit(planted):
    """--metric kl, corrupted ablation: the top |truth| edges are the ground truth (recall 1.0)."""
    from circuits.circuit.discover import SelectionSpec, discover

    engine, task, loaded = planted
    data = task.build(loaded.tokenizer, n=16, seed=3)
    truth = set(ground_truth("planted")["edges"])
    kl = build_metric("kl", task, engine, data)
    result = discover(engine, data, kl, get_method("eap-ig"), MethodOptions(), SelectionSpec("top-k", len(truth)),
                      curve=False)
    kept = set(result.kept_edges())
    assert len(kept & truth) / len(truth) == 1.0 and kept == truth
    assert result.faithfulness.f > 0.99


def test_discover_records_metric_and_ablation(tmp_path):
    out = tmp_path / "run"
    code, _, err = invoke("discover", "greater-than", "--model", "planted", "--method", "eap-ig", "--n", "8",
                          "--metric", "kl", "--ablation", "zero", "--top-k", "20", "--out", str(out))
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metric"] == "kl" and manifest["ablation"] == "zero"
    graph = json.loads((out / "circuit.json").read_text())["graph"]
    assert graph["metric"] == "kl" and graph["ablation"] == "zero"
    code, stdout, err = invoke("evaluate-circuit", str(out), "--json")
    assert code == 0, err
    again = json.loads(stdout)
    assert again["metric"] == "kl" and again["ablation"] == "zero"
    assert math.isclose(again["faithfulness"], manifest["faithfulness"], rel_tol=1e-6, abs_tol=1e-9)


def test_unknown_metric_is_a_one_line_error(tmp_path):
    code, _, err = invoke("discover", "greater-than", "--model", "planted", "--method", "eap", "--metric", "l2",
                          "--out", str(tmp_path / "r"))
    assert_user_error(code, err, "--metric")
