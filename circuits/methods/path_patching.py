"""Path patching (Wang et al. 2022; Hanna et al. 2023), as a search driven by receivers.

The path ``sender -> receiver input`` is patched by giving only that receiver input the
sender's reference (corrupted) output: every other path from the sender keeps its clean
value, and everything downstream of the receiver is recomputed.  That is exactly one patched
edge in the engine, run from the receiver's layer on (earlier layers are the clean run's).

The search starts at the logits: it scores every sender's path into them, then recurses
into each sender whose |effect| reaches ``threshold`` x |M(empty) - M(clean)| and scores the
paths into that node's inputs (q, k and v for heads).  Its cost grows with the circuit, not
with the graph; unexplored edges score 0.  ``info["forward_passes"]`` counts the passes.
"""
from __future__ import annotations

import heapq
from typing import List, Optional

import torch

from circuits.ablation import prepare
from circuits.engine import Patch
from circuits.methods.clean_runs import CleanRuns
from circuits.scores import MethodOptions, Progress, Scores, no_progress


class PathPatching:
    name = "path-patching"
    description = "Exact path patching, searched from the logits back through the senders that matter."

    def score(self, engine, dataset, metric, options: MethodOptions = MethodOptions(), *,
              progress: Optional[Progress] = None) -> Scores:
        progress = progress or no_progress
        g = engine.graph
        means = prepare(engine, dataset, options.ablation, batch_size=options.batch_size)
        n = len(dataset)
        batches = CleanRuns(engine, dataset, metric, options.ablation, batch_size=options.batch_size, means=means)
        scores = torch.zeros(g.n_senders, g.n_receivers)
        patched = [0]

        def effect(keep: torch.Tensor, layer: int) -> float:
            total = 0.0
            with torch.no_grad():
                for bt in batches:
                    run = engine.run(bt.tokens, bt.part.answer_pos, patch=Patch(keep, bt.ref), start_layer=layer,
                                     start_resid=bt.clean.resid_pre[layer], start_outputs=bt.clean.outputs)
                    total += float(metric(run.logits, bt.part).sum(dtype=batches.sum_dtype)) - bt.base
                    patched[0] += 1
            return total / n

        full = effect(torch.zeros(g.n_senders, g.n_receivers, device=engine.device), 0)
        bar = abs(full) * options.threshold
        keep = torch.ones(g.n_senders, g.n_receivers, device=engine.device)
        frontier = [-g.n_senders]  # senders as negative indices (max-heap); n_senders stands for the logits
        seen = {g.n_senders}
        explored = 0
        while frontier:
            node = -heapq.heappop(frontier)
            for r in self._inputs(g, node):
                layer = g.receiver_layer(r)
                for s in range(g.n_valid_senders(r)):
                    keep[s, r] = 0.0
                    scores[s, r] = effect(keep, layer)
                    keep[s, r] = 1.0
                    if s > 0 and abs(scores[s, r]) >= bar and s not in seen:
                        seen.add(s)
                        heapq.heappush(frontier, -s)
            explored += 1
            progress(explored, explored + len(frontier), "path patching: receivers")
        return Scores(graph=g, method=self.name, edge_scores=scores,
                      info={"forward_passes": batches.passes + patched[0], "receivers_explored": explored, "full_effect": full,
                            "threshold": options.threshold, "ablation": options.ablation})

    @staticmethod
    def _inputs(g, node: int) -> List[int]:
        """Receiver inputs of a sender index (or of the logits, ``g.n_senders``)."""
        if node == g.n_senders:
            return [g.logits_receiver]
        layer = g.sender_layer(node)
        if node == g.mlp_sender(layer):
            return [g.mlp_receiver(layer)]
        head = node - g.head_sender(layer, 0)
        return [g.head_receiver(layer, head, qkv) for qkv in "qkv"]
