"""``circuits export`` and ``circuits compare``: files and comparisons of saved circuits (no torch)."""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from circuits.cli.app import app
from circuits.errors import CircuitsError


class ExportFormat(str, Enum):
    dot = "dot"
    svg = "svg"
    png = "png"
    graphml = "graphml"
    json = "json"
    html = "html"
    eap_ig = "eap-ig"
    mib = "mib"


SUFFIX = {"eap-ig": ".eap-ig.json"}


@app.command("export")
def export_command(
    circuit: Path = typer.Argument(..., metavar="CIRCUIT_JSON", help="A circuit.json file, or a run folder that holds one."),
    fmt: ExportFormat = typer.Option(..., "--format", "-f", help="Output format.", case_sensitive=False),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (a folder for mib) [default: next to the input, new suffix]."),
    compare_with: Optional[Path] = typer.Option(None, "--compare", help="html: a second circuit (run folder, circuit.json or reference) for the compare mode."),
    mib_caps: bool = typer.Option(False, "--mib-caps", help="mib: one binary circuit per edge cap 0.1% ... 100% instead of importances.json."),
) -> None:
    """Write a saved circuit as DOT, SVG, PNG, GraphML, JSON, the HTML viewer, EAP-IG JSON or MIB's layout.

    SVG and HTML need no GraphViz; PNG uses GraphViz's `dot`, else `graphviz-pure`. The viewer,
    EAP-IG and MIB read the run folder's scores.tsv (every edge's score) and manifest.json.
    """
    from circuits.graphs.build import CIRCUIT_FILE
    from circuits.graphs.files import load_circuit
    from circuits.graphs.export import export
    from circuits.graphs.viewer import run_inputs

    G = load_circuit(circuit)
    source = circuit / CIRCUIT_FILE if circuit.is_dir() else circuit
    target = out if out is not None else (
        source.parent / "mib" if fmt.value == "mib" else source.with_suffix(SUFFIX.get(fmt.value, f".{fmt.value}")))
    if out is None and target.resolve() == source.resolve():
        raise CircuitsError(f"exporting {source} as {fmt.value} next to itself would overwrite it; pass --out FILE")
    if fmt.value == "mib" and target.exists() and not target.is_dir():
        raise CircuitsError(f"--out {target} is a file; the mib export writes a folder")
    scores, manifest = run_inputs(source) if fmt.value in ("html", "eap-ig", "mib") else (None, None)
    if scores is None and fmt.value in ("html", "eap-ig", "mib") and "eap_ig_cfg" in G.graph:
        from circuits.graphs.interop import eap_ig_scores  # an EAP-IG file carries every edge's score itself

        scores = eap_ig_scores(json.loads(source.read_text(encoding="utf-8"))) or None
    other = load_circuit(compare_with) if compare_with is not None else None
    written = export(G, fmt.value, target, scores=scores, manifest=manifest, compare=other,
                     compare_label=compare_with.name if compare_with is not None else "B", mib_caps=mib_caps)
    if fmt.value in ("eap-ig", "mib") and "d_model" not in G.graph and "d_model" not in (G.graph.get("eap_ig_cfg") or {}):
        typer.echo("warning: the circuit does not record d_model (a run made before it was recorded); "
                   "EAP-IG's Graph.from_json needs cfg.d_model: add it to the file's cfg", err=True)
    typer.echo(str(written))


@app.command("compare")
def compare_command(
    circuits: List[Path] = typer.Argument(..., metavar="A B [C ...]",
                                          help="Two circuits: A found (a run folder's scores.tsv gives the AUROC), B the "
                                          "reference. Three or more: a table of pairwise overlap. Each a run folder or a circuit.json."),
    as_json: bool = typer.Option(False, "--json", help='Print one JSON object: {"nodes", "edges", "granularity"} for two circuits, {"circuits", "pairs"} for more.'),
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
    from circuits.graphs.build import edge_names
    from circuits.graphs.files import load_circuit
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
    from circuits.graphs.build import edge_names
    from circuits.graphs.files import load_circuit
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
    if result["granularity"] == "node":
        typer.echo("(A is a node circuit: compare its nodes; its edges are every edge among them)")
    if "neurons" in result:
        typer.echo("(neurons: of " + (", ".join(result["neurons"]["mlps"]) or "no MLP") + ", reduced in both A and B)")
    if scores is None:
        typer.echo(f"(no AUROC: A is not a run folder with {SCORES_FILE})")
