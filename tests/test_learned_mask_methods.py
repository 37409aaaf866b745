"""Edge Pruning and UGS (learned masks) on the planted models.

The bars (issue 24): ``discover`` with each method's defaults and the default selection (target
faithfulness 0.9, verified by patching) finds the planted circuit, edge recall 1.0 and precision
>= 0.9 against ``circuits reference``, compared through ``circuits compare --json``.  The fast tests
check the contract on a few steps: the same seed gives the same scores, progress reports step, loss,
expected edges and f, the manifest records steps, final loss, sparsity target and init, node masks
score heads and MLPs, and batches are visited in turn.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from circuits.circuit.discover import discover
from circuits.engine.engine import GraphEngine
from circuits.methods.base import MethodOptions
from circuits.models import load_model
from circuits.registry import get_method, get_task
from circuits.circuit.run_folder import write_run
from cli_helpers import invoke

pytestmark = pytest.mark.usefixtures("one_thread")
METHODS = ("edge-pruning", "ugs")


def _setup(spec, n=16):
    loaded = load_model(spec)
    task = get_task("greater-than")
    return GraphEngine.from_model(loaded), task, task.build(loaded.tokenizer, n=n, seed=3)


@pytest.fixture(scope="module")
def planted():
    return _setup("planted", n=8)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_scores_and_progress(planted, method):
    engine, task, data = planted
    reports = []
    opts = MethodOptions(batch_size=4, params={"steps": 6, "mask_seed": 5})
    a = get_method(method).score(engine, data, task.metric, opts, progress=lambda d, t, m: reports.append((d, t, m)))
    b = get_method(method).score(engine, data, task.metric, opts)
    assert torch.equal(a.edge_scores, b.edge_scores)
    c = get_method(method).score(engine, data, task.metric, MethodOptions(batch_size=4, params={"steps": 6, "mask_seed": 6}))
    assert not torch.equal(a.edge_scores, c.edge_scores)
    assert [d for d, _, _ in reports] == list(range(1, 7)) and all(t == 6 for _, t, _ in reports)
    assert all(f"{method}: step" in m and "loss" in m and "expected edges" in m and ", f " in m for _, _, m in reports)
    # scores: negative on the valid edges (more negative: more surely kept), 0 elsewhere
    valid = engine.graph.valid_mask()
    assert bool((a.edge_scores[valid] < 0).all()) and bool((a.edge_scores[~valid] == 0).all())
    info = a.info
    assert info["steps"] == 6 and info["init"] == "none" and math.isfinite(info["final_loss"])
    assert "target_sparsity" in info
    # two pieces of 4 prompts, each run once for its reference (cached), steps alternate between them
    assert info["forward_passes"] == 6 + 2 * 2 + 2


def test_edge_pruning_own_circuit_has_the_exact_sparsity(planted):
    engine, task, data = planted
    s = get_method("edge-pruning").score(engine, data, task.metric, MethodOptions(params={"steps": 3, "target_sparsity": 0.9}))
    k = round(0.1 * engine.graph.n_edges)
    assert s.info["kept_at_target"] == k == int(s.extra["kept_mask"].sum())
    # the kept edges are the k best-scored
    kept = s.edge_scores[s.extra["kept_mask"]]
    others = s.edge_scores[engine.graph.valid_mask() & ~s.extra["kept_mask"]]
    assert float(kept.max()) <= float(others.min())


@pytest.mark.parametrize("method", METHODS)
def test_node_masks_score_heads_and_mlps(planted, method):
    engine, task, data = planted
    result = discover(engine, data, task.metric, get_method(method),
                      MethodOptions(params={"steps": 4, "granularity": "node"}), curve=False)
    assert result.selection.granularity == "node"
    g = engine.graph
    assert set(result.scores.node_scores) == set(g.sender_names)
    assert result.scores.info["units"] == g.n_senders - 1


def test_manifest_records_the_training(planted, tmp_path):
    engine, task, data = planted
    result = discover(engine, data, task.metric, get_method("edge-pruning"), MethodOptions(params={"steps": 3}),
                      curve=False)
    write_run(tmp_path / "run", result, {"task": task.name, "model": "planted", "method": "edge-pruning", "n": 8, "seed": 3})
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    info = manifest["method_info"]
    assert info["steps"] == 3 and info["target_sparsity"] == 0.95 and info["init"] == "none"
    assert isinstance(info["final_loss"], float)
    assert manifest["options"]["target_sparsity"] == 0.95


def test_unknown_option_is_one_line(planted):
    code, _, err = invoke("discover", "greater-than", "--model", "planted", "--method", "ugs", "--target-sparsity", "0.9",
                          "--out", "/tmp/never-written-ugs")
    assert code == 2 and "Traceback" not in err and "--target-sparsity" in err


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["planted", "planted-deep"])
@pytest.mark.parametrize("method", METHODS)
def test_default_circuit_is_the_planted_one(spec, method, tmp_path):
    engine, task, data = _setup(spec)
    ref = tmp_path / "gt.json"
    code, _, err = invoke("reference", spec, "--out", str(ref))
    assert code == 0, err
    result = discover(engine, data, task.metric, get_method(method), curve=False)
    write_run(tmp_path / "run", result, {"task": task.name, "model": spec, "method": method, "n": len(data), "seed": 3})
    code, out, err = invoke("compare", str(tmp_path / "run"), str(ref), "--json")
    assert code == 0, err
    found = json.loads(out)
    print(f"{spec} {method}: k {result.selection.k}, verified {result.selection.verified}, {found['edges']}")
    assert found["edges"]["recall"] == 1.0 and found["edges"]["precision"] >= 0.9
    assert result.faithfulness.f >= 0.9
