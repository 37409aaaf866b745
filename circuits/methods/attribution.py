"""Shared maths of the gradient methods (EAP, EAP-IG): edge scores from deltas and receiver gradients.

An edge ``s -> r`` scores ``sum_{prompts, positions} (reference[s] - clean[s]) . dM/d input_r``,
the first-order estimate of how the mean metric M changes when the edge is patched.  The
receiver gradients come from ``GraphEngine.receiver_grads``; the products are one matrix
multiplication per layer.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from jaxtyping import Float
from torch import Tensor

from circuits import names
from circuits.errors import CircuitsError


def add_edge_scores(engine, out: Float[Tensor, "senders receivers"], delta: Float[Tensor, "senders batch pos d_model"],
                    trace, answer_pos: Tensor, scale: float = 1.0) -> None:
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


def add_positional_scores(engine, out: Float[Tensor, "senders receivers spans"],
                          delta: Float[Tensor, "senders batch pos d_model"], trace, answer_pos: Tensor, spans, *,
                          aggregate: str = "sum", scale: float = 1.0) -> None:
    """``add_edge_scores`` per span: ``out`` [S, R, K] += scale * the per-position products
    ``delta[s, b, p] . d metric / d input_r[b, p]`` aggregated over each span's positions (``spans``: the
    piece's :class:`circuits.data.spans.SpanTable`; ``sum``, ``mean`` or ``max``: largest |product|, signed) and
    summed over prompts.  One layer's products [S, 3H + 1, b, p] exist at a time."""
    g = engine.graph
    H3 = 3 * engine.w.n_heads
    weights = spans.one_hot(dtype=delta.dtype, mean=aggregate == "mean").to(delta.device)  # [b, p, K]
    index = spans.index.to(delta.device)

    def add(rows: slice, cols, prod: Tensor) -> None:  # prod [s, r, b, p]
        if aggregate == "max":
            parts = []
            for k in range(spans.k):
                v = prod.masked_fill(index != k, 0)
                parts.append(v.gather(-1, v.abs().argmax(-1, keepdim=True)).squeeze(-1).sum(-1))
            red = torch.stack(parts, -1)
        else:
            red = prod.flatten(2) @ weights.flatten(0, 1)
        out[rows, cols] += red.to(out.dtype) * scale

    for layer in range(engine.w.n_layers):
        block = g.receiver_block(layer)
        grad = engine.receiver_grads(trace, layer)
        n_heads, n_mlp = g.senders_before_heads(layer), g.senders_before_mlp(layer)
        add(slice(0, n_heads), slice(block.start, block.start + H3), torch.einsum("sbpd,rbpd->srbp", delta[:n_heads], grad[:H3]))
        add(slice(0, n_mlp), slice(block.start + H3, block.start + H3 + 1), torch.einsum("sbpd,bpd->sbp", delta[:n_mlp], grad[H3])[:, None])
        del grad
    logits = engine.logits_grad(trace, answer_pos, tuple(delta.shape[1:]))
    add(slice(None), slice(g.logits_receiver, g.logits_receiver + 1), torch.einsum("sbpd,bpd->sbp", delta, logits)[:, None])


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
