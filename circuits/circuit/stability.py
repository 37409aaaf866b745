"""How much a circuit moves when the prompts change: bootstrap resamples, Jaccard and inclusion frequency.

``bootstrap_stability`` draws ``k`` resamples of the scored prompts (each ``n`` prompts drawn with
replacement, seeded), scores each again with the same method and options, and chooses in each the
circuit **of the main circuit's size**:

- an edge method: the smallest prefix of the selection's ranking whose pruned circuit has at least as
  many edges as the main circuit (pruning only grows with the prefix, so a binary search finds it);
- a node method: the same number of heads and MLPs, by the same ranking;
- ACDC's own circuit (selection ``acdc``): the circuit ACDC keeps on the resample (its size is ACDC's
  choice, as on the main run).

It reports the mean over the ``k (k - 1) / 2`` pairs of resamples of the Jaccard index of their edge
sets and of their node sets (heads and MLPs; ``input`` and ``logits`` are in every circuit and left out;
two empty sets count 1), and each kept edge's inclusion frequency: the fraction of resample circuits
that hold it.  Méloux et al. (2025) measure 0.67 for GPT-2's IOI circuit and propose 0.8 as the bar.

Nothing here prints or writes files.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from circuits import names
from circuits.errors import CircuitsError
from circuits.engine.graph import ComputationalGraph
from circuits.circuit.ranking import kept_nodes, n_units, prune, top_k_mask, top_k_nodes_mask
from circuits.methods.base import MethodOptions, Metric, Progress, Scores, no_progress
from circuits.circuit.select import Selection, own_circuit

__all__ = ["Stability", "check_bootstrap", "resample_index", "same_size_circuit", "jaccard", "mean_pairwise_jaccard",
           "bootstrap_stability"]


@dataclass(frozen=True)
class Stability:
    """k resamples; the mean pairwise Jaccard of their edge and node sets; each main-circuit edge's inclusion
    frequency (edge name -> fraction of the k circuits that keep it); each resample circuit's edge count."""

    k: int
    edge_jaccard: float
    node_jaccard: float
    frequency: Mapping[str, float]
    edges: Tuple[int, ...]

    def manifest(self) -> Dict[str, object]:
        return {"k": self.k, "edge_jaccard": self.edge_jaccard, "node_jaccard": self.node_jaccard}


def check_bootstrap(k: int) -> int:
    """``--bootstrap K``: 0 (off) or at least 2 (a Jaccard needs two circuits)."""
    if k != int(k) or k < 0 or k == 1:
        raise CircuitsError(f"--bootstrap must be 0 (off) or at least 2 resamples: a Jaccard needs two circuits (got {k})")
    return int(k)


def resample_index(n: int, i: int, seed: int = 0) -> Tensor:
    """Resample ``i``'s prompt indices: ``n`` draws with replacement from ``range(n)``, seeded by ``(seed, i)``."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(i) + 1)
    return torch.randint(0, n, (n,), generator=gen)


def same_size_circuit(scores: Scores, main: Selection) -> Tensor:
    """The bool [S, R] circuit of ``scores`` the size of ``main`` (see the module docstring)."""
    graph = scores.graph
    if main.mode == "acdc":
        return own_circuit(scores).keep_mask
    if main.granularity == "node":
        n_nodes = int(kept_nodes(main.keep_mask, graph)[1:].sum())
        return top_k_nodes_mask(scores, n_nodes, main.ranking)
    target = int(main.edges_kept)
    lo, hi = 0, n_units(graph, "edge")  # prune(top lo) has fewer than target edges, prune(top hi) at least
    if target <= 0:
        return torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.bool)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if int(prune(top_k_mask(scores, mid, main.ranking), graph).sum()) >= target:
            hi = mid
        else:
            lo = mid
    return prune(top_k_mask(scores, hi, main.ranking), graph)


def _edge_set(mask: Tensor, graph: ComputationalGraph) -> FrozenSet[Tuple[int, int]]:
    keep = torch.as_tensor(mask).detach().cpu().bool() & graph.valid_mask()
    return frozenset((int(s), int(r)) for s, r in keep.nonzero().tolist())


def _node_set(edges: FrozenSet[Tuple[int, int]], graph: ComputationalGraph) -> FrozenSet[str]:
    """Heads and MLPs touched by the edges (``input`` and ``logits`` left out)."""
    out = set()
    for s, r in edges:
        edge = names.parse_edge(graph.edge_name(s, r))
        out.update(names.format_node(end) for end in (edge.src, edge.dst))
    return frozenset(out - {names.INPUT, names.LOGITS})


def jaccard(a: FrozenSet, b: FrozenSet) -> float:
    """``|a & b| / |a | b|``; 1 for two empty sets."""
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


def mean_pairwise_jaccard(sets: List[FrozenSet]) -> float:
    pairs = list(itertools.combinations(sets, 2))
    return sum(jaccard(a, b) for a, b in pairs) / len(pairs)


def bootstrap_stability(engine, dataset, metric: Metric, method, options: MethodOptions, scores: Scores,
                        selection: Selection, k: int, *, seed: int = 0,
                        progress: Optional[Progress] = None) -> Stability:
    """Score ``k`` seeded resamples of ``dataset`` with ``method`` and compare their circuits of ``selection``'s size.

    ``scores`` and ``selection`` are the main run's (the frequencies are of ``selection``'s kept edges).
    ``metric`` must accept any subset of ``dataset`` (the metrics of :func:`circuits.methods.metrics.build_metric` do:
    they find per-prompt state by ``PromptDataset.ids``).
    """
    k = check_bootstrap(k)
    if k == 0:
        raise CircuitsError("bootstrap_stability needs k >= 2 resamples")
    progress = progress or no_progress
    graph = scores.graph
    circuits: List[FrozenSet[Tuple[int, int]]] = []
    for i in range(k):
        progress(i, k, f"bootstrap resample {i + 1} of {k}")
        sample = dataset.subset(resample_index(len(dataset), i, seed))
        resampled = method.score(engine, sample, metric, options)
        circuits.append(_edge_set(same_size_circuit(resampled, selection), graph))
    progress(k, k, "bootstrap")
    main = sorted(_edge_set(selection.keep_mask, graph))
    frequency = {graph.edge_name(s, r): sum((s, r) in c for c in circuits) / k for s, r in main}
    return Stability(k=k, edge_jaccard=mean_pairwise_jaccard(circuits),
                     node_jaccard=mean_pairwise_jaccard([_node_set(c, graph) for c in circuits]),
                     frequency=frequency, edges=tuple(len(c) for c in circuits))
