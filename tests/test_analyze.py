"""``circuits analyze greater-than``: greater-than's analysis (``circuits.tasks.greater_than_analysis``) and the shared
``circuits.analysis`` pieces.

- the engine forward used for a circuit alone (prefix cache for teacher forcing) against full
  patched engine runs, on a tiny GPT-2 (one token per YY) and a tiny Llama (digits);
- neuron effects against activation patching, MLP direct effects against path patching;
- on the planted model: the heatmap is greater-than shaped (PD >= 0.9), the report's PD is
  ``circuits evaluate``'s, the pictures are PNGs and every picture report.html names exists;
- one-line errors.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from circuits.analysis import circuit as circuit_mod
from circuits.analysis.files import PNG_MAGIC
from circuits.analysis.forward import EngineForward
from circuits.engine.engine import GraphEngine, Patch
from circuits.data.evaluation import evaluate_model, model_forward
from circuits.models import load_model
from circuits.models.weights import cast_weights, extract_weights
from circuits.tasks.greater_than import GreaterThan
from circuits.tasks.greater_than_analysis.analysis import analyze, write
from circuits.tasks.greater_than_analysis.mlps import direct_indirect, logit_lens
from circuits.tasks.greater_than_analysis.neurons import attribution, joint_effect, neuron_effects, top_neurons
from cli_helpers import assert_user_error, invoke

GT = GreaterThan()
ROOT = Path(__file__).resolve().parents[1]
PLANTED_REF = ROOT / "graphs" / "references" / "planted.json"
N_PLANTED, SEED_PLANTED = 24, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def engine64(loaded) -> GraphEngine:
    return GraphEngine(cast_weights(extract_weights(loaded.bridge), dtype=torch.float64))


def slow_forward(engine: GraphEngine, dataset, keep=None):
    """Obviously correct: every sequence (prompt or prompt + token) run whole, patched against its own corrupted twin."""
    seq = GT.prompts(dataset).shape[1]  # without the teacher-forced tens digit (digit tokens)
    twins = {tuple(c[:seq].tolist()): k[:seq] for c, k in zip(dataset.clean, dataset.corrupted)}

    def forward(tokens):
        b, length = tokens.shape
        answer = torch.full((b,), length - 1, dtype=torch.long)
        with torch.no_grad():
            if keep is None:
                logits = engine.run(tokens, answer).logits
            else:
                corrupted = torch.stack([torch.cat([twins[tuple(r[:seq].tolist())], r[seq:]]) for r in tokens])
                ref = engine.run(corrupted, answer, collect=True).outputs
                logits = engine.run(tokens, answer, patch=Patch(keep.to(ref.dtype), ref)).logits
        return logits[:, None].expand(b, length, -1)

    return forward


def random_keep(graph, p: float = 0.5, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(graph.n_senders, graph.n_receivers, generator=gen) < p) & graph.valid_mask()


# ---------------------------------------------------------------- models
@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    loaded = load_model(str(tiny_gpt2_dir))
    return loaded, engine64(loaded), GT.build(loaded.tokenizer, n=6, seed=0)


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir))
    return loaded, engine64(loaded), GT.build(loaded.tokenizer, n=5, seed=1)


@pytest.fixture(scope="module")
def planted():
    loaded = load_model("planted")
    engine = GraphEngine.from_model(loaded)
    return loaded, engine, GT.build(loaded.tokenizer, n=N_PLANTED, seed=SEED_PLANTED)


@pytest.fixture(scope="module")
def planted_report(planted, tmp_path_factory):
    """The CLI's report on planted with the planted reference circuit."""
    out = tmp_path_factory.mktemp("analyze-planted") / "report"
    code, stdout, err = invoke("analyze", "greater-than", "--model", "planted", "--out", str(out), "--n", str(N_PLANTED),
                               "--seed", str(SEED_PLANTED), "--circuit", str(PLANTED_REF), "--top-k", "4",
                               "--candidates", "16")
    assert code == 0, err
    assert "Traceback" not in err
    return out, stdout


# ---------------------------------------------------------------- the circuit's forward
@pytest.mark.parametrize("which", ["gpt2", "llama"])
@pytest.mark.parametrize("mask", ["none", "random", "sparse", "all", "empty"])
def test_engine_forward_matches_whole_patched_runs(request, which, mask):
    loaded, engine, ds = request.getfixturevalue(which)
    g = engine.graph
    keep = {"none": None, "random": random_keep(g), "sparse": random_keep(g, 0.05),
            "all": g.valid_mask(), "empty": torch.zeros(g.n_senders, g.n_receivers, dtype=torch.bool)}[mask]
    fast = GT.year_probabilities(EngineForward(engine, ds, keep), ds, batch_size=4)
    slow = GT.year_probabilities(slow_forward(engine, ds, keep), ds, batch_size=4)
    assert fast.shape == (len(ds), 100)
    # float64 engine; year_probabilities rounds to float32 for the softmax
    assert torch.allclose(fast, slow, atol=1e-8, rtol=1e-6), float((fast - slow).abs().max())


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_engine_forward_logits_for_prompts_and_forced_sequences(request, which):
    """Raw float64 logits, prompts and prompts + one token (any token, rows in any order)."""
    loaded, engine, ds = request.getfixturevalue(which)
    keep = random_keep(engine.graph, seed=1)
    fast, slow = EngineForward(engine, ds, keep, max_rows=3), slow_forward(engine, ds, keep)
    prompts = GT.prompts(ds)
    assert torch.allclose(fast(prompts)[:, -1], slow(prompts)[:, -1], atol=1e-9, rtol=0)
    gen = torch.Generator().manual_seed(2)
    rows = torch.randint(0, len(ds), (7,), generator=gen)
    extra = torch.randint(0, engine.w.W_E.shape[0], (7, 1), generator=gen)
    forced = torch.cat([prompts[rows], extra], 1)
    a, b = fast(forced), slow(forced)
    assert a.shape == b.shape == (7, prompts.shape[1] + 1, engine.w.W_U.shape[1])
    assert torch.allclose(a[:, -1], b[:, -1], atol=1e-9, rtol=0), float((a[:, -1] - b[:, -1]).abs().max())


def test_digit_mode_really_is_digits(llama, gpt2):
    assert llama[2].info["mode"] == "digits" and gpt2[2].info["mode"] == "token"


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_full_circuit_and_empty_circuit_are_the_model_and_the_corrupted_model(request, which):
    loaded, engine, ds = request.getfixturevalue(which)
    g = engine.graph
    model = GT.year_probabilities(EngineForward(engine, ds), ds)
    full = GT.year_probabilities(EngineForward(engine, ds, g.valid_mask()), ds)
    assert torch.allclose(full, model, atol=1e-8, rtol=1e-6)
    # the empty circuit is the corrupted prompts' model
    empty = GT.year_probabilities(EngineForward(engine, ds, torch.zeros(g.n_senders, g.n_receivers)), ds)
    swapped = type(ds)(clean=ds.corrupted, corrupted=ds.corrupted, answer_pos=ds.answer_pos, metadata=ds.metadata,
                       task=ds.task, info=ds.info)
    assert torch.allclose(empty, GT.year_probabilities(EngineForward(engine, swapped), swapped), atol=1e-8, rtol=1e-6)


def test_engine_forward_agrees_with_the_bridge(gpt2, llama):
    for loaded, _, ds in (gpt2, llama):
        engine = GraphEngine.from_model(loaded)
        ours = GT.year_probabilities(EngineForward(engine, ds), ds)
        bridge = GT.year_probabilities(model_forward(loaded), ds)
        assert torch.allclose(ours, bridge.to(ours.dtype), atol=1e-5)


# ---------------------------------------------------------------- MLPs and neurons against the methods
@pytest.mark.slow
def test_neuron_effects_are_activation_patching(gpt2):
    from circuits.methods.activation_patching import ActivationPatching
    from circuits.methods.base import MethodOptions

    _, engine, ds = gpt2
    d_mlp = engine.w.d_mlp
    ap = ActivationPatching().score(engine, ds, GT.metric, MethodOptions(neurons=("m0", "m1"), top_neurons=d_mlp))
    ours = {}
    for layer in (0, 1):  # m1 is the last MLP: its patched runs restart at the unembedding
        ours[layer] = neuron_effects(engine, ds, GT.metric, layer, batch_size=4)
        theirs = torch.zeros(d_mlp, dtype=torch.float64)
        for i, s in ap.neuron_scores[f"m{layer}"]:
            theirs[i] = s
        assert torch.allclose(ours[layer], theirs, atol=1e-12), float((ours[layer] - theirs).abs().max())
    # the top-k are the strongest; one neuron patched "jointly" is its single effect
    all_effects = ours[1]
    top = top_neurons(engine, ds, GT.metric, 1, 5, candidates=d_mlp)
    assert [i for i, _ in top] == all_effects.abs().argsort(descending=True)[:5].tolist()
    i, e = top[0]
    assert abs(joint_effect(engine, ds, GT.metric, 1, [i]) - e) < 1e-12
    # screened by attribution: the exact effects of whatever is chosen
    screened = top_neurons(engine, ds, GT.metric, 1, 3, candidates=20)
    for i, e in screened:
        assert abs(e - float(all_effects[i])) < 1e-12
    est = attribution(engine, ds, GT.metric, 1)
    assert est.shape == (d_mlp,) and torch.isfinite(est).all()


@pytest.mark.slow
def test_mlp_direct_effect_is_path_patching_and_last_mlp_has_no_indirect_effect(gpt2):
    from circuits.methods.activation_patching import ActivationPatching
    from circuits.methods.path_patching import PathPatching
    from circuits.methods.base import MethodOptions

    _, engine, ds = gpt2
    g = engine.graph
    effects = direct_indirect(engine, ds, GT.metric, [0, 1], batch_size=4)
    pp = PathPatching().score(engine, ds, GT.metric, MethodOptions(params={"path_threshold": 0.0}))
    ap = ActivationPatching().score(engine, ds, GT.metric)
    for e in effects:
        assert abs(e.direct - float(pp.edge_scores[g.mlp_sender(e.layer), g.logits_receiver])) < 1e-10
        assert abs(e.total - ap.node_scores[f"m{e.layer}"]) < 1e-10
    assert abs(effects[1].indirect) < 1e-12


def test_logit_lens_sums_to_the_direct_path(gpt2):
    """The lens of all senders together (frozen norm) is the logits minus constants: check one MLP's linearity instead."""
    _, engine, ds = gpt2
    lens = logit_lens(engine, ds, [0, 1])
    assert set(lens) == {0, 1} and lens[0].shape == (len(ds), 100)
    assert torch.allclose(lens[1].sum(-1), torch.zeros(len(ds), dtype=lens[1].dtype), atol=1e-9)  # rows centred


def test_analysis_without_a_circuit_picks_heads_by_activation_patching(llama, tmp_path):
    loaded, engine, ds = llama
    a = analyze(engine, ds, GT, model="tiny-llama", tokenizer=loaded.tokenizer, top_k=3, n_top_heads=3, batch_size=2)
    assert len(a.heads) == 3 and len(a.head_scores) == engine.w.n_layers * engine.w.n_heads
    top3 = sorted(a.head_scores.items(), key=lambda kv: -abs(kv[1]))[:3]
    assert {f"a{l}.h{h}" for l, h in a.heads} == {k for k, _ in top3}
    assert a.mlp_layers == [0, 1] and a.circuit is None
    assert a.lens[0].shape == (100, 10)  # digits: the tens digit
    assert a.attention.shape == (3, ds.clean.shape[1])
    assert np.allclose(a.attention.sum(-1), 1.0)
    assert a.labels[ds.info["yy_pos"]] == "Y1" and a.marks == [ds.info["yy_pos"], ds.info["yy_pos"] + 1]
    files = write(tmp_path / "out", a)
    assert (tmp_path / "out" / "report.html") in files and not (tmp_path / "out" / "heatmap_circuit.png").exists()
    check_report(tmp_path / "out")


# ---------------------------------------------------------------- planted: the real thing
def test_planted_heatmap_is_greater_than_and_pd_is_evaluate_pd(planted):
    loaded, engine, ds = planted
    a = analyze(engine, ds, GT, model="planted", seed=SEED_PLANTED, forward=model_forward(loaded),
                tokenizer=loaded.tokenizer, top_k=3, candidates=8,
                circuit=circuit_mod.load(PLANTED_REF, engine.graph))
    assert a.full.pd_mean >= 0.9
    matrix = a.full.matrix
    rows = [y for y in range(100) if np.isfinite(matrix[y, 0])]
    assert len(rows) > 5
    above = np.mean([matrix[y, y + 1:].sum() for y in rows])
    assert above >= 0.9  # mass right of the diagonal: upper-triangular
    assert np.allclose(matrix[rows].sum(-1), 1.0, atol=1e-3)
    reference = evaluate_model(GT, loaded, ds)
    assert abs(a.full.pd_mean - float(reference["probability_difference"].double().mean())) < 1e-6
    assert abs(a.full.cs_mean - float(reference["cutoff_sharpness"].double().mean())) < 1e-6
    # the planted circuit is exact: alone, it does what the model does
    assert abs(a.circuit.pd_mean - a.full.pd_mean) < 1e-3
    assert a.heads == [(0, 0), (0, 1)] and a.mlp_layers == [1]
    # both movers read YY
    assert (a.attention[:, ds.info["yy_pos"]] > 0.9).all()
    # m1 writes the answer directly (it only feeds the logits)
    assert a.effects[0].direct < -0.5 and abs(a.effects[0].indirect) < 1e-6


@pytest.mark.slow
def test_planted_circuit_without_the_year_paths_loses_the_task(planted, tmp_path):
    from circuits.graphs.build import build_graph, write_json

    loaded, engine, ds = planted
    G = build_graph({"input->a0.h2<q>": 1.0, "a0.h2->logits": 1.0, "input->logits": 1.0}, metadata={"model": "planted"})
    path = write_json(G, tmp_path / "decoy.json")
    circ = circuit_mod.load(path, engine.graph)
    assert circ.n_edges == 3 and circ.heads == ((0, 2),) and circ.mlps == ()
    a = analyze(engine, ds, GT, circuit=circ, top_k=2, candidates=4, forward=model_forward(loaded))
    assert a.circuit.pd_mean < a.full.pd_mean - 0.3
    write(tmp_path / "out", a)
    check_report(tmp_path / "out")


def test_cli_report_on_planted(planted_report):
    out, stdout = planted_report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "planted" and summary["n"] == N_PLANTED and summary["seed"] == SEED_PLANTED
    assert summary["model_metrics"]["pd_mean"] >= 0.9
    assert summary["circuit"]["edges"] == 5
    assert "report.html" in stdout
    for name in ("heatmap_model", "heatmap_circuit", "mlp_logit_lens_m1"):
        rows = (out / f"{name}.csv").read_text().splitlines()
        assert rows[0].split(",")[:3] == ["YY", "00", "01"] and len(rows) == 101
    text = (out / "report.html").read_text()
    assert f"{summary['model_metrics']['pd_mean']:+.4f}" in text
    check_report(out)


@pytest.mark.slow
def test_cli_pd_equals_circuits_evaluate(planted_report):
    out, _ = planted_report
    summary = json.loads((out / "summary.json").read_text())
    script = Path(sys.executable).with_name("circuits")  # the installed console script, in a fresh process
    proc = subprocess.run([str(script), "evaluate", "greater-than", "--model", "planted", "--n", str(N_PLANTED),
                           "--seed", str(SEED_PLANTED), "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads(proc.stdout)["metrics"]
    assert abs(summary["model_metrics"]["pd_mean"] - evaluated["probability_difference"]["mean"]) < 1e-6
    assert abs(summary["model_metrics"]["cs_mean"] - evaluated["cutoff_sharpness"]["mean"]) < 1e-6


# ---------------------------------------------------------------- files
class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.external = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs.get("src"))
        if tag in ("script", "link") or (attrs.get("src") or attrs.get("href") or "").startswith(("http:", "https:", "//")):
            self.external.append((tag, attrs))


def check_png(path: Path) -> None:
    import matplotlib.image as mpimg
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as im:
        im.verify()
    assert mpimg.imread(str(path)).ndim == 3


def check_report(out: Path) -> None:
    """Every PNG is a PNG; report.html names only pictures that exist (relative paths) and loads nothing external."""
    pngs = sorted(out.glob("*.png"))
    assert pngs
    for png in pngs:
        check_png(png)
    parser = _Images()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    assert parser.srcs and not parser.external
    for src in parser.srcs:
        assert src and not Path(src).is_absolute() and "/" not in src, src
        assert (out / src).is_file(), src
    assert {p.name for p in pngs} == set(parser.srcs)  # every picture is in the report
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


# ---------------------------------------------------------------- errors
def test_non_empty_out_is_refused_without_force(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    started = time.perf_counter()
    code, _, err = invoke("analyze", "greater-than", "--model", "planted", "--out", str(out))
    assert_user_error(code, err, "not empty")
    assert time.perf_counter() - started < 10  # refused before loading the model


@pytest.mark.parametrize("spec, fragment", [("a0.h1", "MLP names"), ("m1,x", "MLP names"), (",", "MLP names"),
                                            ("m1.n3", "MLP names")])
def test_bad_neurons_are_one_line_errors(tmp_path, spec, fragment):
    code, _, err = invoke("analyze", "greater-than", "--model", "planted", "--out", str(tmp_path / "o"), "--neurons", spec)
    assert_user_error(code, err, fragment)


def test_neurons_beyond_the_model_and_foreign_circuits_are_one_line_errors(tmp_path, planted):
    code, _, err = invoke("analyze", "greater-than", "--model", "planted", "--out", str(tmp_path / "o"), "--neurons", "m7")
    assert_user_error(code, err, "m0..m1")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"directed": True, "multigraph": False, "graph": {},
                                   "nodes": [], "edges": [{"source": "m9", "target": "logits"}]}))
    code, _, err = invoke("analyze", "greater-than", "--model", "planted", "--out", str(tmp_path / "o2"),
                          "--circuit", str(foreign))
    assert_user_error(code, err, "another model")
    code, _, err = invoke("analyze", "greater-than", "--model", "planted", "--out", str(tmp_path / "o3"),
                          "--circuit", str(tmp_path / "missing.json"))
    assert_user_error(code, err, "does not exist")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_help_lists_the_command():
    code, out, _ = invoke("analyze", "--help")
    assert code == 0 and "greater-than" in out


# ---------------------------------------------------------------- SmolLM2 (slow)
@pytest.mark.slow
def test_smollm2_report_with_a_small_circuit(smollm2_gguf, smollm2_cache, tmp_path, monkeypatch):
    from circuits.graphs.build import build_graph, write_json

    monkeypatch.setenv("CIRCUITS_CACHE", str(smollm2_cache))
    G = build_graph({"input->m0": 1.0, "m0->logits": 1.0, "input->a1.h0<v>": 1.0, "a1.h0->m29": 1.0,
                     "m29->logits": 1.0, "input->logits": 1.0})
    path = write_json(G, tmp_path / "small.json")
    out = tmp_path / "report"
    started = time.perf_counter()
    code, stdout, err = invoke("analyze", "greater-than", "--model", str(smollm2_gguf), "--out", str(out), "--n", "20",
                               "--circuit", str(path), "--top-k", "5", "--candidates", "20")
    elapsed = time.perf_counter() - started
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "digits" and summary["model_metrics"]["pd_mean"] > 0.3
    assert summary["circuit"]["edges"] == 6
    check_report(out)
    print(f"SmolLM2 analyze, n=20: {elapsed:.0f} s")
