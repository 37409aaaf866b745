"""circuits.circuit.select: pruning, ranking, top-k, threshold and the target-faithfulness search."""
from __future__ import annotations

import math
from types import SimpleNamespace

import networkx as nx
import pytest
import torch

from circuits import names
from circuits.errors import CircuitsError
from circuits.engine.graph import ComputationalGraph
from circuits.methods.base import Scores
from circuits.circuit.select import (
    prune, ranked_edges, search_smallest_k, target_faithfulness, threshold, top_k, top_k_mask,
)

G = ComputationalGraph(n_layers=2, n_heads=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def mask_of(*edge_names: str, graph: ComputationalGraph = G) -> torch.Tensor:
    keep = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.bool)
    for name in edge_names:
        keep[graph.edge_index(name)] = True
    return keep


def kept(mask: torch.Tensor, graph: ComputationalGraph = G) -> set:
    return {graph.edge_name(s, r) for s, r in graph.edges() if mask[s, r]}


def scores_of(values, graph: ComputationalGraph = G) -> Scores:
    return Scores(graph=graph, method="test", edge_scores=torch.as_tensor(values, dtype=torch.float32))


# ---------------------------------------------------------------- prune
def test_prune_keeps_a_path_and_drops_dangling_edges():
    path = {"input->a0.h0<q>", "a0.h0->logits"}
    dangling = {"input->a0.h1<v>",  # a0.h1 sends nowhere
                "a1.h0->logits",  # nothing reaches a1.h0
                "a0.h1->m1"}  # a0.h1 is unreachable, and m1 reaches nothing
    assert kept(prune(mask_of(*path, *dangling), G)) == path


def test_prune_one_input_of_a_head_makes_it_reachable():
    circuit = {"input->a0.h0<k>", "a0.h0->m0", "m0->a1.h1<v>", "a1.h1->logits"}
    assert kept(prune(mask_of(*circuit), G)) == circuit
    # the head's other outgoing edges count too, once it is reached
    extra = {"a0.h0->a1.h0<q>", "a1.h0->logits"}
    assert kept(prune(mask_of(*circuit, *extra), G)) == circuit | extra


def test_prune_edge_cases():
    valid = G.valid_mask()
    assert torch.equal(prune(valid, G), valid)
    assert not prune(torch.zeros_like(valid), G).any()
    junk = mask_of("input->logits") | ~valid  # entries outside the graph are ignored
    assert kept(prune(junk.float(), G)) == {"input->logits"}
    assert prune(junk, G).dtype == torch.bool


def _reference_prune(mask: torch.Tensor, graph: ComputationalGraph) -> set:
    """Prune with networkx: an edge stays when input reaches its sender and its receiver's node reaches logits."""
    D = nx.DiGraph()
    D.add_nodes_from([names.INPUT, names.LOGITS])
    for name in kept(mask, graph):
        e = names.parse_edge(name)
        D.add_edge(names.format_node(e.src), names.format_node(e.dst))
    from_input = nx.descendants(D, names.INPUT) | {names.INPUT}
    to_logits = nx.ancestors(D, names.LOGITS) | {names.LOGITS}
    out = set()
    for name in kept(mask, graph):
        e = names.parse_edge(name)
        if names.format_node(e.src) in from_input and names.format_node(e.dst) in to_logits:
            out.add(name)
    return out


@pytest.mark.parametrize("density", [0.05, 0.15, 0.3, 0.6])
def test_prune_matches_networkx_on_random_masks(density):
    graph = ComputationalGraph(n_layers=3, n_heads=3)
    gen = torch.Generator().manual_seed(int(density * 100))
    for _ in range(10):
        mask = (torch.rand(graph.n_senders, graph.n_receivers, generator=gen) < density) & graph.valid_mask()
        pruned = prune(mask, graph)
        assert kept(pruned, graph) == _reference_prune(mask, graph)
        assert torch.equal(prune(pruned, graph), pruned)  # idempotent


# ---------------------------------------------------------------- ranking and the simple modes
def test_ranking_by_magnitude_ties_in_compute_order_nan_last():
    values = torch.zeros(G.n_senders, G.n_receivers)
    values[G.edge_index("a0.h1->logits")] = -3.0
    values[G.edge_index("input->m0")] = 2.0
    values[G.edge_index("a0.h0->m1")] = float("nan")
    values[G.edge_index("m0->logits")] = 2.0
    s, r = ranked_edges(scores_of(values))
    order = [G.edge_name(int(a), int(b)) for a, b in zip(s, r)]
    assert order[:3] == ["a0.h1->logits", "input->m0", "m0->logits"]  # m0's input comes before logits
    assert order[-1] == "a0.h0->m1" and len(order) == G.n_edges


def test_signed_ranking_puts_the_most_helpful_first():
    values = torch.zeros(G.n_senders, G.n_receivers)
    values[G.edge_index("a0.h1->logits")] = -3.0  # patching it lowers the metric: it helps
    values[G.edge_index("input->m0")] = 2.0  # it works against the behaviour
    values[G.edge_index("a0.h0->m1")] = float("nan")
    values[G.edge_index("m0->logits")] = -2.0
    sc = scores_of(values)
    s, r = ranked_edges(sc, "signed")
    order = [G.edge_name(int(a), int(b)) for a, b in zip(s, r)]
    assert order[:2] == ["a0.h1->logits", "m0->logits"]
    assert order[-2:] == ["input->m0", "a0.h0->m1"]  # the harmful edge after every 0, NaN last
    assert kept(top_k_mask(sc, 2, "signed")) == {"a0.h1->logits", "m0->logits"}
    assert threshold(sc, 2.0, ranking="signed").k == 2 and threshold(sc, 2.0).k == 3
    assert top_k(sc, 2, ranking="signed").ranking == "signed"
    nodes = Scores(graph=G, method="test", edge_scores=values, node_scores={"a0.h0": 0.5, "a1.h1": -0.25, "m0": -1.0})
    from circuits.circuit.ranking import ranked_nodes

    assert [G.sender_names[i] for i in ranked_nodes(nodes, "signed").tolist()[:2]] == ["m0", "a1.h1"]
    assert [G.sender_names[i] for i in ranked_nodes(nodes).tolist()[:3]] == ["m0", "a0.h0", "a1.h1"]
    with pytest.raises(CircuitsError, match="unknown ranking"):
        ranked_edges(sc, "largest")


def test_top_k_and_threshold():
    values = torch.zeros(G.n_senders, G.n_receivers)
    for name, v in {"input->a0.h0<q>": 0.5, "a0.h0->logits": -0.9, "input->a1.h1<k>": 0.7, "input->logits": 0.1}.items():
        values[G.edge_index(name)] = v
    sc = scores_of(values)
    sel = top_k(sc, 3)
    # a1.h1 receives but does not send: pruned away
    assert (sel.k, sel.edges_kept, sel.mode, sel.faithfulness) == (3, 2, "top-k", None)
    assert kept(sel.keep_mask) == {"input->a0.h0<q>", "a0.h0->logits"}
    assert kept(top_k_mask(sc, 3)) == {"input->a0.h0<q>", "a0.h0->logits", "input->a1.h1<k>"}
    assert top_k(sc, 10_000).k == G.n_edges and top_k(sc, 0).edges_kept == 0
    t = threshold(sc, 0.1)  # |score| >= t, inclusive
    assert t.k == 4 and kept(t.keep_mask) == {"input->a0.h0<q>", "a0.h0->logits", "input->logits"}
    assert threshold(sc, 0.5).k == 3 and threshold(sc, 5.0).edges_kept == 0
    with pytest.raises(CircuitsError):
        threshold(sc, -1.0)
    with pytest.raises(CircuitsError):
        top_k(sc, -1)


# ---------------------------------------------------------------- the search
def _budget(n: int) -> int:
    return 2 * math.ceil(math.log2(n)) + 2


@pytest.mark.parametrize("n_edges,target", [(1000, 0.5), (1000, 0.9), (37, 0.5), (32491, 0.8), (5, 1.0), (1, 0.3)])
def test_search_finds_the_smallest_k_of_a_monotone_curve(n_edges, target):
    f = lambda k: min(1.0, (k / n_edges) ** 0.5)  # noqa: E731
    expected = next(k for k in range(1, n_edges + 1) if f(k) >= target)
    res = search_smallest_k(f, n_edges, target)
    assert res.reached and res.k == expected and res.f == f(expected)
    assert res.evaluations <= _budget(max(n_edges, 2))


def test_search_uses_known_points_and_reports_new_evaluations():
    n_edges = 1000
    calls = []

    def f(k):
        calls.append(k)
        return k / n_edges

    known = {1: 0.001, 100: 0.1, 500: 0.5, 1000: 1.0}
    res = search_smallest_k(f, n_edges, 0.3, known=known)
    assert res.k == 300 and res.evaluations == len(calls) <= math.ceil(math.log2(400)) + 1
    assert all(100 < k < 500 for k in calls)


def test_search_on_a_non_monotone_curve_returns_a_boundary():
    values = {k: (1.0 if k in (3, 4) or k >= 40 else 0.0) for k in range(1, 101)}
    res = search_smallest_k(values.__getitem__, 100, 0.9)
    assert res.reached and values[res.k] >= 0.9 and (res.k == 1 or values[res.k - 1] < 0.9)


def test_search_that_never_reaches_the_target():
    res = search_smallest_k(lambda k: 0.5 * k / 64, 64, 0.9)
    assert not res.reached and res.k == 64 and res.f == 0.5
    nan = search_smallest_k(lambda k: math.nan, 8, 0.9)
    assert not nan.reached


def test_progress_is_reported():
    seen = []
    search_smallest_k(lambda k: k / 100, 100, 0.5, progress=lambda d, t, m: seen.append((d, t, m)))
    assert seen and all(d <= t for d, t, _ in seen) and seen[0][2] == "target search"


class PlantedEvaluator:
    """f = the fraction of planted edges in the (pruned) circuit: monotone in k when they rank first."""

    def __init__(self, planted: set):
        self.planted = planted
        self.m_full, self.m_empty = 1.0, 0.0
        self.calls = 0

    def faithfulness(self, mask):
        self.calls += 1
        f = len(kept(mask) & self.planted) / len(self.planted)
        return SimpleNamespace(f=f, m_full=1.0, m_empty=0.0, m_circuit=f)


def test_target_faithfulness_finds_the_smallest_planted_circuit():
    planted = {"input->a0.h0<q>", "a0.h0->m0", "m0->a1.h1<v>", "a1.h1->logits", "input->logits"}
    values = torch.rand(G.n_senders, G.n_receivers, generator=torch.Generator().manual_seed(0)) * 0.5
    for i, name in enumerate(sorted(planted)):
        values[G.edge_index(name)] = 2.0 + i  # the planted edges rank first
    sc = scores_of(values * G.valid_mask())
    ev = PlantedEvaluator(planted)
    sel = target_faithfulness(None, None, None, sc, None, 1.0, evaluator=ev)
    assert sel.mode == "target-faithfulness" and sel.value == 1.0 and sel.reached
    assert sel.k == len(planted) and kept(sel.keep_mask) == planted and sel.faithfulness == 1.0
    assert sel.evaluations == ev.calls <= _budget(G.n_edges)
    # the brute-force smallest k for a lower target
    f = [ev.faithfulness(prune(top_k_mask(sc, k), G)).f for k in range(G.n_edges + 1)]
    sel = target_faithfulness(None, None, None, sc, None, 0.6, evaluator=PlantedEvaluator(planted))
    assert sel.k == next(k for k, v in enumerate(f) if v >= 0.6)


def test_target_faithfulness_refuses_an_undefined_faithfulness():
    ev = SimpleNamespace(m_full=0.25, m_empty=0.25)
    with pytest.raises(CircuitsError, match="undefined"):
        target_faithfulness(None, None, None, scores_of(torch.zeros(G.n_senders, G.n_receivers)), None, 0.9, evaluator=ev)


def test_target_faithfulness_on_a_real_engine():
    """On a random model: the chosen k passes the target, k - 1 does not (checked afresh)."""
    from circuits.engine.engine import GraphEngine
    from circuits.circuit.faithfulness import CircuitEvaluator, faithfulness, reference_outputs
    from test_faithfulness import logit_diff, random_dataset, random_weights

    engine = GraphEngine(random_weights(seed=7))
    ds = random_dataset(seed=8)
    g = engine.graph
    sc = Scores(graph=g, method="random",
                edge_scores=torch.randn(g.n_senders, g.n_receivers, generator=torch.Generator().manual_seed(9)) * g.valid_mask())
    ref = reference_outputs(engine, ds)
    sel = target_faithfulness(engine, ds, logit_diff, sc, ref, 0.8)
    assert sel.reached and sel.faithfulness >= 0.8
    f_k = faithfulness(engine, ds, logit_diff, sel.keep_mask, ref).f
    assert f_k == pytest.approx(sel.faithfulness, abs=1e-9)
    if sel.k > 1:
        f_before = CircuitEvaluator(engine, ds, logit_diff, ref).faithfulness(prune(top_k_mask(sc, sel.k - 1), g)).f
        assert f_before < 0.8
