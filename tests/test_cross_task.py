"""One circuit across prompts: ``compare`` on several runs and ``evaluate-circuit --task OTHER`` (planted model)."""
from __future__ import annotations

import json

import pytest

from circuits.graphs.build import build_graph, edge_names, write_json
from circuits.graphs.overlap import pair_overlap, pairwise
from tests.cli_helpers import assert_user_error, invoke

A = {"input->a0.h0<v>": 1.0, "a0.h0->m1": 1.0, "m1->logits": 1.0}
B = {"input->a0.h0<v>": 1.0, "a0.h0->m1": 1.0, "a0.h1->logits": 1.0, "input->a0.h1<v>": 1.0}
C = {"input->m0": 1.0, "m0->logits": 1.0}


def test_pair_overlap_by_hand():
    assert pair_overlap({1, 2, 3}, {2, 3, 4, 5}) == {"a": 3, "b": 4, "both": 2, "jaccard": 2 / 5, "a_in_b": 2 / 3, "b_in_a": 0.5}
    assert pair_overlap(set(), set())["jaccard"] == 1.0 and pair_overlap({1}, set())["b_in_a"] == 0.0


def test_pairwise_matches_set_arithmetic():
    graphs = [build_graph(x) for x in (A, B, C)]
    pairs = pairwise(graphs)
    assert [(p["i"], p["j"]) for p in pairs] == [(0, 1), (0, 2), (1, 2)]
    for p in pairs:
        ga, gb = graphs[p["i"]], graphs[p["j"]]
        ea, eb = edge_names(ga), edge_names(gb)
        assert p["edges"]["both"] == len(ea & eb) and p["edges"]["jaccard"] == len(ea & eb) / len(ea | eb)
        na, nb = set(ga.nodes), set(gb.nodes)
        assert p["nodes"]["both"] == len(na & nb) and p["nodes"]["a_in_b"] == len(na & nb) / len(na)
    assert pairs[0]["edges"]["both"] == 2 and pairs[1]["edges"]["both"] == 0


def test_compare_three_circuits_table_and_json(tmp_path):
    paths = [str(write_json(build_graph(x), tmp_path / f"{k}.json")) for k, x in zip("abc", (A, B, C))]
    code, out, err = invoke("compare", *paths)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("[1] ") and "3 edges" in lines[0] and lines[3].startswith("pair")
    assert lines[4].split()[:2] == ["1-2", "4"]  # input, a0.h0, m1, logits in both
    code, out, err = invoke("compare", *paths, "--json")
    data = json.loads(out)
    assert data["circuits"] == paths and len(data["pairs"]) == 3
    assert data["pairs"][0]["edges"] == pair_overlap(set(A), set(B))
    # two circuits: today's found-against-reference form, unchanged
    code, out, err = invoke("compare", paths[0], paths[1], "--json")
    assert code == 0 and {"nodes", "edges"} <= set(json.loads(out))
    assert_user_error(*invoke("compare", paths[0])[::2], "at least two circuits")


@pytest.fixture(scope="module")
def planted_circuit(tmp_path_factory):
    """The planted model's ground-truth greater-than circuit, as a circuit.json (model and task in its metadata)."""
    path = tmp_path_factory.mktemp("cross") / "planted.json"
    code, out, err = invoke("reference", "planted", "--out", str(path))
    assert code == 0, err
    return path


def _evaluate(circuit, *args) -> dict:
    code, out, err = invoke("evaluate-circuit", str(circuit), "--n", "16", "--json", *args)
    assert code == 0, err
    res = json.loads(out)
    assert res["faithfulness"] == pytest.approx(
        (res["metric_circuit"] - res["metric_empty"]) / (res["metric_full"] - res["metric_empty"]))
    return res


def test_evaluate_circuit_on_another_tasks_prompts(planted_circuit):
    """The planted model's greater-than circuit on another template's prompts: it reads YY wherever it is."""
    res = _evaluate(planted_circuit, "--task", "greater-than-started")
    assert res["task"] == "greater-than-started" and res["n"] == 16 and res["edges"] == 5
    assert res["metric_full"] > 0.5 and res["faithfulness"] > 0.9


@pytest.mark.slow
def test_evaluate_circuit_own_task_and_a_less_than_template(planted_circuit):
    own = _evaluate(planted_circuit)
    assert own["task"] == "greater-than" and own["faithfulness"] > 0.9
    less = _evaluate(planted_circuit, "--task", "less-than-ended")
    assert less["task"] == "less-than-ended" and less["edges"] == own["edges"]
    assert less["metric_full"] < 0  # the planted model only does greater-than: on less-than prompts it is wrong
