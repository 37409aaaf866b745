"""Edge patching against one-edge-at-a-time patched runs made with hooks on the HF model (float64)."""
from __future__ import annotations

import pytest
import torch

from circuits.registry import get_method
from circuits.methods.base import MethodOptions
from circuits.tasks.greater_than import GreaterThan
from reference import edge_patched_logits, tiny_gpt2_float64


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    bridge, engine, tok = tiny_gpt2_float64(tmp_path_factory.mktemp("ep-gpt2"))
    task = GreaterThan()
    return bridge, engine, task, task.build(tok, n=4, seed=1)


def hook_effect(bridge, data, metric, edge: str) -> float:
    """The mean metric's change when ``edge`` alone carries its corrupted value (hooks on the HF model)."""
    rows = torch.arange(len(data))

    def mean(edges):
        logits = edge_patched_logits(bridge, data.clean, data.corrupted, edges)[rows, data.answer_pos]
        return float(metric(logits, data).double().mean())

    return mean([edge]) - mean([])


def test_every_edge_equals_its_hook_patched_run(setup):
    bridge, engine, task, data = setup
    scores = get_method("edge-patching").score(engine, data, task.metric, MethodOptions(batch_size=3))
    assert scores.scored is None
    got = scores.edge_dict()
    largest = max(abs(v) for v in got.values())
    assert largest > 1e-6  # the check is not vacuous (a random model's probability differences are small)
    for name, value in got.items():
        assert value == pytest.approx(hook_effect(bridge, data, task.metric, name), abs=1e-9 * largest), name


def test_a_sample_scores_the_top_and_random_edges_only(setup):
    _, engine, task, data = setup
    g = engine.graph
    full = get_method("edge-patching").score(engine, data, task.metric)
    eap = get_method("eap").score(engine, data, task.metric).edge_scores
    params = {"sample": 10, "sample_top": 0.4, "sample_seed": 3}
    part = get_method("edge-patching").score(engine, data, task.metric, MethodOptions(params=params))
    scored = part.scored
    assert int(scored.sum()) == 10 and not bool((scored & ~g.valid_mask().bool()).any())
    top = set(eap.abs().reshape(-1).argsort(descending=True)[:4].tolist())
    assert top <= set(scored.reshape(-1).nonzero().squeeze(1).tolist())
    torch.testing.assert_close(part.edge_scores[scored], full.edge_scores[scored], rtol=0, atol=1e-12)
    assert bool((part.edge_scores[~scored] == 0).all())
    again = get_method("edge-patching").score(engine, data, task.metric, MethodOptions(params=params))
    assert torch.equal(again.scored, scored)
    other = get_method("edge-patching").score(engine, data, task.metric, MethodOptions(params={**params, "sample_seed": 4}))
    assert not torch.equal(other.scored, scored)


@pytest.mark.slow
def test_the_planted_circuit_and_unscored_edges_in_the_run_folder(tmp_path):
    """On the planted model, the exact effects single out the planted edges, and a sampled run writes
    its unscored edges empty in scores.tsv and counts them in the manifest."""
    import json

    from cli_helpers import invoke
    from circuits.graphs.compare import auroc, load_scores
    from circuits.models.planted import ground_truth

    out = tmp_path / "run"
    code, _, err = invoke("discover", "greater-than", "--model", "planted", "--method", "edge-patching", "--out", str(out),
                          "--n", "16", "--seed", "3", "--sample", "40", "--top-k", "10")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["edges_scored"] == 40 and manifest["edges_unscored"] == manifest["edges_total"] - 40
    lines = (out / "scores.tsv").read_text().splitlines()[1:]
    assert sum(1 for line in lines if line.endswith("\t")) == manifest["edges_unscored"]
    scores = load_scores(out)
    assert len(scores) == 40
    truth = set(ground_truth("planted")["edges"])
    assert truth <= set(scores)  # the top half of the sample (EAP's top edges) holds every planted edge
    assert auroc({k: abs(v) for k, v in scores.items()}, truth) == 1.0
