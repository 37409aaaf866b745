"""circuits.circuit.faithfulness: reference outputs, circuit metric, f, the curve, CPR and CMD."""
from __future__ import annotations

import math

import pytest
import torch

from circuits.data.dataset import PromptDataset
from circuits.engine.engine import GraphEngine, Patch
from circuits.errors import CircuitsError
from circuits.circuit.faithfulness import (
    FRACTIONS, CircuitEvaluator, circuit_metric, curve_area, edges_for_fraction, faithfulness, faithfulness_curve,
    faithfulness_curves, reference_outputs,
)
from circuits.models.weights import ModelWeights
from circuits.methods.base import Scores
from circuits.circuit.select import prune, top_k_mask

VOCAB = 40


pytestmark = pytest.mark.usefixtures("one_thread")


def random_weights(*, family: str = "gpt2", L: int = 2, H: int = 4, d: int = 32, m: int = 48, seed: int = 0,
                   dtype=torch.float64) -> ModelWeights:
    """A random model in the engine's layout: GPT-2 style (LN, learned positions, GELU) or
    Llama style (RMSNorm, rotary, gated SiLU, 2 key/value heads)."""
    g = torch.Generator().manual_seed(seed)
    e = d // H
    K = H if family == "gpt2" else 2

    def rnd(*shape, scale=0.3):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale)

    llama = family == "llama"
    return ModelWeights(
        W_E=rnd(VOCAB, d, scale=1.0), W_pos=None if llama else rnd(16, d, scale=0.5),
        W_Q=rnd(L, H, d, e), b_Q=rnd(L, H, e, scale=0.1), W_K=rnd(L, K, d, e), b_K=rnd(L, K, e, scale=0.1),
        W_V=rnd(L, K, d, e), b_V=rnd(L, K, e, scale=0.1), W_O=rnd(L, H, e, d), b_O=rnd(L, d, scale=0.1),
        W_in=rnd(L, d, m), b_in=rnd(L, m, scale=0.1), W_gate=rnd(L, d, m) if llama else None,
        W_out=rnd(L, m, d), b_out=rnd(L, d, scale=0.1), W_U=rnd(d, VOCAB), b_U=rnd(VOCAB, scale=0.1),
        ln1_w=1 + rnd(L, d, scale=0.1), ln1_b=None if llama else rnd(L, d, scale=0.1),
        ln2_w=1 + rnd(L, d, scale=0.1), ln2_b=None if llama else rnd(L, d, scale=0.1),
        lnf_w=1 + rnd(d, scale=0.1), lnf_b=None if llama else rnd(d, scale=0.1),
        eps=1e-5, norm="RMS" if llama else "LN", act_fn="silu" if llama else "gelu_new",
        rotary_base=10000.0 if llama else None, rotary_dim=e if llama else 0,
    )


def random_dataset(n: int = 6, p: int = 7, seed: int = 1) -> PromptDataset:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB, (n, p), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2:4] = torch.randint(0, VOCAB, (n, 2), generator=g)
    answer = torch.full((n,), p - 1, dtype=torch.long)
    answer[::2] = p - 2  # not always the last position
    return PromptDataset(clean=clean, corrupted=corrupted, answer_pos=answer, metadata=[{} for _ in range(n)], task="toy")


def logit_diff(logits, dataset):
    return logits[:, 3] - logits[:, 5]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def toy(request):
    engine = GraphEngine(random_weights(family=request.param))
    return engine, random_dataset()


# ---------------------------------------------------------------- slow reference
def _norm(x, w, b, eps, kind):
    if kind == "LN":
        x = x - x.mean(-1, keepdim=True)
    y = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w
    return y + b if b is not None else y


def slow_patched_logits(engine: GraphEngine, tokens, answer_pos, keep, reference):
    """Every receiver input built by hand, edge by edge: the kept senders' outputs of *this* run plus
    the patched senders' reference outputs plus the constant attention biases; each head computed alone."""
    w, g = engine.w, engine.graph
    b, p = tokens.shape
    outs = {0: engine.embed(tokens)}
    const = torch.zeros(w.d_model, dtype=w.W_E.dtype)

    def receiver_input(r):
        x = const.expand(b, p, -1).clone()
        for s in range(g.n_valid_senders(r)):
            x = x + (outs[s] if bool(keep[s, r]) else reference[s])
        return x

    for layer in range(w.n_layers):
        ln = (w.ln1_w[layer], None if w.ln1_b is None else w.ln1_b[layer], w.eps, w.norm)
        for h in range(w.n_heads):
            kvh = int(engine.kv_of_head[h])
            xq, xk, xv = (_norm(receiver_input(g.head_receiver(layer, h, c)), *ln) for c in "qkv")
            q = xq @ w.W_Q[layer, h] + w.b_Q[layer, h]
            k = xk @ w.W_K[layer, kvh] + w.b_K[layer, kvh]
            v = xv @ w.W_V[layer, kvh] + w.b_V[layer, kvh]
            z = engine._attend(q[:, :, None], k[:, :, None], v[:, :, None])[:, :, 0]  # rotary + causal softmax
            outs[g.head_sender(layer, h)] = z @ w.W_O[layer, h]
        const = const + w.b_O[layer]
        x = _norm(receiver_input(g.mlp_receiver(layer)), w.ln2_w[layer], None if w.ln2_b is None else w.ln2_b[layer], w.eps, w.norm)
        outs[g.mlp_sender(layer)] = engine.mlp_hidden(layer, x) @ w.W_out[layer] + w.b_out[layer]
    final = receiver_input(g.logits_receiver)[torch.arange(b), answer_pos]
    return _norm(final, w.lnf_w, w.lnf_b, w.eps, w.norm) @ w.W_U + w.b_U


# ---------------------------------------------------------------- tests
def test_full_circuit_is_one_and_empty_circuit_is_zero(toy):
    engine, ds = toy
    g = engine.graph
    for ablation in ("corrupted", "mean"):
        full = faithfulness(engine, ds, logit_diff, g.valid_mask(), ablation=ablation)
        empty = faithfulness(engine, ds, logit_diff, torch.zeros(g.n_senders, g.n_receivers), ablation=ablation)
        assert abs(full.m_full - full.m_empty) > 1e-3, "the toy model should react to patching"
        assert full.f == pytest.approx(1.0, abs=1e-6) and full.m_circuit == full.m_full
        assert empty.f == pytest.approx(0.0, abs=1e-6) and empty.m_circuit == empty.m_empty


def test_full_metric_is_the_clean_model_and_empty_is_the_reference_model(toy):
    engine, ds = toy
    g = engine.graph
    ref = reference_outputs(engine, ds)
    clean = logit_diff(engine.run(ds.clean, ds.answer_pos).logits, ds).mean()
    corrupted = logit_diff(engine.run(ds.corrupted, ds.answer_pos).logits, ds).mean()
    assert circuit_metric(engine, ds, logit_diff, g.valid_mask(), ref) == pytest.approx(float(clean), abs=1e-9)
    # every edge patched: each receiver sees the corrupted run's residual stream
    assert circuit_metric(engine, ds, logit_diff, torch.zeros(g.n_senders, g.n_receivers), ref) == pytest.approx(float(corrupted), abs=1e-9)


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_patched_run_matches_an_explicit_per_edge_loop(toy, ablation):
    engine, ds = toy
    g = engine.graph
    ref = reference_outputs(engine, ds, ablation=ablation)
    torch.manual_seed(3)
    for density in (0.2, 0.5, 0.9):
        keep = (torch.rand(g.n_senders, g.n_receivers) < density) & g.valid_mask()
        fast = engine.run(ds.clean, ds.answer_pos, patch=Patch(keep=keep.double(), reference=ref)).logits
        slow = slow_patched_logits(engine, ds.clean, ds.answer_pos, keep, ref)
        torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9)
        expected = float(logit_diff(slow, ds).mean())
        assert circuit_metric(engine, ds, logit_diff, keep, ref) == pytest.approx(expected, abs=1e-9)
        assert circuit_metric(engine, ds, logit_diff, keep, ref, batch_size=4) == pytest.approx(expected, abs=1e-9)


def test_reference_outputs(toy):
    engine, ds = toy
    corrupted = reference_outputs(engine, ds)
    torch.testing.assert_close(corrupted, engine.run(ds.corrupted, ds.answer_pos, collect=True).outputs)
    torch.testing.assert_close(reference_outputs(engine, ds, batch_size=4), corrupted)
    mean = reference_outputs(engine, ds, ablation="mean", batch_size=4)
    clean = engine.run(ds.clean, ds.answer_pos, collect=True).outputs
    assert mean.shape == clean.shape
    torch.testing.assert_close(mean, clean.mean(1, keepdim=True).expand_as(clean))
    with pytest.raises(CircuitsError, match="ablation"):
        reference_outputs(engine, ds, ablation="resample")


def test_evaluator_caches_masks(toy):
    engine, ds = toy
    g = engine.graph
    ev = CircuitEvaluator(engine, ds, logit_diff, reference_outputs(engine, ds))
    keep = (torch.rand(g.n_senders, g.n_receivers, generator=torch.Generator().manual_seed(0)) < 0.5) & g.valid_mask()
    a = ev.faithfulness(keep)
    assert ev.runs == 3
    b = ev.faithfulness(keep.double())  # same circuit, other dtype; junk outside the graph is ignored
    c = ev.faithfulness(keep | ~g.valid_mask())
    assert a == b == c and ev.runs == 3
    assert a.f == pytest.approx((a.m_circuit - a.m_empty) / (a.m_full - a.m_empty))


def test_f_is_nan_when_patching_changes_nothing(toy):
    engine, ds = toy
    g = engine.graph
    same = PromptDataset(clean=ds.clean, corrupted=ds.clean, answer_pos=ds.answer_pos, metadata=ds.metadata, task="toy")
    assert math.isnan(faithfulness(engine, same, logit_diff, g.valid_mask()).f)


def test_edges_for_fraction_is_mibs_int_of_the_product():
    assert [edges_for_fraction(x, 110) for x in FRACTIONS] == [0, 0, 0, 1, 2, 5, 11, 22, 55, 110]
    assert [edges_for_fraction(x, 32491) for x in FRACTIONS] == [32, 64, 162, 324, 649, 1624, 3249, 6498, 16245, 32491]
    assert edges_for_fraction(0.29, 100) == 28  # Python's float product truncated, as MIB's int(pct * n)


def _mib_areas(fs):
    """An independent transcription of MIB's evaluate_area_under_curve (linear x): (area under f, area under |1 - f|)."""
    pct = (.001, .002, .005, .01, .02, .05, .1, .2, .5, 1)
    under = from_1 = 0.0
    for i in range(len(fs) - 1):
        width = pct[i + 1] - pct[i]
        from_1 += width * ((abs(1.0 - fs[i]) + abs(1.0 - fs[i + 1])) / 2)
        under += width * ((fs[i] + fs[i + 1]) / 2)
    return under, from_1


@pytest.mark.parametrize("fs", [
    [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0, 1.0, 1.0, 1.0],
    [-0.2, 0.4, 1.3, 1.8, 2.0, 1.6, 1.2, 1.1, 1.0, 1.0],
    [0.0] * 10,
])
def test_curve_area_matches_mibs_formula_on_fixed_points(fs):
    import numpy as np

    xs = list(FRACTIONS)
    under, from_1 = _mib_areas(fs)
    assert curve_area(xs, fs) == pytest.approx(under, abs=1e-12)
    assert curve_area(xs, [abs(1 - f) for f in fs]) == pytest.approx(from_1, abs=1e-12)
    assert curve_area(xs, fs) == pytest.approx(float(np.trapezoid(fs, xs)), abs=1e-12)


def test_curve_area_is_not_divided_by_the_x_range():
    xs = list(FRACTIONS)
    assert curve_area(xs, [1.0] * 10) == pytest.approx(0.999)  # a perfect curve: 1 - 0.001, as MIB reports it
    assert curve_area([0.0, 0.5, 1.0], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert curve_area([0.2, 0.4], [1.0, 1.0]) == pytest.approx(0.2)
    # by hand: f rises 0 -> 1 -> 2 between 2% and 10%, then stays at 2
    fs = [0, 0, 0, 0, 0, 1, 2, 2, 2, 2]
    assert curve_area(xs, fs) == pytest.approx(0.03 * 0.5 + 0.05 * 1.5 + 0.1 * 2 + 0.3 * 2 + 0.5 * 2)


def test_curve_points_cpr_and_cmd(toy):
    engine, ds = toy
    g = engine.graph
    torch.manual_seed(0)
    scores = Scores(graph=g, method="random", edge_scores=torch.randn(g.n_senders, g.n_receivers) * g.valid_mask())
    ev = CircuitEvaluator(engine, ds, logit_diff, reference_outputs(engine, ds))
    calls = []
    curves = faithfulness_curves(ev, scores, progress=lambda d, t, m: calls.append((d, t)))
    for curve, ranking in ((curves.signed, "signed"), (curves.abs, "abs")):
        assert curve.ranking == ranking
        assert [p.fraction for p in curve.points] == list(FRACTIONS)
        assert [p.k for p in curve.points] == [int(x * g.n_edges) for x in FRACTIONS]
        for p in curve.points:
            mask = prune(top_k_mask(scores, p.k, ranking), g)
            assert p.edges == int(mask.sum()) <= p.k
            assert p.faithfulness == ev.faithfulness(mask).f
        assert curve.points[-1].faithfulness == 1.0 and curve.points[-1].edges == g.n_edges
    assert [p.edges for p in curves.signed.points] != [p.edges for p in curves.abs.points] or \
        [p.faithfulness for p in curves.signed.points] != [p.faithfulness for p in curves.abs.points]
    cpr, _ = _mib_areas([p.faithfulness for p in curves.signed.points])
    _, cmd = _mib_areas([p.faithfulness for p in curves.abs.points])
    assert curves.cpr == pytest.approx(cpr, abs=1e-12) and curves.cmd == pytest.approx(cmd, abs=1e-12)
    assert calls[-1] == (2 * (len(FRACTIONS) + 2), 2 * (len(FRACTIONS) + 2))


def test_signed_ranking_puts_the_most_negative_score_first(toy):
    """Our score is the metric's change when the edge is patched: the most negative helps most and is MIB's first."""
    engine, _ = toy
    g = engine.graph
    (s0, r0), (s1, r1) = g.edges()[:2]
    values = torch.zeros(g.n_senders, g.n_receivers)
    values[s0, r0], values[s1, r1] = 5.0, -3.0
    scores = Scores(graph=g, method="fixed", edge_scores=values)
    assert bool(top_k_mask(scores, 1, "signed")[s1, r1]) and bool(top_k_mask(scores, 1, "abs")[s0, r0])


def test_a_perfect_ranking_gives_the_whole_area_and_cmd_zero():
    """Heads 1.. of each layer write nothing (W_O = 0), so edges touching them never matter: ranking
    every other edge first reaches f = 1 at that fraction, and the curve is flat at 1 after it."""
    import dataclasses

    w = random_weights(seed=2)
    W_O = w.W_O.clone()
    W_O[:, 1:] = 0
    engine = GraphEngine(dataclasses.replace(w, W_O=W_O))
    ds = random_dataset(seed=4)
    g = engine.graph
    dead = {g.head_sender(layer, h) for layer in range(g.n_layers) for h in range(1, g.n_heads)}
    dead_receivers = {g.head_receiver(layer, h, c) for layer in range(g.n_layers) for h in range(1, g.n_heads) for c in "qkv"}
    values = torch.zeros(g.n_senders, g.n_receivers)
    for s, r in g.edges():
        values[s, r] = 0.0 if (s in dead or r in dead_receivers) else 1.0 + 0.01 * s
    live = int((values != 0).sum())
    scores = Scores(graph=g, method="planted", edge_scores=values)
    ev = CircuitEvaluator(engine, ds, logit_diff, reference_outputs(engine, ds))
    assert abs(ev.m_full - ev.m_empty) > 1e-3
    curve = faithfulness_curve(ev, scores, fractions=(live / g.n_edges, 1.0))
    assert curve.points[0].k == curve.points[0].edges == live
    assert curve.points[0].faithfulness == pytest.approx(1.0, abs=1e-9)
    width = 1.0 - live / g.n_edges  # MIB's area is not divided by the x range
    assert curve.area == pytest.approx(width, abs=1e-9) and curve.area_from_one == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------- against the TransformerBridge
def test_circuit_metric_matches_the_hook_based_reference(tiny_gpt2_dir):
    reference = pytest.importorskip("reference", reason="tests/reference.py (hook-based edge patching) is not written yet")
    if not hasattr(reference, "edge_patched_logits"):
        pytest.skip("tests/reference.py has no edge_patched_logits")
    from circuits.models import load_model
    from circuits.registry import get_task

    loaded = load_model(str(tiny_gpt2_dir))
    engine = GraphEngine.from_model(loaded)
    task = get_task("greater-than")
    ds = task.build(loaded.tokenizer, n=4, seed=0)
    g = engine.graph
    keep = (torch.rand(g.n_senders, g.n_receivers, generator=torch.Generator().manual_seed(5)) < 0.6) & g.valid_mask()
    patched = sorted(g.edge_name(s, r) for s, r in g.edges() if not keep[s, r])
    logits = reference.edge_patched_logits(loaded.bridge, ds.clean, ds.corrupted, patched)
    if logits.dim() == 3:
        logits = logits[torch.arange(len(ds)), ds.answer_pos]
    ref = reference_outputs(engine, ds)
    fast = engine.run(ds.clean, ds.answer_pos, patch=Patch(keep=keep.float(), reference=ref)).logits
    torch.testing.assert_close(fast, logits.float(), rtol=1e-4, atol=1e-4)
    expected = float(task.metric(logits.float(), ds).mean())
    got = circuit_metric(engine, ds, task.metric, keep, ref)
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-7)
