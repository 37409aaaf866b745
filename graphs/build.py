"""Build a circuit's networkx graph from its kept edges, and read/write it as node-link JSON.

A circuit graph is a :class:`networkx.DiGraph` whose node ids are component names in the
grammar of :mod:`circuits.names` (``input``, ``a9.h1``, ``m10``, ``m10.n42``, ``logits``).
A head has three inputs (q, k, v), so up to three kept edges can join the same pair of
nodes; the graph keeps one edge per pair and records which inputs it carries.

Node attributes: ``kind``, ``layer``, ``head``, ``neuron``, ``position`` (None for now),
``score`` (or None) and ``top_neurons`` (list of ``[index, score]`` for MLPs, or None).

Edge attributes: ``qkv`` (sorted letters, ``[]`` for non-head receivers), ``scores``
(letter -> score, or ``{"": score}``), ``score`` (their sum) and ``names`` (sorted full
edge names); after ``discover --bootstrap K``, ``frequencies`` (letter -> the fraction of the K resample
circuits that keep that edge, see :mod:`circuits.circuit.stability`) and ``frequency`` (their largest). ``G.graph``
holds the run's metadata.

**Reduced MLPs.** A circuit may keep an MLP through some of its neurons only. The MLP keeps
its MLP-level edges (``a5.h1->m10``) and its node lists the kept neurons (``neurons``:
``[123, ...]``); each kept neuron is a node ``m10.n123`` (kind ``neuron``, ``parent: "m10"``)
without edges, and ``G.graph["neurons"]`` maps ``"m10"`` to the same list. When reading,
an edge named at neuron level (``a5.h1->m10.n123``) is the MLP's edge plus that neuron.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import networkx as nx

from circuits import names
from circuits.atomic import write_atomic
from circuits.errors import CircuitsError

CIRCUIT_FILE = "circuit.json"

__all__ = [
    "CIRCUIT_FILE", "build_graph", "node_attributes", "edge_names", "circuit_neurons", "add_neurons", "add_frequencies",
    "edge_frequencies",
    "to_node_link", "from_node_link", "write_json", "jsonable",
]


def build_graph(
    edge_scores: Mapping[str, float],
    *,
    node_scores: Optional[Mapping[str, float]] = None,
    top_neurons: Optional[Mapping[str, Sequence[tuple[int, float]]]] = None,
    metadata: Optional[Mapping[str, Any]] = None,
    neurons: Optional[Mapping[str, Sequence[int]]] = None,
) -> nx.DiGraph:
    """The graph of a circuit from its kept edges (edge name -> score).

    The nodes are the ends of the kept edges; ``node_scores`` and ``top_neurons`` (keyed by
    component name) only annotate them. ``neurons`` (``{"m10": [123, ...]}``) reduces those MLPs
    to these neurons (see the module docstring; a neuron's score comes from ``top_neurons``).
    Raises :class:`CircuitsError` on a name outside the grammar, two spellings of one edge, or a
    score that is not a finite number.
    """
    G = nx.DiGraph()
    G.graph.update(dict(metadata or {}))
    node_scores = {_canonical_node(k): v for k, v in (node_scores or {}).items()}
    top = {_canonical_node(k): v for k, v in (top_neurons or {}).items()}
    seen: set[str] = set()
    for raw, value in edge_scores.items():
        edge = _parse_edge(raw)
        name = names.format_edge(edge)
        if name in seen:
            raise CircuitsError(f"edge {name} is given twice (as {raw!r}); give each edge once")
        seen.add(name)
        score = _finite(value, name)
        u, v = names.format_node(edge.src), names.format_node(edge.dst)
        for node_name, node in ((u, edge.src), (v, edge.dst)):
            if node_name not in G:
                G.add_node(node_name, **node_attributes(node, node_scores.get(node_name), top.get(node_name)))
        if not G.has_edge(u, v):
            G.add_edge(u, v, qkv=[], scores={}, score=0.0, names=[])
        data = G.edges[u, v]
        key = edge.qkv or ""
        data["scores"] = dict(sorted({**data["scores"], key: score}.items()))
        data["qkv"] = sorted(k for k in data["scores"] if k)
        data["score"] = float(sum(data["scores"].values()))
        data["names"] = sorted(data["names"] + [name])
    if neurons:
        add_neurons(G, neurons, top_neurons=top)
    return G


def add_neurons(G: nx.DiGraph, neurons: Mapping[str, Sequence[int]], *,
                top_neurons: Optional[Mapping[str, Sequence[tuple[int, float]]]] = None) -> None:
    """Reduce MLPs of ``G`` (in place) to the given neurons: ``{"m10": [123, ...]}`` (see the module docstring).

    Each MLP must be a node of ``G`` (an MLP outside the circuit has no neurons to keep).
    """
    recorded = dict(G.graph.get("neurons") or {})
    for raw, idx in neurons.items():
        node = _parse_node(raw)
        mlp_name = names.format_node(node)
        if node.kind != "mlp":
            raise CircuitsError(f"neurons are listed per MLP, like {{\"m10\": [123]}}; {raw!r} is not an MLP")
        if mlp_name not in G:
            raise CircuitsError(f"neurons of {mlp_name} are given, but {mlp_name} has no edge in the circuit; "
                                "keep its edges or leave its neurons out")
        kept = sorted(set(_neuron_index(i, mlp_name) for i in idx) | set(G.nodes[mlp_name].get("neurons") or ()))
        scores = {int(i): float(v) for i, v in ((top_neurons or {}).get(mlp_name) or ())}
        G.nodes[mlp_name]["neurons"] = kept
        for i in kept:
            n = names.format_node(names.neuron(node.layer, i))
            if n not in G:
                G.add_node(n, **node_attributes(names.neuron(node.layer, i), scores.get(i)))
        recorded[mlp_name] = kept
    G.graph["neurons"] = dict(sorted(recorded.items(), key=lambda kv: names.sort_key(kv[0])))


def add_frequencies(G: nx.DiGraph, frequency: Mapping[str, float]) -> None:
    """Record each kept edge's bootstrap inclusion frequency (edge name -> fraction in [0, 1]) on ``G`` in place."""
    for raw, value in frequency.items():
        edge = _parse_edge(raw)
        u, v = names.format_node(edge.src), names.format_node(edge.dst)
        if not G.has_edge(u, v):
            raise CircuitsError(f"inclusion frequency of {raw}, an edge the circuit does not keep")
        data = G.edges[u, v]
        data["frequencies"] = dict(sorted({**(data.get("frequencies") or {}), edge.qkv or "": float(value)}.items()))
        data["frequency"] = max(data["frequencies"].values())


def edge_frequencies(G: nx.DiGraph) -> dict[str, float]:
    """Edge name -> bootstrap inclusion frequency of the kept edges that carry one (empty without a bootstrap)."""
    out = {}
    for _, _, data in G.edges(data=True):
        per = data.get("frequencies") or {}
        for name in data.get("names") or []:
            value = per.get(names.parse_edge(name).qkv or "")
            if isinstance(value, (int, float)):
                out[name] = float(value)
    return out


def circuit_neurons(G: nx.DiGraph) -> dict[str, list[int]]:
    """The circuit's reduced MLPs and their kept neurons, ``{"m10": [123, ...]}``: the union of
    ``G.graph["neurons"]``, the MLP nodes' ``neurons`` lists and the neuron nodes (``m10.n123``)."""
    out: dict[str, set[int]] = {}
    for raw, idx in (G.graph.get("neurons") or {}).items():
        mlp_name = names.format_node(_parse_node(raw))
        out.setdefault(mlp_name, set()).update(_neuron_index(i, mlp_name) for i in (idx or ()))
    for n, data in G.nodes(data=True):
        node = _parse_node(n)
        if node.kind == "mlp" and data.get("neurons"):
            out.setdefault(n, set()).update(_neuron_index(i, n) for i in data["neurons"])
        elif node.kind == "neuron":
            out.setdefault(names.format_node(names.mlp(node.layer)), set()).add(int(node.index))
    return {k: sorted(v) for k, v in sorted(out.items(), key=lambda kv: names.sort_key(kv[0]))}


def _neuron_index(value: Any, mlp_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CircuitsError(f"{mlp_name}'s neurons must be whole numbers >= 0 (got {value!r})")
    return int(value)


def node_attributes(
    node: names.Node, score: Optional[float] = None, top_neurons: Optional[Sequence[tuple[int, float]]] = None
) -> dict[str, Any]:
    """The attribute dict of one component (see the module docstring)."""
    return {
        "kind": node.kind,
        "layer": node.layer,
        "head": node.head,
        "neuron": node.index if node.kind == "neuron" else None,
        **({"parent": names.format_node(names.mlp(node.layer))} if node.kind == "neuron" else {}),
        "position": None,
        "score": None if score is None else float(score),
        "top_neurons": None if top_neurons is None else [[int(i), float(s)] for i, s in top_neurons],
    }


def edge_names(G: nx.DiGraph) -> set[str]:
    """The full edge names (``a0.h1->a9.h1<q>``...) of a circuit graph."""
    out: set[str] = set()
    for _, _, data in G.edges(data=True):
        out.update(data.get("names") or ())
    return out


def to_node_link(G: nx.DiGraph) -> dict[str, Any]:
    """Node-link data, sorted for stable files.

    The edge list is written once, under ``edges`` (networkx >= 3.4's default); files that
    carry it as ``links`` (older networkx, circuit-tracer) are still read.
    """
    nodes = [{"id": n, **jsonable(G.nodes[n])} for n in sorted(G.nodes, key=names.sort_key)]
    edges = sorted(
        ({"source": u, "target": v, **jsonable(d)} for u, v, d in G.edges(data=True)),
        key=lambda e: (min(e.get("names") or [""]), names.sort_key(e["source"]), names.sort_key(e["target"])),
    )
    return {
        "directed": True,
        "multigraph": False,
        "graph": jsonable(G.graph),
        "nodes": nodes,
        "edges": edges,
    }


def write_json(G: nx.DiGraph, path: Union[str, Path]) -> Path:
    """Write ``G`` as node-link JSON to ``path`` atomically; returns the path."""
    text = json.dumps(to_node_link(G), indent=2, allow_nan=False) + "\n"
    return write_atomic(path, text)


def from_node_link(data: Any) -> nx.DiGraph:
    """A circuit graph from node-link data (as written by :func:`to_node_link`); checks its shape."""
    fix = "expected node-link JSON with 'nodes' and 'edges' (or 'links') lists, as written by `circuits export --format json`"
    if not isinstance(data, dict):
        raise CircuitsError(f"not a circuit: the top level is a {type(data).__name__}; {fix}")
    if data.get("directed", True) is not True or data.get("multigraph", False) is not False:
        raise CircuitsError(f"not a circuit: it must be directed and not a multigraph; {fix}")
    edges = data.get("edges", data.get("links"))
    nodes = data.get("nodes", [])
    if not isinstance(edges, list) or not isinstance(nodes, list):
        raise CircuitsError(f"not a circuit: no list of edges; {fix}")
    meta = data.get("graph", data.get("metadata", {}))
    G = nx.DiGraph()
    G.graph.update(meta if isinstance(meta, dict) else {})
    for i, entry in enumerate(nodes):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise CircuitsError(f"node {i} has no string 'id'; {fix}")
        node = _parse_node(entry["id"])
        attrs = node_attributes(node)
        attrs.update({k: v for k, v in entry.items() if k != "id"})
        G.add_node(names.format_node(node), **attrs)
    for i, entry in enumerate(edges):
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str) or not isinstance(entry.get("target"), str):
            raise CircuitsError(f"edge {i} needs string 'source' and 'target'; {fix}")
        _add_loaded_edge(G, entry)
    _lift_neuron_edges(G)
    neurons = circuit_neurons(G)
    if neurons:
        add_neurons(G, neurons)
    return G


def _lift_neuron_edges(G: nx.DiGraph) -> None:
    """Read edges named at neuron level (``a5.h1->m10.n123``) as the MLP's edge plus that neuron."""
    lifted = [(u, v) for u, v in G.edges if "neuron" in (_parse_node(u).kind, _parse_node(v).kind)]
    for u, v in lifted:
        data = G.edges[u, v]
        G.remove_edge(u, v)
        ends = []
        for end in (u, v):
            node = _parse_node(end)
            if node.kind == "neuron":
                mlp_name = names.format_node(names.mlp(node.layer))
                G.graph["neurons"] = {**(G.graph.get("neurons") or {}),
                                      mlp_name: sorted(set((G.graph.get("neurons") or {}).get(mlp_name, [])) | {node.index})}
                ends.append(mlp_name)
            else:
                ends.append(end)
        a, b = ends
        if a == b:
            raise CircuitsError(f"edge {u}->{v} joins two neurons of one MLP; edges join components of different layers")
        names_ = sorted({_lift_name(n) for n in data.get("names") or []})
        for end in (a, b):
            if end not in G:
                G.add_node(end, **node_attributes(_parse_node(end)))
        if G.has_edge(a, b):
            old = G.edges[a, b]
            merged = sorted(set(old.get("names") or []) | set(names_))
            scores = {**(data.get("scores") or {}), **(old.get("scores") or {})}
            old.update(names=merged, qkv=sorted(set(old.get("qkv") or []) | set(data.get("qkv") or [])), scores=scores)
        else:
            G.add_edge(a, b, **{**data, "names": names_})


def _lift_name(name: str) -> str:
    edge = _parse_edge(name)
    src, dst = (names.mlp(n.layer) if n.kind == "neuron" else n for n in (edge.src, edge.dst))
    return names.format_edge(names.Edge(src, dst, edge.qkv))


def _add_loaded_edge(G: nx.DiGraph, entry: Mapping[str, Any]) -> None:
    src, dst = _parse_node(entry["source"]), _parse_node(entry["target"])
    u, v = names.format_node(src), names.format_node(dst)
    attrs = {k: val for k, val in entry.items() if k not in ("source", "target")}
    qkv = attrs.get("qkv") or []
    given = attrs.get("names")
    if given is None:
        if dst.kind == "head" and not qkv:
            raise CircuitsError(f"edge {u}->{v} goes into a head: give its 'qkv' inputs (e.g. [\"q\"]) or its 'names'")
        given = [f"{u}->{names.format_receiver(dst, q)}" for q in qkv] if dst.kind == "head" else [f"{u}->{v}"]
    if not isinstance(given, list) or not all(isinstance(n, str) for n in given):
        raise CircuitsError(f"edge {u}->{v}: 'names' must be a list of edge names like \"{u}->{v}\"")
    parsed = [_parse_edge(n) for n in given]
    if not parsed or any((e.src, e.dst) != (src, dst) for e in parsed):
        raise CircuitsError(f"edge {u}->{v}: its 'names' {given} do not all join {u} and {v}")
    attrs["names"] = sorted(names.format_edge(e) for e in parsed)
    attrs["qkv"] = sorted(e.qkv for e in parsed if e.qkv)
    scores = attrs.get("scores")
    if not isinstance(scores, dict):
        score = attrs.get("score")
        scores = {(e.qkv or ""): (score if len(parsed) == 1 else None) for e in parsed}
    attrs["scores"] = scores
    if not isinstance(attrs.get("score"), (int, float)):
        known = [s for s in scores.values() if isinstance(s, (int, float))]
        attrs["score"] = float(sum(known)) if known else 0.0
    for end, node in ((u, src), (v, dst)):
        if end not in G:
            G.add_node(end, **node_attributes(node))
    G.add_edge(u, v, **attrs)



def _parse_edge(name: str) -> names.Edge:
    try:
        return names.parse_edge(str(name))
    except names.NameError_ as exc:
        raise CircuitsError(str(exc)) from None


def _parse_node(name: str) -> names.Node:
    try:
        return names.parse_node(str(name))
    except names.NameError_ as exc:
        raise CircuitsError(str(exc)) from None


def _canonical_node(name: str) -> str:
    return names.format_node(_parse_node(name))


def _finite(value: Any, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise CircuitsError(f"edge {name} has score {value!r}, not a number") from None
    if not math.isfinite(out):
        raise CircuitsError(f"edge {name} has score {out}; kept edges need finite scores")
    return out


def jsonable(value: Any) -> Any:
    """A JSON-ready copy: numpy scalars to Python, tuples/sets to lists, paths to str, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    item = getattr(value, "item", None)  # numpy scalars and 0-d arrays
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError):
            pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return jsonable(tolist())
    raise CircuitsError(f"cannot write {type(value).__name__} value {value!r} to JSON; pass numbers, strings, lists or dicts")
