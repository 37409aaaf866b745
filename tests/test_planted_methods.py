"""Every scoring method finds the circuit we planted (issue 4's bars)."""
from __future__ import annotations

import pytest

from circuits.engine.engine import GraphEngine
from circuits.graphs.compare import auroc
from circuits.models import load_model
from circuits.models.planted import ground_truth
from circuits.registry import get_method, get_task

BARS = {"eap": 0.95, "eap-ig": 0.99, "path-patching": 0.99, "gim": 1.0, "relp": 1.0}


@pytest.fixture(scope="module", params=["planted", pytest.param("planted-deep", marks=pytest.mark.slow)])
def planted(request):
    loaded = load_model(request.param)
    task = get_task("greater-than")
    return request.param, GraphEngine.from_model(loaded), task, task.build(loaded.tokenizer, n=16, seed=3)


@pytest.mark.parametrize("method", sorted(BARS))
def test_edge_auroc_meets_the_bar(planted, method):
    spec, engine, task, data = planted
    scores = get_method(method).score(engine, data, task.metric)
    truth = set(ground_truth(spec)["edges"])
    value = auroc({k: abs(v) for k, v in scores.edge_dict().items()}, truth)
    print(f"{spec} {method}: edge AUROC {value:.4f}")
    assert value >= BARS[method]


def test_activation_patching_ranks_ground_truth_nodes_first(planted):
    spec, engine, task, data = planted
    scores = get_method("activation-patching").score(engine, data, task.metric)
    nodes = {n for n in ground_truth(spec)["nodes"] if n not in ("input", "logits")}
    ranked = sorted((k for k in scores.node_scores if k != "input"), key=lambda k: -abs(scores.node_scores[k]))
    assert set(ranked[: len(nodes)]) == nodes
    # and the ground-truth nodes matter while the rest do not
    weakest = min(abs(scores.node_scores[n]) for n in nodes)
    strongest_other = max(abs(scores.node_scores[n]) for n in ranked[len(nodes):])
    assert weakest > 100 * strongest_other


def test_path_patching_cost_follows_the_circuit(planted):
    """The search explores the logits and the circuit's nodes, not every node of the graph."""
    spec, engine, task, data = planted
    scores = get_method("path-patching").score(engine, data, task.metric)
    nodes = {n for n in ground_truth(spec)["nodes"] if n not in ("input",)}
    assert scores.info["receivers_explored"] == len(nodes)
    assert scores.info["forward_passes"] < engine.graph.n_edges
