"""A saved circuit on a model's graph: its keep mask and its heads and MLPs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple, Union

from torch import Tensor

from circuits import names
from circuits.errors import CircuitsError
from circuits.engine.graph import ComputationalGraph

__all__ = ["Circuit", "load", "from_graph"]


@dataclass(frozen=True)
class Circuit:
    """keep: bool [S, R], True on the circuit's edges.  heads: (layer, head) pairs, mlps: layers,
    in compute order.  source: where it was read from (for the report)."""

    keep: Tensor
    edges: Tuple[str, ...]
    heads: Tuple[Tuple[int, int], ...]
    mlps: Tuple[int, ...]
    source: str = ""

    @property
    def n_edges(self) -> int:
        return len(self.edges)


def from_graph(G, graph: ComputationalGraph, *, source: str = "", model: str = "") -> Circuit:
    """The circuit of a networkx circuit graph (``circuits.graphs.build``) on ``graph``.

    Raises CircuitsError when an edge is not in the graph (a circuit of another model) or the
    circuit has no edges.
    """
    from circuits.graphs.build import circuit_neurons, edge_names

    reduced = circuit_neurons(G)
    if reduced:
        listing = ", ".join(f"{m} ({len(idx)} neurons)" for m, idx in reduced.items())
        raise CircuitsError(f"the circuit{' ' + source if source else ''} keeps {listing} through some neurons only, "
                            "which analyze does not draw yet; evaluate it with `circuits evaluate-circuit`, or pass a "
                            "circuit with whole MLPs")
    found = sorted(edge_names(G))
    if not found:
        raise CircuitsError(f"the circuit{' ' + source if source else ''} has no edges; pass a circuit with at least one edge")
    keep = graph.keep_mask(found, model=model)
    heads, mlps = set(), set()
    for node_name in G.nodes:
        node = names.parse_node(node_name)
        if node.kind == "head":
            heads.add((node.layer, node.index))
        elif node.kind in ("mlp", "neuron"):
            mlps.add(node.layer)
    return Circuit(keep=keep, edges=tuple(found), heads=tuple(sorted(heads)), mlps=tuple(sorted(mlps)), source=source)


def load(path: Union[str, Path], graph: ComputationalGraph, *, model: str = "") -> Circuit:
    """Read a circuit.json (or a run folder holding one) and map it onto ``graph``."""
    from circuits.graphs.files import load_circuit

    return from_graph(load_circuit(path), graph, source=str(path), model=model)
