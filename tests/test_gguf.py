"""GGUF files round-trip into the same model: gpt2 and llama architectures, written with llama.cpp's names."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from circuits.errors import CircuitsError
from circuits.models import load_model
from conftest import make_tiny_gpt2

TEXTS = [
    "The war lasted from the year 1732 to the year 17",
    "Hello world! 12345 café <|endoftext|> ok",
    "  two  spaces\tand a tab\nnew line",
]


def _merges(tokenizer) -> list[str]:
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _add_tokenizer(writer, tokenizer, *, pre: str) -> None:
    """Tokenizer metadata as llama.cpp writes it for a byte-level BPE."""
    import gguf

    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for text, idx in vocab.items():
        tokens[idx] = text
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([int(gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL) for t in tokens])
    writer.add_token_merges(_merges(tokenizer))
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)


def _write(path: Path, arch: str, meta, tensors: dict[str, np.ndarray], tokenizer, pre: str) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    meta(writer)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(writer, tokenizer, pre=pre)
    for name, arr in tensors.items():
        writer.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_gpt2_gguf(model, tokenizer, path: Path, *, output: str) -> Path:
    """A GPT-2 as llama.cpp's convert_hf_to_gguf.py writes it (Conv1D weights transposed to [out, in]).

    ``output``: "none" (tied, no output tensor), "copy" (llama.cpp's copy of token_embd) or
    "own" (the model's own, untied lm_head).
    """
    cfg = model.config
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}

    def meta(w):
        w.add_context_length(cfg.n_positions)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)

    t = {
        "token_embd.weight": sd["transformer.wte.weight"],
        "position_embd.weight": sd["transformer.wpe.weight"],
        "output_norm.weight": sd["transformer.ln_f.weight"],
        "output_norm.bias": sd["transformer.ln_f.bias"],
    }
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
             "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(cfg.n_layer):
        for hf, gg in names.items():
            for kind in ("weight", "bias"):
                arr = sd[f"transformer.h.{i}.{hf}.{kind}"]
                if kind == "weight" and not hf.startswith("ln"):
                    arr = arr.T  # Conv1D [in, out] -> [out, in]
                t[f"blk.{i}.{gg}.{kind}"] = arr
    if output == "copy":
        t["output.weight"] = sd["transformer.wte.weight"]
    elif output == "own":
        t["output.weight"] = sd["lm_head.weight"]
    return _write(path, "gpt2", meta, t, tokenizer, pre="gpt-2")


def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute (HF rotate-half -> interleaved rows)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def decoder_metadata(w, cfg) -> None:
    """The hyper-parameters every decoder-only GGUF file states (context, widths, depth, heads, norm eps)."""
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)


def write_llama_gguf(model, tokenizer, path: Path) -> Path:
    cfg = model.config
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}

    def meta(w):
        decoder_metadata(w, cfg)
        w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])

    t = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        t["output.weight"] = sd["lm_head.weight"]
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            arr = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                arr = _llamacpp_permute(arr, cfg.num_attention_heads)
            elif gg == "attn_k":
                arr = _llamacpp_permute(arr, cfg.num_key_value_heads)
            t[f"blk.{i}.{gg}.weight"] = arr
    return _write(path, "llama", meta, t, tokenizer, pre="smollm")


def _eager(model):
    model.config._attn_implementation = "eager"  # the bridge boots eager; compare like with like
    return model


def _max_diff(loaded, hf_model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float((loaded.bridge(ids) - hf_model(ids).logits).abs().max())


@pytest.mark.parametrize("output", ["none", "copy", "own"])
def test_gpt2_gguf_round_trip(tmp_path, circuits_cache, gpt2_tok, output, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel

    if output == "own":  # an untied model: lm_head differs from the embedding
        torch.manual_seed(1)
        cfg = GPT2Config(vocab_size=50257, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                         initializer_range=0.1, tie_word_embeddings=False)
        model = GPT2LMHeadModel(cfg).eval()
        assert not torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    else:
        model = make_tiny_gpt2()
    path = write_gpt2_gguf(model, gpt2_tok, tmp_path / "tiny-gpt2.gguf", output=output)
    loaded = load_model(str(path))
    assert Path(loaded.checkpoint).is_relative_to(circuits_cache)
    assert loaded.bridge.cfg.n_layers == 2 and loaded.bridge.cfg.n_heads == 4 and loaded.bridge.cfg.d_model == 64
    # the tokenizer rebuilt from the GGUF metadata is GPT-2's
    for text in TEXTS:
        assert loaded.tokenizer.encode(text, add_special_tokens=False) == gpt2_tok.encode(text)
    ids = torch.tensor([gpt2_tok.encode(t)[:8] for t in TEXTS])
    ids[:, 0] = 50256
    with torch.no_grad():
        logits_scale = float(_eager(model)(ids).logits.abs().max())
    assert logits_scale > 1.0  # a model whose logits are not all ~0
    assert _max_diff(loaded, model, ids) < 1e-4
    if output == "none":  # a second load reuses the cached conversion
        from circuits.models import gguf as gguf_mod

        def fail(*a, **k):
            raise AssertionError("converted twice")

        monkeypatch.setattr(gguf_mod, "convert_gguf", fail)
        assert load_model(str(path)).checkpoint == loaded.checkpoint


def test_llama_gguf_round_trip_undoes_qk_permutation(tmp_path, circuits_cache, digit_tokenizer):
    """A grouped-query Llama whose Q/K rows llama.cpp permuted loads back to the same logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(digit_tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rope_theta=10000.0, initializer_range=0.1, tie_word_embeddings=False,
                      bos_token_id=digit_tokenizer.bos_token_id, eos_token_id=digit_tokenizer.eos_token_id)
    model = _eager(LlamaForCausalLM(cfg).eval())
    path = write_llama_gguf(model, digit_tokenizer, tmp_path / "tiny-llama.gguf")
    loaded = load_model(str(path))
    assert loaded.bridge.cfg.n_layers == 2 and loaded.bridge.cfg.n_heads == 4
    text = "The war lasted from the year 1732 to the year 17"
    assert loaded.tokenizer.encode(text, add_special_tokens=False) == digit_tokenizer.encode(text)
    ids = torch.tensor([[digit_tokenizer.bos_token_id] + digit_tokenizer.encode(text)])
    assert _max_diff(loaded, model, ids) < 1e-4
    # without undoing the permutation the logits would differ: the test can see a wrong un-permute
    from circuits.models import gguf as gguf_mod

    w = np.arange(4 * 16 * 3, dtype=np.float32).reshape(64, 3)
    assert np.array_equal(gguf_mod._unpermute(_llamacpp_permute(w, 4), 4), w)
    assert not np.array_equal(_llamacpp_permute(w, 4), w)


def test_gguf_errors(tmp_path, circuits_cache):
    import gguf

    with pytest.raises(CircuitsError, match="not found"):
        load_model(str(tmp_path / "missing.gguf"))
    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CircuitsError, match="'mamba' is not supported"):
        load_model(str(path))
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(CircuitsError, match="garbage.gguf"):
        load_model(str(bad))
    assert not list(circuits_cache.rglob("config.json"))  # nothing half-converted left in the cache


def _assert_same_as_gguf_reader(path: Path, max_tensors: int | None = None) -> None:
    """circuits' GGUF reader gives the fields and tensors that gguf.GGUFReader gives."""
    import gguf
    from gguf.quants import dequantize

    from circuits.models.gguf import GGUFFile, _tensors

    ours, ref = GGUFFile(path), gguf.GGUFReader(str(path))
    ref_fields = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert set(ours.fields) == set(ref_fields)
    for key, value in ref_fields.items():
        if isinstance(value, float):
            assert ours.fields[key] == pytest.approx(value, rel=1e-7), key
        elif isinstance(value, list) and value and isinstance(value[0], float):
            assert ours.fields[key] == pytest.approx(value, rel=1e-7), key
        else:
            assert ours.fields[key] == value, key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    raw = _tensors(ours)
    for t in ref.tensors[:max_tensors]:
        expected = dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        assert raw[t.name].dtype == np.float32 and np.array_equal(raw[t.name], expected), t.name


def test_reader_matches_gguf_package(tmp_path, digit_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(digit_tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    _assert_same_as_gguf_reader(write_llama_gguf(LlamaForCausalLM(cfg), digit_tokenizer, tmp_path / "l.gguf"))


@pytest.mark.slow
def test_reader_matches_gguf_package_on_gpt2_and_smollm2(tmp_path, gpt2_tok, smollm2_gguf):
    """GPT-2's 50k-token metadata, and quantized tensors (Q4_1, Q8_0, F32) in the real SmolLM2 file.

    Slow only because gguf.GGUFReader itself takes 5-7 s on a 50k vocabulary.
    """
    _assert_same_as_gguf_reader(write_gpt2_gguf(make_tiny_gpt2(), gpt2_tok, tmp_path / "g.gguf", output="copy"))
    _assert_same_as_gguf_reader(smollm2_gguf, max_tensors=20)


def test_truncated_gguf_is_a_user_error(tmp_path, gpt2_tok, circuits_cache):
    path = write_gpt2_gguf(make_tiny_gpt2(), gpt2_tok, tmp_path / "t.gguf", output="none")
    data = path.read_bytes()
    for cut in (20, len(data) // 3, len(data) - 100):
        short = tmp_path / f"cut{cut}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(CircuitsError, match=f"cut{cut}.gguf") as err:
            load_model(str(short))
        assert "\n" not in str(err.value)
