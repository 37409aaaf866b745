"""Turn a ``.gguf`` file into a float32 Hugging Face checkpoint folder.

Supported architectures: ``llama`` (SmolLM2, Llama, Mistral-style), ``gpt2``, ``qwen2``,
``qwen3``, ``olmo2``, ``gemma2`` and ``gemma3`` (text).  Every tensor is dequantized with the
``gguf`` package and reshaped to HF's [out, in] layout.  llama.cpp's converter permutes the rows
of Q and K for llama's rotary layout; that permutation is undone here (the other families keep
HF's rotate-half layout).  Gemma's norm weights are stored as ``1 + w`` (llama.cpp multiplies by
the weight itself); 1 is taken off again.  The tokenizer is rebuilt from the file's metadata.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from circuits.errors import CircuitsError

SUPPORTED = ("llama", "gpt2", "qwen2", "qwen3", "olmo2", "gemma2", "gemma3")


def _field(reader, key: str, default: Any = None) -> Any:
    return reader.fields.get(key, default)


# GGUF value types (gguf.GGUFValueType): scalars by struct code, 8 = string, 9 = array
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order (innermost first), as gguf.GGUFReader reports it
    tensor_type: Any  # gguf.GGMLQuantizationType
    data: np.ndarray  # the raw bytes, uint8, memory-mapped


class GGUFFile:
    """A GGUF file's metadata (``fields``: key -> plain value) and tensors, memory-mapped.

    ``gguf.GGUFReader`` turns every string of the vocabulary into numpy views, which takes
    5-7 s for a 50k-token vocabulary; this reads the same little-endian format (v2, v3)
    directly in a fraction of a second and leaves dequantization to ``gguf.quants``.
    """

    def __init__(self, path: Path):
        import gguf

        self.path = Path(path)
        try:
            self._data = np.memmap(self.path, mode="r")
            self._parse(memoryview(self._data), gguf)
        except CircuitsError:
            raise
        except (struct.error, ValueError, IndexError, UnicodeDecodeError, OverflowError) as exc:
            raise CircuitsError(f"{self.path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from exc

    def _parse(self, buf: memoryview, gguf) -> None:
        if len(buf) < 24 or struct.unpack_from("<I", buf, 0)[0] != gguf.GGUF_MAGIC:
            raise CircuitsError(f"{self.path} is not a GGUF file (bad magic number)")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise CircuitsError(f"{self.path}: GGUF version {version} is not supported (2 or 3; big-endian files neither)")
        self._off = 24
        fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._str(buf)
            (vtype,) = self._unpack(buf, "<I")
            fields[key] = self._value(buf, vtype)
        infos = []
        for _ in range(n_tensors):
            name = self._str(buf)
            (n_dims,) = self._unpack(buf, "<I")
            dims = self._unpack(buf, f"<{n_dims}Q")
            qtype, offset = self._unpack(buf, "<IQ")
            infos.append((name, tuple(int(d) for d in dims), qtype, offset))
        align = int(fields.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT))
        start = -(-self._off // align) * align
        tensors = []
        for name, dims, qtype, offset in infos:
            qtype = gguf.GGMLQuantizationType(qtype)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            n_bytes = int(np.prod(dims, dtype=np.int64)) * type_size // block
            begin = start + int(offset)
            if begin + n_bytes > len(buf):
                raise CircuitsError(f"{self.path} is truncated: tensor {name} runs past the end of the file")
            tensors.append(GGUFTensor(name, dims, qtype, self._data[begin:begin + n_bytes]))
        self.fields = fields
        self.tensors = tensors

    def _unpack(self, buf, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, buf, self._off)
        self._off += struct.calcsize(fmt)
        return values

    def _str(self, buf) -> str:
        (n,) = struct.unpack_from("<Q", buf, self._off)
        start = self._off + 8
        self._off = start + n
        if self._off > len(buf):
            raise ValueError("string runs past the end of the file")
        return buf[start:self._off].tobytes().decode("utf-8")

    def _value(self, buf, vtype: int) -> Any:
        if vtype == _STRING:
            return self._str(buf)
        if vtype in _SCALARS:
            return self._unpack(buf, "<" + _SCALARS[vtype])[0]
        if vtype == _ARRAY:
            item, count = self._unpack(buf, "<IQ")
            if item in _SCALARS:  # one struct call for the whole array
                fmt = f"<{count}{_SCALARS[item]}"
                return list(self._unpack(buf, fmt))
            return [self._value(buf, item) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {vtype}")


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a Q or K weight [out, in].

    llama.cpp viewed each head's rows as [2, e/2] and swapped the two axes; viewing them
    as [e/2, 2] and swapping back restores HF's rotate-half layout.
    """
    out = w.shape[0]
    return w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(reader: GGUFFile) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize, quant_shape_to_byte_shape

    result = {}
    for t in reader.tensors:
        shape = tuple(reversed(t.shape))  # HF's [out, in]
        try:
            arr = dequantize(t.data.reshape(quant_shape_to_byte_shape(shape, t.tensor_type)), t.tensor_type)
        except NotImplementedError as exc:
            raise CircuitsError(f"GGUF tensor {t.name} has type {t.tensor_type.name}, which cannot be dequantized") from exc
        result[t.name] = np.array(arr, dtype=np.float32).reshape(shape)  # a writable copy, off the memory map
    return result


def _new_model(cls, cfg):
    """``cls(cfg)`` without the random initialisation (every weight is loaded next): ~3 s less for SmolLM2."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        return cls(cfg)
    with no_init_weights():
        return cls(cfg)


def _block_tensors(raw: dict[str, np.ndarray], known, arch: str):
    """Yield (layer, key, kind, array) for every ``blk.N.key.kind`` tensor; unknown keys are errors."""
    for name, arr in raw.items():
        parts = name.split(".")
        if parts[0] != "blk":
            continue
        layer, key, kind = parts[1], parts[2], parts[3]
        if key not in known:
            raise CircuitsError(f"GGUF tensor {name} has no place in a {arch} model")
        yield layer, key, kind, arr


def _load_state(cls, cfg, state: dict[str, np.ndarray], arch: str, *, may_miss) -> Any:
    """A fresh ``cls(cfg)`` holding ``state``; missing weights other than ``may_miss(name)`` are errors."""
    import torch

    model = _new_model(cls, cfg)
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False)
    missing = [m for m in missing if not may_miss(m)]
    if missing or unexpected:
        raise CircuitsError(f"GGUF tensors do not match a {arch} model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


def _llama(reader, arch: str, raw: dict[str, np.ndarray]):
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
    for layer, key, kind, arr in _block_tensors(raw, names, "llama"):
        if key == "attn_q":
            arr = _unpermute(arr, n_heads)
        elif key == "attn_k":
            arr = _unpermute(arr, n_kv)
        state[f"model.layers.{layer}.{names[key]}.{kind}"] = arr
    model = _load_state(LlamaForCausalLM, cfg, state, "llama", may_miss=lambda m: tied and m == "lm_head.weight")
    if tied:
        model.tie_weights()
    return model


def _gpt2(reader, arch: str, raw: dict[str, np.ndarray]):
    from transformers import GPT2Config, GPT2LMHeadModel

    # llama.cpp's converter writes output.weight as a copy of token_embd; a different one is an untied head
    own_head = "output.weight" in raw and not np.array_equal(raw["output.weight"], raw["token_embd.weight"])
    cfg = GPT2Config(
        vocab_size=raw["token_embd.weight"].shape[0],
        tie_word_embeddings=not own_head,
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
    if own_head:
        state["lm_head.weight"] = raw["output.weight"]
    for layer, key, kind, arr in _block_tensors(raw, names, "gpt2"):
        hf, conv = names[key]
        if conv and kind == "weight":
            arr = arr.T
        state[f"transformer.h.{layer}.{hf}.{kind}"] = arr
    model = _load_state(GPT2LMHeadModel, cfg, state, "gpt2", may_miss=lambda m: (m == "lm_head.weight" and not own_head)
                        or m.endswith(".attn.bias") or m.endswith("masked_bias"))
    if not own_head:
        model.tie_weights()
    return model


#: llama.cpp's per-layer tensor names -> HF's, for the families built by ``_decoder``
_ATTENTION = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_NORMS = {
    "qwen2": {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"},
    "olmo2": {"post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm"},
    "gemma2": {"attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
               "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"},
}
_NORMS["qwen3"], _NORMS["gemma3"] = _NORMS["qwen2"], _NORMS["gemma2"]


def _decoder_config(reader, arch: str, raw: dict[str, np.ndarray]):
    """The HF config of a qwen2/qwen3/olmo2/gemma2/gemma3 file, from its metadata."""
    import transformers

    def get(key, default=None):
        return _field(reader, f"{arch}.{key}", default)

    n_heads = int(get("attention.head_count"))
    d = int(get("embedding_length"))
    n_layers = int(get("block_count"))
    head_dim = int(get("attention.key_length", d // n_heads))
    kwargs = dict(
        vocab_size=raw["token_embd.weight"].shape[0], hidden_size=d, intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=n_layers, num_attention_heads=n_heads,
        num_key_value_heads=int(get("attention.head_count_kv", n_heads)),
        max_position_embeddings=int(get("context_length", 2048)),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        tie_word_embeddings="output.weight" not in raw,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"), eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
    )
    base = float(get("rope.freq_base", 10000.0))
    scaling = get("rope.scaling.type")
    rope = {"rope_type": "default" if scaling in (None, "none") else str(scaling), "rope_theta": base}
    if rope["rope_type"] != "default":
        rope["factor"] = float(get("rope.scaling.factor", 1.0))
    if arch in ("qwen2", "qwen3"):
        cls = transformers.Qwen2Config if arch == "qwen2" else transformers.Qwen3Config
        return cls(**kwargs, head_dim=head_dim, rope_parameters=rope, attention_bias="blk.0.attn_q.bias" in raw)
    if arch == "olmo2":
        return transformers.Olmo2Config(**kwargs, rope_parameters=rope)
    # Gemma: llama.cpp scales queries by 1/sqrt(head_dim), or 1/sqrt(d/heads) for the 27B models
    scalar = d // n_heads if (arch, n_layers) in (("gemma2", 46), ("gemma3", 62)) else head_dim
    gemma = dict(kwargs, head_dim=head_dim, query_pre_attn_scalar=scalar, sliding_window=int(get("attention.sliding_window", 4096)),
                 hidden_activation="gelu_pytorch_tanh")
    if arch == "gemma2":
        return transformers.Gemma2Config(**gemma, rope_parameters=rope,
                                         attn_logit_softcapping=float(get("attn_logit_softcapping", 50.0)),
                                         final_logit_softcapping=float(get("final_logit_softcapping", 30.0)))
    pattern = get("attention.sliding_window_pattern", 6)  # llama.cpp: every 6th layer is global
    if isinstance(pattern, list):
        sliding = [bool(x) for x in pattern]
    else:
        sliding = [(i + 1) % int(pattern) != 0 for i in range(n_layers)]
    types = ["sliding_attention" if s else "full_attention" for s in sliding]
    local = {"rope_type": "default", "rope_theta": 10000.0}  # llama.cpp's fixed base for Gemma 3's local layers
    return transformers.Gemma3TextConfig(**gemma, layer_types=types,
                                         rope_parameters={"sliding_attention": local, "full_attention": rope})


def _decoder(reader, arch: str, raw: dict[str, np.ndarray]):
    """A qwen2, qwen3, olmo2, gemma2 or gemma3 model from its GGUF tensors."""
    from transformers import AutoModelForCausalLM

    cfg = _decoder_config(reader, arch, raw)
    names = {**_ATTENTION, **_NORMS[arch]}
    gemma = arch.startswith("gemma")
    state = {"model.embed_tokens.weight": raw["token_embd.weight"],
             "model.norm.weight": raw["output_norm.weight"] - (1.0 if gemma else 0.0)}
    if "output.weight" in raw:
        state["lm_head.weight"] = raw["output.weight"]
    for layer, key, kind, arr in _block_tensors(raw, names, arch):
        if gemma and key.endswith("norm"):
            arr = arr - 1.0
        state[f"model.layers.{layer}.{names[key]}.{kind}"] = arr
    cls = AutoModelForCausalLM._model_mapping[type(cfg)]
    model = _load_state(cls, cfg, state, arch, may_miss=lambda m: cfg.tie_word_embeddings and m == "lm_head.weight")
    if cfg.tie_word_embeddings:
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
    reader = GGUFFile(path)
    arch = str(_field(reader, "general.architecture", "?"))
    if arch not in SUPPORTED:
        raise CircuitsError(f"GGUF architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED)}")
    raw = _tensors(reader)
    try:
        build = {"llama": _llama, "gpt2": _gpt2}.get(arch, _decoder)
        model = build(reader, arch, raw)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:  # a missing tensor or field, wrong shapes
        raise CircuitsError(f"{path}: cannot build a {arch} model from this GGUF file ({type(exc).__name__}: {exc})") from exc
    tokenizer = _tokenizer(reader, arch)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
