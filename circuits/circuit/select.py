"""Choosing a circuit from scores: top-k, a score threshold, or the smallest faithful top-k.

Every mode ranks the graph's edges, by ``|score|`` (``ranking="abs"``, the default) or most
helpful first (``ranking="signed"``; ties: compute order of the receiver, then of the sender;
NaN scores last), keeps a prefix of that ranking and then **prunes** it: an edge stays only if
it lies on a path from ``input`` to ``logits`` through kept edges.  ``k`` is the number of
edges taken before pruning, ``edges_kept`` the number left.  With ``granularity="node"``
(methods that score nodes) the ranking is of heads and MLPs by their node scores, ``k`` counts
nodes and the circuit is the subgraph they induce with ``input`` and ``logits`` (see
:mod:`circuits.circuit.ranking`).

:func:`verify_edges` then checks a chosen edge circuit by patching: scores from gradients (EAP,
EAP-IG) are first-order estimates, and an edge whose patching changes nothing can still score
(a LayerNorm's scale moves to first order even when the norm it divides by does not change).
Each kept edge is removed in turn, and stays removed when the circuit's metric moves by at most
``tolerance`` of the full model's effect.

Nothing here prints or writes files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

from circuits.errors import CircuitsError
from circuits.circuit.faithfulness import CircuitEvaluator
from circuits.circuit.ranking import (GRANULARITIES, check_ranking, evaluation_mask, n_units, node_values, prune, rank_keys,
                              ranked_edges, top_k_mask, top_k_nodes_mask)
from circuits.methods.base import VERIFY_AUTO_EDGES, VERIFY_TOLERANCE, Progress, Scores, no_progress

MODES = ("top-k", "threshold", "target-faithfulness", "acdc")

__all__ = [
    "MODES", "VERIFY_AUTO_EDGES", "VERIFY_TOLERANCE", "Selection", "Verification", "prune", "ranked_edges",
    "top_k_mask", "circuit_mask", "top_k", "threshold", "target_faithfulness", "search_smallest_k", "SearchResult",
    "own_circuit", "verify_edges",
]


@dataclass(frozen=True)
class Verification:
    """What :func:`verify_edges` did: the kept edges it tested, the edges it removed (names, in the order removed,
    with those pruning removed after them), the tolerance (a fraction of ``|m_full - m_empty|``) and the
    circuit evaluations it made."""

    tested: int
    removed: Tuple[str, ...]
    tolerance: float
    evaluations: int


@dataclass(frozen=True)
class Selection:
    """A chosen circuit.

    keep_mask: bool [S, R], pruned.  k: edges taken by ``|score|`` before pruning.
    edges_kept: edges left after pruning.  faithfulness: f of the circuit when it was computed
    (``target-faithfulness`` computes it; the other modes leave None).  mode: one of :data:`MODES`;
    value: the mode's parameter (k, the threshold or the target).  evaluations: new faithfulness
    evaluations the search made (0 for the other modes).  reached: False when no k reached the target.
    granularity: ``"edge"`` (k counts edges) or ``"node"`` (k counts heads and MLPs; the mask keeps every
    edge among the kept nodes, ``input`` and ``logits``).
    neurons: MLP layer -> bool [d_mlp] of the neurons kept in MLPs the circuit keeps only in part
    (their other neurons carry reference activations); an MLP not in the map is kept or dropped whole.
    ranking: ``abs`` or ``signed`` (see :mod:`circuits.circuit.ranking`).  verified: what :func:`verify_edges` removed
    (None when the circuit was not verified).
    """

    keep_mask: Tensor
    k: int
    edges_kept: int
    faithfulness: Optional[float]
    mode: str
    value: float
    evaluations: int = 0
    reached: bool = True
    granularity: str = "edge"
    neurons: Mapping[int, Tensor] = field(default_factory=dict)
    ranking: str = "abs"
    verified: Optional[Verification] = None


# ---------------------------------------------------------------- top-k and threshold
def _check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise CircuitsError(f"unknown granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}")


def circuit_mask(scores: Scores, k: int, granularity: str = "edge", ranking: str = "abs") -> Tensor:
    """The circuit of the top ``k`` units: ``k`` edges pruned, or the subgraph of ``k`` nodes."""
    if granularity == "node":
        return top_k_nodes_mask(scores, k, ranking)
    return prune(top_k_mask(scores, k, ranking), scores.graph)


def _selection(scores: Scores, k: int, granularity: str, ranking: str, **fields) -> Selection:
    mask = circuit_mask(scores, k, granularity, ranking)
    return Selection(keep_mask=mask, k=k, edges_kept=int(mask.sum()), granularity=granularity, ranking=ranking,
                     **fields)


def top_k(scores: Scores, k: int, *, granularity: str = "edge", ranking: str = "abs") -> Selection:
    """The ``k`` first-ranked edges (pruned) or nodes."""
    _check_granularity(granularity)
    check_ranking(ranking)
    if k < 0:
        raise CircuitsError(f"--top-k must be 0 or more (got {k})")
    k = min(int(k), n_units(scores.graph, granularity))
    return _selection(scores, k, granularity, ranking, faithfulness=None, mode="top-k", value=k)


def threshold(scores: Scores, t: float, *, granularity: str = "edge", ranking: str = "abs") -> Selection:
    """Every edge (pruned) or node with ``|score| >= t`` (``signed``: with ``-score >= t``, helping by at least t)."""
    _check_granularity(granularity)
    check_ranking(ranking)
    if not math.isfinite(t) or t < 0:
        raise CircuitsError(f"--threshold must be a finite number >= 0 (got {t})")
    graph = scores.graph
    if granularity == "node":
        k = int((node_values(scores, ranking)[1:] >= t).sum())
    else:
        k = int(((rank_keys(scores.edge_scores, ranking) >= t) & graph.valid_mask()).sum())
    return _selection(scores, k, granularity, ranking, faithfulness=None, mode="threshold", value=float(t))


def own_circuit(scores: Scores) -> Selection:
    """The circuit the method chose itself (ACDC's kept set, ``scores.extra["kept_mask"]``), pruned.

    With zero ablation the mask is kept as it is: a node cut off from the input still computes
    something from zero inputs, so pruning would change the circuit's function (ACDC's code
    refuses to prune there for the same reason).
    """
    kept = (scores.extra or {}).get("kept_mask")
    if kept is None:
        raise CircuitsError(f"selection mode acdc needs a method that chooses its own circuit (acdc); {scores.method} "
                            "does not: use --top-k, --threshold or --target-faithfulness")
    graph = scores.graph
    kept = torch.as_tensor(kept).detach().cpu().bool() & graph.valid_mask()
    mask = kept if scores.info.get("ablation") == "zero" else prune(kept, graph)
    return Selection(keep_mask=mask, k=int(kept.sum()), edges_kept=int(mask.sum()), faithfulness=None, mode="acdc",
                     value=float(scores.info.get("tau", 0.0)))


# ---------------------------------------------------------------- target faithfulness
@dataclass(frozen=True)
class SearchResult:
    k: int
    f: float  # f(k)
    evaluations: int  # calls of f (known values excluded)
    reached: bool


def search_smallest_k(f: Callable[[int], float], n_edges: int, target: float,
                      known: Optional[Mapping[int, float]] = None,
                      progress: Optional[Progress] = None) -> SearchResult:
    """The smallest ``k`` in 1..n_edges with ``f(k) >= target``, assuming ``f`` grows with ``k``.

    ``f(0)`` (the empty circuit) is taken as 0.  ``known`` values (e.g. from the faithfulness curve)
    bracket the search for free.  Without a passing known k, k doubles from the largest failing
    known k (or 1) until ``f(k) >= target`` (``n_edges`` at most); then a binary search between
    the last failing and the first passing k.  That costs about ``2 log2(E)`` evaluations.

    ``f`` need not be monotone: the answer is then a ``k`` with ``f(k) >= target`` and
    ``f(k - 1) < target`` (or ``k - 1`` never needed), and no evaluated smaller ``k`` passed,
    but a smaller unevaluated ``k`` may pass too.  If even ``f(n_edges)`` misses the target,
    the result has ``reached=False`` and is the k with the best evaluated ``f``.
    """
    progress = progress or no_progress
    if target <= 0:
        return SearchResult(k=0, f=0.0, evaluations=0, reached=True)
    cache: Dict[int, float] = {int(k): float(v) for k, v in (known or {}).items() if 1 <= int(k) <= n_edges}
    calls = 0
    budget = 2 * max(1, math.ceil(math.log2(max(n_edges, 2)))) + 2

    def F(k: int) -> float:
        nonlocal calls
        if k not in cache:
            cache[k] = float(f(k))
            calls += 1
            progress(min(calls, budget), budget, "target search")
        return cache[k]

    def passes(k: int) -> bool:
        return F(k) >= target  # NaN never passes

    passing = [k for k, v in cache.items() if v >= target]
    if passing:
        hi = min(passing)
    else:
        k = max(cache, default=1)
        hi = None
        while True:
            if passes(k):
                hi = k
                break
            if k >= n_edges:
                break
            k = min(2 * k, n_edges)
        if hi is None:
            best = max(cache, key=lambda kk: (cache[kk] if not math.isnan(cache[kk]) else -math.inf, -kk))
            return SearchResult(k=best, f=cache[best], evaluations=calls, reached=False)
    lo = max((k for k, v in cache.items() if k < hi and not v >= target), default=0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return SearchResult(k=hi, f=cache[hi], evaluations=calls, reached=True)


def target_faithfulness(engine, dataset, metric, scores: Scores, reference: Optional[Tensor], target: float = 0.9, *,
                        batch_size: int = 0, progress: Optional[Progress] = None, evaluator=None,
                        known: Optional[Mapping[int, float]] = None, granularity: str = "edge",
                        neurons: Optional[Mapping[int, Tensor]] = None, ranking: str = "abs") -> Selection:
    """The smallest top-``k`` circuit (``k`` edges pruned, or ``k`` nodes) whose faithfulness is at least
    ``target`` (see :func:`search_smallest_k`).

    ``evaluator``: a :class:`circuits.circuit.faithfulness.CircuitEvaluator` to share its cache (built
    from ``engine``, ``dataset``, ``metric`` and ``reference`` if not given; ``reference`` may be a
    [S, n, p, d] tensor, :class:`circuits.engine.ablation.BatchReferences`, or None to stream the corrupted
    runs batch by batch).  ``known``: k -> f
    already computed for these scores (e.g. the curve's points).  ``neurons``: MLPs reduced to
    these neurons (MLP layer -> bool [d_mlp]) in every circuit tried.  ``ranking``: ``abs`` or ``signed``;
    with ``signed`` the curve of f can rise past 1 and come back; the search then finds a k where f crosses
    the target on its way up (see :func:`search_smallest_k`).
    """
    _check_granularity(granularity)
    check_ranking(ranking)
    if not math.isfinite(target):
        raise CircuitsError(f"--target-faithfulness must be a number (got {target})")
    if evaluator is None:
        evaluator = CircuitEvaluator(engine, dataset, metric, reference, batch_size=batch_size)
    graph = scores.graph
    if target > 0 and evaluator.m_full == evaluator.m_empty:
        raise CircuitsError(
            f"the model and the fully patched model give the same metric ({evaluator.m_full:.6g}), so faithfulness "
            "is undefined; use more prompts, another ablation or select with --top-k/--threshold"
        )

    def f(k: int) -> float:
        mask = evaluation_mask(circuit_mask(scores, k, granularity, ranking), graph, granularity)
        return (evaluator.faithfulness(mask, neurons) if neurons else evaluator.faithfulness(mask)).f

    result = search_smallest_k(f, n_units(graph, granularity), target, known=known, progress=progress)
    return _selection(scores, result.k, granularity, ranking, faithfulness=result.f, mode="target-faithfulness",
                      value=float(target), evaluations=result.evaluations, reached=result.reached)


# ---------------------------------------------------------------- verification by patching
def verify_edges(evaluator: CircuitEvaluator, selection: Selection, *, tolerance: float = VERIFY_TOLERANCE,
                 neurons: Optional[Mapping[int, Tensor]] = None, progress: Optional[Progress] = None) -> Selection:
    """``selection`` without the edges whose patching does not change the circuit's metric.

    The kept edges are tried one at a time, latest receiver first (the logits' inputs first, each receiver's
    senders latest first, as ACDC orders them).  An edge is removed, and the circuit pruned again, when the
    metric of what is left stays within ``tolerance * |m_full - m_empty|`` of the chosen circuit's metric;
    removed edges stay removed, so verification moves the metric by at most that much in all.  It costs one
    circuit evaluation per edge tried (``ceil(n / batch_size)`` patched forwards each).  ``neurons``: reduced
    MLPs, measured that way (as the selection measured them).  Edge circuits only.
    """
    if selection.granularity != "edge":
        raise CircuitsError("verification checks the edges of an edge circuit; a node method's circuit has no edges "
                            "of its own to test: drop --verify")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise CircuitsError(f"--verify-tolerance must be a finite number >= 0 (got {tolerance})")
    progress = progress or no_progress
    graph = evaluator.engine.graph
    scale = abs(evaluator.m_full - evaluator.m_empty)
    if scale == 0:
        raise CircuitsError(f"the model and the fully patched model give the same metric ({evaluator.m_full:.6g}), so "
                            "no edge can be verified; use more prompts or another ablation, or pass --no-verify")
    neurons = neurons or None
    runs = evaluator.runs
    current = torch.as_tensor(selection.keep_mask).detach().cpu().bool().clone()
    chosen = evaluator.metric(current, neurons)
    order = [(s, r) for s, r in reversed(graph.edges()) if current[s, r]]
    removed = []
    for i, (s, r) in enumerate(order):
        progress(i, len(order), "verifying edges")
        if not current[s, r]:
            continue  # pruned away with an edge removed before it
        trial = current.clone()
        trial[s, r] = False
        trial = prune(trial, graph)
        if abs(evaluator.metric(trial, neurons) - chosen) <= tolerance * scale:
            removed += [graph.edge_name(int(a), int(b)) for a, b in (current & ~trial).nonzero().tolist()]
            current = trial
    progress(len(order), len(order), "verifying edges")
    done = Verification(tested=len(order), removed=tuple(removed), tolerance=float(tolerance),
                        evaluations=evaluator.runs - runs)
    return replace(selection, keep_mask=current, edges_kept=int(current.sum()), verified=done)
