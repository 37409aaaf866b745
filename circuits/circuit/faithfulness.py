"""How much of the model's behaviour a circuit keeps.

A circuit is a keep mask over the graph's edges ([senders, receivers], 1 = in the circuit).
Every edge outside it carries the *reference* value (the corrupted run's sender output, or
the clean outputs' mean over prompts), every edge inside it the current run's value, and
the task's single-position metric is averaged over the prompts:

    f(C) = (m(C) - m(empty)) / (m(N) - m(empty))

``m(N)`` keeps every edge (the clean model), ``m(empty)`` patches every edge (the reference
model).  Both are computed through the same patched forward pass as ``m(C)``, so the full
circuit gives exactly 1 and the empty circuit exactly 0.

The faithfulness curves follow MIB's circuit track (``MIB_circuit_track/evaluation.py``,
``evaluate_area_under_curve``) exactly.  For each fraction ``x`` in :data:`FRACTIONS` a curve keeps
the first ``int(x * E)`` edges of a ranking (Python's ``int``: truncation, so 0 edges when
``x * E < 1``) and then prunes them to the edges on an input -> logits path
(:func:`circuits.circuit.ranking.prune`); a node method's curve counts the N heads and MLPs instead.
Two rankings give two curves (:class:`Curves`):

- ``signed``: most helpful first.  Our scores are the change of the metric when the edge is patched,
  so a *negative* score means the edge helps and it comes first (the sort key is ``-score``).  MIB's
  scores (EAP-IG's, with the loss ``-logit difference``) have the opposite sign and MIB sorts them
  in descending order, so both put the same edges first.  **CPR** is the area under this curve's f.
- ``abs``: largest ``|score|`` first.  **CMD** is the area under this curve's ``|1 - f|``.

The area is MIB's: the plain trapezoid sum over the fractions on a *linear* axis,
``sum((x2 - x1) * (y1 + y2) / 2)``, not divided by the x range (0.999), so a circuit as faithful
as the model at every size has CPR = CMD + 1 = 0.999, and CPR can exceed 1.

Nothing here prints or writes files.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from circuits.data.batching import batches

from circuits.engine.ablation import ABLATIONS, REFERENCE_CACHE_BYTES, BatchReferences, static_reference
from circuits.engine.ablation import reference as ablation_reference
from circuits.data.dataset import PromptDataset
from circuits.engine.engine import GraphEngine, Patch
from circuits.circuit.neurons import HiddenReference, NeuronMasks, hidden_edit, hidden_reference, masks_key
from circuits.circuit.ranking import evaluation_mask, n_units, prune, top_k_mask, top_k_nodes_mask
from circuits.methods.base import Metric, Progress, Scores, no_progress

FRACTIONS: Tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

__all__ = [
    "FRACTIONS", "ABLATIONS", "BatchReferences", "References", "reference_outputs", "circuit_metric", "Faithfulness", "faithfulness",
    "CircuitEvaluator", "CurvePoint", "Curve", "Curves", "faithfulness_curve", "faithfulness_curves", "curve_area",
    "edges_for_fraction",
]


# What patched edges carry: a whole-dataset tensor [S, n, p, d], or per-batch references (streaming)
References = Union[Tensor, BatchReferences]


def reference_outputs(engine: GraphEngine, dataset: PromptDataset, *, ablation: str = "corrupted",
                      batch_size: int = 0) -> Tensor:
    """The values patched edges carry for the whole dataset: sender outputs [S, n, p, d] on the engine's device.

    ``corrupted``: the corrupted prompts' outputs.  ``mean``, ``mean-positions``, ``zero``: the one
    reference all prompts share (``circuits.engine.ablation.static_reference``), broadcast (a view, no copy)
    to every prompt.
    This holds every prompt's outputs at once; :class:`BatchReferences` keeps memory bounded by the batch.
    """
    shared = static_reference(engine, dataset, ablation, batch_size=batch_size)
    if shared is not None:
        return shared.outputs.expand(-1, len(dataset), -1, -1)
    parts = [ablation_reference(engine, part, "corrupted").outputs for part in batches(dataset, batch_size)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def _batches(dataset: PromptDataset, reference: References, batch_size: int, layers: Sequence[int] = (),
             hidden_reference: Optional[HiddenReference] = None) -> Iterator[Tuple[PromptDataset, Tensor, HiddenReference]]:
    """(piece of the dataset, its reference outputs, its reference hidden activations of these MLP layers).

    :class:`BatchReferences` gives its own pieces, with their hidden activations unless ``hidden_reference``
    (whole-dataset tensors) is given; a whole-dataset outputs tensor is cut into pieces of ``batch_size``."""
    if isinstance(reference, BatchReferences):
        if hidden_reference is None:
            yield from reference.items(layers)
            return
        pairs = iter(reference)
    else:
        pairs = ((part, None) for part in batches(dataset, batch_size))
    start = 0
    for part, ref in pairs:
        rows = slice(start, start + len(part))
        start += len(part)
        yield (part, reference[:, rows] if ref is None else ref,
               {layer: h[rows] for layer, h in (hidden_reference or {}).items() if layer in layers})


def circuit_metric(engine: GraphEngine, dataset: PromptDataset, metric: Metric, keep_mask, reference: References,
                   *, batch_size: int = 0, neurons: Optional[NeuronMasks] = None,
                   hidden_reference: Optional[HiddenReference] = None) -> float:
    """The metric's mean over the prompts with every edge outside ``keep_mask`` [S, R] patched to ``reference``
    (a [S, n, p, d] tensor cut into pieces of ``batch_size``, or :class:`BatchReferences` with their own pieces).

    ``neurons`` (MLP layer -> bool [d_mlp]) reduces those MLPs: their other neurons carry
    ``hidden_reference[layer]`` [n, p, d_mlp] (see :mod:`circuits.circuit.neurons`), or, without it and with
    :class:`BatchReferences`, each piece's own hidden references (:meth:`BatchReferences.items`).
    """
    keep = torch.as_tensor(keep_mask).to(device=engine.device, dtype=engine.w.W_E.dtype)
    g = engine.graph
    if tuple(keep.shape) != (g.n_senders, g.n_receivers):
        raise ValueError(f"keep mask has shape {tuple(keep.shape)}; this graph needs ({g.n_senders}, {g.n_receivers})")
    total = 0.0
    with torch.no_grad():
        for part, ref, hidden in _batches(dataset, reference, batch_size, sorted(neurons or ()), hidden_reference):
            edit = hidden_edit(neurons, hidden)
            result = engine.run(part.clean.to(engine.device), part.answer_pos, patch=Patch(keep=keep.to(ref.dtype), reference=ref),
                                edit_hidden=edit)
            total += float(metric(result.logits, part).double().sum())
    return total / len(dataset)


@dataclass(frozen=True)
class Faithfulness:
    """The metric of the model (``m_full``), of the reference (``m_empty``) and of the circuit, and
    ``f = (m_circuit - m_empty) / (m_full - m_empty)`` (NaN when ``m_full == m_empty``)."""

    m_full: float
    m_empty: float
    m_circuit: float
    f: float


def _ratio(m_circuit: float, m_full: float, m_empty: float) -> float:
    den = m_full - m_empty
    return (m_circuit - m_empty) / den if den != 0 else math.nan


class CircuitEvaluator:
    """Faithfulness of many circuits on one dataset: ``m(N)`` and ``m(empty)`` are computed once and
    every circuit's metric is cached by its (pruned) mask and neuron masks, so repeated circuits cost nothing.

    ``runs`` counts the metric evaluations actually made (each is ``ceil(n / batch_size)`` forwards).
    Masks are cached by a hash of their contents, so the cache stays small on large graphs.
    Without ``reference``, the references of ``ablation`` are streamed batch by batch
    (:class:`BatchReferences`: corrupted runs kept up to ``cache_bytes``, recomputed beyond).
    ``ablation`` also says what reduced MLPs' other neurons carry; it should match ``reference``.  With
    streamed references their hidden reference activations come piece by piece (kept in the same cache,
    recomputed beyond); with a whole-dataset tensor they are computed whole, [n, p, d_mlp] per MLP, the first
    time a circuit reduces that MLP.
    """

    def __init__(self, engine: GraphEngine, dataset: PromptDataset, metric: Metric, reference: Optional[References] = None,
                 *, ablation: str = "corrupted", batch_size: int = 0, cache_bytes: int = REFERENCE_CACHE_BYTES):
        self.engine, self.dataset, self.metric_fn = engine, dataset, metric
        if reference is None:
            reference = BatchReferences(engine, dataset, ablation, batch_size=batch_size, cache_bytes=cache_bytes)
        self.reference, self.batch_size, self.ablation = reference, batch_size, ablation
        self.valid = engine.graph.valid_mask()
        self._cache: Dict[bytes, float] = {}
        self._hidden: HiddenReference = {}
        self.runs = 0

    def hidden_reference(self, layers) -> HiddenReference:
        """Reference hidden activations of these MLP layers (computed once each)."""
        missing = [layer for layer in layers if layer not in self._hidden]
        if missing:
            self._hidden.update(hidden_reference(self.engine, self.dataset, missing, ablation=self.ablation,
                                                 batch_size=self.batch_size))
        return self._hidden

    def metric(self, keep_mask, neurons: Optional[NeuronMasks] = None) -> float:
        keep = torch.as_tensor(keep_mask).detach().cpu()
        keep = keep.bool() if keep.dtype == torch.bool or bool(((keep == 0) | (keep == 1)).all()) else keep.float()
        if keep.dtype == torch.bool:
            keep = keep & self.valid  # entries outside the graph are never read; normalize them for the cache key
        neurons = {int(k): torch.as_tensor(v).bool().cpu() for k, v in (neurons or {}).items()}
        key = hashlib.blake2b(bytes([keep.dtype == torch.bool]) + keep.numpy().tobytes() + masks_key(neurons),
                              digest_size=20).digest()
        if key not in self._cache:
            # streamed references give each piece its hidden references; a whole-dataset tensor needs them whole
            whole = neurons and not isinstance(self.reference, BatchReferences)
            hidden = self.hidden_reference(sorted(neurons)) if whole else None
            self._cache[key] = circuit_metric(self.engine, self.dataset, self.metric_fn, keep, self.reference,
                                              batch_size=self.batch_size, neurons=neurons or None,
                                              hidden_reference=hidden)
            self.runs += 1
        return self._cache[key]

    @property
    def m_full(self) -> float:
        return self.metric(self.valid)

    @property
    def m_empty(self) -> float:
        return self.metric(torch.zeros_like(self.valid))

    def faithfulness(self, keep_mask, neurons: Optional[NeuronMasks] = None) -> Faithfulness:
        """f of the circuit ``keep_mask`` [S, R], with the MLPs in ``neurons`` reduced to their kept neurons."""
        m_full, m_empty = self.m_full, self.m_empty
        m_c = self.metric(keep_mask, neurons)
        return Faithfulness(m_full=m_full, m_empty=m_empty, m_circuit=m_c, f=_ratio(m_c, m_full, m_empty))


def faithfulness(engine: GraphEngine, dataset: PromptDataset, metric: Metric, keep_mask,
                 reference: Optional[References] = None, *, ablation: str = "corrupted",
                 batch_size: int = 0, neurons: Optional[NeuronMasks] = None,
                 cache_bytes: int = REFERENCE_CACHE_BYTES) -> Faithfulness:
    """Faithfulness of one circuit (three patched evaluations; without ``reference``, the references of
    ``ablation`` are streamed batch by batch).

    ``neurons``: MLP layer -> bool [d_mlp]; those MLPs are kept through these neurons only.
    """
    evaluator = CircuitEvaluator(engine, dataset, metric, reference, ablation=ablation, batch_size=batch_size,
                                 cache_bytes=cache_bytes)
    return evaluator.faithfulness(keep_mask, neurons)


@dataclass(frozen=True)
class CurvePoint:
    fraction: float
    k: int  # units (edges or nodes) taken from the ranking before pruning: int(fraction * total)
    edges: int  # edges left after pruning
    faithfulness: float


@dataclass(frozen=True)
class Curve:
    """f at each fraction for one ranking, with the two areas MIB computes from a curve."""

    points: Tuple[CurvePoint, ...]
    ranking: str  # "signed" or "abs"
    area: float  # trapezoid sum of f (MIB's area_under; CPR when the ranking is signed)
    area_from_one: float  # trapezoid sum of |1 - f| (MIB's area_from_1; CMD when the ranking is abs)

    def pairs(self) -> list:
        """[(fraction, f), ...] for plotting."""
        return [(p.fraction, p.faithfulness) for p in self.points]

    def records(self) -> list:
        """The manifest's form: ``[{"fraction", "edges", "faithfulness"}, ...]``."""
        return [{"fraction": p.fraction, "edges": p.edges, "faithfulness": p.faithfulness} for p in self.points]


@dataclass(frozen=True)
class Curves:
    """The signed and the ``|score|`` curves; ``cpr`` and ``cmd`` as MIB reports them."""

    signed: Curve
    abs: Curve

    @property
    def cpr(self) -> float:
        return self.signed.area

    @property
    def cmd(self) -> float:
        return self.abs.area_from_one

    def by_ranking(self, ranking: str) -> Curve:
        return self.signed if ranking == "signed" else self.abs


def edges_for_fraction(fraction: float, n_edges: int) -> int:
    """MIB's ``int(fraction * E)``: Python's float product, truncated (so 0.29 * 100 gives 28 and 0.001 * 110 gives 0)."""
    return int(fraction * n_edges)


def curve_area(xs: Sequence[float], ys: Sequence[float]) -> float:
    """MIB's area: ``sum((x2 - x1) * (y1 + y2) / 2)`` over consecutive points, on the linear ``xs`` as given, not
    divided by the x range (NaN if any y is NaN; 0 for fewer than two points)."""
    return sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))


def faithfulness_curve(evaluator: CircuitEvaluator, scores: Scores, fractions: Sequence[float] = FRACTIONS,
                       *, progress: Optional[Progress] = None, granularity: str = "edge",
                       neurons: Optional[NeuronMasks] = None, ranking: str = "abs") -> Curve:
    """f of the top-``int(fraction * E)`` edges of ``ranking`` (each pruned) for each fraction, with its areas.

    ``ranking``: ``abs`` (largest ``|score|`` first) or ``signed`` (most helpful first); see :mod:`circuits.circuit.ranking`.

    ``neurons``: MLPs reduced to these neurons in every circuit of the curve (``discover --keep-neurons``).

    With ``granularity="node"`` the fractions are of the heads and MLPs (ranked by their node scores),
    each circuit the subgraph its nodes induce with ``input`` and ``logits``; ``k`` then counts nodes.
    """
    progress = progress or no_progress
    graph = scores.graph
    n_units_total = n_units(graph, granularity)
    xs = sorted(float(x) for x in fractions)
    total = len(xs) + 2
    progress(0, total, "faithfulness curve")
    evaluator.m_full
    progress(1, total, "faithfulness curve")
    evaluator.m_empty
    progress(2, total, "faithfulness curve")
    points = []
    for i, x in enumerate(xs):
        k = edges_for_fraction(x, n_units_total)
        if granularity == "node":
            mask = top_k_nodes_mask(scores, k, ranking)
        else:
            mask = prune(top_k_mask(scores, k, ranking), graph)
        shown = evaluation_mask(mask, graph, granularity)
        f = evaluator.faithfulness(shown, neurons) if neurons else evaluator.faithfulness(shown)
        points.append(CurvePoint(fraction=x, k=k, edges=int(mask.sum()), faithfulness=f.f))
        progress(3 + i, total, "faithfulness curve")
    ys = [p.faithfulness for p in points]
    return Curve(points=tuple(points), ranking=ranking, area=curve_area(xs, ys),
                 area_from_one=curve_area(xs, [abs(1 - y) for y in ys]))


def faithfulness_curves(evaluator: CircuitEvaluator, scores: Scores, fractions: Sequence[float] = FRACTIONS,
                        *, progress: Optional[Progress] = None, granularity: str = "edge",
                        neurons: Optional[NeuronMasks] = None) -> Curves:
    """Both curves (signed, then ``|score|``); circuits they share are measured once (the evaluator's cache)."""
    progress = progress or no_progress

    def part(offset: int) -> Progress:
        return lambda done, total, message: progress(offset + done, 2 * total, message)

    signed = faithfulness_curve(evaluator, scores, fractions, progress=part(0), granularity=granularity,
                                neurons=neurons, ranking="signed")
    absolute = faithfulness_curve(evaluator, scores, fractions, progress=part(len(signed.points) + 2),
                                  granularity=granularity, neurons=neurons, ranking="abs")
    return Curves(signed=signed, abs=absolute)
