"""The model's weights in one standard layout, read from a booted TransformerBridge.

The fast graph engine (``circuits.engine``) computes on these tensors directly, so it can
split each head's q/k/v input without TransformerLens's per-head flags.  Two families are
understood: GPT-2-style (LayerNorm, learned positions, GELU MLP) and Llama-style
(RMSNorm, rotary positions, gated SiLU MLP, grouped-query attention).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from circuits.errors import CircuitsError


@dataclass(frozen=True)
class ModelWeights:
    """Shapes: L layers, H query heads, K key/value heads, d model width, e head width, m MLP width, V vocab."""

    W_E: Tensor  # [V, d]
    W_pos: Optional[Tensor]  # [n_ctx, d] for learned positions, else None
    W_Q: Tensor  # [L, H, d, e]
    b_Q: Tensor  # [L, H, e]
    W_K: Tensor  # [L, K, d, e]
    b_K: Tensor  # [L, K, e]
    W_V: Tensor  # [L, K, d, e]
    b_V: Tensor  # [L, K, e]
    W_O: Tensor  # [L, H, e, d]
    b_O: Tensor  # [L, d]
    W_in: Tensor  # [L, d, m]
    b_in: Tensor  # [L, m]
    W_gate: Optional[Tensor]  # [L, d, m] for gated MLPs
    W_out: Tensor  # [L, m, d]
    b_out: Tensor  # [L, d]
    W_U: Tensor  # [d, V]
    b_U: Tensor  # [V]
    ln1_w: Optional[Tensor]  # [L, d]; None: no norm before attention (OLMo 2)
    ln1_b: Optional[Tensor]  # [L, d]; None for RMSNorm
    ln2_w: Optional[Tensor]
    ln2_b: Optional[Tensor]
    lnf_w: Tensor  # [d]
    lnf_b: Optional[Tensor]
    eps: float
    norm: str  # "LN" or "RMS"
    act_fn: str  # "gelu_new", "gelu", "relu", "silu"
    rotary_base: Optional[float]  # rotary positions when set
    rotary_dim: int
    # what the families beyond GPT-2 and Llama add (see docs/architectures.md); the defaults change nothing
    emb_scale: float = 1.0  # the embedding is multiplied by it (Gemma: sqrt(d_model))
    q_norm: Optional[Tensor] = None  # RMSNorm weights of each head's query [L, e] (Qwen3, Gemma 3), or of the whole
    k_norm: Optional[Tensor] = None  # projection [L, H*e] / [L, K*e] when ``qk_norm_full`` (OLMo 2)
    qk_norm_full: bool = False
    attn_post_w: Optional[Tensor] = None  # [L, d]: RMSNorm of the attention output before the residual add
    mlp_post_w: Optional[Tensor] = None  # [L, d]: RMSNorm of the MLP output (part of the MLP sender's output)
    attn_scale: Optional[float] = None  # query scale; None: 1 / sqrt(d_head)
    attn_softcap: Optional[float] = None  # attention scores -> cap * tanh(scores / cap)
    final_softcap: Optional[float] = None  # logits -> cap * tanh(logits / cap)
    windows: Optional[tuple] = None  # per layer: sliding window W (a query sees the last W positions) or None
    rotary_bases: Optional[tuple] = None  # per layer rotary base (Gemma 3's local and global layers)
    parallel: bool = False  # attention and MLP read the same residual stream (GPT-NeoX)

    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]

    @property
    def n_kv_heads(self) -> int:
        return self.W_K.shape[1]

    @property
    def d_model(self) -> int:
        return self.W_Q.shape[2]

    @property
    def d_head(self) -> int:
        return self.W_Q.shape[3]

    @property
    def d_mlp(self) -> int:
        return self.W_in.shape[2]


def _param(bridge, name: str, shape_like: Tensor) -> Tensor:
    """A stacked bias from the bridge, or zeros where the checkpoint has none."""
    try:
        value = getattr(bridge, name)
    except AttributeError:
        value = None
    if value is None:
        return torch.zeros_like(shape_like)
    return value.detach()


def _norm(module):
    inner = getattr(module, "_original_component", module)
    weight = inner.weight.detach()
    bias = getattr(inner, "bias", None)
    eps = getattr(inner, "eps", None) or getattr(inner, "variance_epsilon", None)
    return weight, (bias.detach() if bias is not None else None), eps


def _rotary(bridge) -> tuple[Optional[float], int]:
    cfg = bridge.cfg
    if getattr(cfg, "positional_embedding_type", "standard") != "rotary":
        return None, 0
    hf = getattr(getattr(bridge, "original_model", None), "config", None)
    params = getattr(hf, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default") if isinstance(params, dict) else "default"
    if rope_type != "default":
        raise CircuitsError(f"rotary scaling {rope_type!r} is not supported by the graph engine yet")
    base = (params.get("rope_theta") if isinstance(params, dict) else None) or getattr(hf, "rope_theta", None) or cfg.rotary_base
    partial = float(getattr(hf, "partial_rotary_factor", 1.0) or 1.0)
    return float(base), int(cfg.d_head * partial)


def extract_weights(bridge) -> ModelWeights:
    """Read every weight the engine needs from a TransformerBridge in compatibility mode (no folding)."""
    cfg = bridge.cfg
    if getattr(cfg, "parallel_attn_mlp", False) or getattr(cfg, "attn_only", False):
        raise CircuitsError("parallel attention/MLP and attention-only models are not supported by the graph engine yet")
    norm = str(cfg.normalization_type or "LN")
    if norm not in ("LN", "RMS"):
        raise CircuitsError(f"normalization {norm!r} is not supported by the graph engine (LN or RMS)")
    act = str(cfg.act_fn)
    if act not in ("gelu_new", "gelu", "relu", "silu", "gelu_pytorch_tanh", "gelu_fast"):
        raise CircuitsError(f"activation {act!r} is not supported by the graph engine")
    with torch.no_grad():
        blocks = list(bridge.blocks)
        ln1 = [_norm(b.ln1) for b in blocks]
        ln2 = [_norm(b.ln2) for b in blocks]
        lnf = _norm(bridge.ln_final)
        W_Q = bridge.W_Q.detach()
        W_K = bridge.W_K.detach()
        W_in = bridge.W_in.detach()
        gated = bool(getattr(cfg, "gated_mlp", False))
        W_pos = None
        if getattr(cfg, "positional_embedding_type", "standard") == "standard":
            W_pos = bridge.W_pos.detach()
        base, rot_dim = _rotary(bridge)
        return ModelWeights(
            W_E=bridge.W_E.detach(), W_pos=W_pos,
            W_Q=W_Q, b_Q=_param(bridge, "b_Q", W_Q[:, :, 0]),
            W_K=W_K, b_K=_param(bridge, "b_K", W_K[:, :, 0]),
            W_V=bridge.W_V.detach(), b_V=_param(bridge, "b_V", W_K[:, :, 0]),
            W_O=bridge.W_O.detach(), b_O=_param(bridge, "b_O", W_Q[:, 0, :, 0]),
            W_in=W_in, b_in=_param(bridge, "b_in", W_in[:, 0]),
            W_gate=bridge.W_gate.detach() if gated else None,
            W_out=bridge.W_out.detach(), b_out=_param(bridge, "b_out", W_Q[:, 0, :, 0]),
            W_U=bridge.W_U.detach(), b_U=_param(bridge, "b_U", bridge.W_U[0]),
            ln1_w=torch.stack([w for w, _, _ in ln1]), ln1_b=None if ln1[0][1] is None else torch.stack([b for _, b, _ in ln1]),
            ln2_w=torch.stack([w for w, _, _ in ln2]), ln2_b=None if ln2[0][1] is None else torch.stack([b for _, b, _ in ln2]),
            lnf_w=lnf[0], lnf_b=lnf[1], eps=float(lnf[2] or cfg.eps), norm=norm,
            act_fn="gelu_new" if act in ("gelu_pytorch_tanh", "gelu_fast") else act,
            rotary_base=base, rotary_dim=rot_dim,
        )


def cast_weights(weights: ModelWeights, *, dtype: Optional[torch.dtype] = None, device=None) -> ModelWeights:
    """A copy with every tensor moved to ``device`` and/or cast to ``dtype`` (float64 for exact checks)."""
    import dataclasses

    changes = {}
    for f in dataclasses.fields(weights):
        value = getattr(weights, f.name)
        if isinstance(value, Tensor):
            changes[f.name] = value.to(device=device, dtype=dtype)
    return dataclasses.replace(weights, **changes)
