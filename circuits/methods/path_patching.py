"""Path patching (Wang et al. 2022; Hanna et al. 2023), as a search driven by receivers.

The path ``sender -> receiver input`` is patched by giving only that receiver input the
sender's reference (corrupted) output: every other path from the sender keeps its clean
value, and everything downstream of the receiver is recomputed.  That is exactly one patched
edge in the engine, run from the receiver's layer on (earlier layers are the clean run's).

The search starts at the logits: it scores every sender's path into them, then recurses
into each sender whose |effect| reaches ``threshold`` x |M(empty) - M(clean)| and scores the
paths into that node's inputs (q, k and v for heads).  The waiting node with the largest
|effect| (of any edge from it found so far) is explored first.  Its cost grows with the
circuit, not with the graph; unexplored edges score 0.

The budget ``max_passes`` counts patched passes over every prompt (the full effect's
included).  A search that reaches it stops and returns the edges scored so far, with
``info["complete"] = False``; ``info["passes_used"]`` and ``info["max_passes"]`` give the
budget, ``info["forward_passes"]`` every forward pass made (per batch, the clean and reference
runs included).
"""
from __future__ import annotations

import heapq
import math
from typing import List, Optional

import torch

from circuits.engine.ablation import static_reference
from circuits.engine.engine import Patch
from circuits.methods.clean_runs import CleanRuns
from circuits.methods.base import MethodOptions, Option, Progress, Scores, no_progress, option_values

DEFAULT_MAX_PASSES = 800  # about 20 min for SmolLM2-135M, greater-than n = 50, on a 2-core CPU


class PathPatching:
    name = "path-patching"
    description = "Exact path patching, searched from the logits back through the senders that matter."
    granularity = "edge"
    cost = "one partial forward per edge explored, at most --max-passes"
    options = (
        Option("max_passes", int, DEFAULT_MAX_PASSES, "path-patching: budget of patched forward passes; a search that "
               "runs out returns the edges found so far.", minimum=1),
        Option("path_threshold", float, 0.02, "path-patching: explore a sender's inputs when its edge moves the metric "
               "by at least this fraction of the full effect.", minimum=0.0),
    )

    def score(self, engine, dataset, metric, options: MethodOptions = MethodOptions(), *,
              progress: Optional[Progress] = None) -> Scores:
        progress = progress or no_progress
        own = option_values(self, options.params)
        g = engine.graph
        means = static_reference(engine, dataset, options.ablation, batch_size=options.batch_size)
        n = len(dataset)
        batches = CleanRuns(engine, dataset, metric, options.ablation, batch_size=options.batch_size, means=means)
        passes = 0  # patched passes; the clean and reference runs are counted by ``batches``
        scores = torch.zeros(g.n_senders, g.n_receivers)

        def effect(keep: torch.Tensor, layer: int) -> float:
            total = 0.0
            with torch.no_grad():
                for bt in batches:
                    patch = Patch(keep, bt.ref, buffer=bt.buffer.at(layer))
                    run = engine.run(bt.tokens, bt.part.answer_pos, patch=patch, start_layer=layer,
                                     start_resid=bt.clean.resid_pre[layer], start_outputs=bt.clean.outputs)
                    total += float(metric(run.logits, bt.part).sum(dtype=batches.sum_dtype)) - bt.base
            return total / n

        budget = max(1, int(own["max_passes"]))
        used = 0  # patched passes over every prompt, the budget's unit

        def counted(keep: torch.Tensor, layer: int) -> float:
            nonlocal used, passes
            used += 1
            passes += len(batches)
            progress(min(used, budget), budget, "path patching: passes")
            return effect(keep, layer)

        full = counted(torch.zeros(g.n_senders, g.n_receivers, device=engine.device), 0)
        bar = abs(full) * own["path_threshold"]
        keep = torch.ones(g.n_senders, g.n_receivers, device=engine.device)
        # most promising first: a node waits with the largest |effect| of an edge from it found so far
        best = {g.n_senders: math.inf}  # n_senders stands for the logits
        frontier = [(-math.inf, -g.n_senders)]
        done: set = set()
        stopped = False
        while frontier and not stopped:
            _, node = heapq.heappop(frontier)
            node = -node
            if node in done:
                continue  # a stale entry: the node was queued again with a larger priority
            done.add(node)
            for r in self._inputs(g, node):
                layer = g.receiver_layer(r)
                for s in range(g.n_valid_senders(r)):
                    if used >= budget:
                        stopped = True
                        break
                    keep[s, r] = 0.0
                    scores[s, r] = counted(keep, layer)
                    keep[s, r] = 1.0
                    size = abs(float(scores[s, r]))
                    if s > 0 and size >= bar and s not in done and size > best.get(s, -1.0):
                        best[s] = size
                        heapq.heappush(frontier, (-size, -s))
                if stopped:
                    break
        waiting = {-s for _, s in frontier} - done
        complete = not stopped and not waiting
        return Scores(graph=g, method=self.name, edge_scores=scores,
                      info={"forward_passes": passes + batches.passes, "receivers_explored": len(done), "full_effect": full,
                            "threshold": own["path_threshold"], "ablation": options.ablation, "complete": complete,
                            "passes_used": used, "max_passes": budget, "nodes_waiting": len(waiting)})

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
