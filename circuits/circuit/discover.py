"""Discovery as a library call: score the edges, measure the faithfulness curve, choose a circuit.

``discover(engine, dataset, metric, method, ...)`` runs the whole pipeline after loading and
returns a :class:`DiscoveryResult`.  It neither prints nor writes files (see
``circuits.circuit.run_folder`` for the run folder and ``circuits.cli.commands_discover`` for the CLI).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Tuple

from circuits.engine.ablation import REFERENCE_CACHE_BYTES
from circuits.errors import CircuitsError
from circuits.timing import Timer
from circuits.circuit.faithfulness import FRACTIONS, CircuitEvaluator, Curve, Curves, Faithfulness, faithfulness_curves
from circuits.methods.base import MethodOptions, Progress, Scores, no_progress, option_values
from circuits.circuit.ranking import check_ranking, evaluation_mask
from circuits.circuit.select import (MODES, VERIFY_AUTO_EDGES, VERIFY_TOLERANCE, Selection, own_circuit, target_faithfulness,
                             threshold, top_k, verify_edges)

if TYPE_CHECKING:  # pragma: no cover
    from circuits.circuit.stability import Stability

__all__ = ["SelectionSpec", "DiscoveryResult", "HeldOut", "discover", "select", "verifies", "check_selection",
           "method_granularity", "reduced_mlps", "holdout_count", "split_holdout", "kept_edge_scores", "top_components"]


@dataclass(frozen=True)
class SelectionSpec:
    """How to choose the circuit: ``mode`` in ``top-k``, ``threshold``, ``target-faithfulness`` and its ``value``,
    or ``acdc``: the circuit the method kept itself (ACDC's kept set; ``value`` unused).

    ``keep_neurons``: when > 0, each MLP whose neurons the method scores (``MethodOptions.neurons``)
    is kept through its ``keep_neurons`` top neurons only (by ``|neuron score|``), in every circuit
    the run measures (the curve, the target search and the chosen circuit).

    ``ranking``: ``abs`` (largest ``|score|`` first) or ``signed`` (most helpful first), for the curve and
    the selection.  ``verify``: check the chosen edge circuit by patching (:func:`circuits.circuit.select.verify_edges`);
    None (auto) verifies a ``target-faithfulness`` circuit of at most ``VERIFY_AUTO_EDGES`` edges.
    ``verify_tolerance``: the most verification may move the circuit's metric, as a fraction of the full effect.
    """

    mode: str = "target-faithfulness"
    value: float = 0.9
    keep_neurons: int = 0
    ranking: str = "abs"
    verify: Optional[bool] = None
    verify_tolerance: float = VERIFY_TOLERANCE

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CircuitsError(f"unknown selection mode {self.mode!r}; use one of {', '.join(MODES)}")
        check_ranking(self.ranking)
        if self.verify and self.mode == "acdc":
            raise CircuitsError("--verify: acdc already tested each edge of its circuit by patching; drop --verify")
        if not (math.isfinite(self.verify_tolerance) and self.verify_tolerance >= 0):
            raise CircuitsError(f"--verify-tolerance must be a finite number >= 0 (got {self.verify_tolerance})")
        if self.mode == "top-k" and (self.value < 0 or self.value != int(self.value)):
            raise CircuitsError(f"--top-k must be a whole number >= 0 (got {self.value})")
        if self.mode == "threshold" and not self.value >= 0:
            raise CircuitsError(f"--threshold must be >= 0 (got {self.value})")
        if self.mode == "target-faithfulness" and not 0 < self.value <= 1:
            raise CircuitsError(f"--target-faithfulness must be in (0, 1] (got {self.value})")
        if self.keep_neurons < 0 or self.keep_neurons != int(self.keep_neurons):
            raise CircuitsError(f"--keep-neurons must be a whole number >= 1 (got {self.keep_neurons})")


@dataclass(frozen=True)
class HeldOut:
    """The chosen circuit measured on prompts that scoring and selection never saw: its
    faithfulness there, both curves there (CPR, CMD), and how many prompts."""

    n: int
    faithfulness: Faithfulness
    curves: Optional[Curves]


def holdout_count(fraction: float, n: int) -> int:
    """How many of ``n`` prompts ``--holdout fraction`` holds out (``floor(fraction * n)``), checked."""
    if not 0 <= fraction < 1:
        raise CircuitsError(f"--holdout must be at least 0 and below 1 (got {fraction:g}); 0 turns it off")
    if fraction == 0:
        return 0
    k = math.floor(round(fraction * n, 9))
    if k < 1:
        raise CircuitsError(f"--holdout {fraction:g} of {n} prompts holds out fewer than 1 prompt; "
                            f"raise --holdout or --n, or pass --holdout 0")
    if k >= n:
        raise CircuitsError(f"--holdout {fraction:g} of {n} prompts leaves no prompt to score; lower --holdout or raise --n")
    return k


def split_holdout(dataset, fraction: float, *, seed: int = 0):
    """``(in_sample, held_out)``: a seeded ``fraction`` of the prompts held out (``held_out`` None for 0).

    The held-out count is ``floor(fraction * n)``; both parts keep the prompts' order and ids.
    """
    import torch

    k = holdout_count(fraction, len(dataset))
    if k == 0:
        return dataset, None
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = order[:k].sort().values
    kept = order[k:].sort().values
    return dataset.subset(kept), dataset.subset(held)


@dataclass(frozen=True)
class DiscoveryResult:
    """Everything a discovery run found.

    scores: the method's :class:`Scores`.  selection: the chosen circuit (its ``faithfulness`` filled in).
    faithfulness: m(N), m(empty), m(circuit) and f.  curves: f over edge fractions for the signed and the
    ``|score|`` rankings (MIB's CPR and CMD); ``curve`` is the one of the selection's ranking.
    timings: seconds per step (``scoring``, ``reference``, ``curve``, ``selection``, ``faithfulness``).
    forward_passes: what the method reported (``Scores.info['forward_passes']``) or None.
    stability: the bootstrap's Jaccard and inclusion frequencies (:mod:`circuits.circuit.stability`), or None.
    circuit_evaluations: patched metric evaluations made for the curve and the selection.
    """

    scores: Scores
    selection: Selection
    faithfulness: Faithfulness
    curves: Optional[Curves]
    options: MethodOptions
    timings: Mapping[str, float] = field(default_factory=dict)
    forward_passes: Optional[int] = None
    circuit_evaluations: int = 0
    heldout: Optional[HeldOut] = None
    stability: Optional["Stability"] = None

    @property
    def curve(self) -> Optional[Curve]:
        """The curve of the selection's ranking (the one the target search walked), or None."""
        return None if self.curves is None else self.curves.by_ranking(self.selection.ranking)

    @property
    def cpr(self) -> Optional[float]:
        return None if self.curves is None else self.curves.cpr

    @property
    def cmd(self) -> Optional[float]:
        return None if self.curves is None else self.curves.cmd

    @property
    def edges_total(self) -> int:
        return self.scores.graph.n_edges

    @property
    def edges_kept(self) -> int:
        return self.selection.edges_kept

    @property
    def granularity(self) -> str:
        return self.selection.granularity

    @property
    def complete(self) -> bool:
        """False when the method's search stopped early (its budget ran out)."""
        return bool(self.scores.info.get("complete", True)) if isinstance(self.scores.info, Mapping) else True

    def kept_edges(self) -> Dict[str, float]:
        return kept_edge_scores(self.scores, self.selection.keep_mask)

    def top_components(self, n: int = 15) -> List[Tuple[str, float]]:
        return top_components(self.scores, self.selection.keep_mask, n=n)


def kept_edge_scores(scores: Scores, keep_mask) -> Dict[str, float]:
    """Edge name -> score of the kept edges (NaN scores written as 0), in compute order."""
    import torch

    keep = torch.as_tensor(keep_mask).detach().cpu().bool()
    values = torch.as_tensor(scores.edge_scores).detach().cpu().double()
    graph = scores.graph
    out = {}
    for s, r in graph.edges():
        if keep[s, r]:
            v = float(values[s, r])
            out[graph.edge_name(s, r)] = v if math.isfinite(v) else 0.0
    return out


def top_components(scores: Scores, keep_mask, n: int = 15) -> List[Tuple[str, float]]:
    """The circuit's most important heads and MLPs, largest ``|importance|`` first.

    The method's ``node_scores`` when it gave any (restricted to the circuit's nodes when any
    of them is scored); otherwise the sum of ``|score|`` of each node's kept incoming and
    outgoing edges.  ``input`` and ``logits`` are left out.
    """
    from circuits import names

    kept = kept_edge_scores(scores, keep_mask)
    agg: Dict[str, float] = {}
    for edge_name, v in kept.items():
        edge = names.parse_edge(edge_name)
        for node in (edge.src, edge.dst):
            key = names.format_node(node)
            agg[key] = agg.get(key, 0.0) + abs(v)
    if scores.node_scores:
        given = {names.format_node(names.parse_node(k)): float(v) for k, v in scores.node_scores.items()}
        inside = {k: v for k, v in given.items() if k in agg}
        agg = inside or given
    rows = [(k, v) for k, v in agg.items() if k not in (names.INPUT, names.LOGITS)]
    rows.sort(key=lambda kv: (-abs(kv[1]), names.node_layer_order(names.parse_node(kv[0]))))
    return rows[:n]


def select(spec: SelectionSpec, scores: Scores, evaluator: CircuitEvaluator, *, curve: Optional[Curve] = None,
           progress: Optional[Progress] = None, neurons=None, granularity: str = "edge") -> Selection:
    """Apply ``spec`` to ``scores`` (``k`` counts edges or nodes, by ``granularity``); the target search
    reuses the curve's points and the evaluator's cache.

    ``neurons`` (MLP layer -> bool [d_mlp]): reduced MLPs, measured that way by the target search;
    the selection records those of them that stay in the circuit.  The chosen circuit is then verified
    when ``spec`` asks for it (see :func:`verifies`).
    """
    ranking = spec.ranking
    if spec.mode == "top-k":
        chosen = top_k(scores, int(spec.value), granularity=granularity, ranking=ranking)
    elif spec.mode == "threshold":
        chosen = threshold(scores, float(spec.value), granularity=granularity, ranking=ranking)
    elif spec.mode == "acdc":
        chosen = own_circuit(scores)
    else:
        known = {p.k: p.faithfulness for p in curve.points} if curve is not None else None
        chosen = target_faithfulness(evaluator.engine, evaluator.dataset, evaluator.metric_fn, scores,
                                     evaluator.reference, float(spec.value), progress=progress, evaluator=evaluator,
                                     known=known, neurons=neurons, granularity=granularity, ranking=ranking)
    if verifies(spec, chosen):
        chosen = verify_edges(evaluator, chosen, tolerance=spec.verify_tolerance, neurons=neurons, progress=progress)
    if neurons:
        chosen = replace(chosen, neurons=_neurons_in_circuit(neurons, chosen.keep_mask, scores.graph))
    return chosen


def verifies(spec: SelectionSpec, chosen: Selection) -> bool:
    """Whether :func:`select` verifies ``chosen``: as ``spec.verify`` says, else (auto) an edge circuit chosen by
    ``target-faithfulness`` with at most ``VERIFY_AUTO_EDGES`` edges.  ACDC's and node methods' circuits never."""
    if chosen.granularity != "edge" or chosen.mode == "acdc":
        return False
    if spec.verify is not None:
        return bool(spec.verify)
    return chosen.mode == "target-faithfulness" and chosen.edges_kept <= VERIFY_AUTO_EDGES


def check_selection(spec: SelectionSpec, method, params: Optional[Mapping] = None) -> None:
    """Refuse, before any scoring, a selection that cannot apply to ``method``: verification of a node circuit."""
    if spec.verify and method_granularity(method, params) == "node":
        raise CircuitsError(f"--verify checks the edges of an edge circuit; {getattr(method, 'name', method)} selects "
                            "nodes: drop --verify")


def method_granularity(method, params: Optional[Mapping] = None) -> str:
    """``"node"`` for a method that scores nodes (its circuits are chosen by node), else ``"edge"``.  A method that
    declares a ``granularity`` option (the learned masks) scores what ``params`` (its checked options) says."""
    chosen = getattr(method, "granularity", "edge")
    if params and "granularity" in params and any(o.name == "granularity" for o in getattr(method, "options", ()) or ()):
        chosen = params["granularity"]
    return "node" if chosen == "node" else "edge"


def _neurons_in_circuit(neurons, keep_mask, graph) -> dict:
    """The neuron masks of the MLPs that the (pruned) circuit keeps (an MLP with a kept outgoing edge)."""
    import torch

    keep = torch.as_tensor(keep_mask).detach().cpu().bool()
    return {layer: mask for layer, mask in neurons.items() if bool(keep[graph.mlp_sender(layer)].any())}


def reduced_mlps(spec: SelectionSpec, options: MethodOptions, scores: Scores, engine) -> dict:
    """MLP layer -> bool [d_mlp] of the top ``spec.keep_neurons`` neurons of each MLP in ``options.neurons``."""
    from circuits.methods.attribution import parse_neuron_layers
    from circuits.circuit.neurons import top_neuron_masks

    if not spec.keep_neurons:
        return {}
    layers = parse_neuron_layers(options.neurons, engine.w.n_layers)
    return top_neuron_masks(scores.neuron_scores, layers, int(spec.keep_neurons), d_mlp=engine.w.d_mlp,
                            method=scores.method)


def _stage(progress: Progress, name: str) -> Progress:
    def report(done: int, total: int, message: str) -> None:
        progress(done, total, name if not message or message == name else f"{name}: {message}")

    return report


def discover(engine, dataset, metric: Callable, method, options: MethodOptions = MethodOptions(),
             selection: SelectionSpec = SelectionSpec(), *, fractions=FRACTIONS, curve: bool = True,
             heldout=None, progress: Optional[Progress] = None, cache_bytes: int = REFERENCE_CACHE_BYTES,
             bootstrap: int = 0, seed: int = 0, evaluator: Optional[CircuitEvaluator] = None,
             heldout_evaluator: Optional[CircuitEvaluator] = None) -> DiscoveryResult:
    """Score ``dataset`` with ``method``, measure the faithfulness curve and choose a circuit.

    Args:
        engine: a :class:`circuits.engine.GraphEngine`.  dataset: the task's :class:`PromptDataset`.
        metric: a :data:`circuits.methods.base.Metric`, ``metric(logits [b, V] or [b, k, V], dataset) -> [b]``.
        method: a scoring method (``method.score(engine, dataset, metric, options, progress=...)``).
        options: the method's options; ``ablation`` and ``batch_size`` also drive faithfulness.
        selection: how to choose the circuit; a method with ``granularity = "node"`` is selected by node
            (``k`` and the curve's fractions count heads and MLPs).  fractions: the curve's fractions.
        curve: measure both curves (signed: CPR; ``|score|``: CMD); the target search then starts from the points
            of the one of its ranking.
        heldout: prompts kept apart (:func:`split_holdout`): after selection, the circuit's
            faithfulness (and the curve) are measured on them too, with their own reference.
        progress: ``progress(done, total, message)`` for each long step.
        cache_bytes: reference outputs the faithfulness evaluations keep between passes (the rest are
            recomputed batch by batch, so memory follows ``options.batch_size``, not the number of prompts).
        bootstrap: 0, or K >= 2 resamples of ``dataset`` scored again to measure the circuit's stability
            (:func:`circuits.circuit.stability.bootstrap_stability`, seeded by ``seed``).
        evaluator, heldout_evaluator: :class:`CircuitEvaluator` of ``dataset`` (``heldout``) with this ``metric``,
            ``options.ablation`` and ``options.batch_size``, to share between runs (``circuits benchmark``): m(N),
            m(empty), the references and every circuit measured are computed once for all methods.  The figures are
            those of fresh evaluators; ``circuit_evaluations`` counts the evaluations this run added.
    """
    from circuits.circuit.stability import bootstrap_stability, check_bootstrap

    progress = progress or no_progress
    timer = Timer()
    bootstrap = check_bootstrap(bootstrap)
    options = _checked_options(method, options, selection)
    granularity = method_granularity(method, options.params)
    scores = timer("scoring", lambda: _scored(engine, dataset, metric, method, options, progress))
    graph = engine.graph
    evaluator = evaluator or timer("reference", lambda: CircuitEvaluator(
        engine, dataset, metric, ablation=options.ablation, batch_size=options.batch_size, cache_bytes=cache_bytes))
    runs_before = evaluator.runs
    neurons = reduced_mlps(selection, options, scores, engine)
    found = timer("curve", lambda: faithfulness_curves(
        evaluator, scores, fractions, progress=_stage(progress, "faithfulness curves"), granularity=granularity,
        neurons=neurons)) if curve else None
    chosen = timer("selection", lambda: select(
        selection, scores, evaluator, curve=None if found is None else found.by_ranking(selection.ranking),
        progress=_stage(progress, "selection"), neurons=neurons, granularity=granularity))
    faith = timer("faithfulness", lambda: evaluator.faithfulness(
        evaluation_mask(chosen.keep_mask, graph, granularity), chosen.neurons))
    chosen = replace(chosen, faithfulness=faith.f)
    held = None
    if heldout is not None and len(heldout):
        ev_held = heldout_evaluator or CircuitEvaluator(engine, heldout, metric, batch_size=options.batch_size,
                                                        ablation=options.ablation, cache_bytes=cache_bytes)
        held = timer("heldout", lambda: _held_out(ev_held, scores, chosen, fractions, curve, granularity, neurons,
                                                  progress))
    stability = timer("bootstrap", lambda: bootstrap_stability(
        engine, dataset, metric, method, options, scores, chosen, bootstrap, seed=seed,
        progress=_stage(progress, "bootstrap"))) if bootstrap else None
    passes = scores.info.get("forward_passes") if isinstance(scores.info, Mapping) else None
    return DiscoveryResult(
        scores=scores, selection=chosen, faithfulness=faith, curves=found, options=options, timings=timer.timings,
        forward_passes=None if passes is None else int(passes), circuit_evaluations=evaluator.runs - runs_before,
        heldout=held, stability=stability)


def _checked_options(method, options: MethodOptions, selection: SelectionSpec) -> MethodOptions:
    """The method's own options checked (defaults filled: the manifest records them), and enough top neurons."""
    options = replace(options, params=option_values(method, options.params))
    check_selection(selection, method, options.params)
    if selection.keep_neurons:
        if not options.neurons:
            raise CircuitsError("--keep-neurons needs --neurons: name the MLPs to reduce, e.g. --neurons m10 --keep-neurons 10")
        if options.top_neurons < selection.keep_neurons:
            options = replace(options, top_neurons=int(selection.keep_neurons))
    return options


def _scored(engine, dataset, metric, method, options: MethodOptions, progress: Progress) -> Scores:
    scores = method.score(engine, dataset, metric, options, progress=_stage(progress, "scoring"))
    graph = engine.graph
    if scores.graph != graph:
        raise CircuitsError(f"method {getattr(method, 'name', method)!r} scored a {scores.graph.n_layers}x"
                            f"{scores.graph.n_heads} graph but the model is {graph.n_layers}x{graph.n_heads}")
    return scores


def _held_out(evaluator, scores: Scores, chosen: Selection, fractions, curve: bool, granularity: str, neurons,
              progress: Progress) -> HeldOut:
    """The chosen circuit, and both curves, on the held-out prompts."""
    curves = faithfulness_curves(evaluator, scores, fractions, progress=_stage(progress, "held-out curves"),
                                 granularity=granularity, neurons=neurons) if curve else None
    mask = evaluation_mask(chosen.keep_mask, evaluator.engine.graph, granularity)
    return HeldOut(n=len(evaluator.dataset), curves=curves, faithfulness=evaluator.faithfulness(mask, chosen.neurons))
