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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from circuits.data.batching import batches

from circuits.engine.ablation import static_reference, reference
from circuits.engine.engine import Patch, RestartBuffer
from circuits.methods.base import MethodOptions, Option, Progress, Scores, no_progress, option_values

ORDERS = ("reverse", "normal")
MAX_COPIES = 64  # candidate edges per batched pass at most
MEMORY_BUDGET = 1 << 30  # bytes of the replicated buffers one batched pass may hold (about)
LOGIT_ROWS_BUDGET = 1 << 22  # logits entries (rows x vocabulary) per pass: larger batches leave the cache and run slower


def sender_order(graph, receiver: int, order: str) -> List[int]:
    senders = list(range(graph.n_valid_senders(receiver)))
    return senders[::-1] if order == "reverse" else senders


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

    def __init__(self, engine, dataset, metric, options: MethodOptions):
        self.engine, self.metric, self.n = engine, metric, len(dataset)
        means = static_reference(engine, dataset, options.ablation, batch_size=options.batch_size)
        self.parts: List[_Part] = []
        total = 0.0  # the clean metric, from the clean runs the parts keep
        with torch.no_grad():
            for part in batches(dataset, options.batch_size):
                tokens = part.clean.to(engine.device)
                clean = engine.run(tokens, part.answer_pos, collect=True, keep_resid=True)
                total += float(metric(clean.logits, part).double().sum())
                ref = reference(engine, part, options.ablation, means=means).outputs
                ref = ref.expand(-1, len(part), -1, -1) if ref.shape[1] != len(part) else ref
                self.parts.append(_Part(part, tokens, clean.resid_pre, clean.outputs, ref, {}))
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

    def __call__(self, keep: torch.Tensor, receiver: int, columns: torch.Tensor) -> torch.Tensor:
        """Mean metric [c] of the circuits ``keep`` with receiver's column replaced by each row of ``columns`` [c, S]."""
        g = self.engine.graph
        layer = g.receiver_layer(receiver)
        c = columns.shape[0]
        total = torch.zeros(c, dtype=torch.float64)
        with torch.no_grad():
            for p in self.parts:
                b = len(p.part)
                copies = self._copies(p, c)
                resid = p.resid_pre[layer] if c == 1 else p.resid_pre[layer].repeat(c, 1, 1)
                patch = Patch(keep, p.ref, column=receiver, column_keep=columns, buffer=copies.buffer.at(layer))
                # layer n_layers (the logits' input): no layer runs, only the unembedding
                run = self.engine.run(copies.tokens, copies.part.answer_pos, patch=patch, start_layer=layer, start_resid=resid)
                total += self.metric(run.logits, copies.part).double().cpu().view(c, b).sum(1)
                self.passes += 1
        self.copies += c
        return total / self.n


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
        own = option_values(self, options.params)
        progress = progress or no_progress
        g = engine.graph
        tests = BatchedTests(engine, dataset, metric, options)
        keep = g.valid_mask(engine.device).to(engine.w.W_E.dtype)
        scores = torch.zeros(g.n_senders, g.n_receivers, dtype=torch.float64)
        live = Liveness(g)
        current = tests.full
        cap = tests.max_copies()
        n_tests, tested, skipped, complete = 0, 0, 0, True
        tau, limit = float(own["tau"]), int(own["max_tests"])
        receivers = list(range(g.n_receivers - 1, -1, -1))
        guess = True  # the decision the next candidate is assumed to get: the last one made
        for done, r in enumerate(receivers):
            if limit and n_tests >= limit:
                complete = False
                break
            if not live(keep, r):
                keep[:, r] = 0
                skipped += 1
                progress(done + 1, len(receivers), f"acdc: {n_tests} edge tests, {len(receivers) - done - 1} receivers left")
                continue
            cands = sender_order(g, r, own["acdc_order"])
            i = 0
            while i < len(cands):
                if limit and n_tests >= limit:
                    complete = False
                    break
                chunk = cands[i:i + min(cap, len(cands) - i, (limit - n_tests) if limit else cap)]
                columns = keep[:, r].repeat(len(chunk), 1)  # [c, S]
                for j, s in enumerate(chunk):
                    columns[j, s] = 0.0
                    if guess:
                        columns[j + 1:, s] = 0.0
                measured = tests(keep, r, columns)
                for j, s in enumerate(chunk):
                    delta = float(measured[j]) - current
                    scores[s, r] = delta
                    n_tests += 1
                    i += 1
                    removed = abs(delta) < tau
                    if removed:
                        keep[s, r] = 0.0
                        current = float(measured[j])
                    if removed != guess:  # later copies assumed the other decision
                        guess = removed
                        break
                progress(done, len(receivers), f"acdc: {n_tests} edge tests, {len(receivers) - done} receivers left")
            tested += 1
            progress(done + 1, len(receivers), f"acdc: {n_tests} edge tests, {len(receivers) - done - 1} receivers left")
        kept = keep.cpu() > 0
        info = {"tau": tau, "order": own["acdc_order"], "edge_tests": n_tests, "passes": tests.passes,
                "forward_passes": tests.passes, "copies_evaluated": tests.copies, "receivers_tested": tested,
                "receivers_skipped": skipped, "complete": complete, "max_tests": limit, "edges_kept_acdc": int(kept.sum()),
                "metric_full": tests.full, "metric_final": current, "ablation": options.ablation}
        return Scores(graph=g, method=self.name, edge_scores=scores, extra={"kept_mask": kept}, info=info)
