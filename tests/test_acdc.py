"""ACDC against a plainly written one-edge-at-a-time loop over the engine's patched ``run``."""
from __future__ import annotations

import pytest
import torch

from circuits import names
from circuits.engine.engine import Patch
from circuits.errors import CircuitsError
from circuits.registry import get_method
from circuits.methods.base import MethodOptions
from circuits.tasks.greater_than import GreaterThan
from reference import boot_float64


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuits.models.tokenizers import gpt2_tokenizer

    folder = tmp_path_factory.mktemp("acdc-gpt2")
    tok = gpt2_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=3, n_embd=24, n_positions=32, vocab_size=len(tok), initializer_range=0.3)
    bridge, engine = boot_float64(folder, GPT2LMHeadModel(cfg), tok)
    task = GreaterThan()
    return engine, task, task.build(tok, n=5, seed=2)


def plain_acdc(engine, data, metric, tau: float, order: str, ablation: str = "corrupted"):
    """ACDC written out: one full patched forward per edge test, every test on the current circuit."""
    g = engine.graph
    ref = engine.run(data.corrupted, data.answer_pos, collect=True).outputs
    if ablation == "zero":
        ref = torch.zeros_like(ref)

    def mean_metric(keep):
        return float(metric(engine.run(data.clean, data.answer_pos, patch=Patch(keep, ref)).logits, data).double().mean())

    def node_of(r):  # the sender index of a receiver's node, from its name
        name = g.receiver_names[r]
        return g.n_senders if name == names.LOGITS else g.sender_index(names.format_node(names.parse_receiver(name)[0]))

    keep = g.valid_mask().double()
    current = mean_metric(keep)
    effects, alive = {}, {g.n_senders: True}
    for r in reversed(range(g.n_receivers)):
        node = node_of(r)
        if node not in alive:  # all of the node's outgoing edges are decided by now
            alive[node] = any(keep[node, r2] > 0 and alive.get(node_of(r2), False) for r2 in range(g.n_receivers))
        if not alive[node]:
            keep[:, r] = 0
            continue
        senders = list(range(g.n_valid_senders(r)))
        for s in (reversed(senders) if order == "reverse" else senders):
            trial = keep.clone()
            trial[s, r] = 0
            value = mean_metric(trial)
            effects[(s, r)] = value - current
            if abs(value - current) < tau:
                keep, current = trial, value
    return keep > 0, effects


@pytest.mark.parametrize("order, metric_name, ablation", [
    ("reverse", "task", "corrupted"),
    ("reverse", "kl", "zero"),
    pytest.param("normal", "task", "corrupted", marks=pytest.mark.slow),
])
def test_acdc_matches_the_plain_loop(setup, order, metric_name, ablation):
    from circuits.methods.metrics import build_metric

    engine, task, data = setup
    metric = build_metric(metric_name, task, engine, data)
    everything = get_method("acdc").score(engine, data, metric, MethodOptions(ablation=ablation, params={"tau": 0.0, "acdc_order": order}))
    sizes = sorted(abs(v) for v in everything.edge_scores[engine.graph.valid_mask()].tolist())  # tau 0: all kept
    tau = sizes[len(sizes) * 3 // 4]  # removes most edges, keeps some: both kinds of decision happen
    kept, effects = plain_acdc(engine, data, metric, tau=tau, order=order, ablation=ablation)
    assert min(abs(abs(v) - tau) for v in effects.values()) > 1e-8, "a decision sits on the threshold"
    result = get_method("acdc").score(engine, data, metric, MethodOptions(ablation=ablation, params={"tau": tau, "acdc_order": order}))
    assert torch.equal(result.extra["kept_mask"], kept)
    assert 0 < int(kept.sum()) < int(engine.graph.valid_mask().sum())
    assert result.info["edge_tests"] == len(effects)
    untested = torch.ones_like(kept)
    for s, r in effects:
        untested[s, r] = False
    assert bool((result.edge_scores[untested] == 0).all())  # untested edges score 0
    for (s, r), v in effects.items():
        assert float(result.edge_scores[s, r]) == pytest.approx(v, abs=1e-6)
    assert result.info["receivers_skipped"] > 0
    assert result.info["complete"] is True


def test_acdc_batches_tests(setup, monkeypatch):
    """Many candidates per pass: far fewer passes than tests, and the same answer with one candidate per pass."""
    engine, task, data = setup
    options = MethodOptions(params={"tau": 0.002})
    batched = get_method("acdc").score(engine, data, task.metric, options)
    monkeypatch.setattr("circuits.methods.acdc.MAX_COPIES", 1)
    single = get_method("acdc").score(engine, data, task.metric, options)
    assert torch.equal(batched.extra["kept_mask"], single.extra["kept_mask"])
    assert torch.allclose(batched.edge_scores, single.edge_scores, atol=1e-9)
    assert batched.info["passes"] < single.info["passes"] / 3
    monkeypatch.undo()
    parts = get_method("acdc").score(engine, data, task.metric, MethodOptions(batch_size=2, params={"tau": 0.002}))  # 3 parts
    assert torch.equal(parts.extra["kept_mask"], batched.extra["kept_mask"])
    assert torch.allclose(parts.edge_scores, batched.edge_scores, atol=1e-9)


def test_max_tests_stops_the_search(setup):
    engine, task, data = setup
    result = get_method("acdc").score(engine, data, task.metric, MethodOptions(params={"tau": 0.002, "max_tests": 7}))
    assert result.info["edge_tests"] == 7 and result.info["complete"] is False
    g = engine.graph  # 7 of the logits' 9 senders tested: every other edge is untested and stays
    valid = g.valid_mask()
    assert torch.equal(result.extra["kept_mask"][:, :-1], valid[:, :-1])
    assert int((result.edge_scores[:, :-1] != 0).sum()) == 0


@pytest.mark.parametrize("bad", [MethodOptions(params={"acdc_order": "sideways"}), MethodOptions(params={"tau": -1.0}), MethodOptions(params={"max_tests": -2})])
def test_bad_options_are_user_errors(setup, bad):
    engine, task, data = setup
    with pytest.raises(CircuitsError):
        get_method("acdc").score(engine, data, task.metric, bad)


# ---------------------------------------------------------------- the planted circuits and the CLI
def _planted_run(tmp_path, spec, *extra):
    from cli_helpers import invoke

    out = tmp_path / spec
    code, stdout, err = invoke("discover", "greater-than", "--model", spec, "--method", "acdc", "--out", str(out),
                               "--n", "16", "--seed", "3", *extra)
    assert code == 0, err
    return out, stdout, err


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["planted", "planted-deep"])
def test_default_settings_find_the_planted_circuit(tmp_path, spec):
    """Default tau, default selection (ACDC's own kept set): recall 1.0, precision >= 0.9 against the reference."""
    import json

    from circuits.graphs.build import edge_names

    from circuits.graphs.files import load_circuit
    from circuits.models.planted import ground_truth

    out, stdout, _ = _planted_run(tmp_path, spec)
    found = set(edge_names(load_circuit(out / "circuit.json")))
    truth = set(ground_truth(spec)["edges"])
    recall, precision = len(found & truth) / len(truth), len(found & truth) / max(1, len(found))
    print(f"{spec}: acdc kept {len(found)} edges, recall {recall:.3f}, precision {precision:.3f}")
    assert recall == 1.0 and precision >= 0.9
    m = json.loads((out / "manifest.json").read_text())
    assert m["selection"]["mode"] == "acdc" and m["complete"] is True
    assert m["acdc"]["tau"] == 0.01 and m["acdc"]["order"] == "reverse" and m["acdc"]["edge_tests"] > 0
    assert m["acdc"]["passes"] < m["acdc"]["edge_tests"]
    assert "acdc, tau 0.01" in stdout


@pytest.mark.slow
def test_a_stopped_run_says_so(tmp_path):
    import json

    out, _, err = _planted_run(tmp_path, "planted", "--max-tests", "4", "--top-k", "20")
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] is False and m["acdc"]["edge_tests"] == 4 and m["selection"]["mode"] == "top-k"
    assert "stopped early after 4 edge tests" in err


def test_bad_acdc_flags_are_one_line_errors(tmp_path):
    from cli_helpers import assert_user_error, invoke

    code, _, err = invoke("discover", "greater-than", "--model", "planted", "--method", "acdc", "--out",
                          str(tmp_path / "x"), "--acdc-order", "up")
    assert_user_error(code, err, "--acdc-order")
    code, _, err = invoke("discover", "greater-than", "--model", "planted", "--method", "eap", "--out",
                          str(tmp_path / "y"), "--tau", "-1")
    assert_user_error(code, err, "--tau")


@pytest.fixture(scope="module")
def gqa_setup(tmp_path_factory, digit_tokenizer, one_thread):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = digit_tokenizer
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    _, engine = boot_float64(tmp_path_factory.mktemp("acdc-llama"), LlamaForCausalLM(cfg), tok)
    task = GreaterThan()
    return engine, task, task.build(tok, n=4, seed=5)


@pytest.mark.parametrize("model", ["gpt2", "llama-gqa"])
@pytest.mark.parametrize("kind", ["q", "k", "v", "mlp", "logits"])
@pytest.mark.parametrize("layer_keep", ["random", "whole"])
def test_column_passes_equal_separate_full_runs(setup, gqa_setup, model, kind, layer_keep):
    """What ACDC's batched tests rest on: one pass over ``c`` copies of the batch, restarted at the
    receiver's layer from the clean run, with a reference given once for all copies and a difference
    buffer whose prefix was filled beforehand, gives each copy the logits of its own circuit run in
    full from the input with a plain ``Patch``."""
    engine, _, data = setup if model == "gpt2" else gqa_setup
    g = engine.graph
    torch.manual_seed(0)
    layer = g.n_layers if kind == "logits" else 1
    r = {"mlp": g.mlp_receiver(layer) if kind == "mlp" else None, "logits": g.logits_receiver}.get(kind)
    if r is None:
        r = g.head_receiver(layer, g.n_heads - 1, kind)  # the last head: with GQA, it shares its k/v head
    ref = engine.run(data.corrupted, data.answer_pos, collect=True).outputs
    clean = engine.run(data.clean, data.answer_pos, collect=True, keep_resid=True)
    keep = g.valid_mask().double() * (torch.rand(g.n_senders, g.n_receivers) > 0.3).double()
    first = layer * (3 * g.n_heads + 1)  # the restart layer's first receiver: nothing before it is patched
    keep[:, :first] = g.valid_mask().double()[:, :first]
    if layer_keep == "whole":  # the layer's other receivers read one shared input: only the column's head differs
        keep[:, first:first + 3 * g.n_heads + 1] = g.valid_mask().double()[:, first:first + 3 * g.n_heads + 1]
    c = 3
    columns = keep[:, r].repeat(c, 1)
    n = g.n_valid_senders(r)
    columns[0, :n] = 1.0
    columns[1, torch.randperm(n)[: n // 2]] = 0.0
    columns[2, :n] = 0.0
    check_column_pass(engine, data, layer, keep, r, columns, ref, clean)


def check_column_pass(engine, data, layer: int, keep, r: int, columns, ref, clean) -> torch.Tensor:
    """One pass over ``c = len(columns)`` copies of the batch restarted at ``layer`` from the ``clean`` run, copy ``i``
    reading receiver ``r`` with ``columns[i]``, and a difference buffer whose rows before the layer were filled
    beforehand: each copy's logits equal a full run of its own keep with a plain ``Patch``.  Returns the pass's logits."""
    g = engine.graph
    c, b = columns.shape[0], len(data)
    n_before = g.senders_before_heads(layer)
    buffer = torch.full((g.n_senders, c * b, *ref.shape[2:]), float("nan"), dtype=ref.dtype)
    buffer[:n_before] = (clean.outputs[:n_before] - ref[:n_before]).repeat(1, c, 1, 1)
    pos = data.answer_pos.repeat(c, *([1] * (data.answer_pos.ndim - 1)))
    run = engine.run(data.clean.repeat(c, 1), pos, start_layer=layer,
                     start_resid=clean.resid_pre[layer].repeat(c, 1, 1),
                     patch=Patch(keep, ref, column=r, column_keep=columns, buffer=buffer))
    for i in range(c):
        own = keep.clone()
        own[:, r] = columns[i]
        want = engine.run(data.clean, data.answer_pos, patch=Patch(own, ref)).logits
        torch.testing.assert_close(run.logits[i * b:(i + 1) * b], want, rtol=1e-9, atol=1e-9)
    return run.logits
