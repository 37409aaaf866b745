"""Positional ACDC (``discover --method acdc --positions``) against a plainly written one-pair-at-a-time loop.

The referee patches each trial circuit in one full run through :class:`PositionalEvaluator` (the positional
faithfulness path, itself checked against per-position hooks in ``test_positions.py``): no restarts, no batched
copies, no column keeps, and no liveness: it tests every (edge, span) pair, receivers from the logits back.
"""
from __future__ import annotations

import pytest
import torch

from circuits.circuit.positions import PositionalEvaluator
from circuits.data.spans import span_table
from circuits.methods.base import MethodOptions
from circuits.registry import get_method
from circuits.tasks.greater_than import GreaterThan
from circuits.tasks.ioi import IOI
from reference import tiny_gpt2_float64


NOISE = 1e-12  # float64 rounding of a metric change: below it a pair "does nothing"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    _, engine, tok = tiny_gpt2_float64(tmp_path_factory.mktemp("acdc-pos-gpt2"))
    return engine, tok


def plain_positional_acdc(engine, data, metric, tau: float, order: str, ablation: str = "corrupted"):
    """ACDC over (edge, span) pairs written out: every pair tested, each on the current circuit, in one full run."""
    g = engine.graph
    ev = PositionalEvaluator(engine, data, metric, ablation=ablation)
    K = span_table(data).k
    kept = g.valid_mask()[..., None].repeat(1, 1, K)
    current = ev.metric(kept)
    effects = {}
    for r in reversed(range(g.n_receivers)):
        senders = list(range(g.n_valid_senders(r)))
        for s in (reversed(senders) if order == "reverse" else senders):
            for k in range(K):
                trial = kept.clone()
                trial[s, r, k] = False
                value = ev.metric(trial)
                effects[(s, r, k)] = value - current
                if abs(value - current) < tau:
                    kept, current = trial, value
    return kept, effects


def _task(name):
    return GreaterThan() if name == "greater-than" else IOI()


@pytest.mark.parametrize("task_name, order, batch_size", [
    ("greater-than", "reverse", 0),
    ("ioi", "reverse", 3),  # per-prompt span layouts, right padding, two parts
    pytest.param("greater-than", "normal", 2, marks=pytest.mark.slow),
])
def test_positional_acdc_matches_the_plain_loop(setup, task_name, order, batch_size):
    engine, tok = setup
    task = _task(task_name)
    data = task.build(tok, n=4, seed=2)
    acdc = get_method("acdc")
    options = lambda tau: MethodOptions(batch_size=batch_size, params={"tau": tau, "acdc_order": order})  # noqa: E731
    everything = acdc.score_positional(engine, data, task.metric, options(0.0))
    sizes = sorted(v for v in everything.edge_scores.abs().flatten().tolist() if v > NOISE)  # tau 0: all kept
    i = len(sizes) // 2
    tau = (sizes[i] + sizes[i + 1]) / 2  # removes most pairs, keeps some: both kinds of decision happen
    kept, effects = plain_positional_acdc(engine, data, task.metric, tau=tau, order=order)
    assert min(abs(abs(v) - tau) for v in effects.values()) > NOISE, "a decision sits on the threshold"
    result = acdc.score_positional(engine, data, task.metric, options(tau))
    assert result.extra["kept_mask"].shape == kept.shape
    assert torch.equal(result.extra["kept_mask"], kept)
    assert 0 < int(kept.sum()) < int(engine.graph.valid_mask().sum()) * kept.shape[-1]
    scores = result.edge_scores
    scored = {at for at in effects if float(scores[at]) != 0.0}
    assert len(scored) <= result.info["edge_tests"] < len(effects)  # pairs that cannot reach the logits: untested
    for at, v in effects.items():  # a tested pair scores its effect; an untested one (score 0) had none in the loop
        assert abs(float(scores[at]) - v) < NOISE
    assert sum(abs(v) > NOISE for v in effects.values()) > 10  # the pairs matter
    assert result.info["complete"] is True and result.info["spans"] == list(span_table(data).names)
    assert result.info["passes"] < result.info["edge_tests"]  # batched


def test_discover_acdc_positions_cli(tiny_gpt2_dir, tmp_path):
    import json

    from circuits.graphs.files import load_circuit
    from circuits.graphs.positions import is_positional, pair_names
    from cli_helpers import invoke

    run = tmp_path / "run"
    code, out, err = invoke("discover", "greater-than", "--model", str(tiny_gpt2_dir), "--method", "acdc", "--positions",
                            "--tau", "0", "--n", "6", "--holdout", "0", "--out", str(run))
    assert code == 0, err
    assert "(edge, span) pairs kept" in out and "acdc, tau 0:" in out
    G = load_circuit(run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert is_positional(G) and manifest["granularity"] == "positional"
    assert manifest["selection"]["mode"] == "acdc" and 0 < manifest["pairs_kept"] == len(pair_names(G))
    assert manifest["pairs_kept"] < manifest["pairs_total"]  # tau 0 keeps every tested pair: the rest reach no logit
    assert manifest["method_info"]["complete"] is True and manifest["method_info"]["edge_tests"] > 0
    stopped = tmp_path / "stopped"
    code, out, err = invoke("discover", "greater-than", "--model", str(tiny_gpt2_dir), "--method", "acdc", "--positions",
                            "--max-tests", "5", "--top-k", "4", "--n", "6", "--holdout", "0", "--out", str(stopped))
    assert code == 0, err
    assert "stopped early after 5 edge tests" in err
    assert json.loads((stopped / "manifest.json").read_text())["selection"]["mode"] == "top-k"


@pytest.mark.parametrize("flags, says", [
    (["--method", "acdc", "--tau", "-1"], "--tau"),
    (["--method", "acdc", "--acdc-order", "sideways"], "--acdc-order"),
    (["--method", "acdc", "--verify"], "--verify"),
    (["--method", "acdc", "--neurons", "m0"], "--neurons"),
    (["--method", "path-patching"], "--positions works with eap, eap-ig, activation-patching, acdc"),
])
def test_bad_positional_acdc_input_is_a_one_line_error(tiny_gpt2_dir, tmp_path, flags, says):
    from cli_helpers import assert_user_error, invoke

    code, _, err = invoke("discover", "greater-than", "--model", str(tiny_gpt2_dir), "--positions", *flags,
                          "--out", str(tmp_path / "x"))
    assert_user_error(code, err, says)


def test_acdc_selection_needs_acdc(setup):
    from circuits.circuit.discover import SelectionSpec
    from circuits.circuit.positions import check_positional
    from circuits.errors import CircuitsError

    with pytest.raises(CircuitsError, match="selection mode acdc"):
        check_positional(get_method("eap"), SelectionSpec("acdc", 0.0), "sum")


@pytest.mark.parametrize("kind", ["q", "k", "v", "mlp", "logits"])
@pytest.mark.parametrize("layout", ["shared", "per-prompt"])
def test_positional_column_passes_equal_separate_full_runs(setup, kind, layout):
    """What positional ACDC's batched tests rest on: ``c`` copies of the batch in one pass restarted at the
    receiver's layer, differing in one receiver's positional keep column ([c, S, P], or [c, S, b, P] per prompt with
    the batch's keep [S, R, b, P] shared by the copies), give each copy the logits of its own keep run in full."""
    from test_acdc import check_column_pass

    engine, tok = setup
    data = GreaterThan().build(tok, n=3, seed=4)
    g = engine.graph
    torch.manual_seed(1)
    b, P, c = len(data), data.clean.shape[1], 3
    layer = g.n_layers if kind == "logits" else 1
    r = {"mlp": g.mlp_receiver(1), "logits": g.logits_receiver}.get(kind)
    r = g.head_receiver(1, g.n_heads - 1, kind) if r is None else r
    lead = (b,) if layout == "per-prompt" else ()
    keep = (torch.rand(g.n_senders, g.n_receivers, *lead, P) > 0.3).double()
    first = layer * (3 * g.n_heads + 1)  # nothing before the restart layer is patched
    keep[:, :first] = 1.0
    columns = (torch.rand(c, g.n_senders, *lead, P) > 0.5).double()
    columns[0], columns[1] = 1.0, 0.0
    ref = engine.run(data.corrupted, data.answer_pos, collect=True).outputs
    clean = engine.run(data.clean, data.answer_pos, collect=True, keep_resid=True)
    logits = check_column_pass(engine, data, layer, keep, r, columns, ref, clean)
    assert float((logits[:b] - logits[b:2 * b]).abs().max()) > 1e-6  # the copies differ
