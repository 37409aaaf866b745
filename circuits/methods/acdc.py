"""ACDC (Conmy et al. 2023, "Towards Automated Circuit Discovery"), run on the graph engine.

The algorithm, as published:

- receivers (the logits' input, each MLP's input, each head's q, k and v inputs) are visited in
  reverse topological order, from ``logits`` back to the first layer;
- for each receiver, each incoming edge is tentatively patched (it carries its reference value:
  corrupted, mean or zero); if the mean metric moves by less than ``tau`` (``|change| < tau``) the
  edge is removed for good, otherwise it is restored.  Each test is made against the current
  circuit, so each decision sees every removal made before it;
- a receiver whose node no longer has a path to ``logits`` is skipped: its incoming edges are
  removed without a test (patching them cannot change the metric: every edge out of the node
  already carries its reference value).

Sender order within a receiver (``acdc_order``): ``reverse`` (the default) visits the senders from
the latest to the earliest (``m{L-1}``, ``a{L-1}.h*``, ..., ``input`` last), as the ACDC code does
(its ``names_mode="normal"`` walks the hook points from the last layer down; its launch scripts
add ``--indices-mode reverse``, which puts the heads of one layer in ascending order, where ours
are descending); ``normal`` is compute order, ``input`` first.

Speed.  When a receiver of layer ``l`` is visited, nothing before layer ``l`` is patched yet, so
every test restarts the forward pass at layer ``l`` from the clean run (``start_layer``,
``start_resid``), and the clean senders' part of the engine's ``current - reference`` buffer is
filled once, not per pass (``engine.RestartBuffer``; the reference is given once for all copies).  Many candidate edges of the receiver are tested in one pass:
the batch is repeated once per candidate, and the copies differ only in that receiver's keep
column (``Patch.column_keep``).  Copy ``j`` assumes a decision for each earlier candidate of its
pass (the decision made last: runs of removals and runs of keeps both batch well) and
removes candidate ``j``; its result is used only while the actual decisions match those
assumptions, and the search resumes after the first mismatch.  So every decision is measured on
exactly the circuit the plain one-edge-at-a-time loop would measure it on, and the kept set is
the same.

Scores: each tested edge's score is the metric change measured when it was tested (patched minus
current); untested edges score 0.  ``extra["kept_mask"]`` is ACDC's own circuit (bool [S, R]).
``max_tests`` stops the search early; the untested edges then stay in the circuit and
``info["complete"]`` is False.

By span (``score_positional``, ``discover --positions``): the same search over (edge, span) pairs.  The keep is
[S, R, K] over the dataset's K spans (:mod:`circuits.data.spans`); a test patches its pair at every position of its
span (each batch's engine keep comes from :func:`circuits.circuit.positions.positional_keep`), against the current
positional circuit.  A receiver's candidates are its senders in ``acdc_order``, each at every span where the
receiver's input still reaches the logits (:class:`SpanLiveness`), spans in prompt order; its pairs at the other
spans are removed untested.  The copies of a pass differ in the receiver's keep column [c, S, K], mapped to
positions ([c, S, P], or [c, S, b, P] when the prompts place their spans differently).  The clean run the passes
restart from is the full positional circuit's (it patches the positions in no span, as faithfulness does).
Scores are [S, R, K] and ``extra["kept_mask"]`` is bool [S, R, K].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from circuits.data.batching import batches

from circuits.engine.ablation import static_reference, reference
from circuits.circuit.positions import answer_spans, kv_receivers, positional_keep, span_order
from circuits.data.spans import SpanTable, span_table
from circuits.engine.engine import Patch, RestartBuffer
from circuits.errors import CircuitsError
from circuits.methods.base import MethodOptions, Option, Progress, Scores, no_progress, option_values

ORDERS = ("reverse", "normal")
MAX_COPIES = 64  # candidate edges per batched pass at most
MEMORY_BUDGET = 1 << 30  # bytes of the replicated buffers one batched pass may hold (about)
LOGIT_ROWS_BUDGET = 1 << 22  # logits entries (rows x vocabulary) per pass: larger batches leave the cache and run slower


def sender_order(graph, receiver: int, order: str) -> List[int]:
    senders = list(range(graph.n_valid_senders(receiver)))
    return senders[::-1] if order == "reverse" else senders


class SpanLiveness:
    """Positional :class:`Liveness`: the spans at which each receiver's input still reaches ``logits``.

    A node's output at span ``k`` is live when a kept pair carries it into a receiver live at ``k``; a q, MLP or
    logits input at ``k`` is live when its node's output is live at ``k``, a k or v input at ``k`` when its head's
    output is live at some span that reads ``k`` (``order``, as :func:`span_order`).  The logits read the
    ``answers`` spans.  Receivers are visited from the logits back, so a node's pairs out are final when its
    inputs are reached: its live spans are computed then, once."""

    def __init__(self, graph, order: torch.Tensor, answers: torch.Tensor):
        self.node_of = torch.tensor(graph.receiver_node)
        self.kv, self.order = kv_receivers(graph), order.float()
        self.out = torch.zeros(graph.n_senders + 1, order.shape[0], dtype=torch.bool)
        self.out[graph.n_senders] = answers
        self.done = {graph.n_senders}

    def reading(self) -> torch.Tensor:
        """Bool [R, K]: where each receiver's input is live, from the nodes decided so far."""
        live = self.out[self.node_of]
        live[self.kv] = (live[self.kv].float() @ self.order.T) > 0
        return live

    def __call__(self, keep: torch.Tensor, receiver: int) -> torch.Tensor:
        node = int(self.node_of[receiver])
        if node not in self.done:
            self.out[node] = ((keep[node].cpu() != 0) & self.reading()).any(0)
            self.done.add(node)
        return self.reading()[receiver]


class Liveness:
    """Which nodes still have a path to ``logits`` through the current circuit.

    Receivers are visited in reverse topological order, so when a node's inputs are reached its
    outgoing edges are final; its liveness is computed then, once."""

    def __init__(self, graph):
        self.node_of = torch.tensor(graph.receiver_node)
        self.alive: Dict[int, bool] = {graph.n_senders: True}

    def __call__(self, keep: torch.Tensor, receiver: int) -> bool:
        node = int(self.node_of[receiver])
        if node not in self.alive:
            live_receivers = torch.tensor([self.alive.get(int(x), False) for x in self.node_of])
            self.alive[node] = bool(((keep[node].cpu() != 0) & live_receivers).any())
        return self.alive[node]


@dataclass
class _Part:
    part: object
    tokens: torch.Tensor
    resid_pre: List[torch.Tensor]
    outputs: torch.Tensor
    ref: torch.Tensor
    copies: Dict[int, "_Copies"]
    spans: Optional[SpanTable] = None  # positional tests: the part's span table


@dataclass
class _Copies:
    """A part repeated ``c`` times, and the engine's difference buffer for it."""

    tokens: torch.Tensor
    part: object
    buffer: RestartBuffer


KEPT_COPIES = 2  # repeated shapes kept per part at once (a full chunk and the last, shorter one of a receiver)


class BatchedTests:
    """Mean metric of many circuits that differ only in one receiver's keep column, in batched passes.

    The passes restart at the receiver's layer from the clean run.  The senders before that layer
    therefore carry their clean outputs in every pass, and their part of the engine's
    ``current - reference`` buffer is the same in every pass: it is filled once per repeated shape
    and kept (receivers are visited from the last layer back, so a pass only needs rows that an
    earlier pass left alone).  The reference is given once, shared by the copies."""

    def __init__(self, engine, dataset, metric, options: MethodOptions, positional: bool = False):
        self.engine, self.metric, self.n = engine, metric, len(dataset)
        means = static_reference(engine, dataset, options.ablation, batch_size=options.batch_size)
        self.parts: List[_Part] = []
        total = 0.0  # the clean metric, from the clean runs the parts keep
        with torch.no_grad():
            for part in batches(dataset, options.batch_size):
                tokens = part.clean.to(engine.device)
                ref = reference(engine, part, options.ablation, means=means).outputs
                ref = ref.expand(-1, len(part), -1, -1) if ref.shape[1] != len(part) else ref
                spans = span_table(part) if positional else None
                whole = None  # positional: the full circuit still patches the positions in no span (padding)
                if spans is not None and bool((spans.index < 0).any()):
                    everything = torch.ones(ref.shape[0], engine.graph.n_receivers, spans.k, dtype=torch.bool,
                                            device=engine.device)
                    whole = Patch(positional_keep(everything, spans), ref)
                clean = engine.run(tokens, part.answer_pos, collect=True, keep_resid=True, patch=whole)
                total += float(metric(clean.logits, part).double().sum())
                self.parts.append(_Part(part, tokens, clean.resid_pre, clean.outputs, ref, {}, spans))
        self.passes = len(self.parts)  # the clean runs
        self.copies = 0
        self.full = total / self.n

    def max_copies(self) -> int:
        """How many copies of the largest part fit the memory budget (the difference buffer, the layer's buffers)."""
        w, g = self.engine.w, self.engine.graph
        rows = max(p.tokens.numel() for p in self.parts)
        per_copy = rows * w.d_model * w.W_E.element_size() * (g.n_senders + 6 * w.n_heads)
        logits = max(len(p.part) for p in self.parts) * w.W_U.shape[-1]
        return max(1, min(MAX_COPIES, MEMORY_BUDGET // max(per_copy, 1), LOGIT_ROWS_BUDGET // max(logits, 1)))

    def _copies(self, p: _Part, c: int) -> _Copies:
        """The part repeated ``c`` times, with its difference buffer.  Kept for later passes when the
        dataset is one part; with ``--batch-size`` parts, made per pass."""
        entry = p.copies.get(c)
        if entry is None:
            b = len(p.part)
            tokens = p.tokens if c == 1 else p.tokens.repeat(c, 1)
            part = p.part if c == 1 else p.part.subset(list(range(b)) * c)
            entry = _Copies(tokens, part, RestartBuffer(self.engine.graph, p.outputs, p.ref, copies=c))
            if len(self.parts) == 1:
                while len(p.copies) >= KEPT_COPIES:
                    p.copies.pop(next(iter(p.copies)))
                p.copies[c] = entry
        return entry

    def _patch(self, p: _Part, keep: torch.Tensor, receiver: int, columns: torch.Tensor, buffer: torch.Tensor) -> Patch:
        if p.spans is not None:  # positional: [S, R, K] and [c, S, K] by span, to the part's positions
            keep, columns = positional_keep(keep, p.spans), positional_keep(columns, p.spans)
        return Patch(keep, p.ref, column=receiver, column_keep=columns, buffer=buffer)

    def __call__(self, keep: torch.Tensor, receiver: int, columns: torch.Tensor) -> torch.Tensor:
        """Mean metric [c] of the circuits ``keep`` with receiver's column replaced by each row of ``columns``:
        [c, S], or [c, S, K] for a positional ``keep`` [S, R, K] over the dataset's K spans."""
        g = self.engine.graph
        layer = g.receiver_layer(receiver)
        c = columns.shape[0]
        total = torch.zeros(c, dtype=torch.float64)
        with torch.no_grad():
            for p in self.parts:
                b = len(p.part)
                copies = self._copies(p, c)
                resid = p.resid_pre[layer] if c == 1 else p.resid_pre[layer].repeat(c, 1, 1)
                patch = self._patch(p, keep, receiver, columns, copies.buffer.at(layer))
                # layer n_layers (the logits' input): no layer runs, only the unembedding
                run = self.engine.run(copies.tokens, copies.part.answer_pos, patch=patch, start_layer=layer, start_resid=resid)
                total += self.metric(run.logits, copies.part).double().cpu().view(c, b).sum(1)
                self.passes += 1
        self.copies += c
        return total / self.n


@dataclass
class _Search:
    """ACDC's greedy search over one receiver at a time: the keep it edits (``[S, R]``, or ``[S, R, K]`` by span),
    the scores it writes, and its counters.  A candidate is an index into a receiver's keep column: ``(s,)``, or
    ``(s, k)`` for the pair at span ``k``."""

    tests: BatchedTests
    keep: torch.Tensor
    scores: torch.Tensor
    tau: float
    limit: int
    current: float
    n_tests: int = 0
    tested: int = 0
    skipped: int = 0
    complete: bool = True
    guess: bool = True  # the decision the next candidate is assumed to get: the last one made

    def over(self) -> bool:
        if self.limit and self.n_tests >= self.limit:
            self.complete = False
        return not self.complete

    def receiver(self, r: int, cands: List[tuple], cap: int, note: Callable[[], None]) -> None:
        """Test ``cands`` of receiver ``r`` in order, ``cap`` copies per pass at most, each against the current
        circuit; ``note()`` after each pass."""
        i = 0
        while i < len(cands) and not self.over():
            chunk = cands[i:i + min(cap, len(cands) - i, (self.limit - self.n_tests) if self.limit else cap)]
            column = self.keep[:, r]
            columns = column.repeat(len(chunk), *([1] * column.ndim))  # [c, S] or [c, S, K]
            for j, idx in enumerate(chunk):
                columns[(j, *idx)] = 0.0
                if self.guess:
                    columns[(slice(j + 1, None), *idx)] = 0.0
            measured = self.tests(self.keep, r, columns)
            for j, idx in enumerate(chunk):
                at = (idx[0], r, *idx[1:])
                delta = float(measured[j]) - self.current
                self.scores[at] = delta
                self.n_tests += 1
                i += 1
                removed = abs(delta) < self.tau
                if removed:
                    self.keep[at] = 0.0
                    self.current = float(measured[j])
                if removed != self.guess:  # later copies assumed the other decision
                    self.guess = removed
                    break
            note()
        self.tested += 1


class ACDC:
    name = "acdc"
    description = "ACDC (Conmy et al. 2023): remove each edge whose patching moves the metric by less than tau, receivers from the logits back."
    granularity = "edge"
    cost = "one test per edge of a live receiver, many per batched pass restarted at the receiver's layer; --max-tests bounds it"
    default_selection = "acdc"
    options = (
        Option("tau", float, 0.01, "acdc: remove an edge when patching it moves the mean metric by less than TAU.", minimum=0.0),
        Option("acdc_order", str, "reverse", "acdc: senders of a receiver latest first (reverse, as ACDC's code) or "
               "input first (normal).", choices=ORDERS),
        Option("max_tests", int, 0, "acdc: stop after N edge tests (0: no limit); the run is then marked incomplete.", minimum=0),
    )

    def score(self, engine, dataset, metric, options: MethodOptions = MethodOptions(), *,
              progress: Optional[Progress] = None) -> Scores:
        return self._search(engine, dataset, metric, options, progress, positional=False)

    def score_positional(self, engine, dataset, metric, options: MethodOptions = MethodOptions(), *,
                         progress: Optional[Progress] = None) -> Scores:
        """ACDC over (edge, span) pairs (``discover --positions``): ``edge_scores`` [S, R, K] and
        ``extra["kept_mask"]`` bool [S, R, K] over the dataset's K spans (:mod:`circuits.data.spans`)."""
        return self._search(engine, dataset, metric, options, progress, positional=True)

    def _search(self, engine, dataset, metric, options: MethodOptions, progress: Optional[Progress],
                positional: bool) -> Scores:
        own = option_values(self, options.params)
        progress = progress or no_progress
        g = engine.graph
        if positional and engine.w.attn_post_w is not None:
            raise CircuitsError("acdc --positions does not run on models with post-attention norms (OLMo 2, Gemma) yet; "
                                "use another method there")
        tests = BatchedTests(engine, dataset, metric, options, positional=positional)
        keep = g.valid_mask(engine.device).to(engine.w.W_E.dtype)
        info = {}
        if positional:
            spans = span_table(dataset)
            live = SpanLiveness(g, span_order(spans), answer_spans(spans, dataset.answer_pos))
            keep = keep[..., None].repeat(1, 1, spans.k)
            info = {"spans": list(spans.names), "granularity": "positional"}
        else:
            live = Liveness(g)
        search = _Search(tests, keep, torch.zeros(keep.shape, dtype=torch.float64), float(own["tau"]),
                         int(own["max_tests"]), tests.full)
        cap = tests.max_copies()
        receivers = list(range(g.n_receivers - 1, -1, -1))
        for done, r in enumerate(receivers):
            if search.over():
                break
            alive = torch.as_tensor(live(keep, r))
            keep[:, r] *= alive.to(keep.device, keep.dtype)  # pairs no longer reaching the logits: removed untested
            senders = sender_order(g, r, own["acdc_order"])
            cands = [(s,) for s in senders] if alive.ndim == 0 else \
                [(s, k) for s in senders for k in torch.nonzero(alive).flatten().tolist()]
            if not cands or not bool(alive.any()):
                search.skipped += 1
            else:
                search.receiver(r, cands, cap, lambda: progress(done, len(receivers), f"acdc: {search.n_tests} edge tests, "
                                                                   f"{len(receivers) - done} receivers left"))
            progress(done + 1, len(receivers), f"acdc: {search.n_tests} edge tests, {len(receivers) - done - 1} receivers left")
        kept = keep.cpu() > 0
        info.update({"tau": search.tau, "order": own["acdc_order"], "edge_tests": search.n_tests, "passes": tests.passes,
                     "forward_passes": tests.passes, "copies_evaluated": tests.copies, "receivers_tested": search.tested,
                     "receivers_skipped": search.skipped, "complete": search.complete, "max_tests": search.limit,
                     ("pairs_kept_acdc" if positional else "edges_kept_acdc"): int(kept.sum()),
                     "metric_full": tests.full, "metric_final": search.current, "ablation": options.ablation})
        return Scores(graph=g, method=self.name, edge_scores=search.scores, extra={"kept_mask": kept}, info=info)
