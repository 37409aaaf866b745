"""Random Llama-shaped weights in the engine's layout, for benchmarks and precision checks.

``random_llama_weights`` builds RMSNorm, rotary, gated-SiLU, grouped-query weights directly
(no checkpoint, no Hugging Face model), one layer at a time in the requested dtype, so a
model of a billion parameters costs its own size in memory and nothing more.  Each matrix is
drawn with standard deviation ``1 / sqrt(fan_in)`` (``std`` overrides it), which keeps the
residual stream's scale steady through depth, as trained models do.
"""
from __future__ import annotations

from typing import Optional

import torch

from circuits.models.weights import ModelWeights


def llama_parameters(n_layers: int, d_model: int, n_heads: int, n_kv_heads: int, d_mlp: int, vocab: int) -> int:
    """Parameter count of the shape (embedding and unembedding untied; norms included)."""
    e = d_model // n_heads
    attn = 2 * d_model * n_heads * e + 2 * d_model * n_kv_heads * e
    return n_layers * (attn + 3 * d_model * d_mlp + 2 * d_model) + 2 * vocab * d_model + d_model


def random_llama_weights(n_layers: int, d_model: int, n_heads: int, n_kv_heads: int, d_mlp: int, vocab: int, *,
                         dtype: torch.dtype = torch.float32, seed: int = 0, std: Optional[float] = None,
                         rotary_base: float = 10000.0, device="cpu") -> ModelWeights:
    """Random weights of a Llama-style model (no biases, RMSNorm weights 1)."""
    if d_model % n_heads or n_heads % n_kv_heads:
        raise ValueError("d_model must divide into n_heads, and n_heads into n_kv_heads groups")
    g = torch.Generator(device="cpu").manual_seed(seed)
    e = d_model // n_heads

    def rnd(*shape, fan_in: int) -> torch.Tensor:
        out = torch.empty(*shape, dtype=dtype)
        rows = max(1, (1 << 24) // max(1, out[0].numel()))  # a block at a time: no float32 copy of the whole tensor
        for i in range(0, shape[0], rows):
            block = out[i:i + rows]
            block.copy_(torch.randn(*block.shape, generator=g).mul_(std or fan_in ** -0.5))
        return out.to(device)

    def zeros(*shape) -> torch.Tensor:
        return torch.zeros(*shape, dtype=dtype, device=device)

    L, H, K, d, m = n_layers, n_heads, n_kv_heads, d_model, d_mlp
    return ModelWeights(
        W_E=rnd(vocab, d, fan_in=1), W_pos=None,
        W_Q=rnd(L, H, d, e, fan_in=d), b_Q=zeros(L, H, e),
        W_K=rnd(L, K, d, e, fan_in=d), b_K=zeros(L, K, e),
        W_V=rnd(L, K, d, e, fan_in=d), b_V=zeros(L, K, e),
        W_O=rnd(L, H, e, d, fan_in=d), b_O=zeros(L, d),
        W_in=rnd(L, d, m, fan_in=d), b_in=zeros(L, m), W_gate=rnd(L, d, m, fan_in=d),
        W_out=rnd(L, m, d, fan_in=m), b_out=zeros(L, d),
        W_U=rnd(d, vocab, fan_in=d), b_U=zeros(vocab),
        ln1_w=torch.ones(L, d, dtype=dtype, device=device), ln1_b=None,
        ln2_w=torch.ones(L, d, dtype=dtype, device=device), ln2_b=None,
        lnf_w=torch.ones(d, dtype=dtype, device=device), lnf_b=None,
        eps=1e-5, norm="RMS", act_fn="silu", rotary_base=rotary_base, rotary_dim=e,
    )
