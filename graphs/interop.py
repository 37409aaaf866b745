"""EAP-IG's graph JSON and MIB's circuit-track submission layout, read and written without torch.

EAP-IG (hannamw/EAP-IG, ``Graph.to_json`` / ``Graph.from_json``) stores a whole model's graph::

    {"cfg": {"n_layers": 12, "n_heads": 12, "parallel_attn_mlp": false, "d_model": 768},
     "nodes": {"input": {"in_graph": true, "score": 0.1}, "a0.h0": {"in_graph": false}, ...},
     "edges": {"input->a0.h0<q>": {"score": -0.0003, "in_graph": false}, ...}}

Its node and edge names are ours (``a0.h1->a9.h1<q>``, ``m3->logits``), so a circuit maps one to
one: kept edges are ``in_graph``, and every scored edge of the run (``scores.tsv``) keeps its
score. Our run's metadata (task, model, method, f) rides along under a top-level ``metadata``
key, which EAP-IG's and MIB's loaders ignore (they read only ``cfg``, ``nodes`` and ``edges``).
Older EAP-IG files give a node as a bare boolean; both are read. EAP-IG's optional
``neurons`` masks are over each node's output dimensions (d_model), not MLP neurons, so our
neuron nodes are not written there; an edge we name at neuron level is written as its MLP's edge.

MIB's circuit track (the MIB-shared-task repository's README and ``run_attribution.py``)
expects one folder per task and model, named ``{task}_{model}``, holding either one
``importances.json`` with every edge's score (the form written by default), or one binary
circuit per edge-percentage cap, 0.1% ... 100% of the edges (:data:`MIB_CAPS`).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import networkx as nx

from circuits import names
from circuits.atomic import write_atomic
from circuits.errors import CircuitsError
from circuits.graphs.build import _parse_edge, _parse_node, build_graph, edge_names, jsonable

MIB_CAPS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
IMPORTANCES_FILE = "importances.json"

__all__ = ["MIB_CAPS", "IMPORTANCES_FILE", "is_eap_ig", "to_eap_ig", "from_eap_ig", "eap_ig_scores",
           "write_eap_ig", "write_mib", "mib_folder_name", "model_shape"]


def is_eap_ig(data: Any) -> bool:
    """Whether parsed JSON looks like EAP-IG's graph file (``cfg`` plus ``nodes`` and ``edges`` dicts)."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), dict) and isinstance(data.get("edges"), dict)


def model_shape(G: nx.DiGraph, scores: Optional[Mapping[str, float]] = None) -> tuple[int, int]:
    """``(n_layers, n_heads)`` from the graph's metadata, else from the largest indices named."""
    layers, heads = G.graph.get("n_layers"), G.graph.get("n_heads")
    if isinstance(layers, int) and isinstance(heads, int) and not isinstance(layers, bool):
        return layers, heads
    max_layer, max_head = 0, 0
    nodes = set(G.nodes)
    for name in scores or {}:
        e = names.parse_edge(name)
        nodes.update((names.format_node(e.src), names.format_node(e.dst)))
    for n in nodes:
        node = names.parse_node(n)
        if node.layer is not None:
            max_layer = max(max_layer, node.layer)
        if node.kind == "head":
            max_head = max(max_head, node.index)
    return max_layer + 1, max_head + 1


def to_eap_ig(G: nx.DiGraph, *, scores: Optional[Mapping[str, float]] = None,
              cfg: Optional[Mapping[str, Any]] = None, with_scores: bool = True) -> dict[str, Any]:
    """EAP-IG's graph dict for circuit ``G``: every edge of ``scores`` (the run's full scores, when
    given) plus the kept ones, ``in_graph`` for the kept; nodes of the whole model, ``in_graph``
    for the circuit's. Without ``with_scores`` the scores are left out (MIB's binary circuits)."""
    n_layers, n_heads = model_shape(G, scores)
    config = {"n_layers": n_layers, "n_heads": n_heads, "parallel_attn_mlp": False}
    d_model = G.graph.get("d_model")
    if isinstance(d_model, int):
        config["d_model"] = d_model
    config.update(dict(cfg or G.graph.get("eap_ig_cfg") or {}))
    kept = {_mlp_level(n) for n in edge_names(G)}
    edge_score: dict[str, float] = {}
    for name, value in (scores or {}).items():
        edge_score[_mlp_level(name)] = float(value)
    for u, v, data in G.edges(data=True):
        per = data.get("scores") or {}
        for name in data.get("names") or []:
            value = per.get(names.parse_edge(name).qkv or "")
            if _number(value):
                edge_score[_mlp_level(name)] = float(value)
            else:
                edge_score.setdefault(_mlp_level(name), 0.0)
    circuit_nodes = {_mlp_node(n) for n in G.nodes}
    order: list[str] = ["input"]
    for layer in range(n_layers):
        order += [f"a{layer}.h{h}" for h in range(n_heads)] + [f"m{layer}"]
    order.append("logits")
    for n in sorted(circuit_nodes - set(order)):
        order.append(n)
    nodes: dict[str, dict[str, Any]] = {}
    for n in order:
        entry: dict[str, Any] = {"in_graph": n in circuit_nodes}
        score = G.nodes[n].get("score") if n in G else None
        if with_scores and _number(score):
            entry["score"] = float(score)
        nodes[n] = entry
    edges = {}
    for name in sorted(edge_score, key=_edge_order):
        entry = {"score": edge_score[name]} if with_scores else {}
        entry["in_graph"] = name in kept
        edges[name] = entry
    out: dict[str, Any] = {"cfg": config, "nodes": nodes, "edges": edges}
    meta = {k: v for k, v in G.graph.items() if k != "eap_ig_cfg"}
    if meta:  # our run's metadata (task, model, method, f...); EAP-IG's readers ignore other keys
        out["metadata"] = jsonable(meta)
    return out


def eap_ig_scores(data: Mapping[str, Any]) -> dict[str, float]:
    """Every scored edge of an EAP-IG graph dict (name -> score); edges without a score are skipped."""
    out = {}
    for name, info in data["edges"].items():
        score = info.get("score") if isinstance(info, dict) else None
        if _number(score) and math.isfinite(float(score)):
            out[names.format_edge(_parse_edge(name))] = float(score)
    return out


def from_eap_ig(data: Mapping[str, Any]) -> nx.DiGraph:
    """Our circuit graph from an EAP-IG graph dict: its ``in_graph`` edges with their scores,
    node scores, and ``cfg`` kept in ``G.graph["eap_ig_cfg"]`` (plus ``n_layers``, ``n_heads``)."""
    if not is_eap_ig(data):
        raise CircuitsError("not an EAP-IG graph: expected 'cfg', and 'nodes' and 'edges' objects")
    kept: dict[str, float] = {}
    for name, info in data["edges"].items():
        if not isinstance(info, dict):
            raise CircuitsError(f"EAP-IG edge {name!r} must be an object with 'in_graph' (and 'score')")
        if info.get("in_graph"):
            score = info.get("score")
            kept[str(name)] = float(score) if _number(score) else 0.0
    node_scores = {}
    for name, info in data["nodes"].items():
        if isinstance(info, dict) and _number(info.get("score")):
            node_scores[str(name)] = float(info["score"])
    cfg = data.get("cfg") if isinstance(data.get("cfg"), dict) else {}
    given = data.get("metadata")
    meta: dict[str, Any] = {**(given if isinstance(given, dict) else {}), "eap_ig_cfg": dict(cfg)}
    for key in ("n_layers", "n_heads", "d_model"):
        if isinstance(cfg.get(key), int):
            meta[key] = cfg[key]
    G = build_graph(kept, metadata=meta)
    for n, s in node_scores.items():
        n = names.format_node(_parse_node(n))
        if n in G:
            G.nodes[n]["score"] = s
    return G


def write_eap_ig(G: nx.DiGraph, path: Union[str, Path], *, scores: Optional[Mapping[str, float]] = None) -> Path:
    """Write :func:`to_eap_ig` as JSON to ``path`` atomically."""
    return write_atomic(path, json.dumps(to_eap_ig(G, scores=scores), allow_nan=False) + "\n")


def mib_folder_name(meta: Mapping[str, Any]) -> str:
    """``{task}_{model}`` as MIB names its folders (underscores inside either become dashes)."""
    task = _slug(meta.get("task") or "task")
    model = _slug(Path(str(meta.get("model") or "model")).name.removesuffix(".gguf"))
    return f"{task}_{model}"


def write_mib(G: nx.DiGraph, out_dir: Union[str, Path], *, scores: Optional[Mapping[str, float]] = None,
              caps: bool = False) -> Path:
    """Write MIB's circuit-track folder ``out_dir/{task}_{model}/`` and return it.

    Default: ``importances.json``, EAP-IG's format with every edge's score (``scores``, the
    run's ``scores.tsv``; without them only the kept edges are scored). With ``caps``: one
    binary circuit per cap in :data:`MIB_CAPS`, ``edges_{percent}pct.json``, holding the top
    ``floor(cap x edges)`` edges by ``|score|`` (the scores are left out, as MIB asks).
    """
    if not scores:
        raise CircuitsError("the MIB export needs every edge's score: pass a run folder that holds scores.tsv")
    folder = Path(out_dir) / mib_folder_name(G.graph)
    folder.mkdir(parents=True, exist_ok=True)
    if not caps:
        write_atomic(folder / IMPORTANCES_FILE, json.dumps(to_eap_ig(G, scores=scores), allow_nan=False) + "\n")
        return folder
    ranked = sorted(scores, key=lambda n: (-abs(float(scores[n])), n))
    for cap in MIB_CAPS:
        k = int(math.floor(cap * len(ranked) + 1e-9))
        top = build_graph({n: float(scores[n]) for n in ranked[:k]}, metadata=dict(G.graph))
        data = to_eap_ig(top, scores=scores, with_scores=False)
        write_atomic(folder / f"edges_{_pct(cap)}pct.json", json.dumps(data, allow_nan=False) + "\n")
    return folder


def _pct(cap: float) -> str:
    text = f"{cap * 100:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.\-]+", "-", str(text).replace("_", "-")).strip("-").lower() or "x"


def _mlp_node(name: str) -> str:
    node = _parse_node(name)
    return names.format_node(names.mlp(node.layer)) if node.kind == "neuron" else names.format_node(node)


def _mlp_level(name: str) -> str:
    e = _parse_edge(name)
    src = names.mlp(e.src.layer) if e.src.kind == "neuron" else e.src
    dst = names.mlp(e.dst.layer) if e.dst.kind == "neuron" else e.dst
    return names.format_edge(names.Edge(src, dst, e.qkv))


def _edge_order(name: str) -> tuple:
    e = names.parse_edge(name)
    return (names.node_layer_order(e.dst), e.qkv or "", names.node_layer_order(e.src))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
