"""``circuits export`` and ``circuits compare``: files and comparisons of saved circuits (no torch)."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

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
    a: Path = typer.Argument(..., metavar="A", help="The found circuit: a run folder (its scores.tsv gives the AUROC) or a circuit.json."),
    b: Path = typer.Argument(..., metavar="B", help="The reference circuit: a run folder or a circuit.json-shaped file."),
    as_json: bool = typer.Option(False, "--json", help='Print {"nodes": {...}, "edges": {...}} as one JSON object.'),
) -> None:
    """Precision, recall and Jaccard of circuit A against reference B (nodes and edges), and the edge-score AUROC."""
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
