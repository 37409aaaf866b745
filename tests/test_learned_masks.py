"""Real-valued (learned) edge masks in the engine: gradients, and agreement with the boolean path.

The referee for the gradient is the engine's own patched metric under a keep matrix *without*
grad (the existing interpolating path), differenced in float64; the learned path (a keep that
requires grad) must give the same values and a gradient equal to those finite differences.
"""
from __future__ import annotations

import pytest
import torch

from circuits.engine.engine import GraphEngine, Patch
from circuits.models.synthetic import random_llama_weights


@pytest.fixture(scope="module")
def tiny():
    w = random_llama_weights(2, 16, 4, 2, 32, 50, dtype=torch.float64, seed=1, std=0.5)
    engine = GraphEngine(w)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50, (3, 6), generator=g)
    corrupted = torch.randint(0, 50, (3, 6), generator=g)
    pos = torch.tensor([5, 4, 5])
    with torch.no_grad():
        ref = engine.run(corrupted, pos, collect=True).outputs
    keep = torch.rand(engine.graph.n_senders, engine.graph.n_receivers, generator=g, dtype=torch.float64)
    return engine, clean, pos, ref, keep * engine.graph.valid_mask()


def _metric(engine, clean, pos, ref, keep):
    return engine.run(clean, pos, patch=Patch(keep=keep, reference=ref)).logits.log_softmax(-1)[:, 7].sum()


def test_mask_gradient_matches_finite_differences(tiny):
    engine, clean, pos, ref, keep = tiny
    learned = keep.clone().requires_grad_(True)
    value = _metric(engine, clean, pos, ref, learned)
    value.backward()
    with torch.no_grad():
        assert abs(float(value) - float(_metric(engine, clean, pos, ref, keep))) < 1e-12
        edges = engine.graph.edges()
        eps = 1e-6
        checked = 0
        for s, r in edges[:: max(1, len(edges) // 40)]:
            up, down = keep.clone(), keep.clone()
            up[s, r] += eps
            down[s, r] -= eps
            fd = (float(_metric(engine, clean, pos, ref, up)) - float(_metric(engine, clean, pos, ref, down))) / (2 * eps)
            assert abs(fd - float(learned.grad[s, r])) <= 1e-6 * max(1.0, abs(fd)), (engine.graph.edge_name(s, r), fd)
            checked += 1
    assert checked >= 30
    # invalid entries (a sender after its receiver) get no gradient
    assert float(learned.grad[~engine.graph.valid_mask()].abs().max()) == 0.0


def test_zero_one_real_mask_equals_the_boolean_path(tiny):
    engine, clean, pos, ref, _ = tiny
    g = torch.Generator().manual_seed(3)
    for p in (0.05, 0.5, 0.95):
        mask = (torch.rand(engine.graph.n_senders, engine.graph.n_receivers, generator=g) < p) & engine.graph.valid_mask()
        plain = engine.run(clean, pos, patch=Patch(keep=mask.double(), reference=ref)).logits
        learned = engine.run(clean, pos, patch=Patch(keep=mask.double().requires_grad_(True), reference=ref)).logits
        assert float((plain - learned).abs().max()) < 1e-12


def test_gradient_reaches_earlier_layers_through_kept_senders(tiny):
    """A mask on an edge into layer 0 changes what layer 1 reads: its gradient is not only the local product."""
    engine, clean, pos, ref, keep = tiny
    graph = engine.graph
    learned = torch.ones_like(keep).mul(graph.valid_mask()).requires_grad_(True)
    _metric(engine, clean, pos, ref, learned).backward()
    first_layer_heads = learned.grad[0, graph.receiver_block(0).start:graph.receiver_block(0).start + 12]
    assert float(first_layer_heads.abs().max()) > 0


def test_learned_keep_refuses_column_patching(tiny):
    engine, clean, pos, ref, keep = tiny
    patch = Patch(keep=keep.clone().requires_grad_(True), reference=ref, column=3,
                  column_keep=keep[:, 3][None].clone())
    with pytest.raises(ValueError, match="learned keep"):
        engine.run(clean, pos, patch=patch)
