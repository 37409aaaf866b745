"""ACDC's bench rows: ours (the engine, batched) and a naive ACDC (one full forward with hooks per edge test).

The naive one does what ACDC's reference code does for every edge test: a full forward pass of the
TransformerLens model with the per-head flags on, sender hooks that record every head's and MLP's
output, and receiver hooks that rebuild each receiver input from the corrupted run plus the
present edges.  It makes the same tests in the same order with the same decisions (it uses the
library's receiver order, sender order and liveness rule), so its effects can be compared to ours.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List

import torch

from bench_work import sender_hooks
from circuits.methods.acdc import Liveness, sender_order


def _senders(store: Dict[str, torch.Tensor], n_layers: int, with_heads_of: int = -1) -> torch.Tensor:
    """Sender outputs [S', b, p, d] recorded so far: input, then each layer's heads and MLP (the heads of
    ``with_heads_of`` too, without its MLP)."""
    outs = [store["hook_embed"] + store["hook_pos_embed"]]
    for layer in range(n_layers):
        outs += list(store[f"blocks.{layer}.attn.hook_result"].permute(2, 0, 1, 3))
        outs.append(store[f"blocks.{layer}.hook_mlp_out"])
    if with_heads_of >= 0:
        outs += list(store[f"blocks.{with_heads_of}.attn.hook_result"].permute(2, 0, 1, 3))
    return torch.stack(outs)


def naive_acdc(bridge, data, metric, graph, *, tau: float, budget: int, order: str = "reverse") -> Dict[str, Any]:
    """ACDC with one hooked full forward per edge test; stops after ``budget`` tests."""
    L, H = graph.n_layers, graph.n_heads
    pos = data.answer_pos
    corrupted: Dict[str, torch.Tensor] = {}
    with torch.no_grad():
        bridge.run_with_hooks(data.corrupted, fwd_hooks=sender_hooks(L, corrupted))
    corr = _senders(corrupted, L)
    keep = graph.valid_mask().to(corr.dtype)

    def mean_metric(keep: torch.Tensor) -> float:
        current: Dict[str, torch.Tensor] = {}

        def receiver(layer: int, kind: str):
            def hook(t, hook):
                if kind == "logits":
                    cols, n_in = [graph.logits_receiver], graph.n_senders
                    now = _senders(current, L)
                elif kind == "mlp":
                    cols, n_in = [graph.mlp_receiver(layer)], graph.senders_before_mlp(layer)
                    now = _senders(current, layer, with_heads_of=layer)
                else:
                    cols, n_in = [graph.head_receiver(layer, h, kind) for h in range(H)], graph.senders_before_heads(layer)
                    now = _senders(current, layer)
                drop = 1.0 - keep[:n_in, cols]
                if not bool(drop.any()):
                    return t
                delta = corr[:n_in] - now
                if kind in ("mlp", "logits"):
                    return t + torch.einsum("sbpd,s->bpd", delta, drop[:, 0])
                return t + torch.einsum("sbpd,sh->bphd", delta, drop)
            return hook

        hooks = sender_hooks(L, current)
        for layer in range(L):
            hooks += [(f"blocks.{layer}.hook_{x}_input", receiver(layer, x)) for x in "qkv"]
            hooks.append((f"blocks.{layer}.hook_mlp_in", receiver(layer, "mlp")))
        hooks.append(("ln_final.hook_in", receiver(L, "logits")))
        with torch.no_grad():
            logits = bridge.run_with_hooks(data.clean, fwd_hooks=hooks)
            answer = logits[torch.arange(logits.shape[0]), pos]
            return float(metric(answer, data).double().mean())

    current = mean_metric(keep)
    live = Liveness(graph)
    effects: Dict[tuple, float] = {}
    tests = 0
    for r in range(graph.n_receivers - 1, -1, -1):
        if tests >= budget:
            break
        if not live(keep, r):
            keep[:, r] = 0
            continue
        for s in sender_order(graph, r, order):
            if tests >= budget:
                break
            trial = keep.clone()
            trial[s, r] = 0
            value = mean_metric(trial)
            tests += 1
            effects[(s, r)] = value - current
            if abs(value - current) < tau:
                keep, current = trial, value
    return {"edge_tests": tests, "effects": effects, "kept": keep > 0}


def sweep_tests(graph) -> Dict[int, int]:
    """Edge tests per receiver layer of a full ACDC sweep in which every receiver stays alive (the most
    tests ACDC can make: one per edge): a layer's heads and MLP test every earlier sender."""
    out = {layer: 0 for layer in range(graph.n_layers + 1)}
    for r in range(graph.n_receivers):
        out[graph.receiver_layer(r)] += graph.n_valid_senders(r)
    return out


def layer_costs(engine, data, metric, options, layers: List[int]) -> Dict[int, float]:
    """Seconds per edge test of our batched passes for a receiver of each layer in ``layers``
    (full batches of candidates; layer 0 restarts at the input, i.e. a full forward per copy)."""
    from circuits.methods.acdc import BatchedTests

    g = engine.graph
    tests = BatchedTests(engine, data, metric, options)
    keep = g.valid_mask(engine.device).to(engine.w.W_E.dtype)
    out = {}
    for layer in layers:
        r = g.logits_receiver if layer == g.n_layers else g.head_receiver(layer, 0, "q")
        c = min(tests.max_copies(), g.n_valid_senders(r))
        columns = keep[:, r].repeat(c, 1)
        for j in range(c):
            columns[j, j] = 0.0
        tests(keep, r, columns)  # warm (builds the repeated buffers)
        t0 = time.perf_counter()
        tests(keep, r, columns)
        out[layer] = (time.perf_counter() - t0) / c
    return out
