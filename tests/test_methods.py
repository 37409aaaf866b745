"""Fast methods against slow, obviously correct references on a tiny GPT-2 (float64).

The references use TransformerLens's own hooks on the TransformerBridge, with its per-head
flags (split q/k/v input, attention result, MLP input) switched on, and patch or
differentiate one thing at a time.
"""
from __future__ import annotations

import pytest
import torch

from circuits.engine.engine import Patch
from circuits.registry import get_method
from circuits.methods.base import MethodOptions
from circuits.tasks.greater_than import GreaterThan
from reference import PerHeadFlags, boot_float64, ig_inputs, receiver_hook_grads, sender_stack

N_LAYERS, N_HEADS = 2, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuits.models.tokenizers import gpt2_tokenizer

    folder = tmp_path_factory.mktemp("peaked-gpt2")
    tok = gpt2_tokenizer()
    torch.manual_seed(0)
    # a large init gives peaked, prompt-dependent predictions, so scores are far from zero
    cfg = GPT2Config(n_layer=N_LAYERS, n_head=N_HEADS, n_embd=32, n_positions=32, vocab_size=len(tok), initializer_range=0.3)
    bridge, engine = boot_float64(folder, GPT2LMHeadModel(cfg), tok)
    task = GreaterThan()
    data = task.build(tok, n=6, seed=1)
    return bridge, engine, task, data


def _metric_of(task, data, logits):
    return task.metric(logits[torch.arange(len(data)), data.answer_pos], data).mean()


def _receiver_grads(bridge, task, data, resid0=None):
    """Gradients of the mean metric w.r.t. every receiver input, in the graph's receiver order: [R, b, p, d]."""
    probes = receiver_hook_grads(bridge, data.clean, lambda logits: _metric_of(task, data, logits), resid0)
    grads = []
    for layer in range(N_LAYERS):
        for x in "qkv":
            grads += list(probes[f"blocks.{layer}.hook_{x}_input"].permute(2, 0, 1, 3))
        grads.append(probes[f"blocks.{layer}.ln2.hook_in"])
    grads.append(probes["ln_final.hook_in"])
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
        delta = sender_stack(bridge, data.corrupted) - sender_stack(bridge, data.clean)
        grads = _receiver_grads(bridge, task, data)
    expected = torch.einsum("sbpd,rbpd->sr", delta, grads) * engine.graph.valid_mask()
    assert scores.abs().max() > 1e-4  # the check below is not vacuous
    assert (scores - expected).abs().max() < 1e-5 * max(1.0, float(expected.abs().max()))
    assert torch.allclose(scores, expected, atol=1e-10, rtol=1e-7)


def test_eap_ig_matches_integrated_hook_gradients(setup):
    bridge, engine, task, data = setup
    steps = 3
    scores = get_method("eap-ig").score(engine, data, task.metric, MethodOptions(params={"ig_steps": steps})).edge_scores
    with PerHeadFlags(bridge):
        clean, corrupted = sender_stack(bridge, data.clean), sender_stack(bridge, data.corrupted)
        total = sum(_receiver_grads(bridge, task, data, resid0=x) for x in ig_inputs(clean[0], corrupted[0], steps)) / steps
    expected = torch.einsum("sbpd,rbpd->sr", corrupted - clean, total) * engine.graph.valid_mask()
    assert torch.allclose(scores, expected, atol=1e-10, rtol=1e-7)


def test_eap_ig_with_one_step_is_eap(setup):
    """One integration step evaluates the gradient at the clean input only: EAP's Taylor term, from the hooks."""
    bridge, engine, task, data = setup
    ig1 = get_method("eap-ig").score(engine, data, task.metric, MethodOptions(params={"ig_steps": 1})).edge_scores
    with PerHeadFlags(bridge):
        delta = sender_stack(bridge, data.corrupted) - sender_stack(bridge, data.clean)
        grads = _receiver_grads(bridge, task, data)
    expected = torch.einsum("sbpd,rbpd->sr", delta, grads) * engine.graph.valid_mask()
    assert expected.abs().max() > 1e-4
    assert torch.allclose(ig1, expected, atol=1e-10, rtol=1e-7)


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
    # input: the embeddings take the corrupted prompts' values, so the whole run is the corrupted one
    corrupted_metric = float(_metric_of(task, data, bridge(data.corrupted).detach()))
    assert result.node_scores["input"] == pytest.approx(corrupted_metric - base, abs=1e-10)
    assert abs(corrupted_metric - base) > 1e-4
    assert torch.all(result.edge_scores[0][engine.graph.valid_mask()[0]] == result.node_scores["input"])
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
    """Each explored edge's score is the metric change with that edge alone patched, by the hook-based patcher."""
    from reference import edge_patched_logits

    bridge, engine, task, data = setup
    result = get_method("path-patching").score(engine, data, task.metric, MethodOptions(params={"path_threshold": 0.0}))
    g = engine.graph
    assert result.info["receivers_explored"] == g.n_senders  # threshold 0: everything is explored
    assert result.info["complete"] is True
    base = _patched_metric(bridge, task, data, [])
    for s, r in [(0, g.head_receiver(0, 2, "v")), (g.head_sender(1, 1), g.logits_receiver), (1, g.head_receiver(1, 2, "k")), (g.mlp_sender(0), g.head_receiver(1, 0, "v")),
                 (2, g.mlp_receiver(0)), (g.head_sender(0, 3), g.head_receiver(1, 1, "q"))]:
        with torch.no_grad():
            logits = edge_patched_logits(bridge, data.clean, data.corrupted, [g.edge_name(s, r)])
        patched = float(_metric_of(task, data, logits))
        assert abs(patched - base) > 1e-7  # each edge moves the metric: the check is not vacuous
        assert float(result.edge_scores[s, r]) == pytest.approx(patched - base, rel=1e-6, abs=1e-13)


def test_path_patching_stops_at_its_budget(setup):
    """A budget-stopped search returns the edges it scored (the same values as the full search), most promising first."""
    _, engine, task, data = setup
    method = get_method("path-patching")
    full = method.score(engine, data, task.metric, MethodOptions(params={"path_threshold": 0.0}))
    bars = []
    part = method.score(engine, data, task.metric, MethodOptions(params={"path_threshold": 0.0, "max_passes": 40}),
                        progress=lambda done, total, msg: bars.append((done, total)))
    assert part.info["complete"] is False and part.info["passes_used"] == 40 and part.info["max_passes"] == 40
    scored = part.edge_scores != 0
    # the full effect, then 39 edges; input->logits scores exactly 0 (the prompts differ before the answer position)
    assert int(scored.sum()) == 38 and full.edge_scores[0, engine.graph.logits_receiver] == 0
    assert torch.equal(part.edge_scores[scored], full.edge_scores[scored])
    g = engine.graph
    assert scored[1:, g.logits_receiver].all()  # the logits first
    # then the node whose edge into the logits is largest
    first = int(full.edge_scores[1:, g.logits_receiver].abs().argmax()) + 1
    assert scored[:, [r for r in range(g.n_receivers) if g.sender_names[first] in g.receiver_names[r]]].any()
    assert {t for _, t in bars} == {40} and [d for d, _ in bars] == sorted(d for d, _ in bars)  # one bar
    assert full.info["passes_used"] < 10_000 and full.info["complete"] is True


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


def test_activation_patching_mean_ablation_uses_the_dataset_means(setup):
    """Residual positions take the dataset's mean residual stream: batch 7 and all at once agree, and a
    patched position matches the bridge's hook with the mean over every prompt."""
    bridge, engine, task, _ = setup
    data = task.build(bridge.tokenizer, n=14, seed=4)
    method = get_method("activation-patching")
    whole = method.score(engine, data, task.metric, MethodOptions(ablation="mean"))
    batched = method.score(engine, data, task.metric, MethodOptions(ablation="mean", batch_size=7))
    for name, value in whole.node_scores.items():
        assert batched.node_scores[name] == pytest.approx(value, abs=1e-6)
    assert torch.allclose(torch.tensor(whole.extra["resid"]), torch.tensor(batched.extra["resid"]), atol=1e-6)
    _, cache = bridge.run_with_cache(data.clean)
    base = _patched_metric(bridge, task, data, [])
    layer, pos = 1, data.info["yy_pos"]
    mean = cache[f"blocks.{layer}.hook_resid_pre"].mean(0)

    def patch(t, hook):
        t = t.clone()
        t[:, pos] = mean[pos]
        return t

    expected = _patched_metric(bridge, task, data, [(f"blocks.{layer}.hook_resid_pre", patch)]) - base
    assert abs(expected) > 1e-6
    assert whole.extra["resid"][layer][pos] == pytest.approx(expected, abs=1e-10)
    assert batched.extra["resid"][layer][pos] == pytest.approx(expected, abs=1e-10)


def test_activation_patching_totals_stay_on_the_model(setup):
    """Score totals live on the model's device in its dtype (float64 here), not on the CPU in float32."""
    from circuits.methods.activation_patching import _Totals

    _, engine, _, _ = setup
    totals = _Totals.zeros(engine, (1,))
    for t in (totals.nodes, totals.neurons[1]):
        assert t.device == engine.device and t.dtype == engine.w.W_E.dtype == torch.float64


def test_tracing_a_patched_run_is_refused(setup):
    """Patched layers keep no q/k/v trace, so tracing them would index the wrong layers: it must raise."""
    _, engine, _, data = setup
    g = engine.graph
    keep = torch.ones(g.n_senders, g.n_receivers, dtype=torch.float64)
    keep[0, g.head_receiver(1, 0, "q")] = 0.0  # one edge patched: layer 1's heads get per-head inputs
    ref = engine.run(data.corrupted, data.answer_pos, collect=True).outputs
    with pytest.raises(ValueError, match="trace"):
        engine.run(data.clean, data.answer_pos, patch=Patch(keep=keep, reference=ref), trace=True)
    # the unpatched traced run still works and its trace covers every layer
    x = engine.embed(data.clean).detach().requires_grad_(True)
    run = engine.run(data.clean, data.answer_pos, trace=True, resid0=x)
    assert len(run.trace.q) == engine.w.n_layers
