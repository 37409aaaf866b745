"""GGUF files of the qwen2, qwen3, olmo2, gemma2 and gemma3 architectures, written with llama.cpp's tensor names and
metadata by the ``gguf`` package's writer, load back into the same model, and the engine runs them exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.models.gguf import _ATTENTION, _NORMS
from test_gguf import _write, decoder_metadata

pytestmark = pytest.mark.usefixtures("one_thread")

# what GGUF can carry: Gemma's query scale is 1/sqrt(head_dim), Gemma 3's local rotary base is 10000
GGUF_FITS = {"gemma2": dict(query_pre_attn_scalar=16),
             "gemma3": dict(query_pre_attn_scalar=16, rope_parameters={
                 "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                 "full_attention": {"rope_type": "default", "rope_theta": 500.0}})}


def write_decoder_gguf(model, tokenizer, path, arch: str):
    """A model as llama.cpp's converter writes it (Gemma's norms stored as 1 + w)."""
    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    gemma = arch.startswith("gemma")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def meta(w):
        decoder_metadata(w, cfg)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        params = cfg.rope_parameters
        w.add_rope_freq_base((params.get("full_attention") or params)["rope_theta"])
        if arch == "gemma2":
            w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
            w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        if gemma:
            w.add_sliding_window(cfg.sliding_window)
        if arch == "gemma3":
            w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg.layer_types])

    plus = 1.0 if gemma else 0.0
    t = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"] + plus}
    if not cfg.tie_word_embeddings:
        t["output.weight"] = sd["lm_head.weight"]
    names = {hf: gg for gg, hf in {**_ATTENTION, **_NORMS[arch]}.items()}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            for kind in ("weight", "bias"):
                key = f"model.layers.{i}.{hf}.{kind}"
                if key in sd:
                    t[f"blk.{i}.{gg}.{kind}"] = sd[key] + (plus if gg.endswith("norm") else 0.0)
    return _write(path, arch, meta, t, tokenizer, pre="smollm")


SLOW = pytest.mark.slow  # a few seconds each once warm; gemma2 and qwen3 cover the conversions' two paths by default


@pytest.mark.parametrize("arch, family", [pytest.param("qwen2", "qwen2", marks=SLOW), ("qwen3", "qwen3"),
                                          pytest.param("olmo2", "olmo2", marks=SLOW), ("gemma2", "gemma2"),
                                          pytest.param("gemma3", "gemma3", marks=SLOW)])
def test_gguf_round_trip_runs_exactly_on_the_engine(tmp_path, circuits_cache, digit_tokenizer, arch, family):
    from circuits.engine.engine import GraphEngine
    from circuits.models import load_model
    from circuits.models.tiny import tiny_model

    model = tiny_model(family, digit_tokenizer, **GGUF_FITS.get(family, {}))
    path = write_decoder_gguf(model, digit_tokenizer, tmp_path / f"tiny-{arch}.gguf", arch)
    loaded = load_model(str(path))
    hf = loaded.bridge.original_model
    assert type(hf).__name__ == type(model).__name__
    for key in ("num_key_value_heads", "head_dim", "sliding_window", "query_pre_attn_scalar", "attn_logit_softcapping",
                "final_logit_softcapping", "layer_types", "rope_parameters"):
        assert getattr(hf.config, key, None) == getattr(model.config, key, None), key
    engine = GraphEngine.from_model(loaded)  # the config check and the logit check pass
    text = "The war lasted from the year 1732 to the year 17"
    ids = torch.tensor([[digit_tokenizer.bos_token_id] + digit_tokenizer.encode(text)])
    every = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        expected = model(ids).logits
        assert float((engine.run(ids, every).logits - expected).abs().max()) < 1e-4 * float(expected.abs().max())
    # the +1 of Gemma's norms is taken off again (a file read without it would differ)
    if family.startswith("gemma"):
        assert torch.allclose(hf.model.norm.weight, model.model.norm.weight, atol=1e-6)
        assert not np.allclose(model.model.norm.weight.detach().numpy() + 1, hf.model.norm.weight.detach().numpy())
