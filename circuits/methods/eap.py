"""Edge attribution patching (Syed, Rager & Conmy 2023): one clean forward and backward, one corrupted forward.

Each edge's score is ``(reference[s] - clean[s]) . dM/d input_r``, summed over prompts and
positions, with M the mean metric.  Gradients of every receiver input come from the engine's
trace (q/k/v gradients through the norm's Jacobian), not from per-head copies.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from circuits.data.batching import batches
from circuits.engine.ablation import reference, static_reference
from circuits.methods.attribution import add_edge_scores, add_positional_scores, parse_neuron_layers, score_dtype, top_neurons
from circuits.methods.base import MethodOptions, Progress, Scores, no_progress
from circuits.data.spans import span_table


def integrated_scores(engine, dataset, metric, options: MethodOptions, *, steps: int, progress: Progress, method: str,
                      aggregate: Optional[str] = None, rules=None) -> Scores:
    """Edge (and neuron) attributions with gradients averaged over ``steps`` points on the line from
    the reference input embedding to the clean one (``steps=1``: the clean point only, i.e. EAP).

    ``aggregate`` (``sum``, ``mean``, ``max``): positional scores [S, R, K], per span of the dataset's
    schema (:mod:`circuits.data.spans`; its names in ``info["spans"]``), instead of [S, R].
    ``rules`` (:class:`circuits.engine.rules.BackwardRules`): the backward pass's propagation rules (GIM, RelP)."""
    g = engine.graph
    layers = parse_neuron_layers(options.neurons, engine.w.n_layers)
    spans = None if aggregate is None else span_table(dataset)
    means = static_reference(engine, dataset, options.ablation, hidden_layers=layers, batch_size=options.batch_size)
    shape = (g.n_senders, g.n_receivers) + (() if spans is None else (spans.k,))
    total = torch.zeros(shape, device=engine.device, dtype=score_dtype(engine))
    neuron_totals = {}
    parts = batches(dataset, options.batch_size)
    work, done = len(parts) * steps, 0
    n = len(dataset)
    for part in parts:
        tokens = part.clean.to(engine.device)
        ref = reference(engine, part, options.ablation, means=means, hidden_layers=layers)
        emb_clean, emb_ref = engine.embed(tokens), ref.outputs[0].clone()
        hidden_grads, clean_hidden, delta = {}, {}, None
        for step in range(steps, 0, -1):  # alpha = 1 first: that pass is the clean run, so it also collects
            alpha = step / steps
            resid0 = emb_clean if step == steps else emb_ref + alpha * (emb_clean - emb_ref)
            run = engine.run(tokens, part.answer_pos, trace=True, collect=step == steps,
                             resid0=resid0.detach().requires_grad_(True), capture_hidden=layers, rules=rules)
            if step == steps:  # the delta is known before any gradient: score each layer as it comes
                delta = ref.outputs.sub_(run.outputs)  # reference - clean, in place
                clean_hidden = {k: v.detach() for k, v in (run.hidden or {}).items()}
                run = replace(run, outputs=None)
            (metric(run.logits, part).sum() / n).backward()
            if spans is None:
                add_edge_scores(engine, total, delta, run.trace, part.answer_pos, scale=1.0 / steps)
            else:
                add_positional_scores(engine, total, delta, run.trace, part.answer_pos, span_table(part),
                                      aggregate=aggregate, scale=1.0 / steps)
            for layer, h in (run.hidden or {}).items():
                hidden_grads[layer] = h.grad.detach() if layer not in hidden_grads else hidden_grads[layer].add_(h.grad)
            del run
            done += 1
            progress(done, work, f"{method}: forward and backward passes")
        for layer in layers:
            s = ((ref.hidden[layer] - clean_hidden[layer]) * hidden_grads[layer]).sum((0, 1), dtype=total.dtype) / steps
            neuron_totals[layer] = s if layer not in neuron_totals else neuron_totals[layer] + s
        del delta, hidden_grads, ref
    valid = g.valid_mask(total.device)
    total *= valid if spans is None else valid[..., None]
    info = {"forward_passes": len(parts) * (1 + steps), "backward_passes": len(parts) * steps, "ablation": options.ablation}
    if spans is not None:
        info.update(spans=list(spans.names), aggregate=aggregate)
    if steps > 1:
        info["ig_steps"] = steps
    return Scores(graph=g, method=method, edge_scores=total.detach().cpu(),
                  neuron_scores=top_neurons({k: v.detach().cpu() for k, v in neuron_totals.items()}, options.top_neurons),
                  info=info)


class EAP:
    """Edge attribution patching: scores every edge from one backward pass."""

    name = "eap"
    description = "Edge attribution patching: first-order (gradient) estimate of every edge's patching effect."
    granularity = "edge"
    cost = "one forward+backward, one reference forward"
    options = ()

    def score(self, engine, dataset, metric, options: MethodOptions = MethodOptions(), *,
              progress: Optional[Progress] = None) -> Scores:
        return integrated_scores(engine, dataset, metric, options, steps=1, progress=progress or no_progress, method=self.name)
