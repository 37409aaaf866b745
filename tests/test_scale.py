"""Scale: scores and faithfulness streamed batch by batch equal the all-at-once ones, half
precision agrees with float32, and ``--batch-size auto`` / ``--dtype`` reach the manifest."""
from __future__ import annotations

import json

import pytest
import torch

from circuits.engine.ablation import ABLATIONS, BatchReferences
from circuits.engine.engine import GraphEngine
from circuits.errors import CircuitsError
from circuits.circuit.faithfulness import CircuitEvaluator, faithfulness, faithfulness_curve, reference_outputs
from circuits.circuit.batch_size import auto_batch_size
from circuits.engine.memory import parse_batch_size, parse_memory
from circuits.models.synthetic import llama_parameters, random_llama_weights
from circuits.models.weights import cast_weights
from circuits.registry import get_method
from circuits.methods.base import MethodOptions
from cli_helpers import assert_user_error
from test_discover_cli import invoke
from test_faithfulness import VOCAB, random_dataset, random_weights

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ("eap", "eap-ig", "activation-patching", "path-patching")
BATCHES = (1, 3, 5)  # of 7 prompts: one at a time, and uneven pieces (3+3+1, 5+2)
SLOW_METHODS = {"activation-patching": (3, 5), "path-patching": (3, 5)}  # a pass per node or edge: fewer batchings


def logit_diff(logits, data):
    return logits[:, 3] - logits[:, 5]


@pytest.fixture(scope="module")
def toy():
    return GraphEngine(random_weights(family="llama", L=2, H=2, d=16, m=24)), random_dataset(n=7, p=6)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
@pytest.mark.parametrize("method", METHODS)
def test_streamed_scores_equal_all_at_once(toy, method, ablation):
    engine, ds = toy
    options = dict(ablation=ablation, neurons=("m1",) if method != "path-patching" else (),
                   params={"path_threshold": 0.0} if method == "path-patching" else {})
    whole = get_method(method).score(engine, ds, logit_diff, MethodOptions(batch_size=0, **options))
    assert whole.edge_scores.abs().max() > 0
    for b in SLOW_METHODS.get(method, BATCHES):
        part = get_method(method).score(engine, ds, logit_diff, MethodOptions(batch_size=b, **options))
        assert _rel(part.edge_scores, whole.edge_scores) < 1e-6, (method, b)
        for mlp, top in whole.neuron_scores.items():
            got = dict(part.neuron_scores[mlp])
            for i, v in top:
                assert got[i] == pytest.approx(v, rel=1e-6, abs=1e-9), (method, b, mlp, i)


@pytest.mark.parametrize("ablation", ["mean-positions", "zero"])
def test_streamed_eap_equals_all_at_once_for_the_other_ablations(toy, ablation):
    engine, ds = toy
    whole = get_method("eap").score(engine, ds, logit_diff, MethodOptions(ablation=ablation))
    for b in BATCHES:
        part = get_method("eap").score(engine, ds, logit_diff, MethodOptions(ablation=ablation, batch_size=b))
        assert _rel(part.edge_scores, whole.edge_scores) < 1e-6, b


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_streamed_faithfulness_equals_all_at_once(toy, ablation):
    engine, ds = toy
    scores = get_method("eap").score(engine, ds, logit_diff, MethodOptions(ablation=ablation))
    keep = torch.rand(engine.graph.n_senders, engine.graph.n_receivers, generator=torch.Generator().manual_seed(0)) > 0.6
    whole = faithfulness(engine, ds, logit_diff, keep, reference_outputs(engine, ds, ablation=ablation))
    curve = faithfulness_curve(CircuitEvaluator(engine, ds, logit_diff, reference_outputs(engine, ds, ablation=ablation)),
                               scores, (0.01, 0.1, 0.5, 1.0))
    for b in BATCHES:
        for cache in (0, 1 << 30):  # recomputed every pass, or kept
            f = faithfulness(engine, ds, logit_diff, keep, ablation=ablation, batch_size=b, cache_bytes=cache)
            for name in ("m_full", "m_empty", "m_circuit", "f"):
                assert getattr(f, name) == pytest.approx(getattr(whole, name), rel=1e-6, abs=1e-12), (b, cache, name)
        ev = CircuitEvaluator(engine, ds, logit_diff, ablation=ablation, batch_size=b, cache_bytes=0)
        got = faithfulness_curve(ev, scores, (0.01, 0.1, 0.5, 1.0))
        assert [p.faithfulness for p in got.points] == pytest.approx([p.faithfulness for p in curve.points], rel=1e-6)


def test_batch_references_keep_only_what_fits(toy):
    engine, ds = toy
    whole = reference_outputs(engine, ds)
    one = whole[:, :3].numel() * whole.element_size()
    refs = BatchReferences(engine, ds, batch_size=3, cache_bytes=2 * one)  # pieces of 3, 3, 1: the first two kept
    for _ in range(2):
        torch.testing.assert_close(torch.cat([out for _, out in refs], 1), whole, rtol=1e-12, atol=1e-12)
    assert refs.computed == 4  # 3 the first time, then only the piece that did not fit
    assert len(refs) == 3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_scores_correlate_with_float32(dtype):
    # a Llama shape with 1/sqrt(fan_in) weights (a steady residual stream, as in trained models)
    weights = random_llama_weights(4, 128, 4, 2, 256, VOCAB, seed=3)
    assert llama_parameters(4, 128, 4, 2, 256, VOCAB) == sum(
        t.numel() for t in vars(weights).values() if isinstance(t, torch.Tensor) and t.abs().sum() > 0)
    ds = random_dataset(n=12, p=8)
    full = get_method("eap").score(GraphEngine(weights), ds, logit_diff, MethodOptions(batch_size=5))
    half = get_method("eap").score(GraphEngine(cast_weights(weights, dtype=dtype)), ds, logit_diff,
                                   MethodOptions(batch_size=5))
    assert half.edge_scores.dtype == torch.float32  # accumulated in float32
    pearson = torch.corrcoef(torch.stack([full.edge_scores.flatten(), half.edge_scores.flatten()]))[0, 1]
    assert pearson >= 0.99


def test_memory_options_parse():
    assert parse_memory("16GB") == 16 * 10 ** 9 and parse_memory("4GiB") == 4 * 2 ** 30 and parse_memory("512mb") == 512 * 10 ** 6
    assert parse_batch_size("auto") is None and parse_batch_size("0") == 0 and parse_batch_size("50") == 50
    for bad in ("-1", "lots"):
        with pytest.raises(CircuitsError, match="--batch-size"):
            parse_batch_size(bad)
    for bad in ("16 parsecs", "0GB", "much"):
        with pytest.raises(CircuitsError, match="--max-memory"):
            parse_memory(bad)


def test_auto_batch_follows_the_budget(toy):
    engine, ds = toy
    small = auto_batch_size(engine, ds, logit_diff, max_memory=1)
    assert small.batch_size == 1 and small.bytes_per_prompt > 0
    big = auto_batch_size(engine, ds, logit_diff, max_memory=10 ** 12)
    assert big.batch_size == len(ds)


def test_discover_auto_batch_and_dtype_in_the_manifest(tmp_path, tiny_gpt2_dir):
    out = tmp_path / "run"
    code, _, err = invoke("discover", "greater-than", "--model", str(tiny_gpt2_dir), "--method", "eap", "--out", str(out),
                          "--n", "6", "--top-k", "5", "--batch-size", "auto", "--max-memory", "1GB", "--dtype", "bfloat16")
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["dtype"] == "bfloat16" and m["batch_size"] == m["options"]["batch_size"] >= 1
    assert m["batch_size_auto"]["max_memory_bytes"] == 10 ** 9 and m["batch_size_auto"]["bytes_per_prompt"] > 0
    assert "--batch-size auto:" in err
    # the run's own peak memory growth (over the loaded model and prompts): a tiny model's is small but not nothing
    assert m["memory"]["start_bytes"] > 0 and 0 < m["memory"]["peak_growth_bytes"] < 2 ** 30, m["memory"]


def test_evaluate_circuit_takes_an_automatic_batch(tmp_path, tiny_gpt2_dir):
    out = tmp_path / "run"
    common = ("--model", str(tiny_gpt2_dir), "--n", "6")
    code, _, err = invoke("discover", "greater-than", *common, "--method", "eap", "--out", str(out), "--top-k", "5", "--holdout", "0")
    assert code == 0, err
    code, text, err = invoke("evaluate-circuit", str(out), "--batch-size", "auto", "--max-memory", "1GB", "--json")
    assert code == 0, err
    assert "--batch-size auto:" in err
    whole = json.loads((out / "manifest.json").read_text())["faithfulness"]
    assert json.loads(text)["faithfulness"] == pytest.approx(whole, rel=1e-5)
    assert_user_error(*invoke("evaluate-circuit", str(out), "--batch-size", "2", "--max-memory", "1GB")[::2], "--max-memory")


def test_peak_meter_sees_an_allocation():
    from circuits.data.batching import release_free_memory
    from circuits.engine.memory import PeakMeter

    release_free_memory()
    meter = PeakMeter.try_start("cpu")
    if meter is None:
        pytest.skip("no /proc/self/clear_refs here: the CPU peak cannot be measured")
    block = torch.ones(256 * 2 ** 20 // 4)  # 256 MiB, written
    del block
    # the resident set is the process's net use: memory other threads free meanwhile offsets a little of it
    assert 192 * 2 ** 20 < meter.report()["peak_growth_bytes"] < 1 << 30


def test_discover_rejects_bad_scale_options(tmp_path, tiny_gpt2_dir):
    common = ("discover", "greater-than", "--model", str(tiny_gpt2_dir), "--method", "eap", "--out", str(tmp_path / "r"))
    assert_user_error(*invoke(*common, "--dtype", "float8")[::2], "--dtype")
    assert_user_error(*invoke(*common, "--batch-size", "-3")[::2], "--batch-size")
    assert_user_error(*invoke(*common, "--batch-size", "4", "--max-memory", "2GB")[::2], "--max-memory")


def test_clean_runs_recompute_what_does_not_fit(toy):
    from circuits.methods.clean_runs import CleanRuns

    engine, ds = toy
    kept = CleanRuns(engine, ds, logit_diff, "corrupted", batch_size=3)
    none = CleanRuns(engine, ds, logit_diff, "corrupted", batch_size=3, cache_bytes=0)
    for _ in range(2):
        for a, b in zip(kept, none):
            torch.testing.assert_close(a.clean.outputs, b.clean.outputs)
            torch.testing.assert_close(a.ref, b.ref)
            assert a.base == b.base
    assert (kept.passes, none.passes) == (6, 12)  # 3 batches x (clean + reference), once or every time
