"""Ranking and pruning: which edges (or nodes) a circuit of a given size keeps.

Kept apart from :mod:`circuits.circuit.select` (which chooses the size) and :mod:`circuits.circuit.faithfulness`
(which measures a circuit), so both can import it without importing each other.

- **Edges** are ranked by ``|score|`` (``ranking="abs"``, the default) or by how much they help
  the behaviour (``ranking="signed"``: the most negative score first, as MIB ranks for CPR when
  ``--absolute`` is off); ties in compute order of the receiver, then of the sender; NaN scores
  last.  A prefix of that ranking is **pruned** to the edges on an
  ``input -> logits`` path through kept edges.
- **Nodes** (heads and MLPs; ``input`` and ``logits`` are always in a circuit) are ranked the same
  way by their node score (ties: compute order).  A node circuit keeps every edge among its kept nodes,
  ``input`` and ``logits`` (:func:`node_mask`); each kept node feeds the logits directly and
  reads ``input`` directly, so nothing is pruned.

Nothing here prints or writes files.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import Tensor

from circuits.errors import CircuitsError
from circuits.engine.graph import ComputationalGraph
from circuits.methods.base import Scores

GRANULARITIES = ("edge", "node")
RANKINGS = ("abs", "signed")

__all__ = [
    "GRANULARITIES", "RANKINGS", "check_ranking", "rank_keys", "prune", "ranked_edges", "top_k_mask", "node_values",
    "ranked_nodes", "node_mask",
    "top_k_nodes_mask", "node_outputs_mask", "evaluation_mask", "kept_nodes", "n_units",
]


# ---------------------------------------------------------------- ranking keys
def check_ranking(ranking: str) -> str:
    if ranking not in RANKINGS:
        raise CircuitsError(f"unknown ranking {ranking!r}; use abs (largest |score| first) or signed (most helpful first)")
    return ranking


def rank_keys(values, ranking: str = "abs") -> Tensor:
    """Sort keys of scores, larger first: ``|score|`` (abs) or ``-score`` (signed: a negative score means patching
    the unit lowers the metric, so the unit helps).  float64; NaN scores get ``-inf`` (ranked last)."""
    values = torch.as_tensor(values).detach().cpu().double()
    keys = values.abs() if check_ranking(ranking) == "abs" else -values
    return torch.nan_to_num(keys, nan=-math.inf)


# ---------------------------------------------------------------- pruning
def prune(keep_mask, graph: ComputationalGraph) -> Tensor:
    """Keep only the edges on some ``input -> logits`` path through kept edges.

    A node is reached from ``input`` if a kept edge from a reached node enters any of its
    inputs (one of a head's q, k, v is enough); it reaches ``logits`` if one of its kept
    outgoing edges enters a node that reaches ``logits``.  An edge survives when its sender is
    reached from ``input`` and its receiver's node reaches ``logits``.  Returns a bool
    [S, R] mask on the CPU (entries outside the graph are False).
    """
    keep = torch.as_tensor(keep_mask).detach().cpu()
    keep = (keep != 0) & graph.valid_mask()
    S = graph.n_senders
    node_of = torch.tensor(graph.receiver_node)
    inputs_of: List[List[int]] = [[] for _ in range(S + 1)]
    for r, s in enumerate(node_of.tolist()):
        inputs_of[s].append(r)
    # forward: senders in compute order; only earlier senders feed a node's inputs
    fwd = torch.zeros(S, dtype=torch.bool)
    fwd[0] = True
    for s in range(1, S):
        fwd[s] = bool(keep[:s, inputs_of[s]].any(1)[fwd[:s]].any())
    # backward: a receiver input is live when its node reaches logits
    live = torch.zeros(graph.n_receivers, dtype=torch.bool)
    live[inputs_of[S]] = True
    for s in range(S - 1, -1, -1):
        if bool((keep[s] & live).any()):
            live[inputs_of[s]] = True
    return keep & fwd[:, None] & live[None, :]


# ---------------------------------------------------------------- edges
def ranked_edges(scores: Scores, ranking: str = "abs") -> Tuple[Tensor, Tensor]:
    """(sender, receiver) index tensors of every edge, first ranked first (see :func:`rank_keys`; NaN last, ties in
    compute order)."""
    graph = scores.graph
    edges = torch.tensor(graph.edges(), dtype=torch.long)  # [E, 2], receivers in compute order
    keys = rank_keys(torch.as_tensor(scores.edge_scores).detach().cpu()[edges[:, 0], edges[:, 1]], ranking)
    order = torch.argsort(-keys, stable=True)
    return edges[order, 0], edges[order, 1]


def top_k_mask(scores: Scores, k: int, ranking: str = "abs") -> Tensor:
    """Bool [S, R] mask of the ``k`` first-ranked edges (not pruned)."""
    s, r = ranked_edges(scores, ranking)
    mask = torch.zeros(scores.graph.n_senders, scores.graph.n_receivers, dtype=torch.bool)
    k = max(0, min(int(k), len(s)))
    mask[s[:k], r[:k]] = True
    return mask


# ---------------------------------------------------------------- nodes
def n_units(graph: ComputationalGraph, granularity: str) -> int:
    """What a circuit's size counts: edges, or nodes (heads and MLPs; ``input`` and ``logits`` are always kept)."""
    return graph.n_edges if granularity == "edge" else graph.n_senders - 1


def node_values(scores: Scores, ranking: str = "abs") -> Tensor:
    """Each sender's sort key [S] (:func:`rank_keys` of its node score; unscored or NaN nodes -inf, ``input`` +inf:
    it is always kept)."""
    graph = scores.graph
    values = torch.full((graph.n_senders,), math.nan, dtype=torch.float64)
    for name, v in scores.node_scores.items():
        try:
            s = graph.sender_index(name)
        except KeyError:
            continue  # e.g. residual rows or neurons a method may add
        v = float(v)
        values[s] = v if math.isfinite(v) else math.nan
    values = rank_keys(values, ranking)
    values[0] = math.inf
    return values


def ranked_nodes(scores: Scores, ranking: str = "abs") -> Tensor:
    """Sender indices of the heads and MLPs, first ranked first (ties and unscored in compute order)."""
    values = node_values(scores, ranking)[1:]
    return torch.argsort(-values, stable=True) + 1


def node_mask(graph: ComputationalGraph, kept) -> Tensor:
    """Bool [S, R]: every edge among the senders in ``kept`` (a bool [S] or indices), ``input`` and ``logits``."""
    kept = torch.as_tensor(kept)
    senders = kept.clone().bool() if kept.dtype == torch.bool else torch.zeros(graph.n_senders, dtype=torch.bool)
    if kept.dtype != torch.bool:
        senders[kept.long()] = True
    senders[0] = True
    node_of = torch.tensor(graph.receiver_node)
    receivers = torch.cat([senders, torch.ones(1, dtype=torch.bool)])[node_of]
    return senders[:, None] & receivers[None, :] & graph.valid_mask()


def top_k_nodes_mask(scores: Scores, k: int, ranking: str = "abs") -> Tensor:
    """:func:`node_mask` of the ``k`` first-ranked heads and MLPs."""
    order = ranked_nodes(scores, ranking)
    return node_mask(scores.graph, order[: max(0, min(int(k), len(order)))])


def kept_nodes(keep_mask, graph: ComputationalGraph) -> Tensor:
    """Bool [S]: the senders of a node circuit (those with a kept edge into the logits; ``input`` always)."""
    keep = torch.as_tensor(keep_mask).detach().cpu().bool()
    out = keep[:, graph.logits_receiver].clone()
    out[0] = True
    return out


def node_outputs_mask(keep_mask, graph: ComputationalGraph) -> Tensor:
    """The node circuit ``keep_mask`` as "every output of a kept node kept, every output of a removed one patched".

    Its faithfulness equals the induced mask's (a removed node's inputs reach nothing once all its
    outputs are patched), and every receiver of a layer then sees the same input, so the engine
    runs each layer whole instead of head by head.
    """
    return kept_nodes(keep_mask, graph)[:, None] & graph.valid_mask()


def evaluation_mask(keep_mask, graph: ComputationalGraph, granularity: str = "edge") -> Tensor:
    """The mask to measure a circuit's faithfulness with: the circuit itself, or for a node circuit
    its :func:`node_outputs_mask` (same faithfulness, faster)."""
    return node_outputs_mask(keep_mask, graph) if granularity == "node" else torch.as_tensor(keep_mask)
