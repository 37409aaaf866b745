"""Shared maths of the gradient methods (EAP, EAP-IG): edge scores from deltas and receiver gradients.

An edge ``s -> r`` scores ``sum_{prompts, positions} (reference[s] - clean[s]) . dM/d input_r``,
the first-order estimate of how the mean metric M changes when the edge is patched.  The
receiver gradients come from ``GraphEngine.receiver_grads``; the products are one matrix
multiplication per layer.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from circuits import names
from circuits.errors import CircuitsError


class GradientSum:
    """Receiver gradients [R, b, p, d] of one batch of prompts, summed over integration steps."""

    def __init__(self, engine):
        self.engine = engine
        self.layers: List[Optional[Tensor]] = [None] * engine.w.n_layers
        self.logits: Optional[Tensor] = None
        self.hidden: Dict[int, Tensor] = {}

    def add(self, trace, answer_pos: Tensor, shape, hidden: Optional[dict] = None) -> None:
        for layer in range(self.engine.w.n_layers):
            g = self.engine.receiver_grads(trace, layer)
            self.layers[layer] = g if self.layers[layer] is None else self.layers[layer].add_(g)
        g = self.engine.logits_grad(trace, answer_pos, shape)
        self.logits = g if self.logits is None else self.logits.add_(g)
        for layer, h in (hidden or {}).items():
            self.hidden[layer] = h.grad.detach() if layer not in self.hidden else self.hidden[layer].add_(h.grad)


def edge_scores(engine, delta: Tensor, grads: GradientSum, scale: float = 1.0) -> Tensor:
    """[S, R] scores: delta [S, b, p, d] (reference - clean outputs) against summed receiver gradients."""
    g = engine.graph
    flat = delta.reshape(delta.shape[0], -1)
    out = torch.zeros(g.n_senders, g.n_receivers, dtype=delta.dtype, device=delta.device)
    H3 = 3 * engine.w.n_heads
    for layer, grad in enumerate(grads.layers):
        block = g.receiver_block(layer)
        gflat = grad.reshape(grad.shape[0], -1)
        n_heads = g.senders_before_heads(layer)
        out[:n_heads, block.start:block.start + H3] = flat[:n_heads] @ gflat[:H3].T
        n_mlp = g.senders_before_mlp(layer)
        out[:n_mlp, block.start + H3] = flat[:n_mlp] @ gflat[H3]
    out[:, g.logits_receiver] = flat @ grads.logits.reshape(-1)
    return out * scale


def parse_neuron_layers(spec: Sequence[str], n_layers: int) -> Tuple[int, ...]:
    """``("m8", "m10")`` -> (8, 10), checked against the model's depth."""
    layers = []
    for item in spec:
        node = names.parse_node(item)
        if node.kind != "mlp":
            raise CircuitsError(f"--neurons takes MLP names like m10, not {item!r}")
        if node.layer >= n_layers:
            raise CircuitsError(f"--neurons {item}: the model has MLPs m0..m{n_layers - 1}")
        layers.append(node.layer)
    return tuple(sorted(set(layers)))


def top_neurons(scores: Dict[int, Tensor], k: int) -> Dict[str, List[Tuple[int, float]]]:
    """Per MLP layer: the ``k`` neurons with the largest |score|, as (index, score)."""
    out = {}
    for layer, s in scores.items():
        idx = s.abs().argsort(descending=True)[:k]
        out[names.format_node(names.mlp(layer))] = [(int(i), float(s[i])) for i in idx]
    return out
