"""Our layered layout, circuit.svg, the HTML viewer's page and data, and the EAP-IG / MIB formats."""
from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import pytest

from circuits.errors import CircuitsError
from circuits.engine.graph import ComputationalGraph
from circuits.graphs.build import build_graph, edge_names, write_json
from circuits.graphs.files import load_circuit
from circuits.graphs.compare import compare, load_scores, write_scores
from circuits.graphs.dot import MAX_WIDTH, MIN_WIDTH, NEGATIVE, POSITIVE
from circuits.graphs.interop import (MIB_CAPS, eap_ig_scores, from_eap_ig, mib_folder_name, to_eap_ig, write_eap_ig,
                                     write_mib)
from circuits.graphs.layout import layout
from circuits.graphs.svg import to_svg
from circuits.graphs.viewer import run_viewer_html, viewer_data, viewer_html

PLANTED = {  # the planted model's circuit (graphs/references/planted.json), with made-up scores
    "input->a0.h0<v>": 1.3, "a0.h0->m1": 1.2, "input->a0.h1<v>": -0.85, "m1->logits": 0.84, "a0.h1->logits": 0.6,
}
META = {"task": "greater-than", "model": "planted", "method": "eap-ig", "faithfulness": 0.95, "edges_total": 110,
        "n_layers": 2, "n_heads": 4}


def all_scores() -> dict[str, float]:
    """Every edge of the 2-layer, 4-head graph: the circuit's scores, the rest small and distinct."""
    out = {}
    for i, name in enumerate(ComputationalGraph(n_layers=2, n_heads=4).edge_names()):
        out[name] = PLANTED.get(name, (-1) ** i * 0.001 * (i + 1))
    return out


def planted_run(folder: Path) -> Path:
    """A run folder as `discover` writes it (circuit.json, scores.tsv, manifest.json), made without torch."""
    write_json(build_graph(PLANTED, metadata=META), folder / "circuit.json")
    write_scores(all_scores(), folder / "scores.tsv")
    curve = [{"fraction": f, "k": max(1, round(f * 110)), "edges": min(5, round(f * 110)),
              "faithfulness": min(1.0, round(f * 110) / 5)} for f in (0.01, 0.02, 0.05, 0.1, 0.5, 1.0)]
    (folder / "manifest.json").write_text(json.dumps({**META, "edges_kept": 5, "curve": curve}))
    return folder


# ---------------------------------------------------------------- layout


def test_layout_rows_and_columns():
    lay = layout(["input", "a0.h1", "a0.h3", "m0", "a5.h0", "m5", "m5.n7", "m5.n2", "logits"], compact=True)
    b = lay.boxes
    y = lambda n: b[n].y  # noqa: E731  (SVG y grows downwards)
    assert y("input") > y("a0.h1") > y("m0") > y("a5.h0") > y("m5") > y("logits")  # input bottom, logits top
    assert y("a0.h1") == y("a0.h3") and y("m5") == y("m5.n2")  # one row per layer's heads; neurons in the MLP row
    assert b["a0.h1"].x < b["a0.h3"].x < b["m0"].x  # x = head index, MLP at the right
    assert b["m0"].x == b["m5"].x and b["a5.h0"].x < b["a0.h1"].x
    assert b["m5"].x < b["m5.n2"].x < b["m5.n7"].x  # neurons next to their MLP, by index
    assert [r.label for r in lay.rows] == ["input", "L0 attn", "L0 MLP", "L5 attn", "L5 MLP", "logits"]  # compact
    full = layout(["input", "a0.h1", "a5.h0", "logits"], compact=False, n_heads=8)
    assert len(full.rows) == 2 + 2 * 6 and full.n_heads == 8


def test_layout_positions_form_column_blocks():
    lay = layout({"a0.h1": {"position": 2}, "a0.h0": {"position": 5}, "m0": {"position": 2}, "input": {}}, n_heads=2)
    b = lay.boxes
    assert b["a0.h1"].x < b["m0"].x < b["a0.h0"].x  # position 2's block, then position 5's
    assert any(label == "h0@5" for _, label in lay.columns)


# ---------------------------------------------------------------- circuit.svg


def test_svg_is_deterministic_and_draws_the_rules():
    G1 = build_graph(PLANTED, metadata=META, node_scores={"m1": 0.5})
    G2 = build_graph(dict(reversed(list(PLANTED.items()))), metadata=META, node_scores={"m1": 0.5})
    text = to_svg(G1)
    assert text == to_svg(G2)  # byte for byte
    assert text.startswith("<svg") and text.endswith("</svg>\n")
    assert "greater-than | planted | eap-ig | f = 0.950 | 5 of 110 edges" in text
    for label in ("input", "a0.h0", "a0.h1", "m1", "logits", "L0 attn", "L1 MLP"):
        assert f">{label}<" in text
    paths = re.findall(r'<path d="[^"]+" stroke="(#\w+)" stroke-width="([\d.]+)"[^>]*><title>([^<]+): ', text)
    widths = {html.unescape(name): (colour, float(w)) for colour, w, name in paths}
    assert set(widths) == set(PLANTED)
    assert widths["input->a0.h0<v>"] == (POSITIVE, MAX_WIDTH)  # the largest |score|
    assert widths["input->a0.h1<v>"][0] == NEGATIVE
    ranked = sorted(PLANTED, key=lambda n: abs(PLANTED[n]))
    assert [widths[n][1] for n in ranked] == sorted(widths[n][1] for n in ranked)  # width grows with |score|
    assert MIN_WIDTH < min(w for _, w in widths.values())
    assert ">v</text>" in text and ">q</text>" not in text  # the v ports are lettered


def test_svg_of_node_circuit_and_neurons():
    meta = {**META, "granularity": "node"}
    G = build_graph(PLANTED, metadata=meta, node_scores={"a0.h0": 2.0, "m1": -1.0})
    G.add_node("m1.n3", kind="neuron", layer=1, head=None, neuron=3, position=None, score=None, top_neurons=None, parent="m1")
    text = to_svg(G)
    assert 'stroke="#9a9a9a"' in text and POSITIVE not in re.sub(r"<rect[^>]*>", "", text.split("<g font-size")[0])
    assert ">n3<" in text and "m1.n3" in text


# ---------------------------------------------------------------- the viewer's page


def test_viewer_data_ranks_every_scored_edge(tmp_path):
    run = planted_run(tmp_path)
    G, scores = load_circuit(run), load_scores(run)
    data = viewer_data(G, scores=scores, manifest=json.loads((run / "manifest.json").read_text()))
    assert len(data["edges"]) == len(scores) == 110 and data["kept"] == 5 and data["scores_complete"]
    mags = [abs(e[3]) for e in data["edges"]]
    assert mags == sorted(mags, reverse=True)
    names = [data["nodes"][e[0]]["name"] + "->" + data["nodes"][e[1]]["name"] + (f"<{e[2]}>" if e[2] else "")
             for e in data["edges"]]
    assert {n for n, e in zip(names, data["edges"]) if e[4]} == set(PLANTED)
    assert all(math.isclose(scores[n], e[3], rel_tol=1e-5) for n, e in zip(names, data["edges"]))
    assert len(data["nodes"]) == 12 and sum(n["kept"] for n in data["nodes"]) == 5
    m1 = next(n for n in data["nodes"] if n["name"] == "m1")
    assert m1["out_sum"] == pytest.approx(sum(v for k, v in scores.items() if k.startswith("m1->")))
    assert data["curve"] and data["chosen"] == {"edges": 5, "faithfulness": 0.95}


def test_viewer_data_carries_both_curves_the_selections_first(tmp_path):
    run = planted_run(tmp_path)
    signed = [{"fraction": 0.1, "edges": 3, "faithfulness": 1.4}, {"fraction": 1.0, "edges": 110, "faithfulness": 1.0}]
    absolute = [{"fraction": 0.1, "edges": 4, "faithfulness": 0.6}, {"fraction": 1.0, "edges": 110, "faithfulness": 1.0}]
    manifest = {**META, "edges_kept": 5, "curve_signed": signed, "curve_abs": absolute, "selection": {"ranking": "signed"}}
    data = viewer_data(load_circuit(run), scores=load_scores(run), manifest=manifest)
    assert [c["key"] for c in data["curves"]] == ["curve_signed", "curve_abs"]
    assert data["curves"][1]["points"] == absolute and data["curve"] == signed
    data = viewer_data(load_circuit(run), scores=load_scores(run), manifest={**manifest, "selection": {"ranking": "abs"}})
    assert [c["key"] for c in data["curves"]] == ["curve_abs", "curve_signed"] and data["curve"] == absolute
    old = viewer_data(load_circuit(run), scores=load_scores(run), manifest=json.loads((run / "manifest.json").read_text()))
    assert [c["key"] for c in old["curves"]] == ["curve_abs"] and old["curve"]  # an older run's single curve


def test_viewer_html_is_self_contained_and_compares(tmp_path):
    run = planted_run(tmp_path)
    G = load_circuit(run)
    ref = build_graph({"input->a0.h0<v>": 1, "a0.h0->m1": 1, "m1->logits": 1, "a0.h3->logits": 1})
    page = viewer_html(G, scores=load_scores(run), compare=ref, compare_label="ref")
    assert "http://" not in page and "https://" not in page  # no resource URL, no network
    assert "<script src" not in page and "<link" not in page
    blob = re.search(r'<script type="application/json" id="circuit-data">(.*?)</script>', page, re.S).group(1)
    data = json.loads(blob)
    assert data["compare"]["kept_stats"]["edges"] == {k: compare(G, ref)["edges"][k] for k in ("precision", "recall", "jaccard")}
    assert data["compare"]["kept_stats"]["nodes"] == compare(G, ref)["nodes"]
    assert len(data["compare"]["edges"]) == 4
    assert viewer_html(G, scores=load_scores(run)) == viewer_html(load_circuit(run), scores=load_scores(run))  # deterministic
    manifest = json.loads((run / "manifest.json").read_text())
    assert run_viewer_html(run) == viewer_html(G, scores=load_scores(run), manifest=manifest)  # the service's entry point


# ---------------------------------------------------------------- EAP-IG and MIB


def test_eap_ig_round_trip_keeps_names_scores_and_kept_flags(tmp_path):
    G = build_graph(PLANTED, metadata=META, node_scores={"m1": 0.25})
    scores = all_scores()
    data = json.loads(write_eap_ig(G, tmp_path / "g.json", scores=scores).read_text())
    assert data["cfg"] == {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False}
    assert data["metadata"] == META
    assert set(data["edges"]) == set(scores)
    assert all(set(v) == {"score", "in_graph"} for v in data["edges"].values())
    assert {n for n, v in data["edges"].items() if v["in_graph"]} == set(PLANTED)
    assert set(data["nodes"]) == {"input", "logits", "m0", "m1", *(f"a{i}.h{h}" for i in range(2) for h in range(4))}
    assert {n for n, v in data["nodes"].items() if v["in_graph"]} == set(G.nodes) and data["nodes"]["m1"]["score"] == 0.25
    back = load_circuit(tmp_path / "g.json")  # load_circuit reads EAP-IG's JSON
    assert edge_names(back) == set(PLANTED)
    for u, v, d in G.edges(data=True):
        assert back.edges[u, v]["scores"] == d["scores"] and back.edges[u, v]["names"] == d["names"]
    assert back.nodes["m1"]["score"] == 0.25
    assert eap_ig_scores(data) == scores  # every score, kept or not
    again = to_eap_ig(back, scores=eap_ig_scores(data))
    assert again == data  # ours -> EAP-IG -> ours -> EAP-IG is stable


def test_eap_ig_old_node_format_and_bad_input(tmp_path):
    old = {"cfg": {"n_layers": 1, "n_heads": 1}, "nodes": {"input": True, "a0.h0": True, "logits": True},
           "edges": {"input->a0.h0<q>": {"score": 0.5, "in_graph": True}, "a0.h0->logits": {"score": 1.0, "in_graph": True},
                     "input->logits": {"score": 0.1, "in_graph": False}}}
    G = from_eap_ig(old)
    assert edge_names(G) == {"input->a0.h0<q>", "a0.h0->logits"} and G.graph["n_heads"] == 1
    (tmp_path / "bad.json").write_text(json.dumps({"cfg": {}, "nodes": {}, "edges": {"a0.h0->a0.h0": {"in_graph": True}}}))
    with pytest.raises(CircuitsError, match="bad.json"):
        load_circuit(tmp_path / "bad.json")


def test_mib_layout(tmp_path):
    G = build_graph(PLANTED, metadata=META)
    scores = all_scores()
    folder = write_mib(G, tmp_path / "mib", scores=scores)
    assert folder == tmp_path / "mib" / "greater-than_planted" == tmp_path / "mib" / mib_folder_name(META)
    assert [p.name for p in folder.iterdir()] == ["importances.json"]
    imp = json.loads((folder / "importances.json").read_text())
    assert eap_ig_scores(imp) == scores
    caps = write_mib(G, tmp_path / "caps", scores=scores, caps=True)
    files = sorted(p.name for p in caps.iterdir())
    assert len(files) == len(MIB_CAPS) == 10 and "edges_0.1pct.json" in files and "edges_100pct.json" in files
    for cap in MIB_CAPS:
        name = f"edges_{cap * 100:g}pct.json"
        data = json.loads((caps / name).read_text())
        kept = [n for n, v in data["edges"].items() if v["in_graph"]]
        assert len(kept) <= cap * len(scores) and all("score" not in v for v in data["edges"].values())
    assert mib_folder_name({"task": "my_task", "model": "/x/SmolLM2-135M.Q4_1.gguf"}) == "my-task_smollm2-135m.q4-1"
    with pytest.raises(CircuitsError, match="scores.tsv"):
        write_mib(G, tmp_path / "none", scores=None)
