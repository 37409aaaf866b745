"""Edge patching: the exact effect of each edge patched alone, the gold standard the estimates are measured against.

An edge ``s -> r`` scores ``M(clean with only s -> r patched) - M(clean)``: the receiver reads the
sender's reference output (corrupted, mean or zero) in place of its clean one, every other edge
stays clean, and everything downstream of ``r`` is recomputed.  Negative: the edge helps.

Cost.  The edges of one receiver are measured together, with ACDC's batched column passes
(:class:`circuits.methods.acdc.BatchedTests`): the batch is repeated once per candidate edge, the
copies differ only in that receiver's keep column, and the pass restarts at the receiver's layer
from the clean run.  A pass of ``c`` copies costs about ``c`` forwards of the layers from the
receiver's on, so an edge costs on average about half a forward.

``sample`` K scores K edges only: a fraction ``sample_top`` of them are the top edges by EAP's
|score| (one forward+backward), the rest a random sample (``sample_seed``) of the others.  The
unscored edges are marked in ``Scores.scored``.
"""
from __future__ import annotations

from typing import Optional

import torch

from circuits.methods.acdc import BatchedTests
from circuits.methods.base import MethodOptions, Option, Progress, Scores, no_progress, option_values


def sample_edges(valid: torch.Tensor, estimate: Optional[torch.Tensor], k: int, top_fraction: float, seed: int) -> torch.Tensor:
    """bool [S, R]: ``k`` of the ``valid`` edges, the ``round(k * top_fraction)`` largest ``|estimate|`` and a
    seeded uniform sample of the rest (all valid edges when ``k`` is 0 or covers them)."""
    flat = valid.reshape(-1)
    idx = flat.nonzero().squeeze(1)
    if k <= 0 or k >= idx.numel():
        return valid.clone()
    n_top = min(k, int(round(k * top_fraction))) if estimate is not None else 0
    chosen = torch.zeros_like(flat)
    if n_top:
        order = estimate.reshape(-1)[idx].abs().argsort(descending=True, stable=True)
        chosen[idx[order[:n_top]]] = True
    rest = idx[~chosen[idx]]
    gen = torch.Generator().manual_seed(seed)
    chosen[rest[torch.randperm(rest.numel(), generator=gen)[: k - n_top]]] = True
    return chosen.view_as(valid)


class EdgePatching:
    name = "edge-patching"
    description = "The exact effect of each edge patched alone (everything else clean, downstream recomputed): the gold standard."
    granularity = "edge"
    cost = "about half a forward per edge (batched passes restarted at each receiver's layer); --sample K bounds it"
    options = (
        Option("sample", int, 0, "edge-patching: score K edges only (0: every edge): EAP's top edges and a random sample.",
               minimum=0),
        Option("sample_top", float, 0.5, "edge-patching: the fraction of --sample taken from EAP's top edges by |score|.",
               minimum=0.0, maximum=1.0),
        Option("sample_seed", int, 0, "edge-patching: the seed of --sample's random edges."),
    )

    def score(self, engine, dataset, metric, options: MethodOptions = MethodOptions(), *,
              progress: Optional[Progress] = None) -> Scores:
        own = option_values(self, options.params)
        progress = progress or no_progress
        g = engine.graph
        valid = g.valid_mask().bool()
        k = int(own["sample"])
        estimate, estimate_passes = None, 0
        if 0 < k < int(valid.sum()) and own["sample_top"] > 0:
            from circuits.methods.eap import EAP

            shared = MethodOptions(ablation=options.ablation, batch_size=options.batch_size)
            eap = EAP().score(engine, dataset, metric, shared)
            estimate, estimate_passes = eap.edge_scores, int(eap.info["forward_passes"])
        chosen = sample_edges(valid, estimate, k, float(own["sample_top"]), int(own["sample_seed"]))
        tests = BatchedTests(engine, dataset, metric, options)
        keep = g.valid_mask(engine.device).to(engine.w.W_E.dtype)
        scores = torch.zeros(g.n_senders, g.n_receivers, dtype=torch.float64)
        cap = tests.max_copies()
        total, done = int(chosen.sum()), 0
        for r in range(g.n_receivers - 1, -1, -1):  # from the logits back: the restart buffer fills each row once
            senders = chosen[:, r].nonzero().squeeze(1).tolist()
            for i in range(0, len(senders), cap):
                chunk = senders[i:i + cap]
                columns = keep[:, r].repeat(len(chunk), 1)  # [c, S]
                columns[torch.arange(len(chunk)), torch.tensor(chunk)] = 0.0
                measured = tests(keep, r, columns)
                for j, s in enumerate(chunk):
                    scores[s, r] = float(measured[j]) - tests.full
                done += len(chunk)
                progress(done, total, f"edge-patching: {done} of {total} edges")
        info = {"edges_scored": total, "sample": k, "sample_top": float(own["sample_top"]), "sample_seed": int(own["sample_seed"]),
                "passes": tests.passes, "forward_passes": tests.passes + estimate_passes,
                "copies_evaluated": tests.copies, "metric_full": tests.full, "ablation": options.ablation}
        full = bool(chosen.sum() == valid.sum())
        return Scores(graph=g, method=self.name, edge_scores=scores, info=info, scored=None if full else chosen)
