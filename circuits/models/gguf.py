"""Turn a ``.gguf`` file into a float32 Hugging Face checkpoint folder.

Supported architectures: ``llama`` (SmolLM2, Llama, Mistral-style) and ``gpt2``.
Every tensor is dequantized with the ``gguf`` package and reshaped to HF's
[out, in] layout.  llama.cpp's converter permutes the rows of Q and K for its
rotary layout; that permutation is undone here.  The tokenizer is rebuilt from
the file's metadata.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from circuits.errors import CircuitsError

SUPPORTED = ("llama", "gpt2")


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a Q or K weight [out, in].

    llama.cpp viewed each head's rows as [2, e/2] and swapped the two axes; viewing them
    as [e/2, 2] and swapping back restores HF's rotate-half layout.
    """
    out = w.shape[0]
    return w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(reader) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize

    result = {}
    for t in reader.tensors:
        arr = dequantize(t.data, t.tensor_type).astype(np.float32)
        result[t.name] = arr.reshape([int(d) for d in reversed(t.shape)])
    return result


def _llama(reader, arch: str, raw: dict[str, np.ndarray]):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    n_heads = int(_field(reader, f"{arch}.attention.head_count"))
    n_kv = int(_field(reader, f"{arch}.attention.head_count_kv", n_heads))
    tied = "output.weight" not in raw
    cfg = LlamaConfig(
        vocab_size=raw["token_embd.weight"].shape[0],
        hidden_size=int(_field(reader, f"{arch}.embedding_length")),
        intermediate_size=int(_field(reader, f"{arch}.feed_forward_length")),
        num_hidden_layers=int(_field(reader, f"{arch}.block_count")),
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", 2048)),
        rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        tie_word_embeddings=tied,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
    )
    names = {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    state = {"model.embed_tokens.weight": raw["token_embd.weight"], "model.norm.weight": raw["output_norm.weight"]}
    if not tied:
        state["lm_head.weight"] = raw["output.weight"]
    for name, arr in raw.items():
        parts = name.split(".")
        if parts[0] != "blk":
            continue
        layer, key, kind = parts[1], parts[2], parts[3]
        if key == "attn_q":
            arr = _unpermute(arr, n_heads)
        elif key == "attn_k":
            arr = _unpermute(arr, n_kv)
        state[f"model.layers.{layer}.{names[key]}.{kind}"] = arr
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False)
    missing = [m for m in missing if not (tied and m == "lm_head.weight")]
    if missing or unexpected:
        raise CircuitsError(f"GGUF tensors do not match a llama model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if tied:
        model.tie_weights()
    return model


def _gpt2(reader, arch: str, raw: dict[str, np.ndarray]):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=raw["token_embd.weight"].shape[0],
        n_positions=int(_field(reader, f"{arch}.context_length", 1024)),
        n_embd=int(_field(reader, f"{arch}.embedding_length")),
        n_layer=int(_field(reader, f"{arch}.block_count")),
        n_head=int(_field(reader, f"{arch}.attention.head_count")),
        n_inner=int(_field(reader, f"{arch}.feed_forward_length")),
        layer_norm_epsilon=float(_field(reader, f"{arch}.attention.layer_norm_epsilon", 1e-5)),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id", 50256),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id", 50256),
    )
    # GPT-2's Conv1D layers store [in, out]: transpose the [out, in] matrices back.
    names = {
        "attn_norm": ("ln_1", False), "ffn_norm": ("ln_2", False), "attn_qkv": ("attn.c_attn", True),
        "attn_output": ("attn.c_proj", True), "ffn_up": ("mlp.c_fc", True), "ffn_down": ("mlp.c_proj", True),
    }
    state = {
        "transformer.wte.weight": raw["token_embd.weight"], "transformer.wpe.weight": raw["position_embd.weight"],
        "transformer.ln_f.weight": raw["output_norm.weight"], "transformer.ln_f.bias": raw["output_norm.bias"],
    }
    for name, arr in raw.items():
        parts = name.split(".")
        if parts[0] != "blk":
            continue
        layer, key, kind = parts[1], parts[2], parts[3]
        hf, conv = names[key]
        if conv and kind == "weight":
            arr = arr.T
        state[f"transformer.h.{layer}.{hf}.{kind}"] = arr
    model = GPT2LMHeadModel(cfg)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" and not m.endswith(".attn.bias") and not m.endswith("masked_bias")]
    if missing or unexpected:
        raise CircuitsError(f"GGUF tensors do not match a gpt2 model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    return model


def _tokenizer(reader, arch: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    pre = str(_field(reader, "tokenizer.ggml.pre", "gpt2"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # digits are split one by one before the byte-level split
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    special = [t for t, ty in zip(tokens, types) if ty == 3]
    tok.add_special_tokens(special)

    def name(key):
        idx = _field(reader, f"tokenizer.ggml.{key}_token_id")
        return tokens[int(idx)] if idx is not None else None

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=name("bos"), eos_token=name("eos"),
        unk_token=name("unknown"), pad_token=name("padding") or name("eos"),
    )


def convert_gguf(path: Path, out_dir: Path) -> None:
    """Dequantize ``path`` to float32 and save model + tokenizer into ``out_dir``."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = str(_field(reader, "general.architecture", "?"))
    if arch not in SUPPORTED:
        raise CircuitsError(f"GGUF architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED)}")
    raw = _tensors(reader)
    model = _llama(reader, arch, raw) if arch == "llama" else _gpt2(reader, arch, raw)
    tokenizer = _tokenizer(reader, arch)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
