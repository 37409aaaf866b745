"""circuits.graphs: building, node-link JSON, DOT, export, comparison, scores.tsv and report.md."""
from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from circuits.errors import CircuitsError
from circuits.graphs import export as export_mod
from circuits.graphs.build import build_graph, edge_names, from_node_link, to_node_link, write_json
from circuits.graphs.files import load_circuit
from circuits.graphs.compare import auroc, compare, load_scores, overlap, write_scores
from circuits.graphs.dot import NEGATIVE, POSITIVE, to_dot
from circuits.graphs.export import dot_available, export, render_svg
from circuits.graphs.report import CURVE_FILE, REPORT_FILE, write_report

EDGES = {
    "input->a0.h1<q>": 0.1,
    "a0.h1->a9.h1<q>": 0.5,
    "a0.h1->a9.h1<k>": -0.2,
    "input->m0": 1.0,
    "m0->a9.h1<v>": 0.3,
    "a9.h1->logits": 2.0,
    "m11->logits": -1.0,
}
META = {"task": "greater-than", "model": "gpt2", "method": "eap", "faithfulness": 0.91}


def make_graph(edges=EDGES) -> nx.DiGraph:
    return build_graph(
        edges,
        node_scores={"a9.h1": 3.0, "m0": -0.5},
        top_neurons={"m0": [(3, 0.5), (7, 0.1)]},
        metadata=META,
    )


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- build


def test_build_merges_qkv_into_one_edge_per_pair():
    G = make_graph()
    assert set(G.nodes) == {"input", "a0.h1", "m0", "a9.h1", "m11", "logits"}
    assert G.number_of_edges() == 6
    e = G.edges["a0.h1", "a9.h1"]
    assert e["qkv"] == ["k", "q"]
    assert e["scores"] == {"k": -0.2, "q": 0.5}
    assert e["score"] == pytest.approx(0.3)
    assert e["names"] == ["a0.h1->a9.h1<k>", "a0.h1->a9.h1<q>"]
    plain = G.edges["input", "m0"]
    assert plain["qkv"] == [] and plain["scores"] == {"": 1.0} and plain["score"] == 1.0
    assert plain["names"] == ["input->m0"]
    assert edge_names(G) == set(EDGES)
    assert G.graph == META


def test_build_node_attributes():
    G = make_graph()
    assert G.nodes["a9.h1"] == {
        "kind": "head", "layer": 9, "head": 1, "neuron": None, "position": None, "score": 3.0, "top_neurons": None,
    }
    assert G.nodes["m0"]["kind"] == "mlp" and G.nodes["m0"]["layer"] == 0 and G.nodes["m0"]["head"] is None
    assert G.nodes["m0"]["top_neurons"] == [[3, 0.5], [7, 0.1]]
    assert G.nodes["m0"]["score"] == -0.5
    assert G.nodes["input"]["kind"] == "input" and G.nodes["input"]["layer"] is None
    assert G.nodes["logits"]["kind"] == "logits"
    N = build_graph({"m3.n42->logits": 1.0})
    assert N.nodes["m3.n42"]["kind"] == "neuron" and N.nodes["m3.n42"]["neuron"] == 42


@pytest.mark.parametrize(
    "edges, fragment",
    [
        ({"a0.h1->a9.h1": 1.0}, "needs an input"),
        ({"x->logits": 1.0}, "bad component name"),
        ({"a0.h1->a9.h1<q>": 1.0, " a0.h1->a9.h1<q>": 2.0}, "given twice"),
        ({"m0->logits": float("nan")}, "finite"),
        ({"m0->logits": "big"}, "not a number"),
    ],
)
def test_build_rejects_bad_input(edges, fragment):
    with pytest.raises(CircuitsError, match=fragment):
        build_graph(edges)


# ---------------------------------------------------------------- node-link JSON


def _same(G: nx.DiGraph, H: nx.DiGraph) -> None:
    assert dict(G.nodes(data=True)) == dict(H.nodes(data=True))
    assert {(u, v): d for u, v, d in G.edges(data=True)} == {(u, v): d for u, v, d in H.edges(data=True)}
    assert G.graph == H.graph


def test_node_link_round_trip_with_networkx_defaults():
    G = make_graph()
    data = json.loads(json.dumps(to_node_link(G)))
    assert data["directed"] is True and data["multigraph"] is False and data["graph"] == META
    assert "links" not in data  # the edge list is written once
    H = nx.node_link_graph(data)  # networkx >= 3.4 default reads "edges"
    assert isinstance(H, nx.DiGraph) and not H.is_multigraph()
    _same(G, H)
    old = {("links" if k == "edges" else k): v for k, v in data.items()}  # older writers' key is still read
    _same(G, from_node_link(old))


def test_node_link_is_sorted_and_deterministic():
    G1 = make_graph()
    G2 = make_graph(dict(reversed(list(EDGES.items()))))
    assert json.dumps(to_node_link(G1)) == json.dumps(to_node_link(G2))
    data = to_node_link(G1)
    assert [n["id"] for n in data["nodes"]] == ["input", "a0.h1", "m0", "a9.h1", "m11", "logits"]
    firsts = [e["names"][0] for e in data["edges"]]
    assert firsts == sorted(firsts)


def test_write_json_then_load_circuit_file_and_folder(tmp_path):
    G = make_graph()
    path = write_json(G, tmp_path / "circuit.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circuit.json"]
    _same(G, load_circuit(path))
    _same(G, load_circuit(tmp_path))
    assert edge_names(load_circuit(tmp_path)) == set(EDGES)


def test_write_json_failure_leaves_no_file(tmp_path):
    G = build_graph({"m0->logits": 1.0}, metadata={"bad": object()})
    with pytest.raises(CircuitsError):
        write_json(G, tmp_path / "circuit.json")
    assert list(tmp_path.iterdir()) == []


def test_write_json_metadata_numpy_and_nan(tmp_path):
    np = pytest.importorskip("numpy")
    G = build_graph({"m0->logits": 1.0}, metadata={"f": np.float32(0.5), "n": np.int64(3), "cmd": float("nan")})
    H = load_circuit(write_json(G, tmp_path / "c.json"))
    assert H.graph == {"f": 0.5, "n": 3, "cmd": None}


def test_load_hand_written_reference(tmp_path):
    ref = {
        "graph": {"name": "tiny"},
        "links": [
            {"source": "a0.h1", "target": "a9.h1", "qkv": ["q", "v"]},
            {"source": "a9.h1", "target": "logits"},
        ],
    }
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    G = load_circuit(tmp_path / "ref.json")
    assert edge_names(G) == {"a0.h1->a9.h1<q>", "a0.h1->a9.h1<v>", "a9.h1->logits"}
    assert G.nodes["a9.h1"]["kind"] == "head" and G.graph == {"name": "tiny"}


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "top level is a list"),
        ('{"nodes": []}', "no list of edges"),
        ('{"edges": [{"source": "a0.h1"}]}', "source"),
        ('{"edges": [{"source": "a0.h1", "target": "a9.h1"}]}', "qkv"),
        ('{"edges": [{"source": "zz", "target": "logits"}]}', "bad component name"),
        ('{"directed": false, "edges": []}', "directed"),
    ],
)
def test_load_circuit_errors_are_one_line(tmp_path, content, fragment):
    path = tmp_path / "circuit.json"
    path.write_text(content)
    with pytest.raises(CircuitsError, match=fragment) as info:
        load_circuit(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_load_circuit_missing_paths(tmp_path):
    with pytest.raises(CircuitsError, match="does not exist"):
        load_circuit(tmp_path / "nope.json")
    with pytest.raises(CircuitsError, match="holds no circuit.json"):
        load_circuit(tmp_path)


# ---------------------------------------------------------------- DOT


def _edge_line(dot: str, u: str, v: str) -> str:
    (line,) = [ln for ln in dot.splitlines() if ln.strip().startswith(f'"{u}" -> "{v}"')]
    return line


def _attr(line: str, key: str) -> str:
    return re.search(rf'\b{key}="([^"]*)"', line).group(1)


def test_dot_is_deterministic():
    a = to_dot(make_graph())
    b = to_dot(make_graph(dict(reversed(list(EDGES.items())))))
    assert a == b
    assert a.startswith("digraph circuit {") and a.rstrip().endswith("}")


def test_dot_layout_ranks_and_shapes():
    dot = to_dot(make_graph())
    assert 'rankdir="BT"' in dot
    ranks = [ln.strip() for ln in dot.splitlines() if ln.strip().startswith("{rank=same;")]
    assert ranks == [
        '{rank=same; "input";}',
        '{rank=same; "a0.h1";}',
        '{rank=same; "m0";}',
        '{rank=same; "a9.h1";}',
        '{rank=same; "m11";}',
        '{rank=same; "logits";}',
    ]
    node = {n: next(ln for ln in dot.splitlines() if ln.strip().startswith(f'"{n}" [')) for n in ("a9.h1", "m0", "input", "logits")}
    assert _attr(node["a9.h1"], "shape") == "ellipse" and _attr(node["a9.h1"], "label") == "a9.h1"
    assert _attr(node["m0"], "shape") == "box" and _attr(node["m0"], "label") == "m0"
    shapes = {_attr(node[n], "shape") for n in node}
    assert len(shapes) == 4  # input and logits each have their own shape
    assert "greater-than" in dot and "gpt2" in dot and "eap" in dot


def test_dot_edges_width_colour_and_qkv():
    dot = to_dot(make_graph())
    widths = {
        (u, v): float(_attr(_edge_line(dot, u, v), "penwidth"))
        for u, v in [("a9.h1", "logits"), ("input", "m0"), ("m11", "logits"), ("a0.h1", "a9.h1"), ("input", "a0.h1")]
    }
    assert widths[("a9.h1", "logits")] == 6.0  # the largest |score|
    assert widths[("input", "m0")] == widths[("m11", "logits")]  # |1.0| == |-1.0|
    assert widths[("a9.h1", "logits")] > widths[("input", "m0")] > widths[("a0.h1", "a9.h1")] > widths[("input", "a0.h1")] >= 0.5
    assert _attr(_edge_line(dot, "m11", "logits"), "color") == NEGATIVE
    assert _attr(_edge_line(dot, "input", "m0"), "color") == POSITIVE
    assert _attr(_edge_line(dot, "a0.h1", "a9.h1"), "label") == "q,k"
    assert _attr(_edge_line(dot, "m0", "a9.h1"), "label") == "v"
    assert "label=" not in _edge_line(dot, "input", "m0")


def test_dot_quotes_metadata():
    G = build_graph({"m0->logits": 1.0}, metadata={"task": 'say "hi"\\now', "model": "x\ny"})
    dot = to_dot(G)
    assert 'label="say \\"hi\\"\\\\now | x\\ny"' in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="GraphViz dot not installed")
def test_dot_binary_accepts_output(tmp_path):
    dot_file = tmp_path / "c.dot"
    dot_file.write_text(to_dot(make_graph()))
    proc = subprocess.run(["dot", "-Tsvg", str(dot_file)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "<svg" in proc.stdout and "a9.h1" in proc.stdout
    svg = render_svg(to_dot(make_graph()))
    assert svg is not None and "<svg" in svg


# ---------------------------------------------------------------- export


def test_export_text_formats(tmp_path):
    G = make_graph()
    assert export(G, "dot", tmp_path / "c.dot").read_text() == to_dot(G)
    _same(G, load_circuit(export(G, "json", tmp_path / "c.json")))
    H = nx.read_graphml(export(G, "graphml", tmp_path / "c.graphml"))
    assert set(H.nodes) == set(G.nodes)
    assert json.loads(H.edges["a0.h1", "a9.h1"]["names"]) == G.edges["a0.h1", "a9.h1"]["names"]
    assert H.edges["a9.h1", "logits"]["score"] == 2.0
    assert H.nodes["a9.h1"]["layer"] == 9 and H.graph["task"] == "greater-than"
    assert no_temp_files(tmp_path)
    with pytest.raises(CircuitsError, match="unknown export format"):
        export(G, "pdf", tmp_path / "c.pdf")


@pytest.mark.skipif(not dot_available(), reason="neither GraphViz dot nor graphviz-pure installed (the dev extra installs graphviz-pure)")
def test_export_svg_png(tmp_path):
    G = make_graph()
    assert "<svg" in export(G, "svg", tmp_path / "c.svg").read_text()
    assert export(G, "png", tmp_path / "c.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert no_temp_files(tmp_path)


def test_export_without_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod.shutil, "which", lambda name: None)
    monkeypatch.setattr(export_mod.sys, "executable", str(tmp_path / "nowhere" / "python"))
    assert not dot_available() and render_svg("digraph {}") is None
    with pytest.raises(CircuitsError, match="install graphviz"):
        export(make_graph(), "png", tmp_path / "c.png")
    assert list(tmp_path.iterdir()) == []
    assert export(make_graph(), "svg", tmp_path / "c.svg").read_text().startswith("<svg")  # ours: no GraphViz


# ---------------------------------------------------------------- compare


def test_overlap_hand_computed():
    assert overlap({1, 2, 3}, {2, 3, 4, 5}) == {"precision": 2 / 3, "recall": 2 / 4, "jaccard": 2 / 5}
    assert overlap(set(), set()) == {"precision": 1.0, "recall": 1.0, "jaccard": 1.0}
    assert overlap(set(), {1}) == {"precision": 0.0, "recall": 0.0, "jaccard": 0.0}
    assert overlap({1}, set()) == {"precision": 0.0, "recall": 0.0, "jaccard": 0.0}


def test_compare_hand_built_graphs():
    a = build_graph({"a0.h1->a9.h1<q>": 1, "a0.h1->a9.h1<k>": 1, "a9.h1->logits": 1, "m3->logits": 1})
    b = build_graph({"a0.h1->a9.h1<q>": 1, "a9.h1->logits": 1, "a0.h2->a9.h1<v>": 1})
    # nodes: A = {a0.h1, a9.h1, logits, m3}; B = {a0.h1, a9.h1, logits, a0.h2}; 3 shared, 5 in all
    # edges: A has 4, B has 3, 2 shared, 5 in all
    assert compare(a, b) == {
        "nodes": {"precision": 3 / 4, "recall": 3 / 4, "jaccard": 3 / 5},
        "edges": {"precision": 2 / 4, "recall": 2 / 3, "jaccard": 2 / 5, "auroc": None},
        "granularity": "edge",
    }
    a.graph["granularity"] = "node"
    assert compare(a, b)["granularity"] == "node"
    same = compare(a, a)
    assert same["nodes"]["jaccard"] == same["edges"]["jaccard"] == 1.0


def _auroc_brute(scores: dict, positives: set) -> float:
    values = {k: abs(v) for k, v in scores.items()}
    values.update({p: float("-inf") for p in positives if p not in values})
    pos = [v for k, v in values.items() if k in positives]
    neg = [v for k, v in values.items() if k not in positives]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_hand_computed():
    scores = {"m0->logits": 3.0, "m1->logits": -2.0, "m2->logits": 1.0, "m3->logits": 0.5}
    # positives |3| and |1| against negatives |2| and |0.5|: 3 of the 4 pairs are won
    assert auroc(scores, {"m0->logits", "m2->logits"}) == 0.75
    assert auroc(scores, {"m0->logits", "m1->logits"}) == 1.0
    assert auroc(scores, set()) is None
    assert auroc(scores, set(scores)) is None
    # a positive that was never scored ranks below everything
    assert auroc(scores, {"m0->logits", "m9->logits"}) == pytest.approx(_auroc_brute(scores, {"m0->logits", "m9->logits"}))
    assert auroc(scores, {"m0->logits", "m9->logits"}) == 0.5


def test_auroc_matches_brute_force_with_ties():
    rng = random.Random(0)
    for trial in range(25):
        names = [f"a{l}.h{h}->m{l}" for l in range(6) for h in range(6)]
        scores = {n: round(rng.uniform(-2, 2), 1) for n in names}  # rounding makes many ties (and |x| ties)
        positives = set(rng.sample(names, rng.randint(1, 20)))
        if trial % 3 == 0:
            positives.add("m5->logits")  # unscored positive
        assert auroc(scores, positives) == pytest.approx(_auroc_brute(scores, positives))


def test_compare_with_scores_gives_auroc():
    b = build_graph({"m0->logits": 1.0, "m2->logits": 1.0})
    scores = {"m0->logits": 3.0, "m1->logits": -2.0, "m2->logits": 1.0, "m3->logits": 0.5}
    a = build_graph({"m0->logits": 3.0, "m1->logits": -2.0})
    assert compare(a, b, scores=scores)["edges"]["auroc"] == 0.75


def test_scores_tsv_round_trip_and_order(tmp_path):
    scores = {"m0->logits": 0.5, "a0.h1->a9.h1<q>": -3.0, "input->m0": 1.25, "m1->logits": 0.0}
    path = write_scores(scores, tmp_path / "scores.tsv")
    lines = path.read_text().splitlines()
    assert lines[0] == "edge\tscore"
    assert [ln.split("\t")[0] for ln in lines[1:]] == ["a0.h1->a9.h1<q>", "input->m0", "m0->logits", "m1->logits"]
    assert load_scores(tmp_path) == scores  # a run folder works too
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("name\tvalue\nm0->logits\t1\n", "header"),
        ("edge\tscore\nm0->logits\tbig\n", "line 2"),
        ("edge\tscore\nm0->logits\t1\nm0->logits\t2\n", "twice"),
        ("edge\tscore\nzz->logits\t1\n", "line 2"),
    ],
)
def test_load_scores_errors(tmp_path, text, fragment):
    (tmp_path / "scores.tsv").write_text(text)
    with pytest.raises(CircuitsError, match=fragment):
        load_scores(tmp_path)


def test_load_scores_missing(tmp_path):
    with pytest.raises(CircuitsError, match="does not exist"):
        load_scores(tmp_path)


# ---------------------------------------------------------------- report


def test_report_with_curve(tmp_path):
    manifest = {"edges_kept": 7, "edges_total": 100, "cpr": 0.93, "cmd": 0.07, "n": 50, "seed": 1, "timings": {"score": 1.5},
                "selection": {"mode": "target-faithfulness", "value": 0.9, "ranking": "abs",
                              "verified": {"tested": 9, "removed": ["a2.h1->m2", "a2.h1->m3"], "tolerance": 1e-3}}}
    path = write_report(
        tmp_path, G=make_graph(), manifest=manifest,
        curve=[(0.01, 0.2), (0.1, 0.8), (1.0, 1.0)], top_components=[("a9.h1", 3.0), ("m0", -0.5)],
    )
    text = path.read_text()
    assert path == tmp_path / REPORT_FILE
    assert text.startswith("# Circuit report: greater-than / gpt2 / eap")
    for row in ("| faithfulness | 0.91 |", "| edges kept / total | 7 / 100 |", "| CPR | 0.93 |", "| CMD | 0.07 |",
                "| prompts (n) | 50 |", "| seed | 1 |", "| time: score | 1.5 s |", "| a9.h1 | head | 3 |", "| m0 | mlp | -0.5 |",
                "| selection | target-faithfulness 0.9, ranking abs |",
                "| verified by patching | 2 of 9 edges removed: a2.h1->m2, a2.h1->m3 |"):
        assert row in text
    assert "- heads (2): a0.h1, a9.h1" in text and "- MLPs (2): m0, m11" in text
    assert f"]({CURVE_FILE})" in text
    assert (tmp_path / CURVE_FILE).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert no_temp_files(tmp_path)


def test_report_with_both_curves(tmp_path):
    signed = [{"fraction": 0.1, "edges": 3, "faithfulness": 1.4}, {"fraction": 1.0, "edges": 100, "faithfulness": 1.0}]
    absolute = [{"fraction": 0.1, "edges": 4, "faithfulness": 0.6}, {"fraction": 1.0, "edges": 100, "faithfulness": 1.0}]
    manifest = {"edges_kept": 7, "edges_total": 100, "cpr": 1.08, "cmd": 0.18, "curve_signed": signed, "curve_abs": absolute}
    write_report(tmp_path, G=make_graph(), manifest=manifest, top_components=[],
                 curves={"signed": [(0.1, 1.4), (1.0, 1.0)], "abs": [(0.1, 0.6), (1.0, 1.0)]})
    text = (tmp_path / REPORT_FILE).read_text()
    assert "| fraction | edges, signed (CPR) | f, signed (CPR) | edges, abs (CMD) | f, abs (CMD) |" in text
    assert "| 0.1 | 3 | 1.4 | 4 | 0.6 |" in text and "| 1 | 100 | 1 | 100 | 1 |" in text
    assert (tmp_path / CURVE_FILE).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_report_without_curve(tmp_path):
    write_report(tmp_path, G=make_graph(), manifest={}, curve=None, top_components=[])
    text = (tmp_path / REPORT_FILE).read_text()
    assert "No faithfulness curve" in text and "![" not in text
    assert "| edges kept / total | 7 |" in text
    assert not (tmp_path / CURVE_FILE).exists()


# ---------------------------------------------------------------- no torch


def test_graphs_never_import_torch(tmp_path):
    code = (
        "import sys\n"
        "import circuits.graphs.build, circuits.graphs.dot, circuits.graphs.export\n"
        "import circuits.graphs.compare, circuits.graphs.report, circuits.graphs.bench, circuits.cli.commands_graphs\n"
        "from circuits.graphs.build import build_graph\n"
        "from circuits.graphs.report import write_report\n"
        "G = build_graph({'m0->logits': 1.0})\n"
        f"write_report({str(tmp_path)!r}, G=G, manifest={{}}, curve=[(0.1, 0.5), (1.0, 1.0)], top_components=[])\n"
        "bad = sorted(m for m in ('torch', 'transformer_lens') if m in sys.modules)\n"
        "print(bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_unscored_edges_are_written_empty_and_left_out_when_read(tmp_path):
    from circuits.graphs.compare import load_scores, write_scores

    path = write_scores({"input->logits": 0.5, "a0.h1->logits": None, "m0->logits": -2.0}, tmp_path / "scores.tsv")
    lines = path.read_text().splitlines()
    assert lines[1:] == ["m0->logits\t-2.0", "input->logits\t0.5", "a0.h1->logits\t"]
    assert load_scores(path) == {"m0->logits": -2.0, "input->logits": 0.5}
