"""Planted-circuit models, the reference edge patcher, the shipped reference circuits and ``circuits reference``.

Bounds used below (the measured values are far from them):

* the full model's mean probability difference (PD) is >= 0.9 (measured ~0.98);
* patching any single ground-truth edge alone lowers mean PD by at least 0.5 absolute
  (measured: from +0.98 to between -0.3 and -0.8, drops of 1.3 to 1.8);
* patching every edge outside the ground truth together keeps PD >= 95% of the full model's,
  and in fact changes it by less than 0.001 (measured: < 1e-6).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import torch

from circuits import names
from circuits.errors import CircuitsError
from circuits.models.planted import VARIANTS, ground_truth, variant_for_spec
from reference import all_edges, edge_patched_logits, hooks_left, sender_activations

REPO = Path(__file__).resolve().parents[1]
REFERENCES = REPO / "graphs" / "references"
CIRCUITS_BIN = Path(sys.executable).with_name("circuits")
# planted-deep takes ~10 s to build and its patched runs are slower: its checks run with -m slow
ALL_VARIANTS = [pytest.param(v, marks=pytest.mark.slow) if v != "planted" else v for v in sorted(VARIANTS)]
GT_DROP = 0.5  # a ground-truth edge patched alone lowers mean PD by at least this much
NON_GT_KEEP = 0.95  # all non-ground-truth edges patched keep PD at >= this share of the full model's


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def planted_cache(tmp_path_factory):
    """One CIRCUITS_CACHE for this module, so each variant is built once."""
    cache = tmp_path_factory.mktemp("circuits-cache-planted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIRCUITS_CACHE", str(cache))
        yield cache


class _Loaded(dict):
    """variant -> LoadedModel, booted on first use through circuits.models.load_model (the bridge)."""

    def __missing__(self, variant: str):
        from circuits.models import load_model

        self[variant] = load_model(variant)
        return self[variant]


@pytest.fixture(scope="module")
def loaded(planted_cache):
    return _Loaded()


@pytest.fixture(scope="module")
def dataset(gpt2_tok):
    from circuits.tasks.greater_than import GreaterThan

    return GreaterThan().build(gpt2_tok, n=40, seed=3)


@pytest.fixture(scope="module")
def small_dataset(dataset):
    """Fewer prompts for the patched runs (each is two forward passes over the full vocabulary)."""
    return dataset.subset(slice(0, 16))


def mean_pd(logits: torch.Tensor, ds) -> float:
    """Mean probability difference over the full-vocabulary softmax at the last position."""
    from circuits.tasks.greater_than import probability_difference

    probs = torch.softmax(logits[:, -1].double(), dim=-1)[:, ds.info["year_ids"]]
    yy = torch.tensor([m["yy"] for m in ds.metadata])
    return float(probability_difference(probs, yy).mean())


def bridge_logits(bridge, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return bridge(tokens)


# ---------------------------------------------------------------- the models


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_planted_solves_greater_than(loaded, dataset, variant):
    pd = mean_pd(bridge_logits(loaded[variant].bridge, dataset.clean), dataset)
    assert pd >= 0.9, f"{variant}: mean PD {pd:.3f}"
    corrupted = mean_pd(bridge_logits(loaded[variant].bridge, dataset.corrupted), dataset)
    assert corrupted < -0.5, f"{variant}: YY=01 should put the mass on years after 01 ... not on <= YY ({corrupted:.3f})"


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_bridge_matches_hf_model(loaded, dataset, variant):
    from transformers import GPT2LMHeadModel

    lm = loaded[variant]
    hf = GPT2LMHeadModel.from_pretrained(lm.checkpoint).eval()
    assert not hf.config.tie_word_embeddings
    with torch.no_grad():
        expected = hf(dataset.clean).logits
    got = bridge_logits(lm.bridge, dataset.clean)
    # The bridge computes attention and LayerNorm in its own code, which rounds differently
    # (about 1e-7 relative per step); the year logits reach +-120, so they agree to ~2e-4.
    assert (got - expected).abs().max().item() <= 5e-4
    year_ids = dataset.info["year_ids"]
    p_got, p_expected = (torch.softmax(x[:, -1].double(), -1)[:, year_ids] for x in (got, expected))
    assert (p_got - p_expected).abs().max().item() <= 1e-5
    assert lm.bridge.cfg.n_layers == ground_truth(variant)["n_layers"]
    assert lm.bridge.cfg.n_heads == ground_truth(variant)["n_heads"]


def test_build_is_deterministic(loaded):
    """A fresh build equals the cached checkpoint (itself an earlier build) weight for weight."""
    from circuits.models.planted import build_planted
    from transformers import GPT2LMHeadModel

    saved = GPT2LMHeadModel.from_pretrained(loaded["planted"].checkpoint).state_dict()
    fresh = build_planted("planted").state_dict()
    assert saved.keys() == fresh.keys()
    for key in saved:
        assert torch.equal(saved[key], fresh[key]), key


@pytest.mark.slow
def test_build_deep_is_deterministic():
    from circuits.models.planted import build_planted

    a, b = build_planted("planted-deep").state_dict(), build_planted("planted-deep").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_is_cached(loaded, planted_cache):
    from circuits.models.planted import VERSION, planted_checkpoint

    folder = planted_checkpoint("planted")
    assert folder == planted_cache / "planted" / f"planted-v{VERSION}"
    assert Path(loaded["planted"].checkpoint) == folder
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()


def test_unknown_variant_lists_the_known_ones(circuits_cache):
    from circuits.models import load_model
    from circuits.models.planted import planted_checkpoint

    for call in (lambda: planted_checkpoint("planted-huge"), lambda: load_model("planted-huge")):
        with pytest.raises(CircuitsError) as err:
            call()
        assert all(name in str(err.value) for name in VARIANTS)
    assert not (circuits_cache / "planted").exists()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ground_truth_is_well_formed(variant):
    gt = ground_truth(variant)
    valid = set(all_edges(gt["n_layers"], gt["n_heads"]))
    assert gt["edges"] and set(gt["edges"]) <= valid
    ends = {names.format_node(n) for e in gt["edges"] for n in (names.parse_edge(e).src, names.parse_edge(e).dst)}
    assert set(gt["nodes"]) == ends
    G = nx.DiGraph([(names.format_node(names.parse_edge(e).src), names.format_node(names.parse_edge(e).dst)) for e in gt["edges"]])
    assert len(list(nx.all_simple_paths(G, "input", "logits"))) >= 2
    assert variant_for_spec(variant).name == variant


# ---------------------------------------------------------------- interventions (the ground truth is true)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_each_ground_truth_edge_matters(loaded, small_dataset, variant):
    bridge, dataset = loaded[variant].bridge, small_dataset
    full = mean_pd(bridge_logits(bridge, dataset.clean), dataset)
    for edge in ground_truth(variant)["edges"]:
        pd = mean_pd(edge_patched_logits(bridge, dataset.clean, dataset.corrupted, {edge}), dataset)
        assert pd <= full - GT_DROP, f"{variant}: patching {edge} alone left PD at {pd:.3f} (full {full:.3f})"
    assert hooks_left(bridge) == []


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_edges_outside_the_ground_truth_do_not_matter(loaded, small_dataset, variant):
    bridge, dataset = loaded[variant].bridge, small_dataset
    gt = ground_truth(variant)
    others = set(all_edges(gt["n_layers"], gt["n_heads"])) - set(gt["edges"])
    full = mean_pd(bridge_logits(bridge, dataset.clean), dataset)
    pd = mean_pd(edge_patched_logits(bridge, dataset.clean, dataset.corrupted, others), dataset)
    assert pd >= NON_GT_KEEP * full
    assert abs(pd - full) < 1e-3


# ---------------------------------------------------------------- the reference patcher itself


def test_all_edges_counts():
    assert len(all_edges(12, 12)) == 32491  # GPT-2 small, as in EAP-IG
    edges = all_edges(2, 4)
    assert len(edges) == len(set(edges))
    for edge in edges:
        assert names.format_edge(names.parse_edge(edge)) == edge
    assert "a0.h3->m0" in edges and "m0->a1.h0<k>" in edges and "a1.h0->m0" not in edges and "m1->a1.h0<q>" not in edges


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir, gpt2_tok):
    """A random tiny GPT-2 on the bridge, and clean/corrupted prompts that differ in two positions."""
    from circuits.models.loading import _boot

    bridge = _boot(str(tiny_gpt2_dir), "cpu")
    clean = torch.tensor([gpt2_tok.encode("The war lasted from the year 1732 to the year 17"),
                          gpt2_tok.encode("The siege lasted from the year 1650 to the year 16")])
    corrupted = clean.clone()
    corrupted[:, 6] = gpt2_tok.encode("01")[0]
    corrupted[:, 1] = gpt2_tok.encode(" reign")[0]
    return bridge, clean, corrupted


def test_patcher_none_and_all(tiny):
    bridge, clean, corrupted = tiny
    cfg = bridge.cfg
    flags = (cfg.use_attn_result, cfg.use_split_qkv_input, cfg.use_hook_mlp_in)
    edges = all_edges(cfg.n_layers, cfg.n_heads)
    none = edge_patched_logits(bridge, clean, corrupted, set())
    assert (none - bridge_logits(bridge, clean)).abs().max().item() <= 1e-5
    every = edge_patched_logits(bridge, clean, corrupted, set(edges))
    assert (every - bridge_logits(bridge, corrupted)).abs().max().item() <= 1e-5
    assert (every - none).abs().max().item() > 0.1
    assert hooks_left(bridge) == []
    assert (cfg.use_attn_result, cfg.use_split_qkv_input, cfg.use_hook_mlp_in) == flags


def test_patcher_matches_node_patching(tiny):
    """All edges out of one head = replacing that head's output; all edges into m1 = corrupting m1's input."""
    bridge, clean, corrupted = tiny
    edges = all_edges(bridge.cfg.n_layers, bridge.cfg.n_heads)
    out_of_head = {e for e in edges if e.startswith("a0.h2->")}
    into_m1 = {e for e in edges if e.endswith("->m1")}
    saved = (bridge.cfg.use_attn_result, bridge.cfg.use_hook_mlp_in)
    bridge.set_use_attn_result(True)
    bridge.set_use_hook_mlp_in(True)
    try:
        acts = sender_activations(bridge, corrupted)
        with torch.no_grad():
            corrupted_mid = []
            bridge.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.hook_mlp_in", lambda t, hook: corrupted_mid.append(t.clone()))])

            def head_out(t, hook):
                t = t.clone()
                t[:, :, 2] = acts["blocks.0.attn.hook_result"][:, :, 2]
                return t

            expected_head = bridge.run_with_hooks(clean, fwd_hooks=[("blocks.0.attn.hook_result", head_out)])
            expected_m1 = bridge.run_with_hooks(clean, fwd_hooks=[("blocks.1.hook_mlp_in", lambda t, hook: corrupted_mid[0])])
    finally:
        bridge.set_use_attn_result(saved[0])
        bridge.set_use_hook_mlp_in(saved[1])
    got_head = edge_patched_logits(bridge, clean, corrupted, out_of_head)
    got_m1 = edge_patched_logits(bridge, clean, corrupted, into_m1)
    assert (got_head - expected_head).abs().max().item() <= 1e-5
    assert (got_m1 - expected_m1).abs().max().item() <= 1e-5
    assert (got_head - bridge_logits(bridge, clean)).abs().max().item() > 1e-3


def test_patcher_rejects_edges_outside_the_graph(tiny):
    bridge, clean, corrupted = tiny
    for bad in ("a1.h0->a0.h1<q>", "m1->m1", "a0.h9->logits"):
        with pytest.raises(ValueError):
            edge_patched_logits(bridge, clean, corrupted, {bad})
    assert hooks_left(bridge) == []


# ---------------------------------------------------------------- reference files and the CLI


def reference_edges(G: nx.DiGraph) -> set[str]:
    return {name for _, _, data in G.edges(data=True) for name in data["names"]}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_planted_reference_file(variant):
    if ground_truth(variant).get("pairs"):  # a positional reference: (edge, span) pairs
        from circuits.graphs.files import load_circuit
        from circuits.graphs.positions import pair_names, project_graph

        G = load_circuit(REFERENCES / f"{variant}.json")
        assert pair_names(G) == {f"{e}@{s}" for e, s in ground_truth(variant)["pairs"]}
        assert reference_edges(project_graph(G)) == set(ground_truth(variant)["edges"])
        return
    G = nx.node_link_graph(json.loads((REFERENCES / f"{variant}.json").read_text()))
    assert reference_edges(G) == set(ground_truth(variant)["edges"])
    assert len(list(nx.all_simple_paths(G, "input", "logits"))) >= 2
    assert G.graph["name"] == variant and G.graph["description"]


def test_hanna_reference_file():
    G = nx.node_link_graph(json.loads((REFERENCES / "hanna-gpt2.json").read_text()))
    heads = {"a5.h1", "a5.h5", "a6.h9", "a7.h10", "a8.h8", "a8.h11", "a9.h1"}
    assert {n for n, d in G.nodes(data=True) if d["position"] == "last"} >= heads | {"m8", "m9", "m10", "m11"}
    assert {n for n, d in G.nodes(data=True) if d["position"] == "YY"} >= {"a0.h1", "a0.h3", "a0.h5", "m0", "m1", "m2", "m3"}
    assert reference_edges(G) <= set(all_edges(12, 12))
    assert len(list(nx.all_simple_paths(G, "input", "logits"))) >= 2
    assert "inferred" in G.graph["note"]


@pytest.mark.slow
def test_reference_files_are_up_to_date():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "make_references.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def run_circuits(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CIRCUITS_BIN), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_cli_reference_list_and_out(tmp_path):
    listing = run_circuits("reference", "list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    listed = [line.split()[0] for line in listing.stdout.splitlines()]
    assert set(listed) >= set(VARIANTS) | {"hanna-gpt2"}
    out = run_circuits("reference", "planted", "--out", "gt.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    G = nx.node_link_graph(json.loads((tmp_path / "gt.json").read_text()))
    assert reference_edges(G) == set(ground_truth("planted")["edges"])
    printed = run_circuits("reference", "planted-deep", cwd=tmp_path)
    assert json.loads(printed.stdout) == json.loads((REFERENCES / "planted-deep.json").read_text())


def test_cli_reference_unknown_name(tmp_path):
    proc = run_circuits("reference", "nope", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "planted-deep" in proc.stderr and "hanna-gpt2" in proc.stderr
