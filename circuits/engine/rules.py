"""Propagation rules: changes to the engine's traced backward pass that leave the forward values alone.

Attribution methods that are "EAP with another backward" (GIM, RelP) are one traced forward+backward
with :class:`BackwardRules` in ``RunOptions.rules``; the receiver gradients and edge scores are then
formed exactly as EAP's.  Each rule acts at one place of the engine's forward:

- ``freeze_norm``: every norm's scale (standard deviation or RMS) is a constant in the backward pass
  (LayerNorm keeps its centring, which is linear).  GIM's norm freezing, LRP's LN-rule.
- ``softmax_temperature`` T: the attention softmax's backward is that of ``softmax(scores / T)``
  at the same point, without the ``1/T`` factor: ``s_T * (g - <g, s_T>)`` (GIM's TSG).
- ``q_scale``, ``k_scale``, ``v_scale``: the gradients of the heads' queries, keys and values are
  multiplied by these (GIM's 1/4, 1/4, 1/2; LRP's half rule on the two products ``q.k`` and
  ``pattern @ v`` gives the same factors).
- ``gate_scale``, ``up_scale``: in a gated MLP, ``act(gate) * up``, the gradients of the two factors
  are multiplied by these (the half rule: 1/2, 1/2).
- ``act_identity``: the activation function's derivative is replaced by ``act(x) / x`` (LRP's
  identity rule: the activation passes relevance through as if it were the linear map ``x -> x * act(x)/x``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BackwardRules:
    freeze_norm: bool = False
    softmax_temperature: float = 1.0
    q_scale: float = 1.0
    k_scale: float = 1.0
    v_scale: float = 1.0
    gate_scale: float = 1.0
    up_scale: float = 1.0
    act_identity: bool = False


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged; its gradient multiplied by ``scale`` on the way back."""
    return x if scale == 1.0 else _ScaleGrad.apply(x, float(scale))


class _TemperedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, temperature: float) -> Tensor:
        ctx.temperature = temperature
        ctx.save_for_backward(scores)
        return scores.softmax(-1)

    @staticmethod
    def backward(ctx, g: Tensor):
        (scores,) = ctx.saved_tensors
        s = (scores / ctx.temperature).softmax(-1)
        return s * (g - (g * s).sum(-1, keepdim=True)), None


def softmax(scores: Tensor, temperature: float = 1.0) -> Tensor:
    """``scores.softmax(-1)``, with the backward of ``softmax(scores / temperature)`` (no ``1/T`` factor)."""
    return scores.softmax(-1) if temperature == 1.0 else _TemperedSoftmax.apply(scores, float(temperature))


class _IdentityRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, at_zero: float) -> Tensor:
        ratio = torch.where(x == 0, torch.full_like(x, at_zero), y / torch.where(x == 0, torch.ones_like(x), x))
        ctx.save_for_backward(ratio)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):
        (ratio,) = ctx.saved_tensors
        return g * ratio, None, None


def identity_rule(x: Tensor, y: Tensor, at_zero: float) -> Tensor:
    """``y = act(x)`` (computed without gradient) whose backward to ``x`` is ``g * y / x`` (``at_zero`` where x = 0)."""
    return _IdentityRule.apply(x, y, float(at_zero))
