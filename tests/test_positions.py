"""Positional circuits against slow, obviously correct references on a tiny GPT-2 (float64).

Positional EAP is checked against per-position products of hook deltas and hook gradients; positional
patching against the bridge's per-head hooks patched at single positions.
"""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from circuits import names
from circuits.engine.engine import Patch
from circuits.errors import CircuitsError
from circuits.circuit.positions import PositionalEvaluator, positional_keep, prune_positional, span_order
from circuits.registry import get_method
from circuits.methods.base import MethodOptions
from circuits.data.spans import span_table
from circuits.tasks.greater_than import GreaterThan
from circuits.tasks.ioi import IOI
from reference import PerHeadFlags, boot_float64, ig_inputs, sender_activations, sender_stack
from test_methods import _receiver_grads as _grads  # d mean metric / d every receiver input, by hooks: [R, b, p, d]

N_LAYERS, N_HEADS = 2, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuits.models.tokenizers import gpt2_tokenizer

    tok = gpt2_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=N_LAYERS, n_head=N_HEADS, n_embd=32, n_positions=32, vocab_size=len(tok), initializer_range=0.3)
    bridge, engine = boot_float64(tmp_path_factory.mktemp("pos-gpt2"), GPT2LMHeadModel(cfg), tok)
    return bridge, engine, tok


def _expected(bridge, engine, task, data, steps=1):
    spans = span_table(data)
    with PerHeadFlags(bridge):
        clean, corrupted = sender_stack(bridge, data.clean), sender_stack(bridge, data.corrupted)
        grads = sum(_grads(bridge, task, data, resid0=x) for x in ig_inputs(clean[0], corrupted[0], steps)) / steps
    per_position = torch.einsum("sbpd,rbpd->srbp", corrupted - clean, grads)  # the obvious, slow way
    out = torch.zeros(*per_position.shape[:2], spans.k, dtype=torch.float64)
    for k in range(spans.k):
        out[..., k] = (per_position * (spans.index == k)).sum((2, 3))
    return out * engine.graph.valid_mask()[..., None]


@pytest.mark.parametrize("method,steps", [("eap", 1), ("eap-ig", 3)])
def test_positional_eap_matches_per_position_hook_products(setup, method, steps):
    bridge, engine, tok = setup
    task = GreaterThan()
    data = task.build(tok, n=5, seed=1)
    from circuits.methods.eap import integrated_scores

    scores = integrated_scores(engine, data, task.metric, MethodOptions(batch_size=2), steps=steps,
                               progress=lambda *a: None, method=method, aggregate="sum")
    expected = _expected(bridge, engine, task, data, steps)
    assert scores.info["spans"] == list(span_table(data).names)
    assert expected.abs().max() > 1e-4
    assert torch.allclose(scores.edge_scores, expected, atol=1e-10, rtol=1e-7)
    plain = get_method(method).score(engine, data, task.metric, MethodOptions(params={"ig_steps": steps} if steps > 1 else {}))
    assert torch.allclose(scores.edge_scores.sum(-1), plain.edge_scores, atol=1e-10, rtol=1e-7)  # spans cover every position


def test_positional_scores_mean_and_max(setup):
    bridge, engine, tok = setup
    task = IOI()
    data = task.build(tok, n=4, seed=0)  # padded prompts: spans differ per prompt
    from circuits.methods.eap import integrated_scores

    spans = span_table(data)
    with PerHeadFlags(bridge):
        delta = sender_stack(bridge, data.corrupted) - sender_stack(bridge, data.clean)
        grads = _grads(bridge, task, data)
    prod = torch.einsum("sbpd,rbpd->srbp", delta, grads)
    valid = engine.graph.valid_mask()
    for aggregate in ("mean", "max"):
        got = integrated_scores(engine, data, task.metric, MethodOptions(), steps=1, progress=lambda *a: None,
                                method="eap", aggregate=aggregate).edge_scores
        want = torch.zeros_like(got)
        for b in range(len(data)):
            for k in range(spans.k):
                where = torch.nonzero(spans.index[b] == k).flatten()
                if len(where) == 0:
                    continue
                vals = prod[:, :, b, where]
                if aggregate == "mean":
                    want[..., k] += vals.mean(-1)
                else:
                    want[..., k] += vals.gather(-1, vals.abs().argmax(-1, keepdim=True)).squeeze(-1)
        assert torch.allclose(got, want * valid[..., None], atol=1e-10, rtol=1e-7), aggregate


def _positional_hook_logits(bridge, clean_tokens, corrupted_tokens, patched: list) -> torch.Tensor:
    """Logits with each ``(edge, position)`` in ``patched`` carrying the corrupted sender output at that position
    of the receiver's input only (per-head hooks; every later activation recomputed by the bridge)."""
    from reference import _receiver_hook, _sender_hooks, _sender_output

    with PerHeadFlags(bridge), torch.no_grad():
        reference = sender_activations(bridge, corrupted_tokens)
        current: dict = {}
        by_hook: dict = {}
        for edge_name, pos in patched:
            edge = names.parse_edge(edge_name)
            by_hook.setdefault(_receiver_hook(edge.dst, edge.qkv), []).append((edge, pos))

        def save(name: str) -> Callable:
            def hook(t: torch.Tensor, hook: Any) -> None:
                current[name] = t.detach()
            return hook

        def patch(hook_name: str) -> Callable:
            def hook(t: torch.Tensor, hook: Any) -> torch.Tensor:
                t = t.clone()
                for edge, pos in by_hook[hook_name]:
                    d = (_sender_output(reference, edge.src) - _sender_output(current, edge.src))[:, pos]
                    if edge.dst.kind == "head":
                        t[:, pos, edge.dst.index] += d
                    else:
                        t[:, pos] += d
                return t
            return hook

        hooks = [(n, save(n)) for n in _sender_hooks(N_LAYERS)] + [(n, patch(n)) for n in by_hook]
        with bridge.hooks(fwd_hooks=hooks):
            return bridge(clean_tokens)


def test_positional_patching_matches_hooks(setup):
    bridge, engine, tok = setup
    task = GreaterThan()
    data = task.build(tok, n=3, seed=2)
    g = engine.graph
    yy = int(data.info["yy_pos"])
    last = data.clean.shape[1] - 1
    patched = [("input->a0.h1<v>", yy), ("input->a0.h1<k>", yy - 1), ("a0.h2->a1.h0<q>", last), ("a0.h3->m1", yy),
               ("m0->logits", last), ("a0.h0->a1.h3<v>", yy + 1), ("input->m0", 4)]
    keep = torch.ones(g.n_senders, g.n_receivers, data.clean.shape[1], dtype=torch.float64)
    for edge, pos in patched:
        s, r = g.edge_index(edge)
        keep[s, r, pos] = 0
    ref = sender_stack_engine(engine, data.corrupted)
    ours = engine.run(data.clean, data.answer_pos, patch=Patch(keep=keep, reference=ref)).logits
    want = _positional_hook_logits(bridge, data.clean, data.corrupted, patched)[torch.arange(len(data)), data.answer_pos]
    full = engine.run(data.clean, data.answer_pos).logits
    assert (want - full).abs().max() > 1e-3  # the patch matters
    assert torch.allclose(ours, want, atol=1e-9)
    # per prompt ([S, R, b, P]) equals shared ([S, R, P])
    per_prompt = keep[:, :, None].expand(-1, -1, len(data), -1)
    again = engine.run(data.clean, data.answer_pos, patch=Patch(keep=per_prompt, reference=ref)).logits
    assert torch.allclose(again, ours, atol=1e-12)
    # a positional keep equal at every position is the plain keep
    plain = torch.ones(g.n_senders, g.n_receivers, dtype=torch.float64)
    plain[g.edge_index("a0.h3->m1")] = 0
    a = engine.run(data.clean, data.answer_pos, patch=Patch(keep=plain, reference=ref)).logits
    b = engine.run(data.clean, data.answer_pos, patch=Patch(keep=plain[..., None].expand(-1, -1, keep.shape[-1]), reference=ref)).logits
    assert torch.allclose(a, b, atol=1e-12)


def sender_stack_engine(engine, tokens):
    return engine.run(tokens, torch.zeros(len(tokens), dtype=torch.long), collect=True).outputs


def test_positional_evaluator_on_padded_prompts_matches_hooks(setup):
    bridge, engine, tok = setup
    task = IOI()
    data = task.build(tok, n=4, seed=3)
    spans = span_table(data)
    g = engine.graph
    kept = torch.ones(g.n_senders, g.n_receivers, spans.k, dtype=torch.bool)
    s2 = spans.names.index("S2")
    for edge in ("input->a0.h1<v>", "a0.h2->m0", "a0.h0->a1.h2<k>"):
        kept[(*g.edge_index(edge), s2)] = False
    ev = PositionalEvaluator(engine, data, task.metric, batch_size=3)
    got = ev.metric(kept)
    want = 0.0
    for b in range(len(data)):
        pos = int(torch.nonzero(spans.index[b] == s2))
        patched = [(e, pos) for e in ("input->a0.h1<v>", "a0.h2->m0", "a0.h0->a1.h2<k>")]
        row = data.subset([b])
        logits = _positional_hook_logits(bridge, row.clean, row.corrupted, patched)[0, row.answer_pos]
        want += float(task.metric(logits, row).sum())
    assert abs(got - want / len(data)) < 1e-9
    assert ev.faithfulness(torch.ones_like(kept)).f == pytest.approx(1.0)
    assert ev.faithfulness(torch.zeros_like(kept)).f == pytest.approx(0.0, abs=1e-9)
    assert positional_keep(kept, spans).shape == (g.n_senders, g.n_receivers, len(data), data.clean.shape[1])


def test_prune_keeps_paths_across_positions(setup):
    _, engine, tok = setup
    data = GreaterThan().build(tok, n=2, seed=0)
    spans = span_table(data)
    g = engine.graph
    yy, last = spans.names.index("YY"), spans.names.index("XX2")
    kept = torch.zeros(g.n_senders, g.n_receivers, spans.k, dtype=torch.bool)
    on_path = [("input->a0.h1<v>", yy), ("a0.h1->m1", last), ("m1->logits", last)]
    off_path = [("a0.h2->m1", yy), ("input->a1.h0<q>", yy)]  # m1 at YY reaches no logits; a1.h0 writes nowhere
    for edge, k in on_path + off_path:
        kept[(*g.edge_index(edge), k)] = True
    answers = torch.zeros(spans.k, dtype=torch.bool)
    answers[last] = True
    pruned = prune_positional(kept, g, span_order(spans), answers)
    assert {(g.edge_name(s, r), spans.names[k]) for s, r, k in torch.nonzero(pruned).tolist()} == {
        (e, spans.names[k]) for e, k in on_path}
    # the k/v edge at YY reaches a head at a later span; a head at a span before YY cannot read it
    order = span_order(spans)
    assert order[yy, last] and not order[last, yy]


def test_no_schema_needs_equal_lengths(setup):
    _, engine, tok = setup
    data = IOI().build(tok, n=6, seed=0)
    from dataclasses import replace

    bare = replace(data, info={k: v for k, v in data.info.items() if k != "spans"})
    with pytest.raises(CircuitsError, match="end at different positions"):
        span_table(bare)
    gt = GreaterThan().build(tok, n=3, seed=0)
    raw = span_table(replace(gt, info={k: v for k, v in gt.info.items() if k != "spans"}))
    assert raw.names[0] == "p0" and raw.k == gt.clean.shape[1] and not raw.schema


def test_discover_positions_cli(tiny_gpt2_dir, tmp_path):
    import json

    from circuits.graphs.files import load_circuit
    from circuits.graphs.positions import is_positional, pair_names
    from cli_helpers import assert_user_error, invoke

    run = tmp_path / "run"
    code, out, err = invoke("discover", "greater-than", "--model", str(tiny_gpt2_dir), "--method", "eap", "--positions",
                            "--top-k", "12", "--n", "10", "--holdout", "0.2", "--out", str(run))
    assert code == 0, err
    assert "(edge, span) pairs kept" in out and "held-out (2 prompts)" in out
    G = load_circuit(run)
    assert is_positional(G) and G.graph["spans"][4] == "YY"
    assert all(d["span"] in G.graph["spans"] and n.endswith("@" + d["span"]) for n, d in G.nodes(data=True))
    assert all(d["span"] in G.graph["spans"] for _, _, d in G.edges(data=True))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["granularity"] == "positional" and manifest["pairs_kept"] == len(pair_names(G)) <= 12
    assert manifest["pairs_total"] == 110 * 7 and sum(manifest["pairs_per_span"].values()) == manifest["pairs_kept"]
    assert "## Kept components per span" in (run / "report.md").read_text()
    assert (run / "span_scores.tsv").read_text().splitlines()[0] == "edge\tspan\tscore"
    svg = (run / "circuit.svg").read_text()
    assert all(f">{span}</text>" in svg for span in G.graph["spans"])  # one labelled band per span
    assert f"{manifest['pairs_kept']:,} of 770 (edge, span) pairs" in svg  # the title counts pairs, not edges
    assert '"pairs_total": 770' in (run / "circuit.html").read_text().replace('"pairs_total":770', '"pairs_total": 770')
    code, out, err = invoke("compare", str(run / "circuit.json"), str(run / "circuit_plain.json"), "--json")
    assert code == 0, err
    projected = json.loads(out)
    assert projected["projected"] == "a" and projected["edges"]["precision"] == projected["edges"]["recall"] == 1.0
    code, out, err = invoke("compare", str(run), str(run), "--json")
    assert code == 0 and json.loads(out)["granularity"] == "positional"
    code, _, err = invoke("discover", "greater-than", "--model", str(tiny_gpt2_dir), "--method", "path-patching",
                          "--positions", "--out", str(tmp_path / "x"))
    assert_user_error(code, err, "--positions works with eap, eap-ig, activation-patching")
    code, _, err = invoke("discover", "greater-than", "--model", str(tiny_gpt2_dir), "--method", "eap", "--positions",
                          "--span-aggregate", "median", "--out", str(tmp_path / "y"))
    assert_user_error(code, err, "--span-aggregate must be one of sum, mean, max")


def test_small_positional_circuit_matches_hooks(setup):
    """A circuit that keeps few pairs takes the engine's other side (the reference plus the kept senders)."""
    bridge, engine, tok = setup
    task = GreaterThan()
    data = task.build(tok, n=2, seed=4)
    g = engine.graph
    P = data.clean.shape[1]
    yy, last = int(data.info["yy_pos"]), P - 1
    kept = [("input->a0.h1<v>", yy), ("a0.h1->m1", last), ("m1->logits", last), ("input->a1.h2<q>", last)]
    keep = torch.zeros(g.n_senders, g.n_receivers, P, dtype=torch.float64)
    for edge, pos in kept:
        keep[(*g.edge_index(edge), pos)] = 1
    patched = [(e, p) for e in g.edge_names() for p in range(P) if (e, p) not in kept]
    ref = sender_stack_engine(engine, data.corrupted)
    ours = engine.run(data.clean, data.answer_pos, patch=Patch(keep=keep, reference=ref)).logits
    want = _positional_hook_logits(bridge, data.clean, data.corrupted, patched)[torch.arange(len(data)), data.answer_pos]
    empty = engine.run(data.corrupted, data.answer_pos).logits
    assert (want - empty).abs().max() > 1e-4  # the kept pairs matter
    assert torch.allclose(ours, want, atol=1e-9)
