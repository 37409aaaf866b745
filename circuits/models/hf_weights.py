"""Weights of the families beyond GPT-2 and Llama, read straight from the Hugging Face model.

TransformerLens 4.3 boots all of them, but its bridge exposes only some of what the engine needs
(post-norms, q/k norms, per-layer windows and rotary bases), so the engine reads these families'
modules and config directly.  What each family computes, and how it maps onto ``ModelWeights``,
is listed in docs/architectures.md.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from circuits.errors import CircuitsError
from circuits.models.weights import ModelWeights

#: model_type -> (its decoder layer's norm modules: before attention, after attention, before the MLP, after the MLP)
FAMILIES = {
    "qwen2": ("input_layernorm", None, "post_attention_layernorm", None),
    "qwen3": ("input_layernorm", None, "post_attention_layernorm", None),
    "mistral": ("input_layernorm", None, "post_attention_layernorm", None),
    "gpt_neox": ("input_layernorm", None, "post_attention_layernorm", None),
    "olmo2": (None, "post_attention_layernorm", None, "post_feedforward_layernorm"),
    "gemma2": ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
    "gemma3_text": ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
}
ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "relu": "relu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new",
               "gelu_fast": "gelu_new"}


def model_type(config: Any) -> str:
    return str(getattr(config, "model_type", "") or "")


def reads_from_hf(config: Any) -> bool:
    """Whether the engine reads this model's weights from the HF model (rather than the bridge)."""
    return config is not None and model_type(config) in FAMILIES


def _inner(module):
    """The HF module itself: TransformerLens's bridge wraps some modules (``_original_component``)."""
    return getattr(module, "_original_component", module)


def _stack(tensors) -> Tensor:
    return torch.stack([t.detach() for t in tensors])


def _heads_in(linear, n: int, e: int) -> tuple[Tensor, Optional[Tensor]]:
    """A projection to ``n`` heads as [n, d, e] and its bias [n, e] (or None)."""
    linear = _inner(linear)
    w = linear.weight.detach().view(n, e, -1).permute(0, 2, 1)
    b = None if linear.bias is None else linear.bias.detach().view(n, e)
    return w, b


def _or_zeros(values, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if values[0] is None else _stack(values)


def _norm_weight(module, offset: float) -> Tensor:
    return _inner(module).weight.detach() + offset  # Gemma's norms multiply by (1 + weight)


def _rope(cfg) -> tuple[Optional[float], Optional[tuple], float]:
    """(base, per-layer bases or None, partial rotary factor); refuses rotary scaling."""
    params = getattr(cfg, "rope_parameters", None) or {}
    types = getattr(cfg, "layer_types", None)
    if types and all(t in params for t in set(types)):  # per layer type (Gemma 3)
        for p in params.values():
            _default_rope(p)
        bases = tuple(float(params[t]["rope_theta"]) for t in types)
        return bases[0], bases, float(params[types[0]].get("partial_rotary_factor", 1.0) or 1.0)
    _default_rope(params)
    base = params.get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0
    return float(base), None, float(params.get("partial_rotary_factor", None) or getattr(cfg, "partial_rotary_factor", 1.0) or 1.0)


def _default_rope(params: dict) -> None:
    kind = params.get("rope_type", "default") if isinstance(params, dict) else "default"
    if kind != "default":
        raise CircuitsError(f"rotary scaling {kind!r} is not supported by the graph engine yet")


def _windows(cfg, n_layers: int) -> Optional[tuple]:
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types:
        out = tuple(window if t == "sliding_attention" else None for t in types)
    elif window and getattr(cfg, "use_sliding_window", True) is not False:
        out = (window,) * n_layers
    else:
        return None
    return out if any(w is not None for w in out) else None


def hf_weights(model) -> ModelWeights:
    """The engine's weights of a HF causal LM of one of ``FAMILIES`` (eval mode, any dtype)."""
    cfg = model.config
    kind = model_type(cfg)
    if kind not in FAMILIES:
        raise CircuitsError(f"{kind!r} weights are not read from the Hugging Face model")
    pre_attn, post_attn, pre_mlp, post_mlp = FAMILIES[kind]
    gemma = kind.startswith("gemma")
    offset = 1.0 if gemma else 0.0
    neox = kind == "gpt_neox"
    body = model.gpt_neox if neox else model.model
    layers = list(body.layers)
    H = cfg.num_attention_heads
    K = getattr(cfg, "num_key_value_heads", None) or H
    d = cfg.hidden_size
    e = getattr(cfg, "head_dim", None) or d // H
    act = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)
    if act not in ACTIVATIONS:
        raise CircuitsError(f"activation {act!r} is not supported by the graph engine")
    if getattr(cfg, "mlp_bias", False):
        raise CircuitsError(f"{kind}: MLP biases are not supported by the graph engine yet")
    with torch.no_grad():
        Q, K_, V, O, bO, Win, bin_, Wg, Wout, bout = _layer_weights(layers, neox, H, K, e, d)
        W_Q, W_K = _stack([w for w, _ in Q]), _stack([w for w, _ in K_])
        W_in = _stack(Win)

        def norms(name: Optional[str]):
            return None if name is None else _stack([_norm_weight(getattr(l, name), offset) for l in layers])

        def biases(name: Optional[str]):
            if name is None or getattr(_inner(getattr(layers[0], name)), "bias", None) is None:
                return None
            return _stack([_inner(getattr(l, name)).bias for l in layers])

        first = layers[0] if neox else layers[0].self_attn
        q_norm = getattr(_inner(first), "q_norm", None)
        full = q_norm is not None and q_norm.weight.numel() == H * e and H * e != e
        final = _inner(body.final_layer_norm if neox else body.norm)
        eps = (getattr(final, "eps", None) or getattr(final, "variance_epsilon", None)
               or getattr(cfg, "layer_norm_eps" if neox else "rms_norm_eps", None) or 1e-6)
        base, bases, partial = _rope(cfg)
        unembed = _inner(getattr(model, "lm_head", None) or model.embed_out)
        scalar = getattr(cfg, "query_pre_attn_scalar", None)
        return ModelWeights(
            W_E=_inner(body.embed_in if neox else body.embed_tokens).weight.detach(), W_pos=None,
            W_Q=W_Q, b_Q=_or_zeros([b for _, b in Q], W_Q[:, :, 0]),
            W_K=W_K, b_K=_or_zeros([b for _, b in K_], W_K[:, :, 0]),
            W_V=_stack([w for w, _ in V]), b_V=_or_zeros([b for _, b in V], W_K[:, :, 0]),
            W_O=_stack(O), b_O=_or_zeros(bO, W_Q[:, 0, :, 0]),
            W_in=W_in, b_in=_or_zeros(bin_, W_in[:, 0]), W_gate=None if neox else _stack(Wg),
            W_out=_stack(Wout), b_out=_or_zeros(bout, W_Q[:, 0, :, 0]),
            W_U=unembed.weight.detach().T, b_U=(unembed.bias.detach() if getattr(unembed, "bias", None) is not None
                                                else torch.zeros_like(unembed.weight[:, 0])),
            ln1_w=norms(pre_attn), ln1_b=biases(pre_attn), ln2_w=norms(pre_mlp), ln2_b=biases(pre_mlp),
            lnf_w=_norm_weight(final, offset), lnf_b=None if getattr(final, "bias", None) is None else final.bias.detach(),
            eps=float(eps), norm="LN" if neox else "RMS", act_fn=ACTIVATIONS[act],
            rotary_base=base, rotary_dim=int(e * partial),
            emb_scale=float(d ** 0.5) if gemma else 1.0,
            q_norm=None if q_norm is None else _stack([_norm_weight(_inner(l.self_attn).q_norm, offset) for l in layers]),
            k_norm=None if q_norm is None else _stack([_norm_weight(_inner(l.self_attn).k_norm, offset) for l in layers]),
            qk_norm_full=full,
            attn_post_w=norms(post_attn), mlp_post_w=norms(post_mlp),
            attn_scale=None if scalar is None else float(scalar) ** -0.5,
            attn_softcap=getattr(cfg, "attn_logit_softcapping", None) or None,
            final_softcap=getattr(cfg, "final_logit_softcapping", None) or None,
            windows=_windows(cfg, len(layers)), rotary_bases=bases,
            parallel=bool(neox and getattr(cfg, "use_parallel_residual", True)),
        )


def _layer_weights(layers, neox: bool, H: int, K: int, e: int, d: int) -> tuple:
    """Per layer: (W, b) of q, k and v per head, W_O and b_O, and the MLP's W_in, b_in, W_gate, W_out, b_out."""
    Q, K_, V, O, bO, Win, bin_, Wg, Wout, bout = ([] for _ in range(10))
    for layer in layers:
        if neox:
            attn, fused = layer.attention, _inner(layer.attention.query_key_value)
            qkv = fused.weight.detach().view(H, 3, e, d).permute(1, 0, 3, 2)  # [3, H, d, e]
            bias = fused.bias.detach().view(H, 3, e).permute(1, 0, 2) if fused.bias is not None else [None] * 3
            Q.append((qkv[0], bias[0])), K_.append((qkv[1], bias[1])), V.append((qkv[2], bias[2]))
            out, mlp = attn.dense, layer.mlp
            up, down = _inner(mlp.dense_h_to_4h), _inner(mlp.dense_4h_to_h)
            Win.append(up.weight.detach().T), bin_.append(up.bias)
            Wout.append(down.weight.detach().T), bout.append(down.bias)
            Wg.append(None)
        else:
            attn, mlp = layer.self_attn, layer.mlp
            Q.append(_heads_in(attn.q_proj, H, e)), K_.append(_heads_in(attn.k_proj, K, e))
            V.append(_heads_in(attn.v_proj, K, e))
            out = attn.o_proj
            Win.append(_inner(mlp.up_proj).weight.detach().T), bin_.append(None)
            Wg.append(_inner(mlp.gate_proj).weight.detach().T)
            Wout.append(_inner(mlp.down_proj).weight.detach().T), bout.append(None)
        out = _inner(out)
        O.append(out.weight.detach().T.reshape(H, e, d)), bO.append(out.bias)
    return Q, K_, V, O, bO, Win, bin_, Wg, Wout, bout
