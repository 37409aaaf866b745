"""Shared maths of the gradient methods (EAP, EAP-IG): edge scores from deltas and receiver gradients.

An edge ``s -> r`` scores ``sum_{prompts, positions} (reference[s] - clean[s]) . dM/d input_r``,
the first-order estimate of how the mean metric M changes when the edge is patched.  The
receiver gradients come from ``GraphEngine.receiver_grads``; the products are one matrix
multiplication per layer.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from circuits import names
from circuits.errors import CircuitsError


def add_edge_scores(engine, out: Tensor, delta: Tensor, trace, answer_pos: Tensor, scale: float = 1.0) -> None:
    """After ``backward`` on a traced run: ``out`` [S, R] += scale * delta . d metric / d input_r.

    ``delta`` [S, b, p, d] holds reference - clean outputs.  Each layer's receiver gradients are
    turned into scores as soon as they are formed and then dropped, so at most one layer's
    gradients [3H + 1, b, p, d] exist at a time.
    """
    g = engine.graph
    flat = engine.sender_deltas(trace, delta).reshape(delta.shape[0], -1)
    H3 = 3 * engine.w.n_heads
    same = out.dtype == flat.dtype
    for layer in range(engine.w.n_layers):
        block = g.receiver_block(layer)
        grad = engine.receiver_grads(trace, layer)
        gflat = grad.reshape(grad.shape[0], -1)
        n_heads = g.senders_before_heads(layer)
        heads = out[:n_heads, block.start:block.start + H3]
        if same:
            heads.addmm_(flat[:n_heads], gflat[:H3].T, alpha=scale)
        else:  # half-precision products (float32 accumulation inside the matmul), summed in ``out``'s precision
            heads.add_((flat[:n_heads] @ gflat[:H3].T).to(out.dtype), alpha=scale)
        n_mlp = g.senders_before_mlp(layer)
        out[:n_mlp, block.start + H3].add_((flat[:n_mlp] @ gflat[H3]).to(out.dtype), alpha=scale)
        del grad, gflat
    logits = engine.logits_grad(trace, answer_pos, tuple(delta.shape[1:]))
    out[:, g.logits_receiver].add_((flat @ logits.reshape(-1)).to(out.dtype), alpha=scale)


def score_dtype(engine) -> torch.dtype:
    """The precision scores accumulate in: float32, or float64 for a float64 engine (exact checks)."""
    return torch.promote_types(engine.w.W_E.dtype, torch.float32)


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
