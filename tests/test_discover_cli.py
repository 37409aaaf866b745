"""``circuits discover`` and ``circuits evaluate-circuit`` end to end on a tiny random GPT-2."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import networkx as nx
import pytest

from circuits.graphs.build import edge_names

from circuits.graphs.files import load_circuit
from circuits.graphs.compare import load_scores
from cli_helpers import assert_user_error

MANIFEST_KEYS = {
    "faithfulness", "edges_kept", "edges_total", "cpr", "cmd", "command", "task", "model", "method", "n", "seed",
    "ablation", "versions", "timings", "forward_passes", "selection", "curve_signed", "curve_abs", "metric_full", "metric_empty",
    "metric_circuit", "granularity",
}
EDGES_2x4 = 110  # edges of a 2-layer, 4-head model


def invoke(*args: str, cwd: Path | None = None):
    """The console script's function (``circuits.cli.main``) in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    import torch

    from circuits.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: the thread pool only adds waiting on a busy machine
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", ["circuits", *args])
        if cwd is not None:
            mp.chdir(cwd)
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


class FakeMethod:
    """Deterministic scores with node and neuron scores, for the parts eap leaves empty."""

    name = "fake"

    def score(self, engine, dataset, metric, options, *, progress=None):
        import torch

        from circuits.methods.base import Scores

        g = engine.graph
        progress(0, 2, "fake")
        values = torch.arange(g.n_senders * g.n_receivers, dtype=torch.float32).reshape(g.n_senders, g.n_receivers)
        values = (values.sin() * g.valid_mask()).float()
        progress(2, 2, "fake")
        return Scores(graph=g, method="fake", edge_scores=values, node_scores={"a0.h1": 0.5, "m1": -2.0},
                      neuron_scores={"m1": [(3, 0.2), (7, -0.1)]}, info={"forward_passes": 7})


@pytest.fixture
def fake_method(monkeypatch):
    import circuits.registry

    real = circuits.registry.get_method
    monkeypatch.setattr(circuits.registry, "get_method", lambda name: FakeMethod() if name == "fake" else real(name))


@pytest.fixture(scope="module")
def eap_run(tiny_gpt2_dir, tmp_path_factory):
    """One real discovery run with eap (the default selection: target faithfulness 0.9)."""
    work = tmp_path_factory.mktemp("discover")
    code, out, err = invoke("discover", "greater-than", "--model", str(tiny_gpt2_dir), "--method", "eap", "--out", "run",
                            "--n", "12", "--seed", "1", cwd=work)
    assert code == 0, err
    return work / "run", (out, err)


# ---------------------------------------------------------------- a real run
def test_discover_writes_the_run_folder(eap_run):
    run, (out, err) = eap_run
    names = {p.name for p in run.iterdir()}
    assert {"circuit.json", "circuit.dot", "circuit.svg", "circuit.html", "scores.tsv", "manifest.json", "report.md"} <= names
    assert "graphviz" not in err  # circuit.svg needs no GraphViz
    assert not any(n.startswith(".") for n in names), "no temporary files left behind"
    assert out.strip().splitlines()[-1] == "run"


def test_manifest(eap_run):
    run, _ = eap_run
    m = json.loads((run / "manifest.json").read_text())
    assert MANIFEST_KEYS <= set(m)
    assert (m["task"], m["method"], m["n"], m["seed"], m["ablation"]) == ("greater-than", "eap", 12, 1, "corrupted")
    assert m["command"][:3] == ["circuits", "discover", "greater-than"] and "--n" in m["command"]
    assert m["edges_total"] == EDGES_2x4
    assert set(m["versions"]) == {"circuits", "torch", "transformer_lens", "transformers", "networkx"}
    assert all(m["versions"].values())
    assert {"load", "dataset", "scoring", "reference", "curve", "selection", "write"} <= set(m["timings"])
    assert m["selection"]["mode"] == "target-faithfulness" and m["selection"]["value"] == 0.9
    if m["selection"]["reached"]:
        assert m["faithfulness"] >= 0.9
    assert m["selection"]["edges_kept"] == m["edges_kept"] <= m["selection"]["k"]
    for key in ("curve_signed", "curve_abs"):
        assert [p["fraction"] for p in m[key]] == [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
        assert set(m[key][0]) == {"fraction", "edges", "faithfulness"}
        assert m[key][-1]["faithfulness"] == pytest.approx(1.0)
    fs = [p["faithfulness"] for p in m["curve_signed"]]  # MIB's CPR: the plain trapezoid sum of the signed curve
    xs = [p["fraction"] for p in m["curve_signed"]]
    assert m["cpr"] == pytest.approx(sum((xs[i + 1] - xs[i]) * (fs[i] + fs[i + 1]) / 2 for i in range(9)))
    gs = [abs(1 - p["faithfulness"]) for p in m["curve_abs"]]
    assert m["cmd"] == pytest.approx(sum((xs[i + 1] - xs[i]) * (gs[i] + gs[i + 1]) / 2 for i in range(9)))
    assert isinstance(m["forward_passes"], int) and m["forward_passes"] > 0
    assert m["faithfulness"] == pytest.approx((m["metric_circuit"] - m["metric_empty"]) / (m["metric_full"] - m["metric_empty"]))


def test_circuit_json_and_scores(eap_run):
    run, _ = eap_run
    m = json.loads((run / "manifest.json").read_text())
    data = json.loads((run / "circuit.json").read_text())
    G = nx.node_link_graph(data, edges="edges")
    assert isinstance(G, nx.DiGraph)
    H = load_circuit(run)
    assert len(edge_names(H)) == m["edges_kept"]
    assert H.graph["task"] == "greater-than" and H.graph["n"] == 12 and H.graph["seed"] == 1
    assert (H.graph["n_layers"], H.graph["n_heads"], H.graph["d_model"]) == (2, 4, 64)  # what EAP-IG's cfg needs
    scores = load_scores(run)
    assert len(scores) == EDGES_2x4 and edge_names(H) <= set(scores)
    report = (run / "report.md").read_text()
    assert "## Top components" in report and "greater-than" in report
    assert (run / "circuit.dot").read_text().startswith("digraph circuit {")


def test_evaluate_circuit_reproduces_the_runs_faithfulness(eap_run, tiny_gpt2_dir):
    run, _ = eap_run
    m = json.loads((run / "manifest.json").read_text())
    code, stdout, err = invoke("evaluate-circuit", str(run), "--model", str(tiny_gpt2_dir), "--json")
    assert code == 0, err
    out = json.loads(stdout)
    assert {"faithfulness", "edges", "metric_full", "metric_empty", "metric_circuit", "n", "seed", "model", "task"} <= set(out)
    assert (out["n"], out["seed"], out["task"], out["edges"]) == (12, 1, "greater-than", m["edges_kept"])
    assert out["faithfulness"] == pytest.approx(m["faithfulness"], abs=1e-9)
    assert out["metric_full"] == pytest.approx(m["metric_full"], abs=1e-12)


# ---------------------------------------------------------------- user errors (no model needed)
def test_non_empty_out_is_refused_without_force(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = invoke("discover", "greater-than", "--model", "gpt2", "--method", "eap", "--out", str(out))
    assert_user_error(code, err, "not empty")
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("flags", [
    ["--top-k", "5", "--threshold", "0.1"],
    ["--top-k", "5", "--target-faithfulness", "0.8"],
    ["--threshold", "0.1", "--target-faithfulness", "0.8"],
])
def test_conflicting_selection_modes_are_refused(tmp_path, flags):
    code, _, err = invoke("discover", "greater-than", "--model", "gpt2", "--method", "eap",
                            "--out", str(tmp_path / "run"), *flags)
    assert_user_error(code, err, "choose one selection mode")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags,fragment", [
    (["--ablation", "resample"], "--ablation"),
    (["--neurons", "a0.h1"], "--neurons"),
    (["--target-faithfulness", "1.5"], "--target-faithfulness"),
    (["--n", "0"], "--n"),
])
def test_bad_options_are_one_line_errors(tmp_path, flags, fragment):
    code, _, err = invoke("discover", "greater-than", "--model", "gpt2", "--method", "eap",
                            "--out", str(tmp_path / "run"), *flags)
    assert_user_error(code, err, fragment)


# ---------------------------------------------------------------- in-process runs with a fake method
def test_top_k_run_with_node_and_neuron_scores_and_force(tmp_path, tiny_gpt2_dir, fake_method):
    out = tmp_path / "run"
    out.mkdir()
    (out / "circuit.svg").write_text("stale")
    (out / "notes.txt").write_text("mine")
    code, stdout, err = invoke("discover", "greater-than", "--model", str(tiny_gpt2_dir),
                                 "--method", "fake", "--out", str(out), "--n", "6", "--top-k", "1000", "--force")
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["selection"] == {"mode": "top-k", "value": EDGES_2x4, "ranking": "abs", "k": EDGES_2x4,
                              "edges_kept": EDGES_2x4, "evaluations": 0, "reached": True, "verified": None}
    assert m["faithfulness"] == pytest.approx(1.0, abs=1e-6) and m["forward_passes"] == 7
    G = load_circuit(out)
    assert G.nodes["m1"]["top_neurons"] == [[3, 0.2], [7, -0.1]] and G.nodes["m1"]["score"] == -2.0
    report = (out / "report.md").read_text()
    assert report.index("| m1 | mlp |") < report.index("| a0.h1 | head |")
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "circuit.svg").read_text().startswith("<svg")
    assert "faithfulness 1.000" in stdout


def test_threshold_run_with_mean_ablation(tmp_path, tiny_gpt2_dir, fake_method):
    out = tmp_path / "run"
    code, _, err = invoke("discover", "greater-than", "--model", str(tiny_gpt2_dir),
                            "--method", "fake", "--out", str(out), "--n", "6", "--threshold", "0.9",
                            "--ablation", "mean", "--batch-size", "4")
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["ablation"] == "mean" and m["options"]["batch_size"] == 4
    assert m["selection"]["mode"] == "threshold" and m["selection"]["value"] == 0.9
    scores = load_scores(out)
    assert m["selection"]["k"] == sum(abs(v) >= 0.9 for v in scores.values())
    # evaluate-circuit takes the ablation, n and seed from the circuit
    code, stdout, err = invoke("evaluate-circuit", str(out / "circuit.json"),
                                 "--model", str(tiny_gpt2_dir), "--json")
    assert code == 0, err
    res = json.loads(stdout)
    assert (res["n"], res["ablation"]) == (6, "mean")
    # discovery ran in batches of 4 and evaluate-circuit in one batch: on this random model f is a ratio
    # of tiny metric differences, so float32 rounding of the two batchings shows at the 1e-6 level
    assert res["faithfulness"] == pytest.approx(m["faithfulness"], abs=1e-4)


def test_evaluate_circuit_names_the_first_bad_edge(tmp_path, tiny_gpt2_dir):
    from circuits.graphs.build import build_graph, write_json

    path = write_json(build_graph({"input->a0.h1<q>": 1.0, "a0.h1->logits": 1.0, "a7.h0->logits": 0.5, "a9.h9->logits": 1.0},
                                  metadata={"task": "greater-than", "n": 4}), tmp_path / "c.json")
    code, _, err = invoke("evaluate-circuit", str(path), "--model", str(tiny_gpt2_dir))
    assert_user_error(code, err, "a7.h0->logits")
    assert "2 layers x 4 heads" in err


def test_evaluate_circuit_reads_neuron_edges_as_the_mlp_edge(tmp_path, tiny_gpt2_dir):
    """``m0.n3->logits`` is the edge m0->logits with m0 reduced to neuron 3 (issue 12's contract)."""
    from circuits.graphs.build import build_graph, write_json

    meta = {"task": "greater-than", "n": 4}
    neuron = write_json(build_graph({"input->a0.h1<q>": 1.0, "a0.h1->m0.n3": 1.0, "m0.n3->logits": 1.0}, metadata=meta),
                        tmp_path / "n.json")
    mlp = write_json(build_graph({"input->a0.h1<q>": 1.0, "a0.h1->m0": 1.0, "m0->logits": 1.0}, metadata=meta,
                                 neurons={"m0": [3]}), tmp_path / "m.json")
    results = []
    for path in (neuron, mlp):
        code, out, err = invoke("evaluate-circuit", str(path), "--model", str(tiny_gpt2_dir), "--json")
        assert code == 0, err
        results.append(json.loads(out))
    assert results[0]["neurons_kept"] == {"m0": [3]} and results[0]["edges"] == 3
    assert results[0]["faithfulness"] == results[1]["faithfulness"]


def test_evaluate_circuit_needs_a_task(tmp_path):
    from circuits.graphs.build import build_graph, write_json

    path = write_json(build_graph({"a0.h1->logits": 1.0}, metadata={"model": "gpt2"}), tmp_path / "c.json")
    code, _, err = invoke("evaluate-circuit", str(path))
    assert_user_error(code, err, "--task")


def test_path_patching_budget_warns_and_records_it(tiny_gpt2_dir, tmp_path):
    code, out, err = invoke("discover", "greater-than", "--model", str(tiny_gpt2_dir), "--method", "path-patching",
                            "--max-passes", "6", "--path-threshold", "0", "--top-k", "3", "--n", "4", "--out", "run",
                            cwd=tmp_path)
    assert code == 0, err
    assert "warning: path-patching stopped at its budget (6 of --max-passes 6 passes)" in err
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert (m["complete"], m["passes_used"], m["max_passes"], m["granularity"]) == (False, 6, 6, "edge")
    assert m["options"]["path_threshold"] == 0.0
    code, _, err = invoke("discover", "greater-than", "--model", str(tiny_gpt2_dir), "--method", "path-patching",
                          "--max-passes", "0", "--out", "run2", cwd=tmp_path)
    assert_user_error(code, err, "--max-passes")
