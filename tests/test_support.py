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
    from transformers import (BloomConfig, Gemma2Config, Gemma3TextConfig, GemmaConfig, GPT2Config, GPTJConfig,
                              GPTNeoXConfig, LlamaConfig, MistralConfig, MixtralConfig, Olmo2Config, Qwen2Config,
                              Qwen3Config)

    assert unsupported_features(LlamaConfig(**SMALL)) == []
    assert unsupported_features(Qwen2Config(**SMALL)) == []  # q/k/v biases are implemented; no window in use
    # the families circuits.models.hf_weights implements: q/k norms, windows, soft-caps, post-norms, parallel layers
    for config in (Qwen3Config(**SMALL), Olmo2Config(**SMALL), Gemma2Config(**SMALL, sliding_window=16),
                   Gemma3TextConfig(**SMALL), MistralConfig(**SMALL, sliding_window=16), GPTNeoXConfig()):
        assert unsupported_features(config, ["model.layers.0.self_attn.q_norm"]) == [], type(config).__name__
    assert any("embedding multiplier" in f for f in unsupported_features(GemmaConfig(**SMALL)))
    assert "parallel attention and MLP" in unsupported_features(GPTJConfig(n_embd=32, n_layer=2, n_head=4))
    assert unsupported_features(LlamaConfig(**SMALL, mlp_bias=True)) == ["MLP biases (the engine's gated MLP has none)"]
    assert unsupported_features(MixtralConfig(**SMALL)) == ["mixture-of-experts MLPs"]
    assert unsupported_features(GPT2Config(add_cross_attention=True)) == ["cross-attention"]
    assert "ALiBi positions" in unsupported_features(BloomConfig())


def _save(folder, model, tokenizer):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def unsupported_dirs(tmp_path_factory, digit_tokenizer):
    """A tiny random Mixtral (mixture of experts) checkpoint."""
    from circuits.models.tiny import tiny_model

    return {"MixtralForCausalLM": _save(tmp_path_factory.mktemp("tiny-mixtral"), tiny_model("mixtral", digit_tokenizer),
                                        digit_tokenizer)}


@pytest.mark.parametrize("arch, feature", [("MixtralForCausalLM", "mixture-of-experts")])
def test_discover_refuses_unsupported_models(unsupported_dirs, tmp_path, arch, feature):
    code, out, err = invoke("discover", "greater-than", "--model", str(unsupported_dirs[arch]), "--method", "eap",
                            "--n", "4", "--out", str(tmp_path / "run"))
    assert_user_error(code, err, arch)
    assert feature in err
    assert not (tmp_path / "run").exists()


def test_a_model_shorter_than_the_check_prompt_loads_and_runs(tmp_path, gpt2_tok, circuits_cache):
    """A GPT-2 with 6 positions: the logit check runs on 6 tokens, and prompts longer than that are refused in
    one line (no traceback), for every method."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuits.engine import GraphEngine
    from circuits.models import load_model

    torch.manual_seed(0)
    folder = _save(tmp_path / "short", GPT2LMHeadModel(GPT2Config(n_positions=6, n_embd=32, n_layer=2, n_head=4)).eval(),
                   gpt2_tok)
    engine = GraphEngine.from_model(load_model(str(folder)))
    assert engine.w.W_pos.shape[0] == 6
    for method in ("eap", "activation-patching"):
        code, out, err = invoke("discover", "greater-than", "--model", str(folder), "--method", method, "--n", "4",
                                "--out", str(tmp_path / method))
        assert code == 2 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith("error: the prompts need"), err
        assert "positions but the model has only 6" in err


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
