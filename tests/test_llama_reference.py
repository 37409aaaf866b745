"""EAP and EAP-IG on a tiny Llama-style model (RMSNorm, rotary, 4 query heads sharing 2 key/value heads)
against TransformerLens's per-head hooks, in float64, as ``test_methods`` does for GPT-2.

The bridge's split k/v inputs are per key/value head (``[b, p, K, d]``), while the graph gives every
query head its own k and v receivers; a key/value head's hook gradient is the sum over the query
heads that share it, so the k and v scores are compared summed over each group.  q, MLP and logits
receivers are compared one by one.

Even for a float64 model, HF's RMSNorm and rotary angles and the bridge's Llama attention softmax
compute in float32, so the reference agrees with the float64 engine to about 1e-6 of the largest
value, not to 1e-10 as on GPT-2; the checks use a relative tolerance of 1e-4 of the largest score
(a wrong GQA map, rotary layout or norm Jacobian is off by far more).
"""
from __future__ import annotations

import pytest
import torch

from circuits.registry import get_method
from circuits.methods.base import MethodOptions
from circuits.data.task import answer_logits
from circuits.tasks.greater_than import GreaterThan
from reference import PerHeadFlags, boot_float64, ig_inputs, receiver_hook_grads, sender_stack

L, H, K = 2, 4, 2
TOL = 1e-4  # of the largest value (see above)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, digit_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = digit_tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=L,
                      num_attention_heads=H, num_key_value_heads=K, max_position_embeddings=64, initializer_range=0.3,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    folder = tmp_path_factory.mktemp("peaked-llama")
    bridge, engine = boot_float64(folder, LlamaForCausalLM(cfg), tok)
    task = GreaterThan()
    return bridge, engine, task, task.build(tok, n=5, seed=1)


def _metric(task, data, logits):
    return task.metric(answer_logits(logits, data), data).mean()


def _hook_grads(bridge, task, data, resid0=None):
    """Gradients w.r.t. each receiver hook's input: {name: [b, p, (heads,) d]}."""
    return receiver_hook_grads(bridge, data.clean, lambda logits: _metric(task, data, logits), resid0)


def _expected(engine, delta, grads):
    """Reference scores: q, MLP, logits per receiver [S, R]; k and v per key/value head {(layer, qkv, kv): [S]}."""
    g = engine.graph
    per = torch.zeros(g.n_senders, g.n_receivers, dtype=torch.float64)
    grouped = {}
    for layer in range(L):
        q = grads[f"blocks.{layer}.hook_q_input"]
        for h in range(H):
            per[:, g.head_receiver(layer, h, "q")] = torch.einsum("sbpd,bpd->s", delta, q[:, :, h])
        for x in "kv":
            gk = grads[f"blocks.{layer}.hook_{x}_input"]
            assert gk.shape[2] == K  # the bridge's k/v inputs are per key/value head
            for kv in range(K):
                grouped[(layer, x, kv)] = torch.einsum("sbpd,bpd->s", delta, gk[:, :, kv])
        per[:, g.mlp_receiver(layer)] = torch.einsum("sbpd,bpd->s", delta, grads[f"blocks.{layer}.ln2.hook_in"])
    per[:, g.logits_receiver] = torch.einsum("sbpd,bpd->s", delta, grads["ln_final.hook_in"])
    return per, grouped


def _check(engine, scores, per, grouped):
    g = engine.graph
    valid = g.valid_mask()
    assert scores.abs().max() > 1e-4
    atol = TOL * float(scores.abs().max())
    singles = [g.head_receiver(l, h, "q") for l in range(L) for h in range(H)]
    singles += [g.mlp_receiver(l) for l in range(L)] + [g.logits_receiver]
    for r in singles:
        assert torch.allclose(scores[:, r], per[:, r] * valid[:, r], atol=atol, rtol=0), g.receiver_names[r]
    group = H // K
    for (layer, x, kv), expected in grouped.items():
        rs = [g.head_receiver(layer, h, x) for h in range(kv * group, (kv + 1) * group)]
        total = scores[:, rs].sum(1)
        assert torch.allclose(total, expected * valid[:, rs[0]], atol=atol, rtol=0), (layer, x, kv)


def test_engine_matches_the_llama_bridge(setup):
    bridge, engine, _, data = setup
    assert engine.w.norm == "RMS" and engine.w.rotary_base is not None and engine.w.n_kv_heads == K < engine.w.n_heads
    with torch.no_grad():
        ref = answer_logits(bridge(data.clean), data)
    assert (engine.run(data.clean, data.answer_pos).logits - ref).abs().max() < TOL * ref.abs().max()


def test_eap_matches_per_head_hooks_on_llama(setup):
    bridge, engine, task, data = setup
    scores = get_method("eap").score(engine, data, task.metric).edge_scores
    with PerHeadFlags(bridge):
        delta = sender_stack(bridge, data.corrupted) - sender_stack(bridge, data.clean)
        per, grouped = _expected(engine, delta, _hook_grads(bridge, task, data))
    _check(engine, scores, per, grouped)


def test_eap_ig_matches_integrated_hook_gradients_on_llama(setup):
    bridge, engine, task, data = setup
    steps = 3
    scores = get_method("eap-ig").score(engine, data, task.metric, MethodOptions(params={"ig_steps": steps})).edge_scores
    with PerHeadFlags(bridge):
        clean, corrupted = sender_stack(bridge, data.clean), sender_stack(bridge, data.corrupted)
        grads = [_hook_grads(bridge, task, data, resid0=x) for x in ig_inputs(clean[0], corrupted[0], steps)]
        mean = {n: sum(gr[n] for gr in grads) / steps for n in grads[0]}
        per, grouped = _expected(engine, corrupted - clean, mean)
    _check(engine, scores, per, grouped)
