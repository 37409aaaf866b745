"""The planted positional model: its circuit is positional by construction.

``planted-positional`` is planted's two paths plus a decoy: a group of m1's neurons that reads a0.h0's
output at YY's position (where it carries YY too) and writes where nothing reads.  So the plain edge
``a0.h0->m1`` carries both the circuit's read (at the final century) and the decoy's (at YY); only a
positional circuit can keep the first without the second.
"""
from __future__ import annotations

import pytest
import torch

from circuits.models.planted import ground_truth

pytestmark = pytest.mark.slow  # builds a planted model (about a minute on a busy 2-core machine)

VARIANT = "planted-positional"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    import os

    from circuits.engine.engine import GraphEngine
    from circuits.models import load_model
    from circuits.registry import get_task

    os.environ.setdefault("CIRCUITS_CACHE", str(tmp_path_factory.mktemp("cache")))
    lm = load_model(VARIANT)
    engine = GraphEngine.from_model(lm)
    task = get_task("greater-than")
    return engine, task, task.build(lm.tokenizer, n=24, seed=0)


def _pairs(scores, kept, spans):
    from circuits.circuit.positions import kept_pairs

    return {(e, s) for e, s, _ in kept_pairs(scores, kept, spans)}


def test_eap_ig_by_span_recovers_the_reference_exactly(planted):
    from circuits.graphs.compare import compare
    from circuits.graphs.files import load_circuit
    from circuits.graphs.positions import build_positional_graph
    from circuits.methods.eap import integrated_scores
    from circuits.circuit.positions import answer_spans, span_order, top_k_pairs
    from circuits.methods.base import MethodOptions
    from circuits.data.spans import span_table
    from pathlib import Path

    engine, task, data = planted
    spans = span_table(data)
    scores = integrated_scores(engine, data, task.metric, MethodOptions(batch_size=8), steps=5, progress=lambda *a: None,
                               method="eap-ig", aggregate="sum")
    reference = {tuple(p) for p in ground_truth(VARIANT)["pairs"]}
    kept = top_k_pairs(scores, len(reference), order=span_order(spans), answers=answer_spans(spans, data.answer_pos))
    found = _pairs(scores, kept, spans.names)
    assert found == reference
    ref_graph = load_circuit(Path(__file__).resolve().parents[1] / "graphs" / "references" / f"{VARIANT}.json")
    stats = compare(build_positional_graph([(e, s, 1.0) for e, s in found], spans.names), ref_graph)
    assert stats["edges"]["precision"] == 1.0 and stats["edges"]["recall"] == 1.0
    # every pair outside the reference scores (numerically) nothing, the decoy's a0.h0->m1 at YY included
    g = engine.graph
    s, r = g.edge_index("a0.h0->m1")
    yy, last = spans.names.index("YY"), spans.names.index("XX2")
    assert abs(float(scores.edge_scores[s, r, last])) > 0.5
    assert abs(float(scores.edge_scores[s, r, yy])) < 1e-6


def test_the_plain_circuit_cannot_separate_the_decoy(planted):
    from circuits.engine.engine import Patch
    from circuits.circuit.positions import PositionalEvaluator
    from circuits.registry import get_method
    from circuits.methods.base import MethodOptions
    from circuits.circuit.select import top_k
    from circuits.data.spans import span_table

    engine, task, data = planted
    g = engine.graph
    spans = span_table(data)
    # the decoy is real: m1 reads a0.h0 at YY, and its neurons there follow YY
    clean = engine.run(data.clean, data.answer_pos, capture_hidden=(1,)).hidden[1]
    corrupted = engine.run(data.corrupted, data.answer_pos, capture_hidden=(1,)).hidden[1]
    pos = int(data.info["yy_pos"])
    assert float((clean[:, pos] - corrupted[:, pos]).abs().max()) > 1.0
    ref = engine.run(data.corrupted, data.answer_pos, collect=True).outputs
    keep = torch.ones(g.n_senders, g.n_receivers, data.clean.shape[1])
    keep[(*g.edge_index("a0.h0->m1"), pos)] = 0  # the decoy's read alone
    patched = engine.run(data.clean, data.answer_pos, patch=Patch(keep=keep, reference=ref), capture_hidden=(1,))
    assert float((patched.hidden[1][:, pos] - clean[:, pos]).abs().max()) > 1.0  # it moves m1's decoy neurons...
    full = engine.run(data.clean, data.answer_pos).logits
    # ...and nothing the model outputs (logits reach +-120 in float32, so compare to 1e-5 of that, and the metric)
    assert float((patched.logits - full).abs().max()) < 1e-5 * float(full.abs().max())
    assert float((task.metric(patched.logits, data) - task.metric(full, data)).abs().max()) < 1e-5
    # the plain circuit finds the five edges, but an edge is all its positions: a0.h0->m1 keeps the decoy's read
    plain = top_k(get_method("eap-ig").score(engine, data, task.metric, MethodOptions()), 5)
    kept_edges = {g.edge_name(s, r) for s, r in torch.nonzero(plain.keep_mask).tolist()}
    assert kept_edges == set(ground_truth(VARIANT)["edges"])
    lifted = plain.keep_mask.bool()[..., None].expand(-1, -1, spans.k)
    reference = {tuple(p) for p in ground_truth(VARIANT)["pairs"]}
    lifted_pairs = _pairs(type("S", (), {"graph": g, "edge_scores": torch.zeros(lifted.shape)})(), lifted, spans.names)
    assert ("a0.h0->m1", "YY") in lifted_pairs and reference < lifted_pairs
    assert len(reference) / len(lifted_pairs) < 1.0  # span precision of the plain circuit
    # both are faithful; the positional one with 5 pairs of the plain one's 35
    ev = PositionalEvaluator(engine, data, task.metric)
    only = torch.zeros_like(lifted)
    for e, s in reference:
        only[(*g.edge_index(e), spans.names.index(s))] = True
    assert ev.faithfulness(only).f > 0.99 and ev.faithfulness(lifted).f > 0.99


def test_activation_patching_by_span_recovers_the_reference_nodes(planted):
    from circuits.circuit.positions import (PositionalEvaluator, answer_spans, kept_pairs, node_span_scores, pairs_of_nodes,
                                    span_order)
    from circuits.methods.base import MethodOptions
    from circuits.data.spans import span_table

    engine, task, data = planted
    g = engine.graph
    spans = span_table(data)
    ev = PositionalEvaluator(engine, data, task.metric, batch_size=12)
    scores = node_span_scores(engine, data, task.metric, MethodOptions(batch_size=12), evaluator=ev)
    table = scores.info["node_span_scores"]
    pairs = {tuple(p) for p in ground_truth(VARIANT)["pairs"]}
    want = {(e.split("->")[0], s) for e, s in pairs} - {("input", "YY")}  # the senders' node-spans
    order = torch.argsort(table[1:].abs().reshape(-1), descending=True)  # every node-span but input's
    top = {(g.sender_names[1 + int(i) // spans.k], spans.names[int(i) % spans.k]) for i in order[:len(want)]}
    assert top == want  # span precision and recall 1.0 over node-spans
    rest = table[1:].abs().reshape(-1)[order[len(want):]]
    assert float(rest.max()) < 1e-4 < float(table[1:].abs().max())
    nodes = torch.zeros_like(table, dtype=torch.bool)
    for n, s in want:
        nodes[g.sender_names.index(n), spans.names.index(s)] = True
    kept = pairs_of_nodes(nodes, g, span_order(spans), answer_spans(spans, data.answer_pos))
    found = {(e, s) for e, s, _ in kept_pairs(scores, kept, spans.names)}
    assert pairs <= found and ev.faithfulness(kept).f > 0.99


def test_acdc_by_span_recovers_the_reference_exactly(planted):
    """Positional ACDC at its default tau (0.01): its own kept pairs are the reference, span precision and recall 1.0."""
    from pathlib import Path

    from circuits.circuit.positions import answer_spans, own_positional, span_order
    from circuits.data.spans import span_table
    from circuits.graphs.compare import compare
    from circuits.graphs.files import load_circuit
    from circuits.graphs.positions import build_positional_graph
    from circuits.methods.base import MethodOptions
    from circuits.registry import get_method

    engine, task, data = planted
    spans = span_table(data)
    scores = get_method("acdc").score_positional(engine, data, task.metric, MethodOptions(batch_size=12))
    kept, _ = own_positional(scores, span_order(spans), answer_spans(spans, data.answer_pos))
    reference = {tuple(p) for p in ground_truth(VARIANT)["pairs"]}
    found = _pairs(scores, kept, spans.names)
    assert found == reference
    ref_graph = load_circuit(Path(__file__).resolve().parents[1] / "graphs" / "references" / f"{VARIANT}.json")
    stats = compare(build_positional_graph([(e, s, 1.0) for e, s in found], spans.names), ref_graph)
    assert stats["edges"]["precision"] == 1.0 and stats["edges"]["recall"] == 1.0
    assert scores.info["complete"] is True and scores.info["passes"] < scores.info["edge_tests"]
    # the decoy's read (a0.h0->m1 at YY) feeds m1 where nothing reads it: removed without a test
    s, r = engine.graph.edge_index("a0.h0->m1")
    yy = spans.names.index("YY")
    assert not bool(scores.extra["kept_mask"][s, r, yy]) and float(scores.edge_scores[s, r, yy]) == 0.0
