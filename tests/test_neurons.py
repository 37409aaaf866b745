"""Neurons inside circuits (issue 12, part 3): an MLP kept through some of its neurons only.

On the planted model the readout MLP ``m1`` does its work through 48 "map" neurons
(``circuits.models.planted.task_neurons``; the reference ``planted-neurons.json`` lists them);
its other 208 neurons are decoys.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.graphs.build import build_graph, circuit_neurons, edge_names, from_node_link, to_node_link
from circuits.graphs.files import load_circuit
from cli_helpers import assert_user_error, invoke

PLANTED_NEURONS = Path(__file__).resolve().parents[1] / "graphs" / "references" / "planted-neurons.json"


# ---------------------------------------------------------------- circuit.json (no torch needed)
def test_circuit_json_keeps_mlp_edges_and_lists_neurons():
    G = build_graph({"input->a0.h0<v>": 1.0, "a0.h0->m1": 0.5, "m1->logits": 2.0}, neurons={"m1": [7, 3]},
                    top_neurons={"m1": [(3, -0.25), (9, 0.1)]})
    data = to_node_link(G)
    assert data["graph"]["neurons"] == {"m1": [3, 7]}
    nodes = {n["id"]: n for n in data["nodes"]}
    assert nodes["m1"]["neurons"] == [3, 7]
    assert nodes["m1.n3"]["kind"] == "neuron" and nodes["m1.n3"]["parent"] == "m1" and nodes["m1.n3"]["score"] == -0.25
    assert nodes["m1.n7"]["neuron"] == 7 and nodes["m1.n7"]["score"] is None
    assert {(e["source"], e["target"]) for e in data["edges"]} == {("input", "a0.h0"), ("a0.h0", "m1"), ("m1", "logits")}
    back = from_node_link(json.loads(json.dumps(data)))
    assert circuit_neurons(back) == {"m1": [3, 7]} and edge_names(back) == edge_names(G)


def test_neuron_level_edges_read_as_the_mlp_edge_plus_the_neuron():
    data = {"nodes": [], "edges": [{"source": "input", "target": "a0.h0", "qkv": ["v"]},
                                   {"source": "a0.h0", "target": "m1.n4"}, {"source": "m1.n4", "target": "logits"},
                                   {"source": "m1.n9", "target": "logits"}]}
    G = from_node_link(data)
    assert edge_names(G) == {"input->a0.h0<v>", "a0.h0->m1", "m1->logits"}
    assert circuit_neurons(G) == {"m1": [4, 9]}
    assert G.nodes["m1.n9"]["parent"] == "m1" and G.nodes["m1"]["neurons"] == [4, 9]


def test_neurons_of_an_mlp_outside_the_circuit_are_refused():
    with pytest.raises(CircuitsError, match="m0 has no edge in the circuit"):
        build_graph({"a0.h0->logits": 1.0}, neurons={"m0": [1]})


# ---------------------------------------------------------------- the planted model
@pytest.fixture(scope="module")
def planted():
    from circuits.engine.engine import GraphEngine
    from circuits.models import load_model
    from circuits.models.planted import ground_truth
    from circuits.registry import get_task

    loaded = load_model("planted")
    engine = GraphEngine.from_model(loaded)
    task = get_task("greater-than")
    data = task.build(loaded.tokenizer, n=16, seed=3)
    keep = engine.graph.keep_mask(ground_truth("planted")["edges"])
    return engine, task, data, keep, circuit_neurons(load_circuit(PLANTED_NEURONS))["m1"]


def _mask(d_mlp, idx):
    m = torch.zeros(d_mlp, dtype=torch.bool)
    m[list(idx)] = True
    return m


def test_task_neurons_alone_are_as_faithful_as_the_whole_mlp_and_random_ones_are_not(planted):
    from circuits.circuit.faithfulness import CircuitEvaluator, reference_outputs

    engine, task, data, keep, task_idx = planted
    d_mlp = engine.w.d_mlp
    ev = CircuitEvaluator(engine, data, task.metric, reference_outputs(engine, data))
    whole = ev.faithfulness(keep).f
    reduced = ev.faithfulness(keep, {1: _mask(d_mlp, task_idx)}).f
    rand_idx = random.Random(0).sample(range(d_mlp), len(task_idx))
    rand = ev.faithfulness(keep, {1: _mask(d_mlp, rand_idx)}).f
    print(f"planted m1: whole {whole:.4f}, {len(task_idx)} task neurons {reduced:.4f}, "
          f"{len(task_idx)} random neurons {rand:.4f} ({len(set(rand_idx) & set(task_idx))} of them task neurons)")
    assert abs(reduced - whole) <= 0.02
    assert rand < whole - 0.3


def test_reduced_mlp_bounds_are_exact(planted):
    """All neurons kept is the whole MLP; none kept is the MLP's output patched (corrupted ablation)."""
    from circuits.circuit.faithfulness import CircuitEvaluator, reference_outputs

    engine, task, data, keep, _ = planted
    g, d_mlp = engine.graph, engine.w.d_mlp
    ev = CircuitEvaluator(engine, data, task.metric, reference_outputs(engine, data))
    assert ev.metric(keep, {1: torch.ones(d_mlp, dtype=torch.bool)}) == pytest.approx(ev.metric(keep), abs=1e-6)
    cut = keep.clone()
    cut[g.mlp_sender(1)] = False
    assert ev.metric(keep, {1: torch.zeros(d_mlp, dtype=torch.bool)}) == pytest.approx(ev.metric(cut), abs=1e-5)


@pytest.mark.slow
def test_planted_neurons_reference_lists_the_task_neurons():
    from circuits.models.planted import task_neurons

    G = load_circuit(PLANTED_NEURONS)
    assert circuit_neurons(G) == {"m1": list(task_neurons("planted")["m1"])}
    assert len(circuit_neurons(G)["m1"]) == 48


def test_evaluate_circuit_reduces_an_mlp_to_its_top_neurons(tmp_path):
    """The mission's recipe on planted: a published circuit with its MLP reduced to its top neurons
    (``--neurons m1 --keep-neurons 48``) is the planted-neurons reference, and evaluates the same."""
    planted_json = PLANTED_NEURONS.with_name("planted.json")
    saved = tmp_path / "reduced.json"
    code, stdout, err = invoke("evaluate-circuit", str(planted_json), "--n", "16", "--seed", "3", "--neurons", "m1",
                               "--keep-neurons", "48", "--save", str(saved), "--json")
    assert code == 0, err
    reduced = json.loads(stdout)
    truth = circuit_neurons(load_circuit(PLANTED_NEURONS))
    assert reduced["neurons_kept"] == truth and circuit_neurons(load_circuit(saved)) == truth
    assert load_circuit(saved).graph["faithfulness"] == reduced["faithfulness"]
    code, stdout, err = invoke("evaluate-circuit", str(PLANTED_NEURONS), "--n", "16", "--seed", "3", "--json")
    assert code == 0, err
    res = json.loads(stdout)
    assert res["neurons_kept"] == truth and res["faithfulness"] == reduced["faithfulness"]
    assert res["faithfulness"] >= 0.98


def test_evaluate_circuit_neuron_flags_go_together(tmp_path):
    planted_json = str(PLANTED_NEURONS.with_name("planted.json"))
    code, _, err = invoke("evaluate-circuit", planted_json, "--keep-neurons", "4")
    assert_user_error(code, err, "--keep-neurons needs --neurons")
    code, _, err = invoke("evaluate-circuit", planted_json, "--neurons", "m0", "--keep-neurons", "4")
    assert_user_error(code, err, "no m0")


def test_discover_library_keeps_the_top_neurons(planted, tmp_path):
    """``discover`` with ``keep_neurons``: EAP's top 48 neurons of m1 are the planted ones; the run folder's
    circuit, read back, gives the same faithfulness."""
    from circuits.circuit.discover import SelectionSpec, discover
    from circuits.circuit.faithfulness import faithfulness
    from circuits.circuit.neurons import neuron_masks
    from circuits.registry import get_method
    from circuits.circuit.run_folder import write_run
    from circuits.methods.base import MethodOptions

    engine, task, data, _, task_idx = planted
    options = MethodOptions(neurons=("m1",))
    spec = SelectionSpec("top-k", 5, keep_neurons=len(task_idx))
    result = discover(engine, data, task.metric, get_method("eap"), options, spec, curve=False)
    assert {k: [int(i) for i in torch.nonzero(v).flatten()] for k, v in result.selection.neurons.items()} == {1: task_idx}
    assert result.options.top_neurons == len(task_idx)
    written = write_run(tmp_path / "run", result, {"task": "greater-than", "model": "planted", "method": "eap", "n": 16, "seed": 3})
    assert written.manifest["neurons_kept"] == {"m1": task_idx}
    G = load_circuit(tmp_path / "run")
    assert circuit_neurons(G) == {"m1": task_idx} and G.nodes["m1"]["neurons"] == task_idx
    assert sum(1 for _, d in G.nodes(data=True) if d["kind"] == "neuron") == len(task_idx)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "m1 (48 neurons)" in report and "## Neurons" in report
    assert '"m1" -> "m1.n2"' in (tmp_path / "run" / "circuit.dot").read_text()
    masks = neuron_masks(circuit_neurons(G), n_layers=engine.w.n_layers, d_mlp=engine.w.d_mlp)
    again = faithfulness(engine, data, task.metric, engine.graph.keep_mask(edge_names(G)), neurons=masks)
    assert again.f == pytest.approx(result.faithfulness.f, abs=1e-9)
    from circuits.graphs.compare import compare

    versus = compare(G, load_circuit(PLANTED_NEURONS))
    assert versus["edges"]["recall"] == 1.0 and versus["neurons"] == {"precision": 1.0, "recall": 1.0, "jaccard": 1.0, "mlps": ["m1"]}


@pytest.mark.slow
def test_discover_keeps_the_top_neurons_and_evaluate_circuit_reproduces_it(planted, tmp_path):
    _, _, _, _, task_idx = planted
    out = tmp_path / "run"
    code, stdout, err = invoke("discover", "greater-than", "--model", "planted", "--method", "eap", "--n", "8",
                               "--neurons", "m1", "--keep-neurons", str(len(task_idx)), "--top-k", "5", "--out", str(out))
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["neurons_kept"] == {"m1": task_idx}  # EAP's top 48 neurons of m1 are the planted ones
    G = load_circuit(out)
    assert circuit_neurons(G) == {"m1": task_idx} and G.nodes["m1"]["neurons"] == task_idx
    assert sum(1 for _, d in G.nodes(data=True) if d["kind"] == "neuron") == len(task_idx)
    assert "m1 48 of 256" in stdout
    report = (out / "report.md").read_text()
    assert "m1 (48 neurons)" in report and "## Neurons" in report
    code, stdout, err = invoke("evaluate-circuit", str(out), "--json")
    assert code == 0, err
    res = json.loads(stdout)
    assert res["neurons_kept"] == {"m1": task_idx}
    assert res["faithfulness"] == pytest.approx(manifest["faithfulness"], abs=1e-6)


def test_keep_neurons_needs_neurons(tmp_path):
    code, _, err = invoke("discover", "greater-than", "--model", "planted", "--method", "eap", "--keep-neurons", "10",
                          "--out", str(tmp_path / "r"))
    assert_user_error(code, err, "--keep-neurons needs --neurons")


def test_evaluate_circuit_names_a_neuron_the_model_lacks(tmp_path):
    G = build_graph({"input->a0.h0<v>": 1.0, "a0.h0->m1": 1.0, "m1->logits": 1.0}, neurons={"m1": [3, 999]},
                    metadata={"task": "greater-than", "n": 4, "model": "planted"})
    from circuits.graphs.build import write_json

    path = write_json(G, tmp_path / "c.json")
    code, _, err = invoke("evaluate-circuit", str(path))
    assert_user_error(code, err, "m1.n999")


# ---------------------------------------------------------------- against TransformerLens hooks
@pytest.mark.slow
@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_neuron_masks_match_the_hook_based_reference(tiny_gpt2_dir, ablation):
    """Faithfulness with reduced MLPs against a plain patched run on the bridge: edges patched at the receivers'
    hooks, the dropped neurons' hidden activations (``hook_post``) replaced by the reference run's."""
    import reference

    from circuits.engine.engine import GraphEngine
    from circuits.circuit.faithfulness import CircuitEvaluator, reference_outputs
    from circuits.models import load_model
    from circuits.registry import get_task

    loaded = load_model(str(tiny_gpt2_dir))
    engine = GraphEngine.from_model(loaded)
    task = get_task("greater-than")
    ds = task.build(loaded.tokenizer, n=4, seed=0)
    g, d_mlp = engine.graph, engine.w.d_mlp
    gen = torch.Generator().manual_seed(11)
    keep = (torch.rand(g.n_senders, g.n_receivers, generator=gen) < 0.7) & g.valid_mask()
    neurons = {layer: torch.rand(d_mlp, generator=gen) < 0.3 for layer in range(g.n_layers)}
    patched = sorted(g.edge_name(s, r) for s, r in g.edges() if not keep[s, r])
    if ablation == "corrupted":
        logits = reference.edge_patched_logits(loaded.bridge, ds.clean, ds.corrupted, patched, neurons=neurons)
    else:  # mean ablation: the reference run's activations are the clean ones' mean over prompts, per position
        logits = _mean_patched_logits(reference, loaded.bridge, ds.clean, patched, neurons)
    assert reference.hooks_left(loaded.bridge) == []
    logits = logits[torch.arange(len(ds)), ds.answer_pos].float()
    expected = float(task.metric(logits, ds).double().mean())
    ev = CircuitEvaluator(engine, ds, task.metric, reference_outputs(engine, ds, ablation=ablation), ablation=ablation)
    got = ev.metric(keep, neurons)
    whole = ev.metric(keep)
    print(f"{ablation}: engine {got:.9g}, hooks {expected:.9g}, MLPs whole {whole:.9g}")
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-8)
    assert abs(got - whole) > 100 * abs(got - expected)  # the neurons matter on this random model
    # streamed references (pieces of 3 prompts, nothing kept): each piece brings its own hidden references
    streamed = CircuitEvaluator(engine, ds, task.metric, ablation=ablation, batch_size=3, cache_bytes=0)
    assert streamed.metric(keep, neurons) == pytest.approx(expected, rel=1e-4, abs=1e-8)


def _mean_patched_logits(reference, bridge, clean, patched, neurons):
    """Mean ablation written plainly: every sender's and neuron's reference value is its clean mean over the batch."""
    with reference.PerHeadFlags(bridge), torch.no_grad():
        acts = reference.sender_activations(bridge, clean)
        post = {layer: reference._hidden(bridge, clean, layer) for layer in neurons}
    means = {k: v.mean(0, keepdim=True).expand_as(v) for k, v in acts.items()}
    post = {layer: h.mean(0, keepdim=True).expand_as(h) for layer, h in post.items()}
    return reference.reference_patched_logits(bridge, clean, means, post, patched, neurons)


def test_analyze_says_it_does_not_draw_reduced_mlps():
    from circuits.analysis.circuit import from_graph
    from circuits.engine.graph import ComputationalGraph

    with pytest.raises(CircuitsError, match=r"m1 \(48 neurons\).*evaluate-circuit"):
        from_graph(load_circuit(PLANTED_NEURONS), ComputationalGraph(2, 4))


def test_keep_neurons_needs_a_method_that_scores_neurons():
    from circuits.circuit.neurons import top_neuron_masks

    with pytest.raises(CircuitsError, match="path-patching gave no neuron scores for m1"):
        top_neuron_masks({}, [1], 4, d_mlp=8, method="path-patching")
    with pytest.raises(CircuitsError, match="only 2 neurons of m1 were scored"):
        top_neuron_masks({"m1": [(0, 1.0), (5, -2.0)]}, [1], 4, d_mlp=8, method="eap")
    mask = top_neuron_masks({"m1": [(0, 1.0), (5, -2.0), (3, 0.5)]}, [1], 2, d_mlp=8, method="eap")[1]
    assert torch.nonzero(mask).flatten().tolist() == [0, 5]


@pytest.mark.parametrize("ablation", ["corrupted", "mean", "mean-positions", "zero"])
def test_streamed_hidden_references_equal_the_whole_dataset_ones(ablation):
    """Reduced MLPs measured with streamed references (pieces of 3 prompts, nothing cached, and cached) give the
    metric of the whole-dataset path, and the evaluator then holds no [n, p, d_mlp] tensor."""
    from circuits.engine.engine import GraphEngine
    from circuits.circuit.faithfulness import CircuitEvaluator, reference_outputs
    from test_faithfulness import logit_diff, random_dataset, random_weights

    engine = GraphEngine(random_weights(seed=21))
    data = random_dataset(n=7, seed=22)
    g, d_mlp = engine.graph, engine.w.d_mlp
    gen = torch.Generator().manual_seed(23)
    keep = (torch.rand(g.n_senders, g.n_receivers, generator=gen) < 0.6) & g.valid_mask()
    neurons = {layer: torch.rand(d_mlp, generator=gen) < 0.4 for layer in range(g.n_layers)}
    whole = CircuitEvaluator(engine, data, logit_diff, reference_outputs(engine, data, ablation=ablation),
                             ablation=ablation)
    expected = whole.metric(keep, neurons)
    assert abs(expected - whole.metric(keep)) > 1e-3  # the reduction matters here
    for cache_bytes in (0, 1 << 30):
        streamed = CircuitEvaluator(engine, data, logit_diff, ablation=ablation, batch_size=3, cache_bytes=cache_bytes)
        assert streamed.metric(keep, neurons) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert streamed.metric(keep, {0: neurons[0]}) == pytest.approx(whole.metric(keep, {0: neurons[0]}), rel=1e-9,
                                                                       abs=1e-12)
        assert streamed._hidden == {}
        if ablation == "corrupted":  # three pieces; with no cache every pass reruns them
            assert streamed.reference.computed == (6 if cache_bytes == 0 else 3)
