"""The engine refuses what it does not implement: from the HF config, and by comparing logits with the bridge."""
from __future__ import annotations

import dataclasses

import pytest

from circuits.errors import CircuitsError
from circuits.engine.architectures import check_logits, unsupported_features
from cli_helpers import assert_user_error, invoke

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def test_config_features():
    from transformers import (Gemma2Config, GemmaConfig, GPTJConfig, GPTNeoXConfig, LlamaConfig, MistralConfig,
                              Olmo2Config, Qwen2Config, Qwen3Config)

    assert unsupported_features(LlamaConfig(**SMALL)) == []
    assert unsupported_features(Qwen2Config(**SMALL)) == []  # q/k/v biases are implemented; no window in use
    assert unsupported_features(Qwen3Config(**SMALL), ["model.layers.0.self_attn.q_norm"]) == ["q/k norm"]
    assert "q/k norm" in unsupported_features(Olmo2Config(**SMALL), ["model.layers.0.self_attn.q_norm"])
    gemma2 = unsupported_features(Gemma2Config(**SMALL, sliding_window=16))
    assert {"logit soft-capping", "sliding-window attention"} <= set(gemma2)
    assert any("embedding multiplier" in f for f in unsupported_features(GemmaConfig(**SMALL)))
    assert unsupported_features(MistralConfig(**SMALL, sliding_window=16)) == ["sliding-window attention"]
    assert unsupported_features(MistralConfig(**SMALL, sliding_window=None)) == []
    assert "parallel attention and MLP" in unsupported_features(GPTJConfig(n_embd=32, n_layer=2, n_head=4))
    assert "parallel attention and MLP" in unsupported_features(GPTNeoXConfig(use_parallel_residual=True))
    assert unsupported_features(LlamaConfig(**SMALL, mlp_bias=True)) == ["MLP biases (the engine's gated MLP has none)"]


def _save(folder, model, tokenizer):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def unsupported_dirs(tmp_path_factory, digit_tokenizer):
    """Tiny random Qwen3-like (q/k norms) and Gemma-like (embedding scale, soft-capping, sliding window) checkpoints."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    ids = dict(vocab_size=len(digit_tokenizer), bos_token_id=digit_tokenizer.bos_token_id,
               eos_token_id=digit_tokenizer.eos_token_id, pad_token_id=digit_tokenizer.pad_token_id)
    small = {**SMALL, **ids}
    qwen = Qwen3ForCausalLM(Qwen3Config(**small, head_dim=8)).eval()
    gemma = Gemma2ForCausalLM(Gemma2Config(**small, head_dim=8, sliding_window=16)).eval()
    return {"Qwen3ForCausalLM": _save(tmp_path_factory.mktemp("tiny-qwen3"), qwen, digit_tokenizer),
            "Gemma2ForCausalLM": _save(tmp_path_factory.mktemp("tiny-gemma2"), gemma, digit_tokenizer)}


@pytest.mark.parametrize("arch, feature", [("Qwen3ForCausalLM", "q/k norm"), ("Gemma2ForCausalLM", "soft-capping")])
def test_discover_refuses_unsupported_models(unsupported_dirs, tmp_path, arch, feature):
    code, out, err = invoke("discover", "greater-than", "--model", str(unsupported_dirs[arch]), "--method", "eap",
                            "--n", "4", "--out", str(tmp_path / "run"))
    assert_user_error(code, err, arch)
    assert feature in err
    assert not (tmp_path / "run").exists()


def test_logit_check_passes_supported_models_and_catches_a_wrong_engine(tiny_llama_dir):
    import torch

    from circuits.engine.engine import GraphEngine
    from circuits.models import load_model

    loaded = load_model(str(tiny_llama_dir))
    engine = GraphEngine.from_model(loaded)  # RMSNorm, rotary, GQA: passes
    check_logits(engine, loaded.bridge)
    # an engine that misses one feature (here: a norm weight off by 10%) is caught
    w = engine.w
    wrong = GraphEngine(dataclasses.replace(w, lnf_w=w.lnf_w * 1.1))
    with pytest.raises(CircuitsError, match="logits differ from the model's"):
        check_logits(wrong, loaded.bridge)
    assert torch.equal(engine.w.lnf_w, w.lnf_w)


def test_a_passed_logit_check_is_remembered_per_model_and_code(tiny_llama_dir, circuits_cache, monkeypatch):
    import torch

    from circuits.engine.engine import GraphEngine
    from circuits.models import load_model, support

    calls = []
    real = support.check_logits
    monkeypatch.setattr(support, "check_logits", lambda engine, bridge: (calls.append(1), real(engine, bridge)))
    loaded = load_model(str(tiny_llama_dir))
    engine = GraphEngine.from_model(loaded)
    assert len(calls) == 1 and len(list((circuits_cache / "checks").glob("*.json"))) == 1
    GraphEngine.from_model(load_model(str(tiny_llama_dir)))  # the same model and code: remembered
    assert len(calls) == 1
    # other weights (even one value changed) are another model: checked, and refused when wrong
    w = engine.w
    changed = dataclasses.replace(w, lnf_w=w.lnf_w.clone())
    changed.lnf_w[0] += 1.0
    assert support.fingerprint(GraphEngine(changed), loaded.bridge) != support.fingerprint(engine, loaded.bridge)
    wrong = GraphEngine(dataclasses.replace(w, lnf_w=w.lnf_w * 1.1))
    with pytest.raises(CircuitsError, match="logits differ"):
        support.logits_checked(wrong, loaded.bridge)
    assert len(calls) == 2 and len(list((circuits_cache / "checks").glob("*.json"))) == 1  # a failure is not recorded
    with pytest.raises(CircuitsError, match="logits differ"):
        support.logits_checked(wrong, loaded.bridge)  # and is checked again
    # an unwritable cache only means checking again next time
    monkeypatch.setenv("CIRCUITS_CACHE", str(tiny_llama_dir / "config.json" / "not-a-folder"))
    assert support.logits_checked(engine, loaded.bridge) is True
    assert torch.equal(engine.w.lnf_w, w.lnf_w)
