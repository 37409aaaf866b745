"""circuits.circuit.stability: bootstrap resamples, same-size circuits, Jaccard and inclusion frequency."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.engine.graph import ComputationalGraph
from circuits.circuit.ranking import prune, top_k_mask
from circuits.methods.base import Scores
from circuits.circuit.select import Selection
from circuits.circuit.stability import (check_bootstrap, jaccard, mean_pairwise_jaccard, resample_index,
                                same_size_circuit)


def test_check_bootstrap():
    assert check_bootstrap(0) == 0 and check_bootstrap(2) == 2
    for bad in (1, -1):
        with pytest.raises(CircuitsError, match="--bootstrap"):
            check_bootstrap(bad)


def test_jaccard_by_hand():
    assert jaccard(frozenset("ab"), frozenset("bc")) == pytest.approx(1 / 3)
    assert jaccard(frozenset(), frozenset()) == 1.0 and jaccard(frozenset("a"), frozenset()) == 0.0
    sets = [frozenset("ab"), frozenset("ab"), frozenset("bc")]
    assert mean_pairwise_jaccard(sets) == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)


def test_resamples_are_seeded_draws_with_replacement():
    a, b = resample_index(50, 0, seed=3), resample_index(50, 1, seed=3)
    assert torch.equal(a, resample_index(50, 0, seed=3)) and not torch.equal(a, b)
    assert not torch.equal(a, resample_index(50, 0, seed=4))
    assert len(a) == 50 and int(a.min()) >= 0 and int(a.max()) < 50 and len(set(a.tolist())) < 50


def _selection(mask, ranking="abs", granularity="edge", mode="top-k"):
    return Selection(keep_mask=mask, k=int(mask.sum()), edges_kept=int(mask.sum()), faithfulness=None, mode=mode,
                     value=0.0, granularity=granularity, ranking=ranking)


@pytest.mark.parametrize("ranking", ["abs", "signed"])
def test_same_size_circuit_is_the_smallest_prefix_with_as_many_edges(ranking):
    g = ComputationalGraph(n_layers=2, n_heads=4)
    torch.manual_seed(1)
    scores = Scores(graph=g, method="random", edge_scores=torch.randn(g.n_senders, g.n_receivers) * g.valid_mask())
    sizes = [int(prune(top_k_mask(scores, k, ranking), g).sum()) for k in range(g.n_edges + 1)]
    assert sizes == sorted(sizes)  # pruning only grows with the prefix
    for target in sorted(set(sizes))[1::3]:
        main = _selection(torch.zeros(g.n_senders, g.n_receivers, dtype=torch.bool), ranking)
        main = Selection(**{**main.__dict__, "edges_kept": target})
        k = next(k for k, size in enumerate(sizes) if size >= target)  # linear search, the obvious way
        assert torch.equal(same_size_circuit(scores, main), prune(top_k_mask(scores, k, ranking), g))


@pytest.fixture(scope="module")
def planted():
    from circuits.engine.engine import GraphEngine
    from circuits.models import load_model
    from circuits.registry import get_task

    loaded = load_model("planted")
    task = get_task("greater-than")
    return GraphEngine.from_model(loaded), task, task.build(loaded.tokenizer, n=12, seed=2)


@pytest.mark.slow
def test_bootstrap_matches_an_independent_recount(planted):
    from circuits.circuit.discover import SelectionSpec, discover
    from circuits.registry import get_method

    engine, task, data = planted
    method = get_method("eap")
    result = discover(engine, data, task.metric, method, selection=SelectionSpec("top-k", 12), curve=False,
                      bootstrap=3, seed=5)
    st = result.stability
    assert st.k == 3 and len(st.edges) == 3
    g = engine.graph
    circuits, nodes = [], []
    for i in range(3):  # rescore each resample by hand and pick its same-size circuit by linear search
        idx = torch.randint(0, len(data), (len(data),), generator=torch.Generator().manual_seed(5 * 1_000_003 + i + 1))
        scores = method.score(engine, data.subset(idx), task.metric)
        k = next(k for k in range(g.n_edges + 1)
                 if int(prune(top_k_mask(scores, k), g).sum()) >= result.selection.edges_kept)
        mask = prune(top_k_mask(scores, k), g)
        edges = {g.edge_name(s, r) for s, r in mask.nonzero().tolist()}
        circuits.append(edges)
        nodes.append({part.split("<")[0] for e in edges for part in e.split("->")} - {"input", "logits"})
    pairs = list(itertools.combinations(range(3), 2))
    edge_j = sum(len(circuits[a] & circuits[b]) / len(circuits[a] | circuits[b]) for a, b in pairs) / 3
    node_j = sum(len(nodes[a] & nodes[b]) / len(nodes[a] | nodes[b]) for a, b in pairs) / 3
    assert st.edge_jaccard == pytest.approx(edge_j) and st.node_jaccard == pytest.approx(node_j)
    kept = result.kept_edges()
    assert set(st.frequency) == set(kept)
    for name, freq in st.frequency.items():
        assert freq == pytest.approx(sum(name in c for c in circuits) / 3)


@pytest.mark.slow
def test_bootstrap_of_a_node_method_keeps_as_many_nodes(planted):
    from circuits.circuit.discover import SelectionSpec, discover
    from circuits.circuit.ranking import kept_nodes
    from circuits.registry import get_method

    engine, task, data = planted
    result = discover(engine, data, task.metric, get_method("activation-patching"), selection=SelectionSpec("top-k", 2),
                      curve=False, bootstrap=2)
    assert int(kept_nodes(result.selection.keep_mask, engine.graph)[1:].sum()) == 2
    assert 0 <= result.stability.edge_jaccard <= 1 and result.stability.node_jaccard == 1.0  # planted: the same 2 nodes


@pytest.mark.slow
def test_discover_cli_bootstrap_writes_frequencies_and_the_manifest(tmp_path):
    from cli_helpers import assert_user_error, invoke

    from circuits.graphs.build import edge_frequencies, load_circuit
    from circuits.graphs.viewer import viewer_data

    code, _, err = invoke("discover", "greater-than", "--model", "planted", "--method", "eap", "--out", str(tmp_path / "x"),
                          "--bootstrap", "1")
    assert_user_error(code, err, "--bootstrap")
    out = tmp_path / "run"
    code, stdout, err = invoke("discover", "greater-than", "--model", "planted", "--method", "eap", "--out", str(out),
                               "--n", "20", "--bootstrap", "2", "--top-k", "8")
    assert code == 0, err
    assert "stability (2 bootstrap resamples): edge Jaccard" in stdout
    m = json.loads((out / "manifest.json").read_text())
    assert set(m["stability"]) == {"k", "edge_jaccard", "node_jaccard"} and m["stability"]["k"] == 2
    G = load_circuit(out)
    freq = edge_frequencies(G)
    assert freq and set(freq) == {n for _, _, d in G.edges(data=True) for n in d["names"]}
    assert all(v in (0.0, 0.5, 1.0) for v in freq.values())
    data = viewer_data(G, manifest=m)
    assert all(len(e) == 6 for e in data["edges"] if e[4]) and data["meta"]["stability"]["k"] == 2
