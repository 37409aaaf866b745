"""Fast methods against slow, obviously correct references on a tiny GPT-2 (float64).

The references use TransformerLens's own hooks on the TransformerBridge, with its per-head
flags (split q/k/v input, attention result, MLP input) switched on, and patch or
differentiate one thing at a time.
"""
from __future__ import annotations

import pytest
import torch

from circuits.engine import GraphEngine, Patch
from circuits.models.weights import cast_weights, extract_weights
from circuits.registry import get_method
from circuits.scores import MethodOptions
from circuits.tasks.greater_than import GreaterThan
from reference import PerHeadFlags

N_LAYERS, N_HEADS = 2, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuits.models.tokenizers import gpt2_tokenizer

    folder = tmp_path_factory.mktemp("peaked-gpt2")
    tok = gpt2_tokenizer()
    torch.manual_seed(0)
    # a large init gives peaked, prompt-dependent predictions, so scores are far from zero
    cfg = GPT2Config(n_layer=N_LAYERS, n_head=N_HEADS, n_embd=32, n_positions=32, vocab_size=len(tok), initializer_range=0.3)
    GPT2LMHeadModel(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float64)
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    engine = GraphEngine(cast_weights(extract_weights(bridge), dtype=torch.float64))
    task = GreaterThan()
    data = task.build(tok, n=6, seed=1)
    return bridge, engine, task, data


def _metric_of(task, data, logits):
    return task.metric(logits[torch.arange(len(data)), data.answer_pos], data).mean()


def _sender_outputs(bridge, tokens):
    """Every sender's output through the bridge's hooks, in the graph's sender order: [S, b, p, d]."""
    _, cache = bridge.run_with_cache(tokens)
    outs = [cache["hook_embed"] + cache["hook_pos_embed"]]
    for layer in range(N_LAYERS):
        outs += list(cache[f"blocks.{layer}.attn.hook_result"].permute(2, 0, 1, 3))
        outs.append(cache[f"blocks.{layer}.hook_mlp_out"])
    return torch.stack(outs).detach()


def _receiver_hooks():
    names = []
    for layer in range(N_LAYERS):
        names += [f"blocks.{layer}.hook_{x}_input" for x in "qkv"] + [f"blocks.{layer}.ln2.hook_in"]
    return names + ["ln_final.hook_in"]


def _receiver_grads(bridge, task, data, resid0=None):
    """Gradients of the mean metric w.r.t. every receiver input, in the graph's receiver order: [R, b, p, d].

    Each receiver hook adds a zero "probe" tensor to its input; the probe's gradient is the
    gradient with respect to that input alone.
    """
    probes = {}

    def probe(name):
        def add(tensor, hook):
            probes[name] = torch.zeros_like(tensor, requires_grad=True)
            return tensor + probes[name]
        return add

    hooks = [(name, probe(name)) for name in _receiver_hooks()]
    if resid0 is not None:
        hooks.insert(0, ("blocks.0.hook_resid_pre", lambda t, hook: resid0.clone()))
    with torch.enable_grad():
        logits = bridge.run_with_hooks(data.clean, fwd_hooks=hooks)
        _metric_of(task, data, logits).backward()
    grads = []
    for layer in range(N_LAYERS):
        for x in "qkv":
            grads += list(probes[f"blocks.{layer}.hook_{x}_input"].grad.permute(2, 0, 1, 3))
        grads.append(probes[f"blocks.{layer}.ln2.hook_in"].grad)
    grads.append(probes["ln_final.hook_in"].grad)
    return torch.stack(grads)


def test_engine_matches_bridge(setup):
    bridge, engine, task, data = setup
    with torch.no_grad():
        ref = bridge(data.clean)[torch.arange(len(data)), data.answer_pos]
    ours = engine.run(data.clean, data.answer_pos).logits
    assert (ours - ref).abs().max() < 1e-9


def test_eap_matches_taylor_term_from_per_head_hooks(setup):
    bridge, engine, task, data = setup
    scores = get_method("eap").score(engine, data, task.metric).edge_scores
    with PerHeadFlags(bridge):
        delta = _sender_outputs(bridge, data.corrupted) - _sender_outputs(bridge, data.clean)
        grads = _receiver_grads(bridge, task, data)
    expected = torch.einsum("sbpd,rbpd->sr", delta, grads) * engine.graph.valid_mask()
    assert scores.abs().max() > 1e-4  # the check below is not vacuous
    assert (scores - expected).abs().max() < 1e-5 * max(1.0, float(expected.abs().max()))
    assert torch.allclose(scores, expected, atol=1e-10, rtol=1e-7)


def test_eap_ig_matches_integrated_hook_gradients(setup):
    bridge, engine, task, data = setup
    steps = 3
    scores = get_method("eap-ig").score(engine, data, task.metric, MethodOptions(ig_steps=steps)).edge_scores
    with PerHeadFlags(bridge):
        clean, corrupted = _sender_outputs(bridge, data.clean), _sender_outputs(bridge, data.corrupted)
        total = sum(_receiver_grads(bridge, task, data, resid0=corrupted[0] + k / steps * (clean[0] - corrupted[0]))
                    for k in range(1, steps + 1)) / steps
    expected = torch.einsum("sbpd,rbpd->sr", corrupted - clean, total) * engine.graph.valid_mask()
    assert torch.allclose(scores, expected, atol=1e-10, rtol=1e-7)


def test_eap_ig_with_one_step_is_eap(setup):
    _, engine, task, data = setup
    eap = get_method("eap").score(engine, data, task.metric).edge_scores
    ig1 = get_method("eap-ig").score(engine, data, task.metric, MethodOptions(ig_steps=1)).edge_scores
    assert torch.allclose(eap, ig1, atol=1e-12)


def test_eap_is_additive_over_batches(setup):
    _, engine, task, data = setup
    whole = get_method("eap").score(engine, data, task.metric).edge_scores
    parts = get_method("eap").score(engine, data, task.metric, MethodOptions(batch_size=4)).edge_scores
    assert torch.allclose(whole, parts, atol=1e-12)


def _patched_metric(bridge, task, data, hooks):
    with torch.no_grad():
        return float(_metric_of(task, data, bridge.run_with_hooks(data.clean, fwd_hooks=hooks)))


def test_activation_patching_matches_one_component_at_a_time(setup):
    bridge, engine, task, data = setup
    result = get_method("activation-patching").score(engine, data, task.metric, MethodOptions(neurons=("m1",), top_neurons=5))
    _, corr = bridge.run_with_cache(data.corrupted)
    base = _patched_metric(bridge, task, data, [])
    for layer in range(N_LAYERS):
        for h in range(N_HEADS):
            def patch_z(z, hook, h=h, layer=layer):
                z = z.clone()
                z[:, :, h] = corr[f"blocks.{layer}.attn.hook_z"][:, :, h]
                return z
            expected = _patched_metric(bridge, task, data, [(f"blocks.{layer}.attn.hook_z", patch_z)]) - base
            assert result.node_scores[f"a{layer}.h{h}"] == pytest.approx(expected, abs=1e-10)
        expected = _patched_metric(bridge, task, data, [(f"blocks.{layer}.hook_mlp_out", lambda t, hook, layer=layer: corr[f"blocks.{layer}.hook_mlp_out"])]) - base
        assert result.node_scores[f"m{layer}"] == pytest.approx(expected, abs=1e-10)
    resid = torch.tensor(result.extra["resid"])
    for layer in range(N_LAYERS):
        for pos in (0, data.info["yy_pos"], data.clean.shape[1] - 1):
            def patch_resid(t, hook, pos=pos, layer=layer):
                t = t.clone()
                t[:, pos] = corr[f"blocks.{layer}.hook_resid_pre"][:, pos]
                return t
            expected = _patched_metric(bridge, task, data, [(f"blocks.{layer}.hook_resid_pre", patch_resid)]) - base
            assert float(resid[layer, pos]) == pytest.approx(expected, abs=1e-10)
    top = result.neuron_scores["m1"]
    assert len(top) == 5 and abs(top[0][1]) >= abs(top[-1][1])
    for neuron, score in top:
        def patch_post(t, hook, neuron=neuron):
            t = t.clone()
            t[:, :, neuron] = corr["blocks.1.mlp.hook_post"][:, :, neuron]
            return t
        expected = _patched_metric(bridge, task, data, [("blocks.1.mlp.hook_post", patch_post)]) - base
        assert score == pytest.approx(expected, abs=1e-10)


def test_path_patching_scores_equal_single_edge_patches(setup):
    """Each explored edge's score is the metric change with that edge alone patched (engine semantics)."""
    _, engine, task, data = setup
    result = get_method("path-patching").score(engine, data, task.metric, MethodOptions(threshold=0.0))
    g = engine.graph
    assert result.info["receivers_explored"] == g.n_senders  # threshold 0: everything is explored
    ref = engine.run(data.corrupted, data.answer_pos, collect=True).outputs
    base = float(task.metric(engine.run(data.clean, data.answer_pos).logits, data).mean())
    for s, r in [(0, g.logits_receiver), (1, g.head_receiver(1, 2, "k")), (g.mlp_sender(0), g.head_receiver(1, 0, "v")), (2, g.mlp_receiver(0))]:
        keep = torch.ones(g.n_senders, g.n_receivers, dtype=torch.float64)
        keep[s, r] = 0
        patched = float(task.metric(engine.run(data.clean, data.answer_pos, patch=Patch(keep, ref)).logits, data).mean())
        assert float(result.edge_scores[s, r]) == pytest.approx(patched - base, abs=1e-10)


def test_mean_ablation_changes_the_reference(setup):
    _, engine, task, data = setup
    corrupted = get_method("eap").score(engine, data, task.metric).edge_scores
    mean = get_method("eap").score(engine, data, task.metric, MethodOptions(ablation="mean")).edge_scores
    assert not torch.allclose(corrupted, mean)
    # with mean ablation, the delta of every sender sums to zero over the prompts; check one edge by hand
    g = engine.graph
    clean = engine.run(data.clean, data.answer_pos, collect=True).outputs
    delta = clean.mean(1, keepdim=True) - clean
    keep = torch.ones(g.n_senders, g.n_receivers, dtype=torch.float64)
    r, s, eps = g.logits_receiver, g.mlp_sender(1), 1e-6
    values = []
    for sign in (1, -1):
        keep[s, r] = 1 - sign * eps
        run = engine.run(data.clean, data.answer_pos, patch=Patch(keep, clean + delta))
        values.append(float(task.metric(run.logits, data).mean()))
    assert float(mean[s, r]) == pytest.approx((values[0] - values[1]) / (2 * eps), rel=1e-5, abs=1e-9)
