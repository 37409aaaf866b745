"""GIM's and RelP's backward rules on the engine against a head-by-head forward of the HF model with
the rules applied through detach() tricks (tests/rules_reference.py), in float64, GPT-2 and Llama (GQA)."""
from __future__ import annotations

import pytest
import torch

import rules_reference
from circuits.methods.relp import RELP_RULES
from circuits.registry import get_method
from circuits.engine.rules import BackwardRules
from circuits.methods.base import MethodOptions
from circuits.tasks.greater_than import GreaterThan
from reference import boot_float64

RULES = {
    "eap": BackwardRules(),
    "gim": get_method("gim").rules({}),
    "relp": RELP_RULES,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory, digit_tokenizer, one_thread):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from circuits.models.tokenizers import gpt2_tokenizer

    out = {}
    tok = gpt2_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=3, n_embd=24, n_positions=32, vocab_size=len(tok), initializer_range=0.3)
    hf = GPT2LMHeadModel(cfg)
    _, engine = boot_float64(tmp_path_factory.mktemp("rules-gpt2"), hf, tok)
    out["gpt2"] = hf.double(), engine, GreaterThan().build(tok, n=3, seed=2)
    tok = digit_tokenizer
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    hf = LlamaForCausalLM(cfg)
    _, engine = boot_float64(tmp_path_factory.mktemp("rules-llama"), hf, tok)
    out["llama"] = hf.double(), engine, GreaterThan().build(tok, n=3, seed=5)
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_referee_runs_the_hf_model(models, arch):
    hf, _, data = models[arch]
    with torch.no_grad():
        want = hf(data.clean).logits
        got, _ = rules_reference.Model(hf).forward(data.clean, RULES["relp"])
    # HF's RMSNorm normalizes in float32 even for a float64 model: Llama agrees to float32's precision only
    tol = 1e-10 if arch == "gpt2" else 1e-5 * float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", sorted(RULES))
def test_edge_scores_follow_the_rules(models, arch, method):
    hf, engine, data = models[arch]
    metric = GreaterThan().metric
    got = get_method(method).score(engine, data, metric, MethodOptions()).edge_dict()
    want = rules_reference.edge_scores(hf, data, metric, RULES[method])
    assert set(got) == set(want)
    largest = max(abs(v) for v in want.values())
    assert largest > 1e-6
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9 * largest), name


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("rules", [BackwardRules(freeze_norm=True), BackwardRules(softmax_temperature=3.0),
                                   BackwardRules(act_identity=True), BackwardRules(q_scale=0.3, k_scale=2.0, v_scale=0.7,
                                                                                 gate_scale=0.2, up_scale=0.9)],
                         ids=["norm", "temperature", "identity", "scales"])
def test_each_rule_alone(models, arch, rules):
    from circuits.methods.eap import integrated_scores
    from circuits.methods.base import no_progress

    hf, engine, data = models[arch]
    metric = GreaterThan().metric
    got = integrated_scores(engine, data, metric, MethodOptions(), steps=1, progress=no_progress, method="x",
                            rules=rules).edge_dict()
    want = rules_reference.edge_scores(hf, data, metric, rules)
    plain = rules_reference.edge_scores(hf, data, metric, BackwardRules())
    largest = max(abs(v) for v in want.values())
    assert max(abs(want[k] - plain[k]) for k in want) > 1e-6 * largest  # the rule changes something
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-9 * largest), name


def test_rules_need_a_trace(models):
    _, engine, data = models["gpt2"]
    with pytest.raises(ValueError, match="trace"):
        engine.run(data.clean, data.answer_pos, rules=BackwardRules(freeze_norm=True))


@pytest.mark.slow
def test_gim_flags_reach_the_rules_and_bad_ones_are_user_errors(tmp_path):
    import json

    from cli_helpers import assert_user_error, invoke

    out = tmp_path / "gim"
    code, _, err = invoke("discover", "greater-than", "--model", "planted", "--method", "gim", "--out", str(out),
                          "--n", "8", "--top-k", "10", "--gim-temperature", "3", "--gim-qkv-scale", "0.5,0.5,1")
    assert code == 0, err
    options = json.loads((out / "manifest.json").read_text())["options"]
    assert options["gim_temperature"] == 3.0 and options["gim_qkv_scale"] == "0.5,0.5,1"
    assert get_method("gim").rules({"gim_temperature": 3.0, "gim_qkv_scale": "0.5,0.5,1"}) == BackwardRules(
        freeze_norm=True, softmax_temperature=3.0, q_scale=0.5, k_scale=0.5, v_scale=1.0, gate_scale=0.5, up_scale=0.5)
    code, _, err = invoke("discover", "greater-than", "--model", "planted", "--method", "gim", "--out", str(tmp_path / "bad"),
                          "--n", "8", "--gim-qkv-scale", "0.5,0.5")
    assert_user_error(code, err, "--gim-qkv-scale takes 3 comma-separated numbers")
    code, _, err = invoke("discover", "greater-than", "--model", "planted", "--method", "relp", "--out", str(tmp_path / "bad2"),
                          "--n", "8", "--gim-temperature", "3")
    assert_user_error(code, err, "--gim-temperature is not an option of 'relp'")
