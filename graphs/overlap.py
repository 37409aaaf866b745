"""Pairwise overlap of several circuits (nodes and edges), for ``circuits compare A B C ...``.

Unlike :func:`circuits.graphs.compare.compare` (a found circuit against a reference), no
circuit is the reference here: each pair gets the sizes of both, the intersection, the
Jaccard index, and the share of each one's nodes / edges the other also holds.
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import networkx as nx

from circuits.graphs.build import edge_names

__all__ = ["pair_overlap", "pairwise"]


def pair_overlap(a: set, b: set) -> dict:
    """``{"a", "b", "both", "jaccard", "a_in_b", "b_in_a"}`` for two sets (ratios of empty sets are 1.0 or 0.0)."""
    both = len(a & b)
    union = len(a | b)

    def ratio(num: int, den: int) -> float:
        return num / den if den else (1.0 if not union else 0.0)

    return {"a": len(a), "b": len(b), "both": both, "jaccard": ratio(both, union),
            "a_in_b": ratio(both, len(a)), "b_in_a": ratio(both, len(b))}


def pairwise(graphs: Sequence[nx.DiGraph]) -> list[dict]:
    """One entry per pair ``i < j`` (indices into ``graphs``): ``{"i", "j", "nodes": ..., "edges": ...}``.

    Nodes are compared by component name (``input`` and ``logits`` included), edges by full
    edge name (a head's q, k and v inputs count apart).
    """
    nodes = [set(G.nodes) for G in graphs]
    edges = [edge_names(G) for G in graphs]
    return [{"i": i, "j": j, "nodes": pair_overlap(nodes[i], nodes[j]), "edges": pair_overlap(edges[i], edges[j])}
            for i, j in combinations(range(len(graphs)), 2)]
