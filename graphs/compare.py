"""Compare a found circuit with a reference circuit, and read/write a run's edge scores.

``scores.tsv`` holds every edge of a run: a header line ``edge<TAB>score``, then one
``name<TAB>score`` line per edge, sorted by descending ``|score|``; an edge a sampled method did not
score (``edge-patching --sample``) has an empty score and comes last (``load_scores`` leaves it out).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import networkx as nx

from circuits import names
from circuits.atomic import write_atomic
from circuits.errors import CircuitsError
from circuits.graphs.build import circuit_neurons, edge_names

SCORES_FILE = "scores.tsv"
HEADER = "edge\tscore"

__all__ = ["SCORES_FILE", "compare", "granularity", "overlap", "auroc", "load_scores", "write_scores"]


def compare(a: nx.DiGraph, b: nx.DiGraph, *, scores: Optional[Mapping[str, float]] = None) -> dict:
    """How well circuit ``a`` matches reference circuit ``b``.

    Returns ``{"nodes": {precision, recall, jaccard}, "edges": {precision, recall, jaccard,
    auroc}, "granularity"}`` (``a``'s: for a node circuit, the node figures are the ones that
    measure it; its edges are all those among its nodes). Nodes are compared by component name, edges by full edge name (a head's
    q, k and v inputs count apart). ``auroc`` is None unless ``scores`` (every scored edge
    of ``a``'s run, name -> score) is given; then it is the AUROC of ``|score|`` as a
    classifier of membership in ``b``'s edges over all scored edges (see :func:`auroc`).

    Nodes are components (heads, MLPs, input, logits); a reduced MLP counts as its MLP. When
    either circuit reduces an MLP to some of its neurons, ``"neurons"`` adds precision, recall
    and Jaccard over the kept neurons (``m10.n123``) of the MLPs that both circuits reduce
    (``mlps``: those MLPs); an MLP kept whole has no neuron list to compare.
    """
    from circuits.graphs.positions import is_positional, pair_names, project_graph

    if is_positional(a) or is_positional(b):
        if is_positional(a) and is_positional(b):  # (edge, span) pairs and (component, span) nodes
            out = {"nodes": overlap(set(a.nodes), set(b.nodes)), "edges": {**overlap(pair_names(a), pair_names(b)), "auroc": None},
                   "granularity": "positional", "projected": compare(project_graph(a), project_graph(b))}
            return out
        # one is plain: compare the positional one's projection (each edge kept at some span)
        out = compare(project_graph(a) if is_positional(a) else a, project_graph(b) if is_positional(b) else b, scores=scores)
        return {**out, "projected": "a" if is_positional(a) else "b"}
    edges = overlap(edge_names(a), edge_names(b))
    edges["auroc"] = None
    if scores is not None:
        edges["auroc"] = auroc(scores, edge_names(b))
    out = {"nodes": overlap(_components(a), _components(b)), "edges": edges, "granularity": granularity(a)}
    na, nb = circuit_neurons(a), circuit_neurons(b)
    if na or nb:
        both = sorted(set(na) & set(nb), key=lambda m: names.parse_node(m).layer)

        def kept(reduced: dict) -> set:
            return {f"{m}.n{i}" for m in both for i in reduced[m]}

        out["neurons"] = {**overlap(kept(na), kept(nb)), "mlps": both}
    return out


def _components(G: nx.DiGraph) -> set:
    return {n for n in G.nodes if names.parse_node(n).kind != "neuron"}


def granularity(G: nx.DiGraph) -> str:
    """``"node"`` for a circuit chosen by node (a node method's), else ``"edge"`` (older files say nothing)."""
    return "node" if G.graph.get("granularity") == "node" else "edge"


def overlap(found: set, reference: set) -> dict[str, float]:
    """Precision ``|A∩B|/|A|``, recall ``|A∩B|/|B|`` and Jaccard ``|A∩B|/|A∪B|`` of A against B.

    A ratio with a zero denominator is 1.0 when both sets are empty (a perfect match of
    nothing) and 0.0 otherwise.
    """
    both_empty = not found and not reference
    inter = len(found & reference)

    def ratio(den: int) -> float:
        return inter / den if den else (1.0 if both_empty else 0.0)

    return {"precision": ratio(len(found)), "recall": ratio(len(reference)), "jaccard": ratio(len(found | reference))}


def auroc(scores: Mapping[str, float], positives: set[str]) -> Optional[float]:
    """AUROC of ``|score|`` for telling ``positives`` apart from the other scored edges.

    Computed over all edges in ``scores`` plus any positive missing from ``scores``; a
    missing positive (and a NaN score) counts as scoring below every scored edge. Ties get
    average ranks (the Mann-Whitney U statistic). None when there are no positives or no
    negatives.
    """
    values = {_canonical(k): _magnitude(v) for k, v in scores.items()}
    for name in positives:
        values.setdefault(name, -math.inf)
    labels = [(v, name in positives) for name, v in values.items()]
    n_pos = sum(1 for _, p in labels if p)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks([v for v, _ in labels])
    rank_sum = sum(r for r, (_, p) in zip(ranks, labels) if p)
    u = rank_sum - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def load_scores(path: Union[str, Path]) -> dict[str, float]:
    """Read ``scores.tsv`` (the file, or a run folder that holds it) into edge name -> score (scored edges only)."""
    file = Path(path)
    if file.is_dir():
        file = file / SCORES_FILE
    if not file.is_file():
        raise CircuitsError(f"{file} does not exist; pass a run folder written by `circuits discover` or its {SCORES_FILE}")
    lines = file.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise CircuitsError(f"{file}: the first line must be the header 'edge<TAB>score'; rewrite it with write_scores")
    out: dict[str, float] = {}
    unscored: set[str] = set()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            if len(parts) != 2:
                raise ValueError
            name = _canonical(parts[0])
            value = None if parts[1].strip() == "" else float(parts[1])
        except (ValueError, CircuitsError):
            raise CircuitsError(f"{file} line {number}: expected 'EDGE<TAB>SCORE' with an edge like a0.h1->a9.h1<q>, got {line!r}") from None
        if name in out or name in unscored:
            raise CircuitsError(f"{file} line {number}: edge {name} appears twice; keep one line per edge")
        if value is None:
            unscored.add(name)
        else:
            out[name] = value
    return out


def write_scores(scores: Mapping[str, Optional[float]], path: Union[str, Path]) -> Path:
    """Write edge scores to ``path`` (a file, or a folder to hold ``scores.tsv``) atomically, largest ``|score|``
    first; a None score (an unscored edge) is written empty, after the scored ones."""
    file = Path(path)
    if file.is_dir():
        file = file / SCORES_FILE
    rows = sorted(((_canonical(k), float(v)) for k, v in scores.items() if v is not None),
                  key=lambda r: (-_magnitude(r[1]), r[0]))
    lines = [f"{name}\t{value!r}" for name, value in rows]
    lines += [f"{name}\t" for name in sorted(_canonical(k) for k, v in scores.items() if v is None)]
    text = "\n".join([HEADER] + lines) + "\n"
    return write_atomic(file, text)


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values`` in ascending order, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        mean = (start + end) / 2 + 1
        for i in order[start : end + 1]:
            ranks[i] = mean
        start = end + 1
    return ranks


def _magnitude(score: float) -> float:
    value = abs(float(score))
    return -math.inf if math.isnan(value) else value


def _canonical(name: str) -> str:
    try:
        return names.format_edge(names.parse_edge(name))
    except names.NameError_ as exc:
        raise CircuitsError(str(exc)) from None
