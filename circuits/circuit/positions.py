"""Positional circuits: sets of (edge, span) pairs, patched, pruned, chosen and measured.

A positional circuit is a bool ``kept`` [S, R, K] over the graph's edges and the dataset's K spans
(:mod:`circuits.data.spans`).  Each batch's engine keep is built from it per prompt
(``keep[s, r, b, p] = kept[s, r, span(b, p)]``, or [S, R, P] when every prompt of the batch places its
spans alike); positions in no span (padding) are always patched.  The definition of a positional edge
and of its patching is in ``docs/architecture.md`` ("Positional circuits").

Nothing here prints or writes files.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from circuits.engine.ablation import REFERENCE_CACHE_BYTES, BatchReferences
from circuits.engine.engine import Patch
from circuits.errors import CircuitsError
from circuits.circuit.faithfulness import Faithfulness, _batches, _ratio
from circuits.circuit.ranking import check_ranking, rank_keys
from circuits.methods.base import Progress, Scores, no_progress
from circuits.data.spans import SpanTable, span_table

POSITIONAL_METHODS = ("eap", "eap-ig", "activation-patching", "acdc")

__all__ = ["POSITIONAL_METHODS", "positional_keep", "span_order", "prune_positional", "PositionalEvaluator",
           "PositionalSelection", "PositionalResult", "check_positional", "kv_receivers", "own_positional", "node_span_scores", "pairs_of_nodes", "ranked_pairs", "top_k_pairs", "discover_positions",
           "kept_pairs", "project"]


def positional_keep(kept: Tensor, spans: SpanTable) -> Tensor:
    """The engine's keep for one batch: [S, R, P] when its prompts share one span layout, else [S, R, b, P]."""
    idx = spans.index
    same = bool((idx == idx[:1]).all())
    padded = torch.cat([kept.bool(), torch.zeros(*kept.shape[:2], 1, dtype=torch.bool, device=kept.device)], -1)
    where = torch.where(idx >= 0, idx, kept.shape[-1]).to(kept.device)
    return padded[:, :, where[0]] if same else padded[:, :, where]


def span_order(spans: SpanTable) -> Tensor:
    """Bool [K, K]: ``[k, k2]`` when some position of span ``k`` is at or before some position of ``k2`` in
    some prompt (so a head at ``k2`` may read keys and values at ``k``)."""
    idx = spans.index
    P = idx.shape[1]
    pos = torch.arange(P).expand_as(idx)
    first = torch.full((idx.shape[0], spans.k), P, dtype=torch.long)
    last = torch.full((idx.shape[0], spans.k), -1, dtype=torch.long)
    for k in range(spans.k):
        inside = idx == k
        first[:, k] = torch.where(inside, pos, P).min(1).values
        last[:, k] = torch.where(inside, pos, -1).max(1).values
    return (first[:, :, None] <= last[:, None, :]).any(0)


def answer_spans(spans: SpanTable, answer_pos: Tensor) -> Tensor:
    """Bool [K]: the spans that hold an answer position of some prompt (where the logits read)."""
    pos = answer_pos if answer_pos.ndim == 2 else answer_pos[:, None]
    at = spans.index.gather(1, pos.cpu())
    out = torch.zeros(spans.k, dtype=torch.bool)
    out[at[at >= 0]] = True
    return out


def kv_receivers(graph) -> Tensor:
    """Bool [R]: the heads' k and v inputs (the receivers whose pairs reach later positions)."""
    kv = torch.zeros(graph.n_receivers, dtype=torch.bool)
    H = graph.n_heads
    for layer in range(graph.n_layers):
        start = graph.receiver_block(layer).start
        kv[start + H:start + 3 * H] = True
    return kv


def prune_positional(kept, graph, order: Tensor, answers: Tensor) -> Tensor:
    """Keep only the (edge, span) pairs on some ``input -> logits`` path through kept pairs.

    Within a span a pair joins its sender at that span to its receiver's node at that span; a k or v pair
    at span ``k`` joins the sender at ``k`` to the head at every span ``k2`` with ``order[k, k2]``.  The
    logits are reached at the ``answers`` spans.  Returns bool [S, R, K] on the CPU."""
    keep = torch.as_tensor(kept).detach().cpu().bool() & graph.valid_mask()[..., None]
    S, R, K = keep.shape
    node_of = torch.tensor(graph.receiver_node)
    kv = kv_receivers(graph)
    ordf = order.float()
    fwd = torch.zeros(S + 1, K, dtype=torch.bool)
    fwd[0] = True
    for r in range(R):  # receivers in compute order: every sender of r is final before r
        reach = (keep[:, r] & fwd[:S]).any(0)  # [K]
        node = int(node_of[r])
        fwd[node] |= ((reach.float() @ ordf) > 0) if kv[r] else reach
    need = torch.zeros(S + 1, K, dtype=torch.bool)
    need[S] = answers
    live = torch.zeros(R, K, dtype=torch.bool)
    for r in range(R - 1, -1, -1):  # backwards: every reader of a node comes after its inputs
        node = int(node_of[r])
        live[r] = ((ordf @ need[node].float()) > 0) if kv[r] else need[node]
        need[:S] |= keep[:, r] & live[r]
    return keep & fwd[:S, None, :] & live[None]


class PositionalEvaluator:
    """The metric of positional circuits on one dataset (cached by mask), with m(N) and m(empty)."""

    def __init__(self, engine, dataset, metric, *, ablation: str = "corrupted", batch_size: int = 0,
                 cache_bytes: int = REFERENCE_CACHE_BYTES, names: Optional[Tuple[str, ...]] = None):
        self.engine, self.dataset, self.metric_fn, self.batch_size = engine, dataset, metric, batch_size
        self.spans = span_table(dataset)
        if names is not None and tuple(names) != self.spans.names:
            raise CircuitsError(f"the prompts' spans {self.spans.names} differ from the circuit's {tuple(names)}")
        self.reference = BatchReferences(engine, dataset, ablation, batch_size=batch_size, cache_bytes=cache_bytes)
        g = engine.graph
        self.shape = (g.n_senders, g.n_receivers, self.spans.k)
        self._cache: Dict[bytes, float] = {}
        self.runs = 0

    def metric(self, kept) -> float:
        kept = torch.as_tensor(kept).detach().cpu().bool() & self.engine.graph.valid_mask()[..., None]
        if tuple(kept.shape) != self.shape:
            raise ValueError(f"positional mask has shape {tuple(kept.shape)}; this graph and schema need {self.shape}")
        key = hashlib.blake2b(kept.numpy().tobytes(), digest_size=20).digest()
        if key not in self._cache:
            self._cache[key] = self._run(kept)
            self.runs += 1
        return self._cache[key]

    def _run(self, kept: Tensor) -> float:
        e = self.engine
        total = 0.0
        with torch.no_grad():
            for part, ref, _ in _batches(self.dataset, self.reference, self.batch_size):
                keep = positional_keep(kept.to(e.device), span_table(part))
                result = e.run(part.clean.to(e.device), part.answer_pos, patch=Patch(keep=keep, reference=ref))
                total += float(self.metric_fn(result.logits, part).double().sum())
        return total / len(self.dataset)

    @property
    def m_full(self) -> float:
        return self.metric(torch.ones(self.shape, dtype=torch.bool))

    @property
    def m_empty(self) -> float:
        return self.metric(torch.zeros(self.shape, dtype=torch.bool))

    def faithfulness(self, kept) -> Faithfulness:
        m_c = self.metric(kept)
        return Faithfulness(m_full=self.m_full, m_empty=self.m_empty, m_circuit=m_c, f=_ratio(m_c, self.m_full, self.m_empty))


def node_span_scores(engine, dataset, metric, options, *, progress: Optional[Progress] = None,
                     evaluator: Optional[PositionalEvaluator] = None) -> Scores:
    """Activation patching by span: the exact effect ``m(patched) - m(full)`` of patching one node's output at
    the positions of one span (every pair ``n -> r`` at that span), for every head, MLP and span.

    ``info["node_span_scores"]`` is that [S, K] table (``input``'s row too); ``edge_scores`` [S, R, K] gives each
    pair its sender's node-span score (as plain activation patching does), so tables still read."""
    progress = progress or no_progress
    ev = evaluator or PositionalEvaluator(engine, dataset, metric, ablation=options.ablation, batch_size=options.batch_size)
    g = engine.graph
    K = ev.spans.k
    present = [bool((ev.spans.index == k).any()) for k in range(K)]
    full = ev.m_full
    out = torch.zeros(g.n_senders, K, dtype=torch.float64)
    everything = torch.ones(ev.shape, dtype=torch.bool)
    work, done = g.n_senders * sum(present), 0
    for s in range(g.n_senders):
        for k in range(K):
            if not present[k]:
                continue
            kept = everything.clone()
            kept[s, :, k] = False
            out[s, k] = ev.metric(kept) - full
            done += 1
            progress(done, work, "activation patching by span")
    edge = out[:, None, :].expand(-1, g.n_receivers, -1) * g.valid_mask()[..., None]
    return Scores(graph=g, method="activation-patching", edge_scores=edge.float(),
                  info={"spans": list(ev.spans.names), "granularity": "node", "node_span_scores": out,
                        "circuit_evaluations": ev.runs})


def pairs_of_nodes(nodes, graph, order: Tensor, answers: Tensor) -> Tensor:
    """The pairs among kept node-spans ``nodes`` (bool [S, K]; ``input`` always kept, the logits at ``answers``):
    ``s -> r`` at ``k`` when ``s`` is kept at ``k`` and ``r``'s node at ``k`` (for a k or v input: at some span
    that reads ``k``), then pruned to input -> logits paths.  Bool [S, R, K]."""
    nodes = torch.as_tensor(nodes).bool().clone()
    nodes[0] = True
    ext = torch.cat([nodes, answers[None]], 0).float()  # [S + 1, K]; row S: the logits
    node_of = torch.tensor(graph.receiver_node)
    receiving = ext[node_of]  # [R, K]
    kv = kv_receivers(graph)
    receiving[kv] = ((receiving[kv] @ order.float().T) > 0).float()
    kept = nodes[:, None, :] & (receiving > 0)[None] & graph.valid_mask()[..., None]
    return prune_positional(kept, graph, order, answers)


def ranked_pairs(scores: Scores, ranking: str = "abs") -> Tensor:
    """Flat indices into [S, R, K] of every valid (edge, span) pair, first ranked first (stable ties)."""
    values = torch.as_tensor(scores.edge_scores).detach().cpu().double()
    valid = scores.graph.valid_mask()[..., None].expand_as(values).reshape(-1)
    keys = rank_keys(values.reshape(-1), check_ranking(ranking))
    flat = torch.nonzero(valid).squeeze(1)
    order = torch.sort(keys[flat], descending=True, stable=True).indices
    return flat[order]


def top_k_pairs(scores: Scores, k: int, ranking: str = "abs", *, order=None, answers=None, ranked=None) -> Tensor:
    """The ``k`` first-ranked pairs, pruned to input -> logits paths when ``order`` and ``answers`` are given."""
    ranked = ranked_pairs(scores, ranking) if ranked is None else ranked
    kept = torch.zeros(scores.edge_scores.numel(), dtype=torch.bool)
    kept[ranked[:k]] = True
    kept = kept.view(tuple(scores.edge_scores.shape))
    return kept if order is None else prune_positional(kept, scores.graph, order, answers)


@dataclass(frozen=True)
class PositionalSelection:
    """The chosen positional circuit: ``kept`` bool [S, R, K] (pruned), how it was chosen and its f."""

    kept: Tensor
    mode: str
    value: float
    k: int
    ranking: str = "abs"
    reached: bool = True
    evaluations: int = 0
    faithfulness: Optional[float] = None
    node_spans: Optional[List[Tuple[str, str, float]]] = None  # activation patching: the kept (node, span, score)

    @property
    def pairs_kept(self) -> int:
        return int(self.kept.sum())


@dataclass(frozen=True)
class PositionalResult:
    scores: Scores
    selection: PositionalSelection
    spans: Tuple[str, ...]
    faithfulness: Faithfulness
    heldout: Optional[Faithfulness] = None
    n_heldout: int = 0
    timings: Mapping[str, float] = field(default_factory=dict)
    circuit_evaluations: int = 0

    @property
    def pairs_total(self) -> int:
        return self.scores.graph.n_edges * len(self.spans)


def check_positional(method, selection, aggregate: str, neurons=()) -> None:
    """Refuse, before any model loads, what ``--positions`` does not do (yet)."""
    from circuits.data.spans import check_aggregate

    name = getattr(method, "name", str(method))
    if name not in POSITIONAL_METHODS:
        raise CircuitsError(f"--positions works with {', '.join(POSITIONAL_METHODS)} so far, not {name}; pick one of them")
    if selection.mode == "acdc" and name != "acdc":
        raise CircuitsError(f"selection mode acdc keeps ACDC's own circuit; {name} has none: use --top-k, --threshold or "
                            "--target-faithfulness")
    if selection.keep_neurons or neurons:
        raise CircuitsError("--positions does not combine with --neurons or --keep-neurons yet; drop them")
    if selection.verify:
        raise CircuitsError("--verify checks plain edge circuits; drop it with --positions")
    check_aggregate(aggregate)


def discover_positions(engine, dataset, metric, method, options, selection, *, aggregate: str = "sum",
                       heldout=None, progress: Optional[Progress] = None,
                       cache_bytes: int = REFERENCE_CACHE_BYTES) -> PositionalResult:
    """Positional scores of ``method`` (EAP, EAP-IG, activation patching by span, ACDC), then a circuit of (edge, span)
    pairs chosen by ``selection`` (a :class:`circuits.circuit.discover.SelectionSpec`: top-k, threshold,
    target-faithfulness, or acdc: ACDC's own kept pairs), pruned, and measured here and on ``heldout``."""
    import time
    from dataclasses import replace

    from circuits.methods.base import option_values
    from circuits.methods.eap import integrated_scores
    from circuits.circuit.select import search_smallest_k

    progress = progress or no_progress
    name = getattr(method, "name", str(method))
    check_positional(method, replace(selection, verify=None), aggregate, options.neurons)
    timings: Dict[str, float] = {}
    t = time.perf_counter()
    options = replace(options, params=option_values(method, options.params))
    spans = span_table(dataset)
    order, answers = span_order(spans), answer_spans(spans, dataset.answer_pos)
    evaluator = PositionalEvaluator(engine, dataset, metric, ablation=options.ablation, batch_size=options.batch_size,
                                    cache_bytes=cache_bytes)
    by_node = name == "activation-patching"
    if by_node:  # node-spans: chosen by node and span; the circuit is every pair among them
        scores = node_span_scores(engine, dataset, metric, options, progress=progress, evaluator=evaluator)
    elif hasattr(method, "score_positional"):  # a method with its own positional search (acdc)
        scores = method.score_positional(engine, dataset, metric, options, progress=progress)
    else:
        steps = int(options.params.get("ig_steps", 1))
        scores = integrated_scores(engine, dataset, metric, options, steps=steps, progress=progress, method=name,
                                   aggregate=aggregate)
    timings["scoring"] = time.perf_counter() - t
    t = time.perf_counter()
    if by_node:
        table = scores.info["node_span_scores"]
        flat = torch.arange(spans.k, table.numel())  # every node-span but input's
        keys = rank_keys(table.reshape(-1)[flat], selection.ranking)
        ranked = flat[torch.sort(keys, descending=True, stable=True).indices]

        def pick(k: int) -> Tensor:
            nodes = torch.zeros(table.numel(), dtype=torch.bool)
            nodes[ranked[:k]] = True
            return pairs_of_nodes(nodes.view(table.shape), engine.graph, order, answers)
    else:
        ranked = ranked_pairs(scores, selection.ranking)
        pick = lambda k: top_k_pairs(scores, k, selection.ranking, order=order, answers=answers, ranked=ranked)  # noqa: E731
    reached, evaluations = True, 0
    if selection.mode == "acdc":
        kept, k = own_positional(scores, order, answers)
        pick = lambda _k: kept  # noqa: E731
    elif selection.mode == "top-k":
        k = int(selection.value)
    elif selection.mode == "threshold":
        values = (scores.info["node_span_scores"] if by_node else torch.as_tensor(scores.edge_scores)).double().reshape(-1)[ranked]
        keys = rank_keys(values, selection.ranking)
        k = int((keys >= float(selection.value)).sum())
    else:
        found = search_smallest_k(lambda kk: evaluator.faithfulness(pick(kk)).f, len(ranked), float(selection.value),
                                  progress=progress)
        k, reached, evaluations = found.k, found.reached, found.evaluations
    kept = pick(k)
    value = float(scores.info.get("tau", 0.0)) if selection.mode == "acdc" else float(selection.value)
    timings["selection"] = time.perf_counter() - t
    faith = evaluator.faithfulness(kept)
    chosen = PositionalSelection(kept=kept, mode=selection.mode, value=value, k=k,
                                 ranking=selection.ranking, reached=reached, evaluations=evaluations, faithfulness=faith.f,
                                 node_spans=_node_spans(scores, ranked[:k], spans.names) if by_node else None)
    held = None
    if heldout is not None and len(heldout):
        t = time.perf_counter()
        held = PositionalEvaluator(engine, heldout, metric, ablation=options.ablation, batch_size=options.batch_size,
                                   cache_bytes=cache_bytes, names=spans.names).faithfulness(kept)
        timings["heldout"] = time.perf_counter() - t
    return PositionalResult(scores=scores, selection=chosen, spans=spans.names, faithfulness=faith, heldout=held,
                            n_heldout=0 if heldout is None else len(heldout), timings=timings,
                            circuit_evaluations=evaluator.runs)


def own_positional(scores: Scores, order: Tensor, answers: Tensor) -> Tuple[Tensor, int]:
    """The positional circuit the method chose itself (ACDC's ``extra["kept_mask"]`` [S, R, K]), pruned to
    input -> logits paths (kept as it is with zero ablation, as for plain circuits), and its size before pruning."""
    kept = (scores.extra or {}).get("kept_mask")
    if kept is None or torch.as_tensor(kept).ndim != 3:
        raise CircuitsError(f"selection mode acdc needs a method that chooses its own circuit (acdc); {scores.method} "
                            "does not: use --top-k, --threshold or --target-faithfulness")
    kept = torch.as_tensor(kept).detach().cpu().bool() & scores.graph.valid_mask()[..., None]
    pruned = kept if scores.info.get("ablation") == "zero" else prune_positional(kept, scores.graph, order, answers)
    return pruned, int(kept.sum())


def _node_spans(scores: Scores, flat: Tensor, spans) -> List[Tuple[str, str, float]]:
    table = scores.info["node_span_scores"]
    K = table.shape[1]
    return [(scores.graph.sender_names[int(i) // K], spans[int(i) % K], float(table.reshape(-1)[int(i)])) for i in flat]


def kept_pairs(scores: Scores, kept, spans) -> List[Tuple[str, str, float]]:
    """(edge name, span name, score) of the kept pairs, receivers in compute order, spans in prompt order."""
    g = scores.graph
    kept = torch.as_tensor(kept).bool()
    values = torch.as_tensor(scores.edge_scores).double()
    out = []
    for s, r in g.edges():
        for k in torch.nonzero(kept[s, r]).flatten().tolist():
            v = float(values[s, r, k])
            out.append((g.edge_name(s, r), spans[k], v if math.isfinite(v) else 0.0))
    return out


def project(pairs) -> Dict[str, float]:
    """A positional circuit as a plain one: each edge kept at any span, its scores summed over its spans."""
    out: Dict[str, float] = {}
    for edge, _span, v in pairs:
        out[edge] = out.get(edge, 0.0) + v
    return out
