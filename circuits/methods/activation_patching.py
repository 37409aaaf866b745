"""Activation patching: the exact effect of replacing one component's output with its reference value.

Scored, each with a forward pass that restarts at the component's layer from the clean run:

- ``input`` (the embeddings take their reference value: a full forward pass);
- every head and MLP (node scores; all of a node's outgoing edges patched at once, which is the
  same as shifting the residual stream by the node's reference - clean output where it enters);
- the residual stream at each layer's input, per position (``extra["resid"]``, [L + 1, p]); its
  reference is the sum of the reference outputs (the corrupted run's residual stream, or the
  dataset's mean one, whatever the batch size);
- the neurons of the MLPs named in ``options.neurons`` (several neurons per batched pass).

A score is ``mean M(patched) - mean M(clean)``.  Activation patching scores nodes, not
edges (``granularity = "node"``): its circuits are chosen by node, and ``edge_scores`` gives
each edge its sender's node score only so that edge tables still read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from circuits.data.batching import batches

from circuits.engine.ablation import static_reference, reference
from circuits.data.dataset import repeat_positions
from circuits.methods.attribution import parse_neuron_layers, top_neurons
from circuits.methods.base import MethodOptions, Progress, Scores, no_progress

NEURON_BATCH = 16


@dataclass(frozen=True)
class _Totals:
    """Running score totals, on the model's device and in its dtype: per sender [S], per MLP's neurons [m]."""

    nodes: torch.Tensor
    neurons: Dict[int, torch.Tensor]

    @classmethod
    def zeros(cls, engine, layers) -> "_Totals":
        kind = dict(device=engine.device, dtype=engine.w.W_E.dtype)
        return cls(torch.zeros(engine.graph.n_senders, **kind), {layer: torch.zeros(engine.w.d_mlp, **kind) for layer in layers})


class ActivationPatching:
    name = "activation-patching"
    description = "Exact node scores: patch each head, MLP, residual position and chosen neuron one at a time."
    granularity = "node"
    cost = "one partial forward per node and residual position, --neurons in batches of 16"

    def score(self, engine, dataset, metric, options: MethodOptions = MethodOptions(), *,
              progress: Optional[Progress] = None) -> Scores:
        progress = progress or no_progress
        g, w = engine.graph, engine.w
        layers = parse_neuron_layers(options.neurons, w.n_layers)
        means = static_reference(engine, dataset, options.ablation, hidden_layers=layers, batch_size=options.batch_size)
        n = len(dataset)
        parts = batches(dataset, options.batch_size)
        totals = _Totals.zeros(engine, layers)
        resid_total = None
        passes = 0
        for i, part in enumerate(parts):
            tokens = part.clean.to(engine.device)
            ref = reference(engine, part, options.ablation, means=means, hidden_layers=layers)
            with torch.no_grad():
                clean = engine.run(tokens, part.answer_pos, collect=True, keep_resid=True, capture_hidden=layers)
                ref_resid = self._reference_resid(engine, ref.outputs, options.ablation, clean)
                base = metric(clean.logits, part).sum()
                weight = 1.0 / n

                def effect(run) -> torch.Tensor:
                    return (metric(run.logits, part).sum() - base) * weight

                # input (the embeddings), heads and MLPs
                totals.nodes[0] += effect(engine.run(tokens, part.answer_pos, resid0=ref.outputs[0]))
                for s in range(1, g.n_senders):
                    totals.nodes[s] += effect(self._patch_node(engine, tokens, part, clean, ref.outputs, s))
                    passes += 1
                    progress(i * g.n_senders + s, len(parts) * g.n_senders, "activation patching: nodes")
                passes += 1
                # residual stream per layer input and position
                p = tokens.shape[1]
                table = torch.zeros(w.n_layers + 1, p, dtype=torch.float64)
                for layer in range(w.n_layers + 1):
                    for pos in range(p):
                        table[layer, pos] = float(effect(self._patch_resid(engine, tokens, part, clean, ref_resid, layer, pos)))
                        passes += 1
                resid_total = table if resid_total is None else resid_total + table
                # neurons, several per pass (each copy of the batch patches one neuron)
                for layer in layers:
                    for start in range(0, w.d_mlp, NEURON_BATCH):
                        idx = torch.arange(start, min(start + NEURON_BATCH, w.d_mlp), device=engine.device)
                        totals.neurons[layer][idx] += self._neuron_effects(
                            engine, part, metric, clean, ref.hidden[layer], layer, idx, base / len(part)) * (len(part) / n)
                        passes += 1
                    progress(i + 1, len(parts), f"activation patching: neurons of m{layer}")
        node_total = totals.nodes.detach().cpu().double()
        node_scores = {g.sender_names[s]: float(node_total[s]) for s in range(g.n_senders)}
        edge = node_total[:, None].expand(-1, g.n_receivers).clone() * g.valid_mask()
        return Scores(
            graph=g, method=self.name, edge_scores=edge, node_scores=node_scores,
            neuron_scores=top_neurons({k: v.detach().cpu() for k, v in totals.neurons.items()}, options.top_neurons),
            extra={"resid": resid_total.tolist(), "resid_rows": [f"resid_pre {l}" for l in range(w.n_layers)] + ["resid_final"]},
            info={"forward_passes": passes, "ablation": options.ablation},
        )

    @staticmethod
    def _patch_node(engine, tokens, part, clean, reference, s: int):
        """Sender ``s``'s output takes its reference value, which moves the residual stream by the
        difference from where that output enters it: after the attention of a head's layer (its
        MLP and everything later read it), or at the next layer's input for an MLP."""
        g = engine.graph
        layer = g.sender_layer(s)
        shift = engine.node_shift(s, clean.outputs, reference)
        if s == g.mlp_sender(layer):
            return engine.run(tokens, part.answer_pos, start_layer=layer + 1, start_resid=clean.resid_pre[layer + 1] + shift)
        return engine.run(tokens, part.answer_pos, start_layer=layer, start_resid=clean.resid_pre[layer],
                          edit_mid=lambda l, resid: resid + shift if l == layer else resid)

    @staticmethod
    def _reference_resid(engine, ref_outputs: torch.Tensor, ablation: str, clean) -> List[torch.Tensor]:
        """The residual streams [b, p, d] at each layer's input (and the final one) that residual-position
        patches take: zeros for ``zero``; otherwise the reference outputs ``ref_outputs`` [S, b, p, d] summed
        with the attention biases, which is the corrupted run's own residual stream, or the dataset's mean
        one (per position, or over positions), the same whatever the batch size."""
        w = engine.w
        if ablation == "zero":
            return [torch.zeros_like(r) for r in clean.resid_pre]
        return [engine.residual_from(ref_outputs, layer) for layer in range(w.n_layers + 1)]

    @staticmethod
    def _patch_resid(engine, tokens, part, clean, ref_resid, layer: int, pos: int):
        resid = clean.resid_pre[layer].clone()
        resid[:, pos] = ref_resid[layer][:, pos]
        return engine.run(tokens, part.answer_pos, start_layer=layer, start_resid=resid)

    @staticmethod
    def _neuron_effects(engine, part, metric, clean, ref_hidden, layer: int, idx: torch.Tensor, base_mean):
        """Mean metric change when each neuron in ``idx`` alone takes its reference value: [len(idx)]."""
        k, b = len(idx), len(part)
        tokens = part.clean.to(engine.device).repeat(k, 1)
        answer = repeat_positions(part.answer_pos, k)
        cols = idx.repeat_interleave(b)
        ref_vals = ref_hidden[:, :, idx].permute(2, 0, 1).reshape(k * b, -1)  # [k*b, p]

        def edit(l: int, hidden: torch.Tensor) -> torch.Tensor:
            if l != layer:
                return hidden
            hidden = hidden.clone()
            hidden[torch.arange(k * b), :, cols] = ref_vals
            return hidden

        run = engine.run(tokens, answer, start_layer=layer, start_resid=clean.resid_pre[layer].repeat(k, 1, 1), edit_hidden=edit)
        expanded = part.subset(list(range(b)) * k) if k > 1 else part
        values = metric(run.logits, expanded).view(k, b)
        return values.mean(1) - base_mean
