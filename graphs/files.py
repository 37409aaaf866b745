"""Reading circuit files: our node-link ``circuit.json`` (or a run folder holding one) and EAP-IG's
graph JSON (also MIB's format)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import networkx as nx

from circuits.errors import CircuitsError
from circuits.graphs.build import CIRCUIT_FILE, from_node_link
from circuits.graphs.interop import from_eap_ig, is_eap_ig


def _circuit_file(path: Path) -> Path:
    if path.is_dir():
        file = path / CIRCUIT_FILE
        if not file.is_file():
            raise CircuitsError(f"{path} holds no {CIRCUIT_FILE}; pass a run folder written by `circuits discover` or a circuit .json file")
        return file
    if not path.exists():
        raise CircuitsError(f"{path} does not exist; pass a circuit .json file or a run folder that holds {CIRCUIT_FILE}")
    return path


def load_circuit(path: Union[str, Path]) -> nx.DiGraph:
    """Read a circuit graph from a ``circuit.json`` file or a run folder that holds one.

    EAP-IG's graph JSON (``{"cfg", "nodes": {...}, "edges": {...}}``, also MIB's format) is read
    too: its ``in_graph`` edges become the circuit (see :mod:`circuits.graphs.interop`).

    Edges without ``names`` are named from their ends and ``qkv``; nodes without attributes
    get them from their names, so a hand-written reference circuit needs only ``source``,
    ``target`` (and ``qkv`` for head receivers).
    """
    file = _circuit_file(Path(path))
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CircuitsError(
            f"{file} is not valid JSON ({exc.msg} at line {exc.lineno}); fix it or re-export the circuit"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CircuitsError(f"cannot read {file} ({exc}); check the path and its permissions") from None
    try:
        return from_eap_ig(data) if is_eap_ig(data) else from_node_link(data)
    except CircuitsError as exc:
        raise CircuitsError(f"{file}: {exc}") from None
