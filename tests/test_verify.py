"""Verification of a chosen edge circuit by patching (circuits.circuit.select.verify_edges) and the signed ranking.

- On the planted model, edges added to the planted circuit that carry nothing (decoy heads, a YY
  decoy whose code has a constant norm) are removed and every planted edge stays.
- On a random model, the verified circuit equals a plain loop over fresh patched runs (no cache,
  no shortcuts), and the metric moves by at most the tolerance.
- ``discover`` records what verification did; the CLI refuses ``--verify`` where it means nothing.
"""
from __future__ import annotations

import json

import pytest
import torch

from circuits.circuit.discover import SelectionSpec, discover, select, verifies
from circuits.engine.engine import GraphEngine
from circuits.errors import CircuitsError
from circuits.circuit.faithfulness import CircuitEvaluator, circuit_metric, reference_outputs
from circuits.models import load_model
from circuits.models.planted import ground_truth
from circuits.circuit.ranking import prune
from circuits.registry import get_method, get_task
from circuits.methods.base import Scores
from circuits.circuit.select import Selection, top_k, verify_edges
from cli_helpers import invoke

pytestmark = pytest.mark.usefixtures("one_thread")

DECOYS = ("input->a0.h2<v>", "a0.h2->logits", "input->a0.h3<v>", "a0.h3->m1", "input->a1.h2<v>", "a1.h2->logits",
          "a0.h1->m1")


@pytest.fixture(scope="module")
def planted():
    loaded = load_model("planted")
    task = get_task("greater-than")
    return GraphEngine.from_model(loaded), task, task.build(loaded.tokenizer, n=16, seed=3)


def _selection(mask: torch.Tensor) -> Selection:
    return Selection(keep_mask=mask, k=int(mask.sum()), edges_kept=int(mask.sum()), faithfulness=None,
                     mode="top-k", value=float(mask.sum()))


def _names(mask: torch.Tensor, graph) -> set:
    return {graph.edge_name(s, r) for s, r in graph.edges() if mask[s, r]}


def test_verification_removes_the_edges_that_carry_nothing(planted):
    engine, task, data = planted
    g = engine.graph
    truth = set(ground_truth("planted")["edges"])
    chosen = _selection(prune(g.keep_mask([*truth, *DECOYS]), g))
    assert _names(chosen.keep_mask, g) == truth | set(DECOYS)
    ev = CircuitEvaluator(engine, data, task.metric)
    seen = []
    out = verify_edges(ev, chosen, progress=lambda done, total, msg: seen.append((done, total, msg)))
    assert _names(out.keep_mask, g) == truth and out.edges_kept == len(truth)
    assert out.verified.tested == len(truth) + len(DECOYS)
    assert set(out.verified.removed) == set(DECOYS) and out.verified.tolerance == 1e-3
    assert 1 <= out.verified.evaluations <= out.verified.tested + 1
    assert seen[-1] == (out.verified.tested, out.verified.tested, "verifying edges")
    # a tolerance of 0 keeps an edge whose effect is float noise (a1.h2's code moves the logits by ~1e-8)
    strict = verify_edges(ev, chosen, tolerance=0.0)
    assert truth <= _names(strict.keep_mask, g) and strict.edges_kept > len(truth)


def test_verification_equals_a_plain_loop_on_a_random_model():
    from test_faithfulness import logit_diff, random_dataset, random_weights

    engine = GraphEngine(random_weights(seed=3))
    data = random_dataset(n=6, seed=4)
    g = engine.graph
    values = torch.randn(g.n_senders, g.n_receivers, generator=torch.Generator().manual_seed(5)) * g.valid_mask()
    chosen = top_k(Scores(graph=g, method="random", edge_scores=values), 40)
    assert chosen.edges_kept >= 15
    tolerance = 0.02
    out = verify_edges(CircuitEvaluator(engine, data, logit_diff), chosen, tolerance=tolerance)

    # the reference: every metric from a fresh patched run, in the documented order
    ref = reference_outputs(engine, data)

    def m(mask):
        return circuit_metric(engine, data, logit_diff, mask, ref)

    scale = abs(m(g.valid_mask()) - m(torch.zeros_like(g.valid_mask())))
    current = chosen.keep_mask.clone()
    target = m(current)
    removed = []
    for s, r in reversed(g.edges()):
        if current[s, r]:
            trial = current.clone()
            trial[s, r] = False
            trial = prune(trial, g)
            if abs(m(trial) - target) <= tolerance * scale:
                removed += sorted(_names(current & ~trial, g))
                current = trial
    assert torch.equal(out.keep_mask, current)
    assert sorted(out.verified.removed) == sorted(removed) and 0 < len(removed) < chosen.edges_kept
    assert abs(m(out.keep_mask) - target) <= tolerance * scale


def test_verification_refuses_node_circuits_and_undefined_faithfulness(planted):
    engine, task, data = planted
    g = engine.graph
    node = Selection(keep_mask=g.valid_mask(), k=3, edges_kept=int(g.valid_mask().sum()), faithfulness=None,
                     mode="top-k", value=3.0, granularity="node")
    ev = CircuitEvaluator(engine, data, task.metric)
    with pytest.raises(CircuitsError, match="edge circuit"):
        verify_edges(ev, node)
    with pytest.raises(CircuitsError, match="tolerance"):
        verify_edges(ev, _selection(g.valid_mask()), tolerance=float("nan"))
    same = CircuitEvaluator(engine, data.subset(torch.arange(2)), lambda logits, ds: torch.zeros(len(ds)))
    with pytest.raises(CircuitsError, match="same metric"):
        verify_edges(same, _selection(g.valid_mask()))


def test_when_discover_verifies():
    edge = Selection(keep_mask=torch.zeros(1), k=5, edges_kept=5, faithfulness=0.95, mode="target-faithfulness", value=0.9)
    assert verifies(SelectionSpec(), edge)  # auto: a small target-faithfulness circuit
    assert not verifies(SelectionSpec(), Selection(**{**edge.__dict__, "edges_kept": 65}))
    assert not verifies(SelectionSpec("top-k", 5), Selection(**{**edge.__dict__, "mode": "top-k"}))
    assert verifies(SelectionSpec("top-k", 5, verify=True), Selection(**{**edge.__dict__, "mode": "top-k"}))
    assert not verifies(SelectionSpec(verify=False), edge)
    assert not verifies(SelectionSpec(verify=True), Selection(**{**edge.__dict__, "granularity": "node"}))
    with pytest.raises(CircuitsError, match="acdc"):
        SelectionSpec("acdc", 0.0, verify=True)
    with pytest.raises(CircuitsError, match="ranking"):
        SelectionSpec(ranking="largest")


def test_select_with_the_signed_ranking_reaches_the_target_with_the_helpful_edges(planted):
    engine, task, data = planted
    scores = get_method("eap").score(engine, data, task.metric)
    ev = CircuitEvaluator(engine, data, task.metric)
    signed = select(SelectionSpec(ranking="signed", verify=False), scores, ev)
    assert signed.ranking == "signed" and signed.reached and signed.verified is None
    kept = signed.keep_mask & engine.graph.valid_mask()
    assert (torch.as_tensor(scores.edge_scores)[kept] < 0).all()  # only edges that help
    assert ev.faithfulness(signed.keep_mask).f >= 0.9


def test_discover_records_ranking_and_verification(tmp_path):
    code, out, err = invoke("discover", "greater-than", "--model", "planted", "--method", "eap", "--n", "16",
                            "--holdout", "0", "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert "verified: " in out
    sel = json.loads((tmp_path / "a" / "manifest.json").read_text())["selection"]
    assert sel["ranking"] == "abs" and sel["verified"]["tested"] >= sel["edges_kept"]
    assert json.loads((tmp_path / "a" / "circuit.json").read_text())["graph"]["ranking"] == "abs"
    code, out, err = invoke("discover", "greater-than", "--model", "planted", "--method", "eap", "--n", "16",
                            "--holdout", "0", "--no-verify", "--ranking", "signed", "--out", str(tmp_path / "b"))
    assert code == 0, err
    sel = json.loads((tmp_path / "b" / "manifest.json").read_text())["selection"]
    assert sel["ranking"] == "signed" and sel["verified"] is None


@pytest.mark.parametrize("args, message", [
    (("--method", "activation-patching", "--verify"), "--verify checks the edges"),
    (("--method", "acdc", "--verify"), "acdc already tested"),
    (("--method", "eap", "--ranking", "largest"), "--ranking must be one of abs, signed"),
    (("--method", "eap", "--verify-tolerance", "-1"), "--verify-tolerance must be"),
])
def test_cli_refuses_bad_selection_options(tmp_path, args, message):
    code, out, err = invoke("discover", "greater-than", "--model", "planted", "--n", "8", *args,
                            "--out", str(tmp_path / "run"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
