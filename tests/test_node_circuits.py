"""Node circuits: a node method's circuits are chosen by node (issue 11).

The ranking and masks on a small graph by hand; the faithfulness of a node circuit against
the hook-based edge patcher (every edge out of a removed node patched); ``circuits methods
list``; and ``discover`` writing a node circuit end to end.
"""
from __future__ import annotations

import json

import pytest
import torch

from circuits.engine.graph import ComputationalGraph
from circuits.circuit.ranking import kept_nodes, node_mask, node_outputs_mask, prune, ranked_nodes
from circuits.methods.base import Scores
from circuits.circuit.select import target_faithfulness, threshold, top_k
from cli_helpers import invoke

G = ComputationalGraph(n_layers=2, n_heads=2)

pytestmark = pytest.mark.usefixtures("one_thread")


def node_scores(**values) -> Scores:
    named = {k.replace("_", "."): v for k, v in values.items()}
    return Scores(graph=G, method="test", edge_scores=torch.zeros(G.n_senders, G.n_receivers), node_scores=named)


def edges(mask, graph=G) -> set:
    return {graph.edge_name(s, r) for s, r in graph.edges() if mask[s, r]}


def test_node_mask_is_the_induced_subgraph_with_input_and_logits():
    mask = node_mask(G, torch.tensor([G.sender_index("a0.h1"), G.sender_index("m1")]))
    assert edges(mask) == {
        "input->a0.h1<q>", "input->a0.h1<k>", "input->a0.h1<v>", "input->m1", "a0.h1->m1", "input->logits",
        "a0.h1->logits", "m1->logits",
    }
    assert torch.equal(prune(mask, G), mask)  # every kept node lies on input -> node -> logits
    assert kept_nodes(mask, G).nonzero().flatten().tolist() == [0, G.sender_index("a0.h1"), G.sender_index("m1")]
    outputs = node_outputs_mask(mask, G)
    assert (outputs & ~mask).any() and torch.equal(outputs & mask, mask)  # same nodes, outputs kept everywhere


def test_top_k_and_threshold_count_nodes():
    scores = node_scores(input=9.0, a0_h0=0.1, a0_h1=-3.0, m0=0.5, a1_h0=0.0, a1_h1=2.0, m1=float("nan"))
    assert [G.sender_names[s] for s in ranked_nodes(scores).tolist()] == ["a0.h1", "a1.h1", "m0", "a0.h0", "a1.h0", "m1"]
    sel = top_k(scores, 2, granularity="node")
    assert (sel.granularity, sel.k) == ("node", 2)
    assert torch.equal(sel.keep_mask, node_mask(G, torch.tensor([2, 5])))
    assert sel.edges_kept == int(sel.keep_mask.sum())
    assert threshold(scores, 0.5, granularity="node").k == 3
    assert top_k(scores, 99, granularity="node").k == G.n_senders - 1
    assert top_k(scores, 2).granularity == "edge"


def test_target_search_counts_nodes():
    scores = node_scores(a0_h0=4.0, a0_h1=3.0, m0=2.0, a1_h0=1.0, a1_h1=0.5, m1=0.25)

    class Evaluator:  # f = share of the kept nodes' score: grows by node
        m_full, m_empty = 1.0, 0.0

        def faithfulness(self, mask):
            nodes = kept_nodes(mask, G)
            f = sum(v for k, v in scores.node_scores.items() if nodes[G.sender_index(k)]) / 10.75
            return type("F", (), {"f": f})()

    sel = target_faithfulness(None, None, None, scores, None, 0.85, evaluator=Evaluator(), granularity="node")
    assert (sel.k, sel.granularity) == (4, "node")  # top 3: 9/10.75 = 0.84 < 0.85 <= top 4: 10/10.75


def test_node_circuit_faithfulness_patches_the_removed_nodes():
    """m(C) of a node circuit = the hook-based patcher with every edge out of the removed nodes patched."""
    from reference import all_edges, edge_patched_logits

    from circuits.engine.engine import GraphEngine
    from circuits.circuit.faithfulness import circuit_metric, reference_outputs
    from circuits.models import load_model
    from circuits.models.planted import ground_truth
    from circuits.tasks.greater_than import GreaterThan

    loaded = load_model("planted")
    engine = GraphEngine.from_model(loaded)
    task = GreaterThan()
    data = task.build(loaded.tokenizer, n=4, seed=2)
    g = engine.graph
    planted = sorted(n for n in ground_truth("planted")["nodes"] if n not in ("input", "logits"))
    kept = planted[1:] + ["a0.h3" if "a0.h3" not in planted else "a0.h2"]  # one planted node lost, one decoy
    induced = node_mask(g, torch.tensor([g.sender_index(k) for k in kept]))
    removed = [s for s in g.sender_names[1:] if s not in kept]
    patched = [e for e in all_edges(g.n_layers, g.n_heads) if e.split("->")[0] in removed]
    logits = edge_patched_logits(loaded.bridge, data.clean, data.corrupted, patched)
    expected = float(task.metric(logits[torch.arange(len(data)), data.answer_pos], data).mean())
    ref = reference_outputs(engine, data)
    for mask in (induced, node_outputs_mask(induced, g)):
        assert circuit_metric(engine, data, task.metric, mask, ref) == pytest.approx(expected, abs=1e-4)
    full = circuit_metric(engine, data, task.metric, g.valid_mask(), ref)
    empty = circuit_metric(engine, data, task.metric, torch.zeros_like(induced), ref)
    assert min(abs(expected - full), abs(expected - empty)) > 0.05  # the check is not vacuous


def test_methods_list():
    code, out, err = invoke("methods", "list")
    assert code == 0, err
    rows = {line.split("\t")[0]: line.split("\t") for line in out.strip().splitlines()}
    assert {"activation-patching", "path-patching", "eap", "eap-ig"} <= set(rows)
    assert rows["activation-patching"][1] == "node"
    assert all(rows[m][1] == "edge" for m in ("path-patching", "eap", "eap-ig"))
    assert all(len(r) == 3 and r[2] for r in rows.values())


def test_discover_writes_a_node_circuit(tmp_path):
    code, out, err = invoke("discover", "greater-than", "--model", "planted", "--method", "activation-patching",
                            "--top-k", "3", "--n", "8", "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert "3 of 10 nodes kept" in out
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    circuit = json.loads((tmp_path / "run" / "circuit.json").read_text())
    assert manifest["granularity"] == circuit["graph"]["granularity"] == "node"
    assert manifest["selection"]["k"] == 3
    nodes = {n["id"] for n in circuit["nodes"]}
    assert len(nodes) == 5 and {"input", "logits"} <= nodes
    code, out, err = invoke("compare", str(tmp_path / "run"), str(tmp_path / "run" / "circuit.json"))
    assert code == 0 and "node circuit" in out, err
