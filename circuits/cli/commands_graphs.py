"""``circuits export`` and ``circuits compare``: files and comparisons of saved circuits (no torch)."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from circuits.cli import app
from circuits.errors import CircuitsError


class ExportFormat(str, Enum):
    dot = "dot"
    svg = "svg"
    png = "png"
    graphml = "graphml"
    json = "json"


@app.command("export")
def export_command(
    circuit: Path = typer.Argument(..., metavar="CIRCUIT_JSON", help="A circuit.json file, or a run folder that holds one."),
    fmt: ExportFormat = typer.Option(..., "--format", "-f", help="Output format.", case_sensitive=False),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file [default: next to the input, new suffix]."),
) -> None:
    """Write a saved circuit as DOT, SVG, PNG (these two need GraphViz), GraphML or JSON."""
    from circuits.graphs.build import CIRCUIT_FILE, load_circuit
    from circuits.graphs.export import export

    G = load_circuit(circuit)
    source = circuit / CIRCUIT_FILE if circuit.is_dir() else circuit
    target = out if out is not None else source.with_suffix(f".{fmt.value}")
    if out is None and target.resolve() == source.resolve():
        raise CircuitsError(f"exporting {source} as {fmt.value} next to itself would overwrite it; pass --out FILE")
    written = export(G, fmt.value, target)
    typer.echo(str(written))


@app.command("compare")
def compare_command(
    circuits: List[Path] = typer.Argument(..., metavar="A B [C ...]",
                                          help="Two circuits: A found (a run folder's scores.tsv gives the AUROC), B the "
                                          "reference. Three or more: a table of pairwise overlap. Each a run folder or a circuit.json."),
    as_json: bool = typer.Option(False, "--json", help='Print one JSON object: {"nodes", "edges"} for two circuits, {"circuits", "pairs"} for more.'),
) -> None:
    """Two circuits: precision, recall and Jaccard of A against reference B (nodes and edges) and the edge-score
    AUROC.  Three or more: the node and edge overlap of every pair (intersection, Jaccard, shares)."""
    if len(circuits) < 2:
        raise CircuitsError("compare needs at least two circuits (run folders or circuit.json files)")
    if len(circuits) == 2:
        _compare_two(circuits[0], circuits[1], as_json)
    else:
        _compare_many(circuits, as_json)


def _compare_many(paths: List[Path], as_json: bool) -> None:
    from circuits.graphs.build import edge_names, load_circuit
    from circuits.graphs.overlap import pairwise

    graphs = [load_circuit(p) for p in paths]
    pairs = pairwise(graphs)
    if as_json:
        typer.echo(json.dumps({"circuits": [str(p) for p in paths], "pairs": pairs}, sort_keys=True))
        return
    for k, (path, G) in enumerate(zip(paths, graphs), 1):
        meta = G.graph
        what = " ".join(str(meta[key]) for key in ("task", "method") if meta.get(key))
        typer.echo(f"[{k}] {path} ({G.number_of_nodes()} nodes, {len(edge_names(G))} edges{', ' + what if what else ''})")
    typer.echo(f"{'pair':7} {'nodes':>6} {'jaccard':>7} {'i in j':>6} {'j in i':>6}   {'edges':>6} {'jaccard':>7} {'i in j':>6} {'j in i':>6}")
    for pair in pairs:
        cells = []
        for part in ("nodes", "edges"):
            o = pair[part]
            cells.append(f"{o['both']:>6} {o['jaccard']:>7.3f} {o['a_in_b']:>6.3f} {o['b_in_a']:>6.3f}")
        typer.echo(f"{pair['i'] + 1:>3}-{pair['j'] + 1:<3} " + "   ".join(cells))
    typer.echo("(nodes / edges: the count both circuits hold; i in j: the share of i's that j also holds)")


def _compare_two(a: Path, b: Path, as_json: bool) -> None:
    from circuits.graphs.build import edge_names, load_circuit
    from circuits.graphs.compare import SCORES_FILE, compare, load_scores

    ga, gb = load_circuit(a), load_circuit(b)
    scores = load_scores(a) if a.is_dir() and (a / SCORES_FILE).is_file() else None
    result = compare(ga, gb, scores=scores)
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
        return
    typer.echo(f"A: {a} ({ga.number_of_nodes()} nodes, {len(edge_names(ga))} edges)")
    typer.echo(f"B: {b} ({gb.number_of_nodes()} nodes, {len(edge_names(gb))} edges)")
    typer.echo(f"{'':7} {'precision':>9} {'recall':>7} {'jaccard':>7} {'auroc':>7}")
    for part in ("nodes", "edges", "neurons"):
        if part not in result:
            continue
        row = result[part]
        auroc = row.get("auroc")
        auroc_text = "-" if auroc is None else f"{auroc:.3f}"
        typer.echo(f"{part:7} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['jaccard']:>7.3f} {auroc_text:>7}")
    if "neurons" in result:
        typer.echo("(neurons: of " + (", ".join(result["neurons"]["mlps"]) or "no MLP") + ", reduced in both A and B)")
    if scores is None:
        typer.echo(f"(no AUROC: A is not a run folder with {SCORES_FILE})")
