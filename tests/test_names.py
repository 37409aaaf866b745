"""The name grammar (circuits.names) and the computational graph's index maths (circuits.engine.graph)."""
from __future__ import annotations

import itertools

import pytest

from circuits import names
from circuits.engine.graph import ComputationalGraph
from circuits.names import Edge, NameError_, Node

NODES = ["input", "logits", "a0.h0", "a9.h1", "a11.h11", "m0", "m10", "m10.n42", "m3.n0"]
EDGES = ["a0.h1->a9.h1<q>", "input->m0", "m11->logits", "input->a0.h0<k>", "m3.n7->a4.h2<v>", "a2.h3->m2"]


@pytest.mark.parametrize("text", NODES)
def test_node_round_trip(text):
    node = names.parse_node(text)
    assert names.format_node(node) == str(node) == text
    assert names.parse_node(f"  {text} ") == node


def test_node_fields():
    assert names.parse_node("a9.h1") == Node("head", 9, 1) == names.head(9, 1)
    assert names.parse_node("a9.h1").head == 1 and names.parse_node("m3").head is None
    assert names.parse_node("m10") == Node("mlp", 10) == names.mlp(10)
    assert names.parse_node("m10.n42") == Node("neuron", 10, 42) == names.neuron(10, 42)
    assert names.parse_node("input") == names.INPUT_NODE and names.parse_node("logits") == names.LOGITS_NODE


@pytest.mark.parametrize("text", EDGES)
def test_edge_round_trip(text):
    edge = names.parse_edge(text)
    assert names.format_edge(edge) == str(edge) == text


def test_edge_fields():
    assert names.parse_edge("a0.h1->a9.h1<q>") == Edge(names.head(0, 1), names.head(9, 1), "q")
    assert names.parse_edge("m11->logits") == Edge(names.mlp(11), names.LOGITS_NODE, None)
    assert names.parse_receiver("a3.h2<v>") == (names.head(3, 2), "v")
    assert names.parse_receiver("m4") == (names.mlp(4), None)
    assert names.format_receiver(names.head(3, 2), "k") == "a3.h2<k>"


@pytest.mark.parametrize("bad", ["", "a1", "h1", "a1.h", "a.h1", "m", "mlp3", "m1.n", "A1.H2", "a1.h2.n3", "logit", "inputs",
                                 "a-1.h2"])
def test_bad_nodes(bad):
    with pytest.raises(NameError_):
        names.parse_node(bad)


@pytest.mark.parametrize("bad, fragment", [
    ("a0.h1->a9.h1", "needs an input"),
    ("input->m0<q>", "single input"),
    ("logits->m3", "cannot send"),
    ("m3->input", "cannot receive"),
    ("a0.h1-a9.h1<q>", "bad edge name"),
    ("a0.h1->a9.h1<x>", "bad edge name"),
    ("a0.h1->", "bad edge name"),
])
def test_bad_edges(bad, fragment):
    with pytest.raises(NameError_, match=fragment):
        names.parse_edge(bad)


def test_bad_receivers():
    with pytest.raises(NameError_, match="<q>, <k> or <v>"):
        names.parse_receiver("a1.h1<z>")
    with pytest.raises(NameError_, match="needs an input"):
        names.parse_receiver("a1.h1")


def test_name_error_is_a_value_error():
    assert issubclass(NameError_, ValueError)


def test_layer_order():
    order = sorted(["logits", "m1", "a1.h0", "input", "a0.h3", "m0", "a0.h1"], key=lambda t: names.node_layer_order(names.parse_node(t)))
    assert order == ["input", "a0.h1", "a0.h3", "m0", "a1.h0", "m1", "logits"]


# ---------------------------------------------------------------- ComputationalGraph
def _edges_by_rule(L: int, H: int) -> set[str]:
    """Every edge, written from the rule 'a sender feeds every receiver computed after it'."""
    senders = [("input", -1.0)] + [(f"a{l}.h{h}", l) for l in range(L) for h in range(H)] + [(f"m{l}", l + 0.5) for l in range(L)]
    receivers = [(f"a{l}.h{h}<{q}>", l) for l in range(L) for h in range(H) for q in "qkv"]
    receivers += [(f"m{l}", l + 0.5) for l in range(L)] + [("logits", float("inf"))]
    return {f"{s}->{r}" for (s, ts), (r, tr) in itertools.product(senders, receivers) if ts < tr}


def test_gpt2_small_has_32491_edges():
    g = ComputationalGraph(12, 12)
    assert g.n_senders == 1 + 12 * 13 and g.n_receivers == 12 * 37 + 1
    assert g.n_edges == 32491
    assert len(g.edge_names()) == 32491 == int(g.valid_mask().sum())


def test_gpt2_small_edge_names_round_trip():
    g = ComputationalGraph(12, 12)
    edges = g.edges()
    got = g.edge_names()
    assert len(set(got)) == len(got)
    for (s, r), name in zip(edges, got):
        assert g.edge_index(name) == (s, r)
        assert names.format_edge(names.parse_edge(name)) == name
    mask = g.valid_mask()
    assert all(bool(mask[s, r]) for s, r in edges)


@pytest.mark.parametrize("L, H", [(1, 1), (2, 4), (3, 2)])
def test_edges_follow_the_rule(L, H):
    g = ComputationalGraph(L, H)
    assert set(g.edge_names()) == _edges_by_rule(L, H)
    assert g.n_edges == len(_edges_by_rule(L, H))


def test_edge_index_rejects_backward_and_unknown_edges():
    g = ComputationalGraph(2, 4)
    with pytest.raises(KeyError, match="computed after"):
        g.edge_index("m1->a0.h0<q>")
    with pytest.raises(KeyError, match="computed after"):
        g.edge_index("a1.h0->m0")
    with pytest.raises(KeyError, match="not a sender"):
        g.edge_index("a5.h0->logits")
    with pytest.raises(KeyError, match="not a receiver"):
        g.edge_index("input->a0.h9<q>")
    with pytest.raises(NameError_):
        g.edge_index("a0.h0->a1.h0")
